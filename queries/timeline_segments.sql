-- timeline_segments: consecutive points of each session's curve, with the counselor strategies
-- used in the turns between them (what the client was reacting to when they rated again).
-- Input views:
--   timeline_points  (session_id, source, counselor_id, dimension, turn_index, value), as written by
--                    timeline_points.sql
--   sessions         a corpus's sessions/ Parquet (see timeline_points.sql)
-- Parameters: none.
-- A segment runs from one point (turn_before) to the next (turn_after); its strategies are those of
-- the turns strictly between the two, each listed once (a turn without a strategy adds none).
-- Output: session_id, source, counselor_id, dimension, turn_before, turn_after, value_before,
--         value_after, change, strategies (VARCHAR[], sorted).
WITH segments AS (
    SELECT session_id, source, counselor_id, dimension,
           lag(turn_index) OVER w AS turn_before, turn_index AS turn_after,
           lag(value) OVER w AS value_before, value AS value_after
    FROM timeline_points
    WINDOW w AS (PARTITION BY session_id, dimension ORDER BY turn_index)
),
strategies AS (
    SELECT session_id, turn_index, turn.strategy AS strategy
    FROM (
        SELECT session_id, generate_subscripts(turns, 1) - 1 AS turn_index, unnest(turns) AS turn
        FROM sessions
        WHERE session_id IN (SELECT session_id FROM timeline_points)
    )
    WHERE turn.strategy IS NOT NULL
)
SELECT g.session_id, g.source, g.counselor_id, g.dimension, g.turn_before, g.turn_after,
       g.value_before, g.value_after, g.value_after - g.value_before AS change,
       coalesce(list_sort(list_distinct(list(s.strategy))), []::VARCHAR[]) AS strategies
FROM segments g
LEFT JOIN strategies s
  ON s.session_id = g.session_id AND s.turn_index > g.turn_before AND s.turn_index < g.turn_after
WHERE g.turn_before IS NOT NULL
GROUP BY ALL
ORDER BY g.session_id, g.dimension, g.turn_before;
