-- analysis_keys: the label and metadata keys a corpus carries, and how many sessions carry each
-- (for choosing and checking `care-ray analyze --outcome/--by`).
-- Input view:
--   sessions  a corpus's sessions/ Parquet, e.g.
--             CREATE VIEW sessions AS SELECT * FROM read_parquet('CORPUS/sessions/**/*.parquet', hive_partitioning = true);
-- Parameters: none.
-- Output: kind ('labels' | 'metadata'), key, n_sessions.
SELECT 'labels' AS kind, key, count(*) AS n_sessions
FROM (SELECT unnest(map_keys(labels)) AS key FROM sessions WHERE labels IS NOT NULL)
GROUP BY ALL
UNION ALL
SELECT 'metadata' AS kind, key, count(*) AS n_sessions
FROM (SELECT unnest(map_keys(metadata)) AS key FROM sessions WHERE metadata IS NOT NULL)
GROUP BY ALL
ORDER BY kind, key;
