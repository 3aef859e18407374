-- trajectory_points: each outcome by session position for clients with at least two scored sessions.
-- Input view:
--   session_outcomes  (session_id VARCHAR, client_id VARCHAR, session_index INTEGER, started_at TIMESTAMP,
--                     outcome VARCHAR, value DOUBLE), one row per session × outcome, e.g.
--                     CREATE VIEW session_outcomes AS UNPIVOT (SELECT session_id, client_id, session_index,
--                     NULL::TIMESTAMP AS started_at, goal, task, bond FROM 'AN/features.parquet')
--                     ON goal, task, bond INTO NAME outcome VALUE value;
-- Parameters: none.
-- Position: the session_index when all of the client's scored sessions have one, otherwise the session's rank in
-- the client's sessions ordered by started_at (then session_id). Sessions with neither cannot be ordered: a client
-- whose sessions have no session_index and no started_at is left out.
-- Output: client_id, outcome, session_id, position, value.
WITH scored AS (
    SELECT session_id, client_id, session_index, started_at, outcome, value,
           count(*) OVER client_outcome AS n,
           count(session_index) OVER client_outcome AS n_indexed,
           count(started_at) OVER client_outcome AS n_dated,
           row_number() OVER (PARTITION BY client_id, outcome ORDER BY started_at, session_id) AS by_date
    FROM session_outcomes
    WHERE client_id IS NOT NULL AND value IS NOT NULL AND isfinite(value)
    WINDOW client_outcome AS (PARTITION BY client_id, outcome)
)
SELECT client_id, outcome, session_id,
       CASE WHEN n_indexed = n THEN session_index ELSE by_date END AS position,
       value
FROM scored
WHERE n >= 2 AND (n_indexed = n OR n_dated = n)
ORDER BY outcome, client_id, position;
