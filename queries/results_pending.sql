-- The resume plan: each selected session that still has pairs to score, in corpus order, with
-- `missing` = the item ids left, or NULL when every wanted item is left (most sessions of a
-- resumed run: no list to build, ship or hold for them). A pair is done when it is in items
-- or in errors. Input views: selected(session_id, pos), wanted(item_id), items, errors.
-- Done pairs are counted per session first, so the selected × wanted pairs are only spelled out
-- for the few sessions that are part done.
WITH done AS MATERIALIZED (
    SELECT DISTINCT session_id, item_id
    FROM (SELECT session_id, item_id FROM items UNION ALL SELECT session_id, item_id FROM errors)
    SEMI JOIN wanted USING (item_id)
),
per_session AS (
    SELECT session_id, count(*) AS n_done FROM done GROUP BY session_id
),
pending AS (
    SELECT s.session_id, s.pos, coalesce(d.n_done, 0) AS n_done
    FROM selected s LEFT JOIN per_session d USING (session_id)
    WHERE coalesce(d.n_done, 0) < (SELECT count(*) FROM wanted)
),
part_done AS (
    SELECT p.session_id, list(w.item_id ORDER BY w.item_id) AS missing
    FROM (SELECT session_id FROM pending WHERE n_done > 0) p
    CROSS JOIN wanted w
    ANTI JOIN done d ON d.session_id = p.session_id AND d.item_id = w.item_id
    GROUP BY p.session_id
)
SELECT p.session_id, m.missing
FROM pending p LEFT JOIN part_done m USING (session_id)
ORDER BY p.pos;
