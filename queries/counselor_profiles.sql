-- counselor_profiles: each counselor's mean on each outcome, pooled toward the population so that a
-- counselor with few sessions cannot top the ranking by luck (empirical Bayes, method of moments).
-- Input view:
--   session_outcomes  (session_id VARCHAR, counselor_id VARCHAR, outcome VARCHAR, value DOUBLE), one row per
--                     session × outcome, e.g. from an analysis folder:
--                     CREATE VIEW session_outcomes AS UNPIVOT (SELECT session_id, counselor_id, goal, task, bond
--                     FROM 'AN/features.parquet') ON goal, task, bond INTO NAME outcome VALUE value;
-- Parameters (SET VARIABLE name = value; before running):
--   min_sessions  counselors with at least this many sessions on an outcome are listed (default 5); all counselors
--                 inform the population estimates.
--   z             the normal quantile of the interval (default 1.959964, a 95% interval).
-- Method, per outcome, with n_j sessions, mean m_j and variance s2_j for counselor j:
--   sigma2 = sum((n_j - 1) s2_j) / sum(n_j - 1)              pooled within-counselor variance
--   tau2   = max(0, var(m_j) - mean(sigma2 / n_j))           between-counselor variance (method of moments)
--   w_j    = 1 / (tau2 + sigma2 / n_j);  mu = sum(w_j m_j) / sum(w_j);  var(mu) = 1 / sum(w_j)
--   B_j    = tau2 / (tau2 + sigma2 / n_j)                     how much counselor j's own mean is trusted
--   pooled_mean = mu + B_j (m_j - mu);  var = B_j sigma2 / n_j + (1 - B_j)^2 var(mu)  (Morris 1983)
--   interval    = pooled_mean -/+ z sqrt(var)
-- rank: 1 = highest pooled_mean within the outcome. is_strength: the interval lies above mu. is_weakest: the
-- counselor's outcome with the lowest (pooled_mean - mu) / sqrt(tau2 + sigma2), i.e. weakest relative to the
-- population in units of the session-level sd (raw means would always name the population's weakest outcome).
-- Extra columns: population_mean (mu), shrinkage (B_j).
WITH per_counselor AS (
    SELECT outcome, counselor_id, count(*) AS n, avg(value) AS m, var_samp(value) AS s2
    FROM session_outcomes
    WHERE counselor_id IS NOT NULL AND value IS NOT NULL AND isfinite(value)
    GROUP BY outcome, counselor_id
),
within_var AS (
    SELECT outcome, sum((n - 1) * s2) / nullif(sum(n - 1), 0) AS sigma2
    FROM per_counselor
    WHERE n > 1
    GROUP BY outcome
),
hyper AS (
    SELECT p.outcome, w.sigma2,
           greatest(coalesce(var_samp(p.m), 0) - avg(w.sigma2 / p.n), 0) AS tau2
    FROM per_counselor p JOIN within_var w USING (outcome)
    GROUP BY p.outcome, w.sigma2
),
weighted AS (
    SELECT p.*, h.sigma2, h.tau2, 1 / nullif(h.tau2 + h.sigma2 / p.n, 0) AS w
    FROM per_counselor p JOIN hyper h USING (outcome)
),
grand AS (
    SELECT outcome, sum(w * m) / sum(w) AS mu, 1 / sum(w) AS mu_var
    FROM weighted
    GROUP BY outcome
),
pooled AS (
    SELECT wt.outcome, wt.counselor_id, wt.n, wt.m, wt.sigma2, wt.tau2, g.mu, g.mu_var,
           wt.tau2 / nullif(wt.tau2 + wt.sigma2 / wt.n, 0) AS shrink
    FROM weighted wt JOIN grand g USING (outcome)
    WHERE wt.n >= coalesce(getvariable('min_sessions'), 5)
),
profiled AS (
    SELECT *,
           mu + shrink * (m - mu) AS pooled_mean,
           sqrt(shrink * sigma2 / n + (1 - shrink) ^ 2 * mu_var) AS pooled_se
    FROM pooled
),
bounded AS (
    SELECT *,
           pooled_mean - coalesce(getvariable('z'), 1.959964)::DOUBLE * pooled_se AS pooled_lo,
           pooled_mean + coalesce(getvariable('z'), 1.959964)::DOUBLE * pooled_se AS pooled_hi,
           (pooled_mean - mu) / nullif(sqrt(tau2 + sigma2), 0) AS relative
    FROM profiled
)
SELECT
    counselor_id,
    outcome,
    n AS n_sessions,
    m AS raw_mean,
    pooled_mean,
    pooled_lo,
    pooled_hi,
    rank() OVER (PARTITION BY outcome ORDER BY pooled_mean DESC) AS rank,
    pooled_lo > mu AS is_strength,
    row_number() OVER (PARTITION BY counselor_id ORDER BY relative ASC NULLS LAST, outcome) = 1 AS is_weakest,
    mu AS population_mean,
    shrink AS shrinkage
FROM bounded
ORDER BY outcome, rank, counselor_id;
