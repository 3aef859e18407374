"""outcome_links: does an alliance measure go with the session's outcomes?

Each predictor (with --scores the model's goal, task and bond; model-free the corpus's own rating
labels, e.g. ESConv's empathy and relevance) is related to each outcome label (e.g. the drop in
emotion intensity) over the sessions that have both and a session length:

- Pearson r, with its Fisher z interval at 1 − alpha: tanh(atanh(r) ± z(1 − alpha/2) / √(n − 3)),
  and the two-sided p of the t test with n − 2 degrees of freedom (scipy's pearsonr);
- the partial r controlling for session length, log(n_turns): the correlation of the residuals of
  the predictor and of the outcome, each regressed on an intercept and log(n_turns). Its Fisher z
  interval uses √(n − 3 − k) with k = 1 covariate, and its p the t test with n − 2 − k degrees of
  freedom (as pingouin.partial_corr computes them);
- p values adjusted by Benjamini–Hochberg over every row of the table (p_value of r, p_adjusted).

These are associations between measures of the same sessions, not effects. The meta-analytic
benchmark for the alliance–outcome association in psychotherapy is r ≈ .28 (Flückiger et al. 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats

from care_ray.analytics.drivers import bh_adjust

COVARIATE = "log(n_turns)"
N_COVARIATES = 1
# Fewer sessions than this and a pair is left out: the partial r's interval needs n − 3 − k > 0.
MIN_LINK_SESSIONS = 3 + N_COVARIATES + 2

LINK_SCHEMA = {
    "source": pl.String,
    "predictor": pl.String,
    "outcome": pl.String,
    "n": pl.Int64,
    "r": pl.Float64,
    "r_lo": pl.Float64,
    "r_hi": pl.Float64,
    "partial_r": pl.Float64,
    "partial_lo": pl.Float64,
    "partial_hi": pl.Float64,
    "covariate": pl.String,
    "p_value": pl.Float64,
    "partial_p_value": pl.Float64,
    "p_adjusted": pl.Float64,
}


@dataclass(frozen=True)
class Measure:
    """A column of the session frame and the frame columns it was computed from (a label, or the
    labels a derived outcome adds or subtracts): a pair sharing one is not related."""

    name: str
    columns: frozenset[str]


def fisher_interval(r: float, n: int, k: int, alpha: float) -> tuple[float, float]:
    """The Fisher z interval of a (partial) correlation r over n sessions with k covariates."""
    if not np.isfinite(r) or n - 3 - k <= 0:
        return float("nan"), float("nan")
    z = np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))
    half = stats.norm.ppf(1 - alpha / 2) / np.sqrt(n - 3 - k)
    return float(np.tanh(z - half)), float(np.tanh(z + half))


def _correlation_p(r: float, df: int) -> float:
    if not np.isfinite(r) or df <= 0:
        return float("nan")
    if abs(r) >= 1:
        return 0.0
    t = r * np.sqrt(df / (1 - r * r))
    return float(2 * stats.t.sf(abs(t), df))


def _residuals(y: np.ndarray, design: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return y - design @ coef


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def link(x: np.ndarray, y: np.ndarray, n_turns: np.ndarray, alpha: float) -> dict[str, float | int]:
    """r and partial r (controlling for log n_turns) of x and y over the rows where all are finite."""
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(n_turns) & (n_turns > 0)
    x, y, length = x[keep], y[keep], np.log(n_turns[keep])
    n = int(keep.sum())
    r = _pearson(x, y)
    design = np.column_stack([np.ones(n), length])
    partial = _pearson(_residuals(x, design), _residuals(y, design)) if n else float("nan")
    r_lo, r_hi = fisher_interval(r, n, 0, alpha)
    p_lo, p_hi = fisher_interval(partial, n, N_COVARIATES, alpha)
    return {
        "n": n,
        "r": r,
        "r_lo": r_lo,
        "r_hi": r_hi,
        "partial_r": partial,
        "partial_lo": p_lo,
        "partial_hi": p_hi,
        "p_value": _correlation_p(r, n - 2),
        "partial_p_value": _correlation_p(partial, n - 2 - N_COVARIATES),
    }


def outcome_links(
    frame: pl.DataFrame,
    predictors: Sequence[Measure],
    outcomes: Sequence[Measure],
    source: str,
    alpha: float,
    notes: list[str],
) -> pl.DataFrame:
    """One row per (predictor, outcome) pair that shares no column; a pair already related the
    other way round (labels against labels) is not repeated. `frame` has each measure's column and
    n_turns."""
    rows, seen = [], set()
    n_turns = frame.get_column("n_turns").cast(pl.Float64).fill_null(np.nan).to_numpy()
    values = lambda name: frame.get_column(name).cast(pl.Float64).fill_null(np.nan).to_numpy()  # noqa: E731
    for predictor in predictors:
        for outcome in outcomes:
            pair = frozenset((predictor.name, outcome.name))
            if predictor.columns & outcome.columns or pair in seen:
                continue
            seen.add(pair)
            row = link(values(predictor.name), values(outcome.name), n_turns, alpha)
            if int(row["n"]) < MIN_LINK_SESSIONS or not np.isfinite(row["r"]):
                notes.append(
                    f"outcome_links: {predictor.name} ~ {outcome.name} left out — "
                    f"{row['n']} session(s) with both and a length, or no variation"
                )
                continue
            rows.append(
                {
                    "source": source,
                    "predictor": predictor.name,
                    "outcome": outcome.name,
                    "covariate": COVARIATE,
                    **row,
                }
            )
    if not rows:
        return pl.DataFrame(schema=LINK_SCHEMA)
    table = pl.DataFrame(rows).with_columns(
        pl.Series(
            "p_adjusted",
            bh_adjust(np.array([r["p_value"] for r in rows], dtype=float)),
            dtype=pl.Float64,
            nan_to_null=True,
        )
    )
    return table.select(pl.col(name).cast(dtype) for name, dtype in LINK_SCHEMA.items()).fill_nan(
        None
    )
