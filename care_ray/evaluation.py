"""Agreement with the client's own rating, the way the paper reports it, as pure functions.

- item scores → dimension scores (a dimension is the mean of its items; 4 per dimension in WAI-SR);
- Pearson r, Spearman rho (scipy.stats) and MSE per dimension, predicted vs true;
- the counselor baseline (the counselor's own WAI rating as a predictor of the client's) and the
  paper's headline ratio (model r / counselor r);
- mean ± sd over folds;
- rationale overlap with reference rationales: ROUGE-1 and ROUGE-L F1 (no ROUGE package is a
  dependency; both are a few lines). Chinese text is compared by character, other text by word.

Undefined statistics (fewer than 2 sessions, or a constant side) are NaN, never 0: a caller that
needs a number for ranking decides what NaN means there (see training.selection).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from care_ray.rubric import DIMENSIONS, Rubric

NAN = float("nan")


def item_dimensions(rubric: Rubric) -> dict[int, str]:
    return {i.id: i.dimension for i in rubric.items}


def dimension_means(session_ids: Sequence[str], item_ids: Sequence[int], scores: Sequence[float | None], item_dims: Mapping[int, str]) -> dict[str, dict[str, float]]:
    """Long item scores → {dimension: {session_id: mean of that session's scored items}}.
    Missing (None/NaN) scores are left out of the mean; a session with none in a dimension is absent."""
    sums: dict[str, dict[str, list[float]]] = {}
    for sid, iid, score in zip(session_ids, item_ids, scores, strict=True):
        if score is None or (isinstance(score, float) and math.isnan(score)):
            continue
        sums.setdefault(item_dims[int(iid)], {}).setdefault(sid, []).append(float(score))
    return {dim: {sid: float(np.mean(v)) for sid, v in by_session.items()} for dim, by_session in sums.items()}


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


def agreement(pred: Sequence[float], true: Sequence[float]) -> dict[str, float]:
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
    return {"pearson": float(stats.pearsonr(p, t).statistic), "spearman": float(stats.spearmanr(p, t).statistic), "mse": mse, "n": n}


def paired(pred: Mapping[str, float], true: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Values of the sessions present on both sides, in one order."""
    keys = sorted(set(pred) & set(true))
    return np.array([pred[k] for k in keys], dtype=float), np.array([true[k] for k in keys], dtype=float)


def dimension_agreement(pred: Mapping[str, Mapping[str, float]], true: Mapping[str, Mapping[str, float]], dimensions: Iterable[str] = DIMENSIONS) -> dict[str, dict[str, float]]:
    """{dimension: agreement} from dimension_means() of predictions and of the truth."""
    return {dim: agreement(*paired(pred.get(dim, {}), true.get(dim, {}))) for dim in dimensions}


def long_scores_agreement(predicted: pa.Table, truth: pa.Table, rubric: Rubric, score_column: str = "score") -> dict[str, dict[str, float]]:
    """Two long tables (session_id, item_id, score) → per-dimension agreement of the dimension means."""
    dims = item_dimensions(rubric)

    def means(t: pa.Table) -> dict[str, dict[str, float]]:
        return dimension_means(t["session_id"].to_pylist(), t["item_id"].to_pylist(), t[score_column].to_pylist(), dims)

    return dimension_agreement(means(predicted), means(truth), rubric.dimensions)


def flat_metrics(per_dimension: Mapping[str, Mapping[str, float]], prefix: str = "") -> dict[str, float]:
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
    return out


def counselor_gap(counselor_wai: np.ndarray, client_wai: np.ndarray, rubric: Rubric) -> dict[str, dict[str, float]]:
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

    def grams(tokens: list[str]) -> Counter:
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
