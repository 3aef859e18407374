-- Totals of a scoring run folder for its manifest. Input views: items, errors.
-- One scan of each view, grouped small first (a run has a handful of rubrics, fingerprints and
-- error reasons); scalar subqueries straight over the views would scan items four times.
WITH item_groups AS MATERIALIZED (
    SELECT rubric_id, run_fingerprint, sum(prompt_tokens) AS prompt_tokens,
           sum(cached_tokens) AS cached_tokens, count(*) AS n
    FROM items GROUP BY ALL
),
error_groups AS MATERIALIZED (
    SELECT error_reason, run_fingerprint, count(*) AS n FROM errors GROUP BY ALL
)
SELECT
    (SELECT sum(prompt_tokens) FROM item_groups) AS prompt_tokens,
    (SELECT sum(cached_tokens) FROM item_groups) AS cached_prompt_tokens,
    (SELECT map(list(error_reason ORDER BY error_reason), list(n ORDER BY error_reason))
       FROM (SELECT error_reason, sum(n) AS n FROM error_groups GROUP BY ALL)) AS errors_by_reason,
    (SELECT map(list(rubric_id ORDER BY rubric_id), list(n ORDER BY rubric_id))
       FROM (SELECT rubric_id, sum(n) AS n FROM item_groups GROUP BY ALL)) AS items_by_rubric,
    (SELECT list(DISTINCT f ORDER BY f)
       FROM (SELECT run_fingerprint AS f FROM item_groups
             UNION SELECT run_fingerprint FROM error_groups)) AS fingerprints;
