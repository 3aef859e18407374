-- timeline_scored_points: the items scored at cut points (`care-ray score --timeline N`), joined
-- back to the session, the cut turn and its position in the session.
-- Input views:
--   items  the timeline run folder's committed items/ (session_id is the cut-point session SID@tK)
--   cuts   (session_id VARCHAR, cut_id VARCHAR, cut_turn INTEGER, n_turns INTEGER, position DOUBLE),
--          one row per cut point, as care_ray.scoring.timeline.cut_sessions makes them
--   answers (session_id VARCHAR, item_id INTEGER, rationale VARCHAR, quotes VARCHAR[]): the full
--          answers given at the cut after a drop (OUT/timeline/answers/ items), possibly empty
-- Parameters: none.
-- position = cut_turn / (n_turns - 1): 0 at the session's first turn, 1 at its last.
-- Output: session_id, cut_turn, n_turns, position, item_id, dimension, score, expected_score,
--         score_sd, rationale, quotes, run_fingerprint.
SELECT c.session_id, c.cut_turn, c.n_turns, c.position, i.item_id, i.dimension, i.score,
       i.expected_score, i.score_sd, a.rationale, a.quotes, i.run_fingerprint
FROM items i
JOIN cuts c ON c.cut_id = i.session_id
LEFT JOIN answers a ON a.session_id = i.session_id AND a.item_id = i.item_id
ORDER BY c.session_id, c.cut_turn, i.item_id;
