-- The resume plan: each selected session that still has pairs to score, with those item ids,
-- in corpus order. A pair is done when it is in items or in errors.
-- Input views: selected(session_id, pos), wanted(item_id), items, errors.
WITH done AS (
    SELECT session_id, item_id FROM items
    UNION
    SELECT session_id, item_id FROM errors
),
pairs AS (
    SELECT s.session_id, s.pos, w.item_id FROM selected s, wanted w
)
SELECT p.session_id, list(p.item_id ORDER BY p.item_id) AS missing
FROM pairs p
ANTI JOIN done d ON d.session_id = p.session_id AND d.item_id = p.item_id
GROUP BY p.session_id, p.pos
ORDER BY p.pos;
