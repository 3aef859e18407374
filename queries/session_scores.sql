-- One row per scored session: Goal/Task/Bond = mean of that dimension's item scores.
-- Input view: items (the items/ Parquet of a scoring run). A dimension is null unless all of
-- its items were scored; `spread` is the SD across samples of the dimension mean (samples > 1).
-- `<dim>_expected`: the mean of the items' expected scores (Σ value·p(value) at the score token),
-- null unless all four items carry one (an engine run without log-probabilities has none).
-- One scan of items does the work; the per-sample unnest runs only over the (session, dimension)
-- groups that have more than one sample, so a one-sample run (the default) never unnests.
WITH dims AS (
    SELECT session_id, dimension, avg(score) AS dim_score, count(*) AS n_items,
           avg(expected_score) AS dim_expected, count(expected_score) AS n_expected,
           max(len(scores)) AS n_samples,
           any_value(model) AS model, any_value(adapter) AS adapter,
           any_value(rubric_id) AS rubric_id, max(n_items_selected) AS n_items_selected,
           sum(quote_found) AS quote_sum, count(quote_found) AS quote_n,
           bool_or(truncated) AS truncated
    FROM items GROUP BY ALL
),
per_sample AS (
    SELECT session_id, dimension, s.idx AS sample, avg(s.val) AS dim_score
    FROM (SELECT session_id, dimension, scores FROM items
          SEMI JOIN (SELECT session_id, dimension FROM dims WHERE n_samples > 1)
          USING (session_id, dimension)),
         unnest(scores) WITH ORDINALITY AS s(val, idx)
    GROUP BY ALL
),
spread AS (
    SELECT session_id, dimension, stddev_samp(dim_score) AS spread
    FROM per_sample GROUP BY ALL
)
SELECT
    d.session_id,
    any_value(d.model) AS model,
    any_value(d.adapter) AS adapter,
    any_value(d.rubric_id) AS rubric_id,
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
    max(d.n_items_selected) AS n_items_selected,
    sum(d.quote_sum) / sum(d.quote_n) AS quote_found,
    bool_or(d.truncated) AS truncated
FROM dims d
LEFT JOIN spread s USING (session_id, dimension)
GROUP BY d.session_id
ORDER BY d.session_id;
