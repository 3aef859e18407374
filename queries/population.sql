-- population: the distribution of each outcome over the whole corpus and within each group.
-- Input views:
--   session_outcomes  (session_id VARCHAR, outcome VARCHAR, value DOUBLE): one row per session × outcome
--                     (the analysis writes these columns to features.parquet; unpivot them, e.g.
--                     CREATE VIEW session_outcomes AS UNPIVOT (SELECT session_id, goal, task, bond FROM 'AN/features.parquet')
--                     ON goal, task, bond INTO NAME outcome VALUE value;)
--   session_groups    (session_id VARCHAR, group_by VARCHAR, grp VARCHAR): the groups each session belongs to,
--                     with group_by = 'all', grp = 'all' for the whole corpus, e.g.
--                     CREATE VIEW session_groups AS SELECT session_id, 'all' AS group_by, 'all' AS grp FROM 'AN/features.parquet'
--                     UNION ALL SELECT session_id, 'source', source FROM 'AN/features.parquet';
-- Parameters (SET VARIABLE name = value; before running):
--   low_threshold  a session is low on an outcome when its value <= this (default 2: the paper's "low-scored", <= "Sometimes").
-- Output: group_by, grp, outcome, n, mean, sd, q25, median, q75, low_share, is_weakest (lowest mean among the
-- outcomes of that group; it compares raw means, so it is only meaningful for outcomes on one scale).
WITH stats AS (
    SELECT
        g.group_by,
        g.grp,
        o.outcome,
        count(*) AS n,
        avg(o.value) AS mean,
        stddev_samp(o.value) AS sd,
        quantile_cont(o.value, 0.25) AS q25,
        quantile_cont(o.value, 0.5) AS median,
        quantile_cont(o.value, 0.75) AS q75,
        avg(CASE WHEN o.value <= coalesce(getvariable('low_threshold'), 2)::DOUBLE THEN 1.0 ELSE 0.0 END) AS low_share
    FROM session_outcomes o
    JOIN session_groups g USING (session_id)
    WHERE o.value IS NOT NULL AND isfinite(o.value) AND g.grp IS NOT NULL
    GROUP BY g.group_by, g.grp, o.outcome
)
SELECT *, mean = min(mean) OVER (PARTITION BY group_by, grp) AS is_weakest
FROM stats
ORDER BY group_by <> 'all', group_by, grp, outcome;
