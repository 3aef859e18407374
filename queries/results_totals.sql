-- Totals of a scoring run folder for its manifest. Input views: items, errors.
SELECT
    (SELECT sum(prompt_tokens) FROM items) AS prompt_tokens,
    (SELECT sum(cached_tokens) FROM items) AS cached_prompt_tokens,
    (SELECT map(list(error_reason ORDER BY error_reason), list(n ORDER BY error_reason))
       FROM (SELECT error_reason, count(*) AS n FROM errors GROUP BY ALL)) AS errors_by_reason,
    (SELECT map(list(rubric_id ORDER BY rubric_id), list(n ORDER BY rubric_id))
       FROM (SELECT rubric_id, count(*) AS n FROM items GROUP BY ALL)) AS items_by_rubric,
    (SELECT list(DISTINCT f ORDER BY f)
       FROM (SELECT run_fingerprint AS f FROM items UNION SELECT run_fingerprint FROM errors)) AS fingerprints;
