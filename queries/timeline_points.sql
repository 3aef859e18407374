-- timeline_points: the within-session ratings a corpus carries (turns.rating, e.g. FailedESConv's
-- seeker feedback), one row per rated turn of every session with two or more rated turns.
-- Input view:
--   sessions  a corpus's sessions/ Parquet, e.g.
--             CREATE VIEW sessions AS SELECT * FROM read_parquet('CORPUS/sessions/**/*.parquet', hive_partitioning = true);
-- Parameters: none.
-- turn_index counts from 0 over all turns; position = turn_index / (n_turns - 1), 0 at the first
-- turn and 1 at the last, so sessions of different lengths share one axis.
-- Output: session_id, source, counselor_id, dimension, n_turns, turn_index, role, position, value,
--         rationale (null: a rating carries none).
WITH turns AS (
    SELECT session_id, CAST(source AS VARCHAR) AS source, counselor_id, len(turns) AS n_turns,
           generate_subscripts(turns, 1) - 1 AS turn_index, unnest(turns) AS turn
    FROM sessions
),
rated AS (
    SELECT *, count(*) OVER (PARTITION BY session_id) AS n_rated
    FROM turns
    WHERE turn.rating IS NOT NULL AND isfinite(turn.rating)
)
SELECT session_id, source, counselor_id, 'turn_rating' AS dimension, n_turns, turn_index,
       turn.role AS role,
       turn_index / greatest(n_turns - 1, 1) AS position,
       CAST(turn.rating AS DOUBLE) AS value, NULL::VARCHAR AS rationale
FROM rated
WHERE n_rated >= 2
ORDER BY session_id, turn_index;
