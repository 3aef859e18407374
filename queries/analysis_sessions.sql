-- analysis_sessions: one row per session with the columns analysis groups and orders by (no turns).
-- Input view:
--   sessions  a corpus's sessions/ Parquet, e.g.
--             CREATE VIEW sessions AS SELECT * FROM read_parquet('CORPUS/sessions/**/*.parquet', hive_partitioning = true);
-- Parameters: none.
SELECT
    session_id,
    CAST(source AS VARCHAR) AS source,
    client_id,
    counselor_id,
    session_index,
    started_at,
    language
FROM sessions
ORDER BY session_id;
