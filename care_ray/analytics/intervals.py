"""Confidence intervals for the analysis tables, vectorised over Polars columns.

They are computed where the tables are made so that every reader of a table (the report, a notebook,
a SQL query) sees the same interval: a Student-t interval of a mean from its summary (mean, sd, n)
and a Wilson interval of a share (statsmodels `proportion_confint`), both at 1 − alpha. A row whose
interval cannot be formed (fewer than two values for a mean, no trials for a share, a null input)
gets null bounds rather than a made-up one."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats
from statsmodels.stats.proportion import proportion_confint


def _floats(values: pl.Series | np.ndarray) -> np.ndarray:
    if isinstance(values, pl.Series):
        return values.cast(pl.Float64).fill_null(np.nan).to_numpy()
    return np.asarray(values, dtype=float)


def _bounds(lo: np.ndarray, hi: np.ndarray, valid: np.ndarray) -> tuple[pl.Series, pl.Series]:
    lo, hi = np.where(valid, lo, np.nan), np.where(valid, hi, np.nan)
    return (
        pl.Series("lo", lo, dtype=pl.Float64, nan_to_null=True),
        pl.Series("hi", hi, dtype=pl.Float64, nan_to_null=True),
    )


def mean_interval(
    mean: pl.Series, sd: pl.Series, n: pl.Series, alpha: float
) -> tuple[pl.Series, pl.Series]:
    """The t interval of each mean at 1 − alpha from (mean, sample sd, n): mean ± t(1 − alpha/2,
    n − 1) · sd / √n. Null where n < 2 or an input is null; a zero sd gives (mean, mean)."""
    m, s, k = _floats(mean), _floats(sd), _floats(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(1 - alpha / 2, k - 1) * s / np.sqrt(k)
    valid = (k >= 2) & np.isfinite(m) & np.isfinite(half)
    return _bounds(m - half, m + half, valid)


def wilson_interval(
    successes: pl.Series, trials: pl.Series, alpha: float
) -> tuple[pl.Series, pl.Series]:
    """The Wilson score interval of successes / trials at 1 − alpha: it stays inside [0, 1] and
    keeps its coverage for small counts and shares near 0 or 1, where the normal interval fails.
    Null where there are no trials or an input is null."""
    x, k = _floats(successes), _floats(trials)
    valid = np.isfinite(x) & np.isfinite(k) & (k >= 1) & (x >= 0) & (x <= k)
    safe_x, safe_k = np.where(valid, x, 0.0), np.where(valid, k, 1.0)
    lo, hi = proportion_confint(safe_x, safe_k, alpha=alpha, method="wilson")
    return _bounds(np.asarray(lo, dtype=float), np.asarray(hi, dtype=float), valid)


def _after(frame: pl.DataFrame, column: str, new: list[pl.Series]) -> pl.DataFrame:
    """`frame` with the `new` columns right after `column` (replacing earlier ones of those names)."""
    names = [s.name for s in new]
    frame = frame.drop([c for c in names if c in frame.columns])
    at = frame.columns.index(column) + 1
    for offset, series in enumerate(new):
        frame = frame.insert_column(at + offset, series)
    return frame


def with_mean_interval(
    frame: pl.DataFrame,
    alpha: float,
    *,
    mean: str = "mean",
    sd: str = "sd",
    n: str = "n",
    prefix: str | None = None,
) -> pl.DataFrame:
    """`frame` with PREFIX_lo and PREFIX_hi (prefix: the mean column's name) after the mean column:
    the t interval of each row's mean (see mean_interval)."""
    lo, hi = mean_interval(frame[mean], frame[sd], frame[n], alpha)
    name = prefix or mean
    return _after(frame, mean, [lo.alias(f"{name}_lo"), hi.alias(f"{name}_hi")])


def with_wilson_interval(
    frame: pl.DataFrame,
    alpha: float,
    *,
    share: str,
    successes: pl.Series,
    trials: pl.Series,
) -> pl.DataFrame:
    """`frame` with SHARE_lo and SHARE_hi after the share column: the Wilson interval of the share
    from the counts it was computed from (one per row of `frame`)."""
    lo, hi = wilson_interval(successes, trials, alpha)
    return _after(frame, share, [lo.alias(f"{share}_lo"), hi.alias(f"{share}_hi")])
