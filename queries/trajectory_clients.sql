-- trajectory_clients: per outcome, how many clients have a trajectory, the share whose last session scores higher
-- than their first (a tie is not a rise), and the mean per-client slope.
-- Input view:
--   trajectories  the output of trajectories.sql (client_id, outcome, n_sessions, first, last, slope, rises).
-- Parameters: none.
-- Output: outcome, n_clients, share_rising, mean_slope.
SELECT outcome, count(*) AS n_clients, avg(rises::DOUBLE) AS share_rising, avg(slope) AS mean_slope
FROM trajectories
GROUP BY outcome
ORDER BY outcome;
