-- How many rows consolidation of a scoring run would drop.
-- Input views: items, errors (the committed files of a run's items/ and errors/).
-- items_duplicates: rows beyond one per (session_id, item_id) — a retried write task's second copy.
-- errors_dropped: error rows that are duplicates or whose pair was scored after all.
SELECT
    (SELECT count(*) FROM items) - (SELECT count(*) FROM (SELECT DISTINCT session_id, item_id FROM items)) AS items_duplicates,
    (SELECT count(*) FROM errors)
      - (SELECT count(*) FROM (SELECT DISTINCT session_id, item_id FROM errors e
                               ANTI JOIN items i USING (session_id, item_id))) AS errors_dropped;
