-- analysis_values: the requested labels and metadata of every session, long (one row per session × key).
-- Input views:
--   sessions  a corpus's sessions/ Parquet, e.g.
--             CREATE VIEW sessions AS SELECT * FROM read_parquet('CORPUS/sessions/**/*.parquet', hive_partitioning = true);
--   wanted    (kind VARCHAR 'labels' | 'metadata', key VARCHAR): the keys to extract, e.g.
--             CREATE TABLE wanted AS SELECT * FROM (VALUES ('labels', 'empathy'), ('metadata', 'split')) t(kind, key);
-- Parameters: none.
-- Output: session_id, kind, key, num (the label's value), txt (the metadata value); absent keys give no row.
SELECT *
FROM (
    SELECT
        s.session_id,
        w.kind,
        w.key,
        CASE WHEN w.kind = 'labels' THEN s.labels[w.key] END AS num,
        CASE WHEN w.kind = 'metadata' THEN s.metadata[w.key] END AS txt
    FROM sessions s CROSS JOIN wanted w
)
WHERE num IS NOT NULL OR txt IS NOT NULL;
