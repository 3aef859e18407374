-- One row per scored session: Goal/Task/Bond = mean of that dimension's item scores.
-- Input view: items (the items/ Parquet of a scoring run). A dimension is null unless all of
-- its items were scored; `spread` is the SD across samples of the dimension mean (samples > 1).
-- `<dim>_expected`: the mean of the items' expected scores (Σ value·p(value) at the score token),
-- null unless all four items carry one (an engine run without log-probabilities has none).
WITH per_sample AS (
    SELECT session_id, dimension, s.idx AS sample, avg(s.val) AS dim_score
    FROM items, unnest(scores) WITH ORDINALITY AS s(val, idx)
    GROUP BY ALL
),
spread AS (
    SELECT session_id, dimension, stddev_samp(dim_score) AS spread
    FROM per_sample GROUP BY ALL
),
dims AS (
    SELECT session_id, dimension, avg(score) AS dim_score, count(*) AS n_items,
           avg(expected_score) AS dim_expected, count(expected_score) AS n_expected
    FROM items GROUP BY ALL
)
SELECT
    d.session_id,
    any_value(i.model) AS model,
    any_value(i.adapter) AS adapter,
    any_value(i.rubric_id) AS rubric_id,
    max(d.dim_score) FILTER (WHERE d.dimension = 'goal' AND d.n_items = 4) AS goal,
    max(d.dim_score) FILTER (WHERE d.dimension = 'task' AND d.n_items = 4) AS task,
    max(d.dim_score) FILTER (WHERE d.dimension = 'bond' AND d.n_items = 4) AS bond,
    max(d.dim_expected) FILTER (WHERE d.dimension = 'goal' AND d.n_expected = 4) AS goal_expected,
    max(d.dim_expected) FILTER (WHERE d.dimension = 'task' AND d.n_expected = 4) AS task_expected,
    max(d.dim_expected) FILTER (WHERE d.dimension = 'bond' AND d.n_expected = 4) AS bond_expected,
    max(s.spread) FILTER (WHERE d.dimension = 'goal') AS goal_spread,
    max(s.spread) FILTER (WHERE d.dimension = 'task') AS task_spread,
    max(s.spread) FILTER (WHERE d.dimension = 'bond') AS bond_spread,
    sum(d.n_items)::INTEGER AS n_items_scored,
    any_value(i.n_items_selected) AS n_items_selected,
    avg(i.quote_found) AS quote_found,
    bool_or(i.truncated) AS truncated
FROM dims d
JOIN spread s USING (session_id, dimension)
JOIN (SELECT session_id, any_value(model) AS model, any_value(adapter) AS adapter,
             any_value(rubric_id) AS rubric_id, max(n_items_selected) AS n_items_selected,
             avg(quote_found) AS quote_found, bool_or(truncated) AS truncated
      FROM items GROUP BY session_id) i USING (session_id)
GROUP BY d.session_id
ORDER BY d.session_id;
