-- trajectories: per client and outcome, the first and last session's value and the least-squares slope per session.
-- Input view:
--   trajectory_points  (client_id, outcome, session_id, position, value): the output of trajectory_points.sql, e.g.
--                      CREATE VIEW trajectory_points AS <trajectory_points.sql>;
-- Parameters: none.
-- Output: client_id, outcome, n_sessions, first, last, slope (change per unit of position), rises (last > first).
SELECT
    client_id,
    outcome,
    count(*) AS n_sessions,
    arg_min(value, position) AS first,
    arg_max(value, position) AS last,
    regr_slope(value, position) AS slope,
    arg_max(value, position) > arg_min(value, position) AS rises
FROM trajectory_points
GROUP BY client_id, outcome
ORDER BY outcome, client_id;
