-- low_items: rationales of low-scored items (the material for "challenges"), a deterministic sample per dimension.
-- Input views:
--   items     a scoring run's items/ Parquet (session_id, item_id, dimension, score, rationale, quotes, ...), e.g.
--             CREATE VIEW items AS SELECT * FROM read_parquet('SCORES/items/*.parquet');
--   sessions  the corpus's sessions/ Parquet (for each session's language), e.g.
--             CREATE VIEW sessions AS SELECT * FROM read_parquet('CORPUS/sessions/**/*.parquet', hive_partitioning = true);
-- Parameters (SET VARIABLE name = value; before running):
--   low_threshold  items with score <= this (default 2: "Sometimes" or less)
--   max_docs       about this many rationales per dimension at most (default 20000), chosen by a hash of
--                  (session_id, item_id, seed), so that a rerun picks the same ones
--   seed           (default 0)
-- Output: session_id, item_id, dimension, score, rationale, quotes, language, n_low (the dimension's number of
-- low-scored items before sampling). Items without a rationale (score-only runs) are left out.
WITH per_dimension AS (
    SELECT dimension, count(*) AS n_low
    FROM items
    WHERE score <= coalesce(getvariable('low_threshold'), 2)::DOUBLE
    GROUP BY dimension
)
SELECT i.session_id, i.item_id, i.dimension, i.score, i.rationale, i.quotes, s.language, d.n_low
FROM items i
JOIN per_dimension d USING (dimension)
LEFT JOIN (SELECT session_id, any_value(language) AS language FROM sessions GROUP BY session_id) s USING (session_id)
WHERE i.score <= coalesce(getvariable('low_threshold'), 2)::DOUBLE
  AND hash(i.session_id, i.item_id, coalesce(getvariable('seed'), 0)) % 1000000
      < 1000000 * coalesce(getvariable('max_docs'), 20000)::DOUBLE / d.n_low
  AND i.rationale IS NOT NULL AND length(trim(i.rationale)) > 0
ORDER BY i.dimension, i.session_id, i.item_id;
