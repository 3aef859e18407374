-- timeline_model_points: a model's scores at cut points (`care-ray score --timeline N`) as the
-- curve of each session and dimension, with the session's own end (the full-session score of the
-- same item) as its last point.
-- Input views:
--   sessions      a corpus's sessions/ Parquet (see timeline_points.sql)
--   scored_points (session_id VARCHAR, dimension VARCHAR, cut_turn INTEGER, value DOUBLE, rationale
--                 VARCHAR); cut_turn -1 marks the full-session score
-- Parameters: none.
-- Output: session_id, source, counselor_id, dimension, n_turns, turn_index, role, position, value,
--         rationale (the columns of timeline_points.sql), sessions and dimensions with two or more points.
WITH joined AS (
    SELECT p.session_id, CAST(s.source AS VARCHAR) AS source, s.counselor_id, p.dimension,
           len(s.turns) AS n_turns,
           CASE WHEN p.cut_turn < 0 THEN len(s.turns) - 1 ELSE p.cut_turn END AS turn_index,
           s.turns, p.value, p.rationale
    FROM scored_points p
    JOIN sessions s ON s.session_id = p.session_id
    WHERE p.value IS NOT NULL AND isfinite(p.value)
),
counted AS (
    SELECT *, count(*) OVER (PARTITION BY session_id, dimension) AS n_points FROM joined
)
SELECT session_id, source, counselor_id, dimension, n_turns, turn_index,
       turns[turn_index + 1].role AS role,
       turn_index / greatest(n_turns - 1, 1) AS position, value, rationale
FROM counted
WHERE n_points >= 2
ORDER BY session_id, dimension, turn_index;
