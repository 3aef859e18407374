"""Does a set of WAI-SR ratings behave like the WAI scale? Pure functions over a sessions × items
matrix (NaN = missing) and the rubric's item → dimension map.

Agreement says whether predicted dimension scores track the client's; it cannot say whether the
twelve predicted items carry three distinguishable dimensions or are one judgement written twelve
times. These checks can, and they run the same way on the clients' own ratings, so the two sources
can be read side by side:

- reliability per dimension: Cronbach's α (pingouin, with its Feldt interval) and McDonald's ω from a
  one-factor model's standardized loadings (statsmodels' maximum-likelihood Factor), with a bootstrap interval;
- item–rest correlations: each item with the mean of the other items of its dimension;
- correlations of the three dimension means;
- confirmatory factor models (semopy): Goal/Task/Bond as three factors, Bond vs Goal+Task, and one
  factor, with CFI, RMSEA (semopy.calc_stats) and SRMR (computed here: semopy does not report it);
- a verdict: the items are an undifferentiated blob when every dimension has α ≥ BLOB_ALPHA, or when
  three factors fit no better than one (ΔCFI < BLOB_DELTA_CFI) and the factors correlate ≥
  BLOB_FACTOR_R.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from care_ray.contracts.rubric import DIMENSIONS
from care_ray.evaluation.metrics import percentile_interval

NAN = float("nan")
# Fewer sessions with all items rated than this make α, ω and a 12-item CFA too unstable to read.
MIN_COMPLETE = 30
BLOB_ALPHA = 0.98
BLOB_DELTA_CFI = 0.01
BLOB_FACTOR_R = 0.95
FACTOR_MODELS = ("one", "two", "three")


def item_column(item_id: int) -> str:
    return f"i{item_id}"


def items_frame(matrix: np.ndarray, item_ids: Sequence[int]) -> Any:
    """The matrix as a pandas DataFrame (what pingouin and semopy take) with one column per item
    (i1…i12): the names semopy's model descriptions use."""
    values = np.asarray(matrix, dtype=float)
    return pl.DataFrame({item_column(i): values[:, j] for j, i in enumerate(item_ids)}).to_pandas()


def long_item_matrix(
    session_ids: Sequence[str],
    item_ids: Sequence[int],
    scores: Sequence[float | None],
    n_items: int,
) -> tuple[list[str], np.ndarray]:
    """Long (session_id, item_id, score) rows → (sessions, sessions × n_items matrix); item j is
    column j−1, NaN where a session has no score for it."""
    frame = pl.DataFrame(
        {
            "session_id": pl.Series(list(session_ids), dtype=pl.String),
            "item_id": pl.Series(list(item_ids), dtype=pl.Int64),
            "score": pl.Series(list(scores), dtype=pl.Float64),
        }
    ).with_columns(pl.col("score").fill_nan(None))
    sessions = sorted(frame["session_id"].unique().to_list())
    row = {sid: k for k, sid in enumerate(sessions)}
    matrix = np.full((len(sessions), n_items), np.nan)
    means = frame.drop_nulls("score").group_by("session_id", "item_id").agg(pl.col("score").mean())
    means = means.filter(pl.col("item_id").is_between(1, n_items))
    rows = np.array([row[sid] for sid in means["session_id"].to_list()], dtype=int)
    matrix[rows, means["item_id"].to_numpy() - 1] = means["score"].to_numpy()
    return sessions, matrix


def _dimension_items(item_dims: Mapping[int, str]) -> dict[str, list[int]]:
    """{dimension: its item ids}, dimensions in the rubric's order (goal, task, bond)."""
    out: dict[str, list[int]] = {}
    for item, dim in sorted(item_dims.items()):
        out.setdefault(dim, []).append(item)
    order = {d: i for i, d in enumerate(DIMENSIONS)}
    return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _block(matrix: np.ndarray, items: Sequence[int]) -> np.ndarray:
    """The columns of `items` (1-based ids), rows with all of them rated."""
    block = np.asarray(matrix, dtype=float)[:, [i - 1 for i in items]]
    return block[~np.isnan(block).any(axis=1)]


