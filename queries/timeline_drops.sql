-- timeline_drops: the cut points after a drop of at least the given size between consecutive cut
-- points of the same session and item: they get a full answer (rationale and quotes).
-- Input views:
--   items  the timeline run folder's committed items/ (session_id is the cut-point session SID@tK)
--   cuts   (session_id VARCHAR, cut_id VARCHAR, cut_turn INTEGER, ...), see timeline_scored_points.sql
-- Parameters: getvariable('drop') DOUBLE, the smallest drop.
-- Output: cut_id, item_id (one row per cut point and item after a drop).
WITH scored AS (
    SELECT c.session_id, c.cut_id, c.cut_turn, i.item_id, i.score,
           lag(i.score) OVER (PARTITION BY c.session_id, i.item_id ORDER BY c.cut_turn) AS before
    FROM items i
    JOIN cuts c ON c.cut_id = i.session_id
)
SELECT cut_id, item_id
FROM scored
WHERE before - score >= getvariable('drop')
ORDER BY cut_id, item_id;
