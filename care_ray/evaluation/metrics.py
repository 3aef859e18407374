"""Agreement with the client's own rating, the way the paper reports it, as pure functions.

- item scores → dimension scores (a dimension is the mean of its items; 4 per dimension in WAI-SR);
- Pearson r, Spearman rho (scipy.stats) and MSE per dimension, predicted vs true;
- the counselor baseline (the counselor's own WAI rating as a predictor of the client's) and the
  paper's headline ratio (model r / counselor r);
- mean ± sd over folds;
- rationale overlap with reference rationales: ROUGE-1 and ROUGE-L F1 (no ROUGE package is a
  dependency; both are a few lines). Chinese text is compared by character, other text by word;
- as Polars tables, for `care-ray evaluate` at corpus scale: the (session, dimension) pairs of
  predicted and observed scores, bootstrap intervals of the agreement (scipy.stats.bootstrap), a
  calibration table, and the share of quotes found in the transcript.

Undefined statistics (fewer than 2 sessions, or a constant side) are NaN, never 0: a caller that
needs a number for ranking decides what NaN means there (see training.selection).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from care_ray.contracts.rubric import DIMENSIONS, Rubric

NAN = float("nan")


def item_dimensions(rubric: Rubric) -> dict[int, str]:
    return {i.id: i.dimension for i in rubric.items}


def dimension_means(
    session_ids: Sequence[str],
    item_ids: Sequence[int],
    scores: Sequence[float | None],
    item_dims: Mapping[int, str],
) -> dict[str, dict[str, float]]:
    """Long item scores → {dimension: {session_id: mean of that session's scored items}}.
    Missing (None/NaN) scores are left out of the mean; a session with none in a dimension is absent."""
    sums: dict[str, dict[str, list[float]]] = {}
    for sid, iid, score in zip(session_ids, item_ids, scores, strict=True):
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        sums.setdefault(item_dims[int(iid)], {}).setdefault(sid, []).append(float(score))
    return {
        dim: {sid: float(np.mean(v)) for sid, v in by_session.items()}
        for dim, by_session in sums.items()
    }


def wide_dimension_scores(wai: np.ndarray, item_dims: Mapping[int, str]) -> dict[str, np.ndarray]:
    """An (n_sessions × 12) WAI array (NaN = missing, column j = item j+1) → {dimension: per-session means}."""
    wai = np.asarray(wai, dtype=float)
    out = {}
    for dim in sorted(set(item_dims.values())):
        cols = [i - 1 for i, d in sorted(item_dims.items()) if d == dim]
        block = wai[:, cols]
        has_any = ~np.isnan(block).all(axis=1)
        means = np.full(len(block), np.nan)
        means[has_any] = np.nanmean(block[has_any], axis=1)
        out[dim] = means
    return out


def agreement(pred: npt.ArrayLike, true: npt.ArrayLike) -> dict[str, float]:
    """Pearson r, Spearman rho and MSE over the pairs where both sides are present."""
    from scipy import stats

    p = np.asarray(pred, dtype=float)
    t = np.asarray(true, dtype=float)
    keep = ~(np.isnan(p) | np.isnan(t))
    p, t = p[keep], t[keep]
    n = int(len(p))
    mse = float(np.mean((p - t) ** 2)) if n else NAN
    if n < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return {"pearson": NAN, "spearman": NAN, "mse": mse, "n": n}
    return {
        "pearson": float(stats.pearsonr(p, t).statistic),
        "spearman": float(stats.spearmanr(p, t).statistic),
        "mse": mse,
        "n": n,
    }


def paired(pred: Mapping[str, float], true: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Values of the sessions present on both sides, in one order."""
    keys = sorted(set(pred) & set(true))
    return np.array([pred[k] for k in keys], dtype=float), np.array(
        [true[k] for k in keys], dtype=float
    )


def dimension_agreement(
    pred: Mapping[str, Mapping[str, float]],
    true: Mapping[str, Mapping[str, float]],
    dimensions: Iterable[str] = DIMENSIONS,
) -> dict[str, dict[str, float]]:
    """{dimension: agreement} from dimension_means() of predictions and of the truth."""
    return {dim: agreement(*paired(pred.get(dim, {}), true.get(dim, {}))) for dim in dimensions}


def long_scores_agreement(
    predicted: pa.Table, truth: pa.Table, rubric: Rubric, score_column: str = "score"
) -> dict[str, dict[str, float]]:
    """Two long tables (session_id, item_id, score) → per-dimension agreement of the dimension means."""
    dims = item_dimensions(rubric)

    def means(t: pa.Table) -> dict[str, dict[str, float]]:
        return dimension_means(
            t["session_id"].to_pylist(), t["item_id"].to_pylist(), t[score_column].to_pylist(), dims
        )

    return dimension_agreement(means(predicted), means(truth), rubric.dimensions)


def flat_metrics(
    per_dimension: Mapping[str, Mapping[str, float]], prefix: str = ""
) -> dict[str, float]:
    """{'goal': {'pearson': r, ...}} → {'{prefix}pearson_goal': r, ..., '{prefix}pearson_mean': ...};
    the means ignore NaN dimensions and are NaN only when all are."""
    out: dict[str, float] = {}
    for stat in ("pearson", "spearman", "mse"):
        values = []
        for dim, m in per_dimension.items():
            out[f"{prefix}{stat}_{dim}"] = m[stat]
            values.append(m[stat])
        finite = [v for v in values if not math.isnan(v)]
        out[f"{prefix}{stat}_mean"] = float(np.mean(finite)) if finite else NAN
        out[f"{prefix}{stat}_n_defined"] = len(finite)
    return out


def counselor_gap(
    counselor_wai: np.ndarray, client_wai: np.ndarray, rubric: Rubric
) -> dict[str, dict[str, float]]:
    """The counselor's own rating as a predictor of the client's (the paper's weakest baseline),
    plus the mean signed gap (counselor − client) per dimension. Arrays are n_sessions × 12, NaN = missing."""
    dims = item_dimensions(rubric)
    counselor = wide_dimension_scores(counselor_wai, dims)
    client = wide_dimension_scores(client_wai, dims)
    out = {}
    for dim in rubric.dimensions:
        stats = agreement(counselor[dim], client[dim])
        diff = counselor[dim] - client[dim]
        stats["mean_gap"] = float(np.nanmean(diff)) if np.isfinite(diff).any() else NAN
        out[dim] = stats
    return out


def relative_gain(model_r: float, baseline_r: float) -> float:
    """The paper's "+73%": model r / baseline r − 1 (NaN when the baseline r is not positive)."""
    if math.isnan(model_r) or math.isnan(baseline_r) or baseline_r <= 0:
        return NAN
    return model_r / baseline_r - 1.0


def fold_summary(per_fold: Sequence[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Metrics of each fold → {metric: {mean, sd, n}} over the folds where it is defined (sd: ddof=1)."""
    keys = sorted({k for m in per_fold for k, v in m.items() if isinstance(v, int | float)})
    out = {}
    for k in keys:
        values = [float(m[k]) for m in per_fold if k in m and not math.isnan(float(m[k]))]
        out[k] = {
            "mean": float(np.mean(values)) if values else NAN,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else NAN,
            "n": len(values),
        }
    return out


_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W_]+", re.UNICODE)


def overlap_tokens(text: str) -> list[str]:
    """Words, casefolded; each CJK character is a token of its own (the usual choice for Chinese ROUGE)."""
    return _TOKEN.findall(text.casefold())


def _f1(overlap: int, n_ref: int, n_cand: int) -> float:
    if overlap == 0 or n_ref == 0 or n_cand == 0:
        return 0.0
    p, r = overlap / n_cand, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(reference: str, candidate: str, n: int = 1) -> float:
    """ROUGE-N F1 (clipped n-gram overlap)."""
    from collections import Counter

    def grams(tokens: list[str]) -> Counter[tuple[str, ...]]:
        return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    ref, cand = grams(overlap_tokens(reference)), grams(overlap_tokens(candidate))
    return _f1(sum((ref & cand).values()), sum(ref.values()), sum(cand.values()))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, O(len(a)·len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 (sentence-level LCS)."""
    ref, cand = overlap_tokens(reference), overlap_tokens(candidate)
    return _f1(lcs_length(ref, cand), len(ref), len(cand))


def rationale_overlap(references: Sequence[str], candidates: Sequence[str]) -> dict[str, Any]:
    """Mean ROUGE-1 and ROUGE-L F1 of generated rationales against references (pairs with a
    missing side are skipped and counted)."""
    pairs = [(r, c) for r, c in zip(references, candidates, strict=True) if r and c]
    if not pairs:
        return {"rouge1": NAN, "rougeL": NAN, "n": 0, "skipped": len(references)}
    return {
        "rouge1": float(np.mean([rouge_n(r, c, 1) for r, c in pairs])),
        "rougeL": float(np.mean([rouge_l(r, c) for r, c in pairs])),
        "n": len(pairs),
        "skipped": len(references) - len(pairs),
    }


# ---- Tables for `care-ray evaluate`: pairs, bootstrap agreement, calibration, quotes ----

AGREEMENT_STATS = ("pearson", "spearman", "mse")
PAIRS_SCHEMA = {
    "session_id": pl.String,
    "dimension": pl.String,
    "predicted": pl.Float64,
    "observed": pl.Float64,
    "counselor": pl.Float64,
    "fold": pl.String,
}
AGREEMENT_SCHEMA = {
    "rater": pl.String,
    "dimension": pl.String,
    "fold": pl.String,
    "n": pl.Int64,
    **{f"{s}{suffix}": pl.Float64 for s in AGREEMENT_STATS for suffix in ("", "_lo", "_hi")},
    "ci_n": pl.Int64,
    # resamples whose Pearson r was undefined (a constant side): left out of the interval
    "ci_degenerate": pl.Int64,
}
COMPARISON_SCHEMA = {
    "rater_a": pl.String,
    "rater_b": pl.String,
    "dimension": pl.String,
    "n": pl.Int64,
    "pearson_a": pl.Float64,
    "pearson_b": pl.Float64,
    "difference": pl.Float64,
    "difference_lo": pl.Float64,
    "difference_hi": pl.Float64,
    "mse_a": pl.Float64,
    "mse_b": pl.Float64,
    "mse_difference": pl.Float64,
    "mse_difference_lo": pl.Float64,
    "mse_difference_hi": pl.Float64,
    "ci_degenerate": pl.Int64,
}
# An interval from fewer finite resamples than this share would describe a different statistic
# (r given that the resample was not constant) more than r itself: it is left NaN instead.
MIN_FINITE_SHARE = 0.5
CALIBRATION_SCHEMA = {
    "dimension": pl.String,
    "bin": pl.String,
    "bin_lo": pl.Float64,
    "bin_hi": pl.Float64,
    "n": pl.Int64,
    "predicted_mean": pl.Float64,
    "observed_mean": pl.Float64,
    "observed_sd": pl.Float64,
}
# Resampled values held in memory at once by one bootstrap batch (float64: ~40 MB per array).
_BOOTSTRAP_BATCH_CELLS = 5_000_000


def long_dimension_frame(
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    columns: Mapping[str, Any],
    value_name: str,
) -> pl.DataFrame:
    """{dimension: per-session values} → long (session_id, dimension, value_name); NaN and null
    values (a dimension the session has no value for) are left out."""
    wide = pl.DataFrame(
        {
            "session_id": pl.Series(session_ids, dtype=pl.String),
            **{d: pl.Series(v, dtype=pl.Float64) for d, v in columns.items()},
        }
    )
    long = wide.unpivot(
        index="session_id", on=list(columns), variable_name="dimension", value_name=value_name
    )
    return long.with_columns(pl.col(value_name).fill_nan(None)).drop_nulls(value_name)


def wai_dimension_frame(
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    wai: pa.Array | pa.ChunkedArray,
    rubric: Rubric,
    value_name: str,
) -> pl.DataFrame:
    """A WAI list column (item 1..n in order, null = not rated) → long dimension means; a
    dimension needs at least one rated item (as in wide_dimension_scores)."""
    dims = item_dimensions(rubric)
    lists = pl.Series("wai", wai, dtype=pl.List(pl.Float64))
    items = pl.DataFrame(lists).select(
        pl.col("wai").list.get(i - 1, null_on_oob=True).alias(str(i))
        for i in range(1, max(dims) + 1)
    )
    return long_dimension_frame(
        session_ids, wide_dimension_scores(items.to_numpy(), dims), value_name
    )


def label_dimension_frame(
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    labels: pa.Array | pa.ChunkedArray,
    label_of_dimension: Mapping[str, str],
    value_name: str,
) -> pl.DataFrame:
    """A map<string, float64> labels column → long (session_id, dimension, value): the value of
    label `label_of_dimension[dimension]` stands for that dimension."""
    columns = {
        dim: pc.map_lookup(labels, pa.scalar(label, pa.string()), "first")
        for dim, label in label_of_dimension.items()
    }
    return long_dimension_frame(session_ids, columns, value_name)


def pairs_table(
    predicted: pl.DataFrame,
    observed: pl.DataFrame,
    counselor: pl.DataFrame | None = None,
    folds: pl.DataFrame | None = None,
    others: Mapping[str, pl.DataFrame] | None = None,
) -> pl.DataFrame:
    """Long (session_id, dimension, predicted) ⋈ (session_id, dimension, observed) → one row per
    (session, dimension) that has both, plus the counselor's rating and the fold where known.
    `others` ({column: long (session_id, dimension, column)}) are further scorers: a (session,
    dimension) stays only where every one of them scored it too, so that all scorers are compared
    on the same sessions; their columns follow the standard ones."""
    pairs = predicted.select("session_id", "dimension", "predicted")
    for column, frame in (others or {}).items():
        pairs = pairs.join(
            frame.select("session_id", "dimension", column),
            on=["session_id", "dimension"],
            how="inner",
        )
    pairs = pairs.join(
        observed.select("session_id", "dimension", "observed"),
        on=["session_id", "dimension"],
        how="inner",
    )
    if counselor is not None:
        pairs = pairs.join(
            counselor.select("session_id", "dimension", "counselor"),
            on=["session_id", "dimension"],
            how="left",
        )
    if folds is not None:
        pairs = pairs.join(
            folds.select("session_id", pl.col("fold").cast(pl.String)), on="session_id", how="left"
        )
    missing = [
        pl.lit(None, dtype=t).alias(c) for c, t in PAIRS_SCHEMA.items() if c not in pairs.columns
    ]
    extra = [pl.col(c).cast(pl.Float64) for c in (others or {})]
    return (
        pairs.with_columns(missing)
        .select(*(pl.col(c).cast(t) for c, t in PAIRS_SCHEMA.items()), *extra)
        .sort("dimension", "session_id")
    )


def agreement_statistics(predicted: np.ndarray, observed: np.ndarray, axis: int = -1) -> np.ndarray:
    """Pearson r, Spearman rho (Pearson r of the ranks, as scipy.stats.spearmanr) and MSE along
    `axis`, stacked: the vectorised statistic scipy.stats.bootstrap calls on batches of resamples.
    A constant resample gives NaN correlations."""
    from scipy import stats

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        r = stats.pearsonr(predicted, observed, axis=axis).statistic
        rho = stats.pearsonr(
            stats.rankdata(predicted, axis=axis), stats.rankdata(observed, axis=axis), axis=axis
        ).statistic
    mse = np.mean((np.asarray(predicted) - np.asarray(observed)) ** 2, axis=axis)
    return np.stack([r, rho, mse])


def percentile_interval(
    distribution: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile interval of each row of a bootstrap distribution over its finite resamples only,
    and how many resamples were not finite. scipy's percentile interval is NaN as soon as one
    resample is (a resample whose predictions are all equal has no Pearson r), which at small n
    and coarse 1–5 scores blanked the r interval while MSE kept its own; dropping those few
    resamples keeps the interval, and the count says how many were dropped. A row with fewer than
    MIN_FINITE_SHARE finite resamples gets NaN."""
    dist = np.atleast_2d(np.asarray(distribution, dtype=float))
    finite_mask = np.isfinite(dist)
    degenerate = (~finite_mask).sum(axis=-1)
    alpha = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(
            np.where(finite_mask, dist, np.nan), [100 * alpha, 100 * (1 - alpha)], axis=-1
        )
    enough = finite_mask.mean(axis=-1) >= MIN_FINITE_SHARE
    return np.where(enough, lo, np.nan), np.where(enough, hi, np.nan), degenerate


def _bootstrap_distribution(
    data: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    resamples: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """scipy.stats.bootstrap's paired resamples of `statistic` (vectorised), rows = statistics.
    Only its distribution is used: the interval comes from percentile_interval."""
    from scipy import stats

    m = len(data[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.bootstrap(
            data,
            statistic,
            n_resamples=resamples,
            paired=True,
            vectorized=True,
            method="percentile",
            rng=rng,
            batch=max(1, min(resamples, _BOOTSTRAP_BATCH_CELLS // max(1, m))),
        )
    return np.atleast_2d(np.asarray(res.bootstrap_distribution, dtype=float))


def _seeded_subsample(
    arrays: tuple[np.ndarray, ...], max_n: int | None, seed: int
) -> tuple[np.random.Generator, int, tuple[np.ndarray, ...]]:
    """(the seeded generator, m, the arrays) where above `max_n` rows the arrays are cut to a
    seeded subsample of max_n rows (the m-out-of-n bootstrap resamples those)."""
    rng = np.random.default_rng(seed)
    n = len(arrays[0])
    m = n if max_n is None or n <= max_n else max_n
    if m < n:
        chosen = rng.choice(n, size=m, replace=False)
        arrays = tuple(a[chosen] for a in arrays)
    return rng, m, arrays


def bootstrap_agreement(
    predicted: Sequence[float],
    observed: Sequence[float],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_n: int | None = None,
) -> dict[str, float]:
    """Point agreement (as agreement()) with paired percentile bootstrap intervals over sessions.

    Above `max_n` pairs the bootstrap resamples a seeded subsample of max_n pairs, and the interval's
    distances from the subsample's estimate are scaled by sqrt(max_n / n) around the full-sample
    estimate (m-out-of-n bootstrap; valid for these √n-consistent statistics). `ci_n` says how many
    pairs were resampled. Resamples where a correlation is undefined (a constant side) are left out
    of its interval and counted in `ci_degenerate` (see percentile_interval). Intervals are NaN with
    fewer than 3 pairs, with resamples=0, where the point estimate is undefined, or where most
    resamples were degenerate."""
    p, t = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    keep = ~(np.isnan(p) | np.isnan(t))
    p, t = p[keep], t[keep]
    point = agreement(p, t)
    out: dict[str, float] = {"n": point["n"], "ci_n": 0, "ci_degenerate": 0}
    for s in AGREEMENT_STATS:
        out.update({s: point[s], f"{s}_lo": NAN, f"{s}_hi": NAN})
    n = len(p)
    if resamples <= 0 or n < 3:
        return out
    rng, m, (p, t) = _seeded_subsample((p, t), max_n, seed)
    dist = _bootstrap_distribution((p, t), agreement_statistics, resamples, rng)
    lo, hi, degenerate = percentile_interval(dist, level)
    if m < n:
        centre, scale = agreement_statistics(p, t), math.sqrt(m / n)
        full = np.array([point[s] for s in AGREEMENT_STATS])
        lo, hi = full + (lo - centre) * scale, full + (hi - centre) * scale
    bounds = {"pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0), "mse": (0.0, math.inf)}
    for i, s in enumerate(AGREEMENT_STATS):
        if not math.isnan(point[s]):
            out[f"{s}_lo"], out[f"{s}_hi"] = (float(np.clip(v, *bounds[s])) for v in (lo[i], hi[i]))
    out["ci_n"] = m
    out["ci_degenerate"] = int(degenerate[0])
    return out


def difference_statistics(
    a: np.ndarray, b: np.ndarray, observed: np.ndarray, axis: int = -1
) -> np.ndarray:
    """Pearson r of `a` minus Pearson r of `b` (each with `observed`) and MSE of `a` minus MSE of
    `b`, along `axis`: the vectorised statistic of a paired comparison of two raters."""
    ra, _, mse_a = agreement_statistics(a, observed, axis)
    rb, _, mse_b = agreement_statistics(b, observed, axis)
    return np.stack([ra - rb, mse_a - mse_b])


def compare_raters(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    observed: npt.ArrayLike,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_n: int | None = None,
) -> dict[str, float]:
    """Two raters on the same sessions against the same truth: r_a − r_b and MSE_a − MSE_b with a
    paired percentile bootstrap over sessions (a session's three values are resampled together, so
    the interval accounts for both raters erring on the same hard sessions). Above `max_n` the
    interval is rescaled from a subsample as in bootstrap_agreement."""
    x, y, t = (np.asarray(v, dtype=float) for v in (a, b, observed))
    keep = ~(np.isnan(x) | np.isnan(y) | np.isnan(t))
    x, y, t = x[keep], y[keep], t[keep]
    ga, gb = agreement(x, t), agreement(y, t)
    out: dict[str, float] = {
        "n": ga["n"],
        "pearson_a": ga["pearson"],
        "pearson_b": gb["pearson"],
        "difference": ga["pearson"] - gb["pearson"],
        "difference_lo": NAN,
        "difference_hi": NAN,
        "mse_a": ga["mse"],
        "mse_b": gb["mse"],
        "mse_difference": ga["mse"] - gb["mse"],
        "mse_difference_lo": NAN,
        "mse_difference_hi": NAN,
        "ci_degenerate": 0,
    }
    n = len(t)
    if resamples <= 0 or n < 3:
        return out
    rng, m, (x, y, t) = _seeded_subsample((x, y, t), max_n, seed)
    dist = _bootstrap_distribution((x, y, t), difference_statistics, resamples, rng)
    lo, hi, degenerate = percentile_interval(dist, level)
    if m < n:
        centre, scale = difference_statistics(x, y, t), math.sqrt(m / n)
        full = np.array([out["difference"], out["mse_difference"]])
        lo, hi = full + (lo - centre) * scale, full + (hi - centre) * scale
    if not math.isnan(out["difference"]):
        out["difference_lo"], out["difference_hi"] = float(lo[0]), float(hi[0])
    out["mse_difference_lo"], out["mse_difference_hi"] = float(lo[1]), float(hi[1])
    out["ci_degenerate"] = int(degenerate[0])
    return out


def comparison_table(
    pairs: pl.DataFrame,
    raters: Sequence[tuple[str, str]],
    dimensions: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_n: int | None = None,
) -> pl.DataFrame:
    """Every pair of scorers (rater, pairs column), the first against each other one and then
    the rest in order, per dimension, on the sessions both scored."""
    rows = []
    for i, (name_a, col_a) in enumerate(raters):
        for name_b, col_b in raters[i + 1 :]:
            for dim in dimensions:
                cell = pairs.filter(
                    (pl.col("dimension") == dim)
                    & pl.col(col_a).is_not_null()
                    & pl.col(col_b).is_not_null()
                )
                a, b, observed = (cell[c].to_numpy() for c in (col_a, col_b, "observed"))
                stats = compare_raters(a, b, observed, resamples, seed, level, max_n)
                rows.append({"rater_a": name_a, "rater_b": name_b, "dimension": dim, **stats})
    return _stat_rows(rows, COMPARISON_SCHEMA)


def _stat_rows(rows: list[dict[str, Any]], schema: dict[str, Any]) -> pl.DataFrame:
    """Rows of statistics as a table of `schema`; undefined statistics (NaN) are null."""
    table = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    return table.with_columns(pl.col(pl.Float64).fill_nan(None))


def _fold_order(fold: str) -> tuple[int, int | str]:
    return (0, int(fold)) if fold.lstrip("-").isdigit() else (1, fold)


def agreement_table(
    pairs: pl.DataFrame,
    dimensions: Sequence[str],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_n: int | None = None,
    fold_intervals: bool = False,
    raters: Sequence[tuple[str, str]] = (("model", "predicted"),),
) -> pl.DataFrame:
    """The pairs table → one row per (rater, dimension, fold): each of `raters` (name, pairs
    column; default "model" = predicted) and, where any counselor rating exists, "counselor";
    fold null = all sessions, then one row per fold that has pairs in that dimension. Undefined
    statistics are null. Per-fold rows get bootstrap intervals only with `fold_intervals` (the
    spread over folds is the fold summary's SD, and intervals for every fold multiply the
    bootstrap's cost)."""
    raters = list(raters) + (
        [("counselor", "counselor")] if pairs["counselor"].is_not_null().any() else []
    )
    folds = sorted(pairs["fold"].drop_nulls().unique().to_list(), key=_fold_order)
    rows = []
    for rater, column in raters:
        for dim in dimensions:
            rated = pairs.filter((pl.col("dimension") == dim) & pl.col(column).is_not_null())
            cells = [(None, rated)] + [(f, rated.filter(pl.col("fold") == f)) for f in folds]
            for fold, cell in cells:
                if fold is not None and cell.height == 0:
                    continue
                cell_resamples = resamples if fold is None or fold_intervals else 0
                predicted, observed = cell[column].to_numpy(), cell["observed"].to_numpy()
                stats = bootstrap_agreement(predicted, observed, cell_resamples, seed, level, max_n)
                rows.append({"rater": rater, "dimension": dim, "fold": fold, **stats})
    return _stat_rows(rows, AGREEMENT_SCHEMA)


def fold_agreement_summary(
    agreement_rows: pl.DataFrame, rater: str, dimensions: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per-fold rows of agreement_table() → {dimension: fold_summary of pearson/spearman/mse}."""
    per_fold = agreement_rows.filter((pl.col("rater") == rater) & pl.col("fold").is_not_null())
    out = {}
    for dim in dimensions:
        rows = (
            per_fold.filter(pl.col("dimension") == dim)
            .select(AGREEMENT_STATS)
            .fill_null(NAN)
            .to_dicts()
        )
        out[dim] = fold_summary(rows)
    return out


def calibration_table(
    pairs: pl.DataFrame,
    low: float = 1.0,
    high: float = 5.0,
    width: float = 0.5,
    column: str = "predicted",
) -> pl.DataFrame:
    """Predicted (`column`) vs observed by bins of the predicted score: [low, low+width), …, the
    last bin closed at `high` (values outside the scale fall in the end bins). Only non-empty
    bins; the observed SD is null for a bin of one."""
    if width <= 0 or high <= low:
        raise ValueError("calibration bins need width > 0 and high > low")
    n_bins = math.ceil((high - low) / width - 1e-9)
    pairs = pairs.filter(pl.col(column).is_not_null()).with_columns(
        pl.col(column).alias("predicted")
    )
    binned = pairs.with_columns(
        ((pl.col("predicted") - low) / width)
        .floor()
        .clip(0, n_bins - 1)
        .cast(pl.Int64)
        .alias("_bin")
    )
    table = (
        binned.group_by("dimension", "_bin")
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            pl.col("predicted").mean().alias("predicted_mean"),
            pl.col("observed").mean().alias("observed_mean"),
            pl.col("observed").std(ddof=1).alias("observed_sd"),
        )
        .with_columns((low + pl.col("_bin") * width).alias("bin_lo"))
        .with_columns(pl.min_horizontal(pl.col("bin_lo") + width, pl.lit(high)).alias("bin_hi"))
        .with_columns(
            pl.format("{}–{}", pl.col("bin_lo").round(2), pl.col("bin_hi").round(2)).alias("bin")
        )
        .sort("dimension", "bin_lo")
    )
    return table.select(pl.col(c).cast(t) for c, t in CALIBRATION_SCHEMA.items())


def quote_found_share(
    items: pl.DataFrame, dimensions: Sequence[str]
) -> tuple[float, dict[str, float]]:
    """Mean `quote_found` of the items (null/NaN left out), overall and per dimension; NaN where no
    item has a value."""
    values = items.select("dimension", pl.col("quote_found").cast(pl.Float64).fill_nan(None))
    overall = values["quote_found"].mean()
    by_dim = dict(values.group_by("dimension").agg(pl.col("quote_found").mean()).iter_rows())
    return _nan_if_none(overall), {d: _nan_if_none(by_dim.get(d)) for d in dimensions}


def _nan_if_none(value: object) -> float:
    """A Float64 mean as a float: NaN where polars gives None (no value to average)."""
    return float(value) if isinstance(value, int | float) else NAN


def reference_rationale_frame(
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    metadata: pa.Array | pa.ChunkedArray,
    item_ids: Iterable[int],
    key_template: str,
) -> pl.DataFrame:
    """Session metadata map → long (session_id, item_id, reference) for each non-blank
    metadata[key_template.format(item=id)]."""
    ids = pl.Series("session_id", session_ids, dtype=pl.String)
    parts = []
    for item in item_ids:
        values = pc.map_lookup(
            metadata, pa.scalar(key_template.format(item=item), pa.string()), "first"
        )
        parts.append(
            pl.DataFrame([ids, pl.Series("reference", values, dtype=pl.String)]).select(
                "session_id", pl.lit(item, pl.Int64).alias("item_id"), "reference"
            )
        )
    frame = (
        pl.concat(parts)
        if parts
        else pl.DataFrame(
            schema={"session_id": pl.String, "item_id": pl.Int64, "reference": pl.String}
        )
    )
    return frame.filter(pl.col("reference").str.strip_chars().str.len_chars() > 0)


def calibration_fit(
    pairs: pl.DataFrame,
    raters: Sequence[tuple[str, str]],
    dimensions: Sequence[str],
    level: float = 0.95,
) -> dict[str, dict[str, dict[str, float | int | None]]]:
    """{rater: {dimension: the least-squares line observed = intercept + slope · predicted}}, with
    the slope's t interval. A calibrated score has slope 1 and intercept 0; a slope above 1 says
    the scores are squeezed (they move less than the truth does), below 1 stretched."""
    from scipy import stats

    out: dict[str, dict[str, dict[str, float | int | None]]] = {}
    for name, column in raters:
        out[name] = {}
        for dim in dimensions:
            part = pairs.filter(
                (pl.col("dimension") == dim)
                & pl.col(column).is_not_null()
                & pl.col("observed").is_not_null()
            )
            x, y = part[column].to_numpy(), part["observed"].to_numpy()
            if len(x) < 3 or np.ptp(x) == 0:
                out[name][dim] = {
                    "slope": None,
                    "intercept": None,
                    "slope_lo": None,
                    "slope_hi": None,
                    "n": len(x),
                }
                continue
            fit = stats.linregress(x, y)
            half = stats.t.ppf(0.5 + level / 2, len(x) - 2) * fit.stderr
            out[name][dim] = {
                "slope": float(fit.slope),
                "intercept": float(fit.intercept),
                "slope_lo": float(fit.slope - half),
                "slope_hi": float(fit.slope + half),
                "n": len(x),
            }
    return out


SPREAD_SCHEMA = {
    "dimension": pl.String,
    "decile": pl.Int64,
    "n": pl.Int64,
    "spread_min": pl.Float64,
    "spread_max": pl.Float64,
    "spread_mean": pl.Float64,
    "abs_error_expected": pl.Float64,
    "abs_error_greedy": pl.Float64,
}


def spread_table(
    pairs: pl.DataFrame,
    spread: pl.DataFrame,
    expected_column: str,
    dimensions: Sequence[str],
    bins: int = 10,
) -> tuple[pl.DataFrame, dict[str, dict[str, float | int | None]]]:
    """Whether the uncertain scores are the ones that miss. `spread` (session_id, dimension,
    spread): the mean over the dimension's items of the SD of the score token's distribution.
    Rows are cut into `bins` equal-count groups by spread (ties broken by session id, so the cut
    is reproducible), and each group's mean absolute error of the expected and the decoded score
    is reported; per dimension, Spearman's ρ between spread and the expected score's absolute
    error (with its p-value) and the ratio of the top group's error to the bottom one's."""
    from scipy import stats

    summary: dict[str, dict[str, float | int | None]] = {}
    joined = (
        pairs.join(spread, on=["session_id", "dimension"], how="inner")
        .filter(pl.col("spread").is_not_null() & pl.col(expected_column).is_not_null())
        .with_columns(
            (pl.col(expected_column) - pl.col("observed")).abs().alias("_err"),
            (pl.col("predicted") - pl.col("observed")).abs().alias("_err_greedy"),
        )
    )
    parts = []
    for dim in dimensions:
        d = joined.filter(pl.col("dimension") == dim).sort("spread", "session_id")
        n = d.height
        if n < bins:
            summary[dim] = {"n": n, "spearman": None, "p": None, "top_over_bottom": None}
            continue
        d = d.with_columns((pl.int_range(n) * bins // n).cast(pl.Int64).alias("decile"))
        table = (
            d.group_by("decile")
            .agg(
                pl.len().cast(pl.Int64).alias("n"),
                pl.col("spread").min().alias("spread_min"),
                pl.col("spread").max().alias("spread_max"),
                pl.col("spread").mean().alias("spread_mean"),
                pl.col("_err").mean().alias("abs_error_expected"),
                pl.col("_err_greedy").mean().alias("abs_error_greedy"),
            )
            .with_columns(pl.lit(dim).alias("dimension"), pl.col("decile") + 1)
            .sort("decile")
        )
        parts.append(table.select(pl.col(c).cast(t) for c, t in SPREAD_SCHEMA.items()))
        rho = stats.spearmanr(d["spread"].to_numpy(), d["_err"].to_numpy())
        errors = table["abs_error_expected"].to_list()
        summary[dim] = {
            "n": n,
            "spearman": float(rho.statistic),
            "p": float(rho.pvalue),
            "top_over_bottom": errors[-1] / errors[0] if errors[0] else None,
        }
    table = pl.concat(parts) if parts else pl.DataFrame(schema=SPREAD_SCHEMA)
    return table, summary