def cronbach_alpha(block: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Cronbach's α of the complete rows of a sessions × items block and pingouin's interval."""
    import pingouin as pg

    if len(block) < 3 or block.shape[1] < 2:
        return NAN, NAN, NAN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        alpha, ci = pg.cronbach_alpha(
            data=items_frame(block, range(1, block.shape[1] + 1)), ci=level
        )
    lo, hi = (float(v) for v in ci)
    return float(alpha), lo, hi


def omega_from_loadings(loadings: npt.ArrayLike) -> float:
    """McDonald's ω (total) of a one-factor model with standardized loadings λ:
    (Σλ)² / ((Σλ)² + Σ(1 − λ²))."""
    lam = np.asarray(loadings, dtype=float)
    common = float(lam.sum()) ** 2
    return common / (common + float(np.sum(1 - lam**2)))


def one_factor_loadings(block: np.ndarray) -> np.ndarray:
    """Standardized loadings of a one-factor model: maximum-likelihood factor analysis of the
    items' correlation matrix (statsmodels' Factor; factor_analyzer does not run with the installed
    scikit-learn, and sklearn's FactorAnalysis is ~20× slower, too slow to bootstrap), signed so
    that most are positive; NaN where the fit is impossible (a constant item, too few rows)."""
    from statsmodels.multivariate.factor import Factor

    nan = np.full(block.shape[1], np.nan)
    if len(block) < block.shape[1] + 2 or np.any(np.ptp(block, axis=0) == 0):
        return nan
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            corr = np.corrcoef(block, rowvar=False)
            fit = Factor(corr=corr, n_factor=1, method="ml", nobs=len(block)).fit()
        lam = np.asarray(fit.loadings, dtype=float)[:, 0]
    except (ValueError, np.linalg.LinAlgError):
        return nan
    if not np.isfinite(lam).all():
        return nan
    lam = np.clip(lam, -1.0, 1.0)
    return -lam if lam.sum() < 0 else lam


def omega(block: np.ndarray) -> float:
    lam = one_factor_loadings(block)
    return NAN if np.isnan(lam).any() else omega_from_loadings(lam)


def omega_interval(
    block: np.ndarray, resamples: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ω over sessions (scipy.stats.bootstrap resamples the rows;
    failed fits are left out, as in metrics.percentile_interval)."""
    from scipy import stats

    if resamples <= 0 or len(block) < MIN_COMPLETE // 2:
        return NAN, NAN
    rows = np.arange(len(block))

    def statistic(index: np.ndarray) -> float:
        return omega(block[np.asarray(index, dtype=int)])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(
            (rows,),
            statistic,
            n_resamples=resamples,
            vectorized=False,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    lo, hi, _ = percentile_interval(np.asarray(res.bootstrap_distribution), level)
    return float(lo[0]), float(hi[0])


def reliability(
    matrix: np.ndarray,
    item_dims: Mapping[int, str],
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Per dimension: α with pingouin's interval, ω with a bootstrap interval, n complete rows."""
    out = []
    for dim, items in _dimension_items(item_dims).items():
        block = _block(matrix, items)
        alpha, alpha_lo, alpha_hi = cronbach_alpha(block, level)
        om = omega(block)
        om_lo, om_hi = (
            omega_interval(block, resamples, seed, level)
            if math.isfinite(om)
            else (
                NAN,
                NAN,
            )
        )
        out.append(
            {
                "dimension": dim,
                "alpha": alpha,
                "alpha_lo": alpha_lo,
                "alpha_hi": alpha_hi,
                "omega": om,
                "omega_lo": om_lo,
                "omega_hi": om_hi,
                "n": len(block),
            }
        )
    return out


def _r(x: np.ndarray, y: np.ndarray) -> float:
    from scipy import stats

    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return NAN
    return float(stats.pearsonr(x[keep], y[keep]).statistic)


def item_rest(matrix: np.ndarray, item_dims: Mapping[int, str]) -> list[dict[str, Any]]:
    """Each item's Pearson r with the mean of the other items of its dimension (complete rows of
    the dimension): low values mark an item that does not belong; values near 1 everywhere mark
    items that say the same thing."""
    out = []
    for dim, items in _dimension_items(item_dims).items():
        block = _block(matrix, items)
        for j, item in enumerate(items):
            rest = np.delete(block, j, axis=1).mean(axis=1) if len(block) else np.array([])
            out.append(
                {
                    "dimension": dim,
                    "item_id": item,
                    "r": _r(block[:, j], rest) if len(block) else NAN,
                    "n": len(block),
                }
            )
    return out


def dimension_correlations(
    matrix: np.ndarray, item_dims: Mapping[int, str]
) -> list[dict[str, Any]]:
    """Pearson r between the dimension means (each over that dimension's rated items), per pair."""
    means: dict[str, np.ndarray] = {}
    for dim, items in _dimension_items(item_dims).items():
        block = np.asarray(matrix, dtype=float)[:, [i - 1 for i in items]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            means[dim] = np.nanmean(block, axis=1)
    dims = list(means)
    out = []
    for i, a in enumerate(dims):
        for b in dims[i + 1 :]:
            keep = ~(np.isnan(means[a]) | np.isnan(means[b]))
            out.append(
                {
                    "dimension_a": a,
                    "dimension_b": b,
                    "r": _r(means[a], means[b]),
                    "n": int(keep.sum()),
                }
            )
    return out


def srmr(observed_cov: np.ndarray, implied_cov: np.ndarray) -> float:
    """Standardized root mean square residual: the root mean square, over the lower triangle with
    the diagonal (p(p+1)/2 elements), of observed minus model-implied correlations (each matrix
    standardized by its own diagonal). semopy's calc_stats does not report it."""
    s, sigma = np.asarray(observed_cov, dtype=float), np.asarray(implied_cov, dtype=float)
    ds, dsig = np.sqrt(np.diag(s)), np.sqrt(np.diag(sigma))
    residual = s / np.outer(ds, ds) - sigma / np.outer(dsig, dsig)
    lower = np.tril_indices_from(residual)
    return float(np.sqrt(np.mean(residual[lower] ** 2)))


def model_description(model: str, item_dims: Mapping[int, str]) -> str:
    """semopy syntax of the one-, two- (Bond vs Goal+Task) or three-factor model."""
    by_dim = _dimension_items(item_dims)
    if model == "three":
        groups = by_dim
    elif model == "two":
        groups = {
            "bond": by_dim.get("bond", []),
            "goal_task": [i for d, items in by_dim.items() if d != "bond" for i in items],
        }
    elif model == "one":
        groups = {"alliance": sorted(item_dims)}
    else:
        raise ValueError(f"unknown factor model {model!r}")
    return "\n".join(
        f"{name} =~ " + " + ".join(item_column(i) for i in items)
        for name, items in groups.items()
        if items
    )


def fit_factor_model(frame: Any, description: str) -> dict[str, Any]:
    """Fit one CFA with semopy (maximum likelihood) to a pandas frame of items (items_frame):
    CFI, RMSEA, chi2, df, AIC, BIC from calc_stats, SRMR from the implied vs observed
    covariance, and the factors' correlations."""
    import semopy

    model = semopy.Model(description)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        model.fit(frame)
        stats = semopy.calc_stats(model).T["Value"]
        implied = model.calc_sigma()[0]
        observed = frame[model.vars["observed"]].cov().to_numpy()
        estimates = model.inspect(std_est=True)
    latent = set(model.vars["latent"])
    pairs = estimates[
        (estimates["op"] == "~~")
        & estimates["lval"].isin(latent)
        & estimates["rval"].isin(latent)
        & (estimates["lval"] != estimates["rval"])
    ]
    return {
        "cfi": float(stats["CFI"]),
        "rmsea": float(stats["RMSEA"]),
        "srmr": srmr(observed, implied),
        "chi2": float(stats["chi2"]),
        "df": float(stats["DoF"]),
        "aic": float(stats["AIC"]),
        "bic": float(stats["BIC"]),
        "factor_correlations": {
            f"{r.lval}~{r.rval}": float(r["Est. Std"]) for _, r in pairs.iterrows()
        },
    }


def factor_models(matrix: np.ndarray, item_dims: Mapping[int, str]) -> list[dict[str, Any]]:
    """The one-, two- and three-factor CFAs on the sessions with every item rated; a model that
    cannot be fitted (constant items, a singular covariance) gets NaN fit indices and its error."""
    items = sorted(item_dims)
    complete = _block(matrix, items)
    frame = items_frame(complete, items)
    out = []
    for model in FACTOR_MODELS:
        row: dict[str, Any] = {"model": model, "n": len(complete)}
        try:
            if np.any(np.ptp(complete, axis=0) == 0):
                raise ValueError("an item is constant")
            row.update(fit_factor_model(frame, model_description(model, item_dims)))
        # semopy's failures on degenerate data come as any of these
        except (
            ValueError,
            ArithmeticError,
            np.linalg.LinAlgError,
            KeyError,
            IndexError,
            RuntimeError,
            TypeError,
        ) as e:
            row.update(
                {k: NAN for k in ("cfi", "rmsea", "srmr", "chi2", "df", "aic", "bic")},
                factor_correlations={},
                error=str(e),
            )
        out.append(row)
    return out


def verdict(
    reliability_rows: Sequence[Mapping[str, Any]], model_rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Whether the items are an undifferentiated blob, and why, in plain words."""
    alphas = [float(r["alpha"]) for r in reliability_rows]
    by_model = {r["model"]: r for r in model_rows}
    all_high = bool(alphas) and all(math.isfinite(a) and a >= BLOB_ALPHA for a in alphas)
    three, one = by_model.get("three", {}), by_model.get("one", {})
    delta = float(three.get("cfi", NAN)) - float(one.get("cfi", NAN))
    factor_r = list((three.get("factor_correlations") or {}).values())
    min_r = min(factor_r) if factor_r else NAN
    no_better = math.isfinite(delta) and delta < BLOB_DELTA_CFI
    merged = math.isfinite(min_r) and min_r >= BLOB_FACTOR_R
    reasons = []
    if all_high:
        reasons.append(
            f"α ≥ {BLOB_ALPHA} on every dimension ({', '.join(f'{a:.2f}' for a in alphas)})"
        )
    if no_better and merged:
        reasons.append(
            f"three factors fit no better than one (ΔCFI = {delta:.3f}) and the factors "
            f"correlate ≥ {min_r:.2f}"
        )
    blob = bool(reasons)
    text = (
        "the items are nearly interchangeable: " + "; ".join(reasons)
        if blob
        else "the items separate into dimensions"
        + (f" (three factors ΔCFI = {delta:+.3f} over one)" if math.isfinite(delta) else "")
    )
    return {
        "blob": blob,
        "all_alpha_high": all_high,
        "delta_cfi_three_vs_one": delta,
        "min_factor_correlation": min_r,
        "text": text,
    }


def scale_checks(
    matrix: np.ndarray,
    item_dims: Mapping[int, str],
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
    min_complete: int = MIN_COMPLETE,
) -> dict[str, Any]:
    """All checks for one source: {reliability, item_rest, dimension_correlations, factor_models,
    verdict, n_complete}, or {skipped: why, n_complete} with too few fully rated sessions."""
    matrix = np.asarray(matrix, dtype=float)
    n_complete = int((~np.isnan(matrix[:, [i - 1 for i in sorted(item_dims)]])).all(axis=1).sum())
    if n_complete < min_complete:
        return {
            "skipped": f"{n_complete} sessions have all {len(item_dims)} items rated "
            f"(at least {min_complete} needed)",
            "n_complete": n_complete,
        }
    rel = reliability(matrix, item_dims, resamples, seed, level)
    models = factor_models(matrix, item_dims)
    return {
        "reliability": rel,
        "item_rest": item_rest(matrix, item_dims),
        "dimension_correlations": dimension_correlations(matrix, item_dims),
        "factor_models": models,
        "verdict": verdict(rel, models),
        "n_complete": n_complete,
    }
