-- trajectory_summary: the mean outcome at each session position, over clients with at least two sessions.
-- Input view:
--   trajectory_points  (client_id, outcome, session_id, position, value): the output of trajectory_points.sql.
-- Parameters: none.
-- Output: outcome, session_index (the position), n, mean.
SELECT outcome, position AS session_index, count(*) AS n, avg(value) AS mean
FROM trajectory_points
GROUP BY outcome, position
ORDER BY outcome, session_index;
