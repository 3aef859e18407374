-- One pass over a scoring run's rows, grouped by (session_id, item_id): what consolidation drops
-- and the manifest's counts over the selected pairs, together.
-- Input views: items, errors (committed files), selected(session_id, pos), wanted(item_id).
-- A pair with a score counts as scored (its error rows are dropped); a pair with only errors
-- counts once as failed. Selected pairs with no row at all are items_in - scored - errors.
WITH pairs AS (
    SELECT session_id, item_id, sum(is_item) AS n_items, count(*) - sum(is_item) AS n_errors
    FROM (SELECT session_id, item_id, 1 AS is_item FROM items
          UNION ALL
          SELECT session_id, item_id, 0 AS is_item FROM errors)
    GROUP BY ALL
),
marked AS (
    SELECT p.session_id, p.n_items, p.n_errors,
           s.session_id IS NOT NULL AND w.item_id IS NOT NULL AS is_selected
    FROM pairs p
    LEFT JOIN selected s ON s.session_id = p.session_id
    LEFT JOIN wanted w ON w.item_id = p.item_id
)
SELECT
    coalesce(sum(n_items - 1) FILTER (WHERE n_items > 0), 0) AS items_duplicates,
    coalesce(sum(n_errors) FILTER (WHERE n_items > 0), 0)
      + coalesce(sum(n_errors - 1) FILTER (WHERE n_items = 0), 0) AS errors_dropped,
    count(*) FILTER (WHERE is_selected AND n_items > 0) AS items_scored,
    count(*) FILTER (WHERE is_selected AND n_items = 0) AS items_errors,
    count(DISTINCT session_id) FILTER (WHERE is_selected AND n_items = 0) AS sessions_with_errors
FROM marked;
