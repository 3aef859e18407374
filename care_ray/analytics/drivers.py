"""Drivers of the alliance: which session features go with higher or lower scores.

The paper relates interaction patterns to alliance with a multiple regression of session scores on
counselor-strategy × client-reaction patterns; here every outcome is regressed on all features at
once, with outcome and features standardized (z, ddof=1) so a coefficient reads "sd change in the
outcome per sd of the feature, the other features held fixed".

The `model` column says which fit produced a row:
- "ols-hc3": OLS with HC3 heteroscedasticity-robust standard errors (no group, or no group repeats);
- "mixedlm:GROUP": a random intercept per GROUP (e.g. counselor_id), when rows <= max_mixed_rows;
- "ols-cluster:GROUP": OLS with standard errors clustered by GROUP, for larger inputs (statsmodels'
  MixedLM loops over groups in Python) or when MixedLM fails to fit.
`r2` is the OLS R² or, for MixedLM, the marginal R² of Nakagawa & Schielzeth (2013): the share of
variance explained by the fixed effects alone. p values are adjusted by Benjamini–Hochberg over every
row of the returned table.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

DRIVER_SCHEMA = {
    "outcome": pl.String,
    "feature": pl.String,
    "coef_std": pl.Float64,
    "std_error": pl.Float64,
    "ci_low": pl.Float64,
    "ci_high": pl.Float64,
    "p_value": pl.Float64,
    "p_adjusted": pl.Float64,
    "n": pl.Int64,
    "model": pl.String,
    "r2": pl.Float64,
}

# A feature whose R² on the features kept before it exceeds 1 - this (VIF > 1000) adds no information
# of its own, only variance: the case of shares that sum to one.
MIN_TOLERANCE = 1e-3
EXTRA_ROWS_NEEDED = 10


@dataclass
class Fit:
    coef: np.ndarray
    std_error: np.ndarray
    ci: np.ndarray
    p_value: np.ndarray
    r2: float
    model: str


def fit_drivers(
    data: pl.DataFrame,
    outcomes: Sequence[str],
    features: Sequence[str],
    group: str | None = None,
    alpha: float = 0.05,
    max_mixed_rows: int = 20000,
) -> tuple[pl.DataFrame, list[str]]:
    """One row per (outcome, kept feature) with standardized coefficients, and notes on what was dropped.

    Raises ValueError when a named column is missing or not numeric."""
    _check_columns(data, outcomes, features, group)
    notes: list[str] = []
    features = list(dict.fromkeys(features))
    usable = _drop_all_null(data, features, notes)
    x_all = _float_matrix(data, usable)
    group_codes = _group_codes(data, group, notes) if group else None
    dropped: dict[str, list[str]] = {}
    rows: list[dict] = []
    for outcome in outcomes:
        rows.extend(
            _fit_outcome(
                data,
                outcome,
                usable,
                x_all,
                group,
                group_codes,
                alpha,
                max_mixed_rows,
                notes,
                dropped,
            )
        )
    notes.extend(
        f"drivers: dropped {reason} (outcome {', '.join(outs)})" for reason, outs in dropped.items()
    )
    table = pl.DataFrame(rows, schema=DRIVER_SCHEMA) if rows else pl.DataFrame(schema=DRIVER_SCHEMA)
    return _adjust(table), notes


def _check_columns(
    data: pl.DataFrame, outcomes: Sequence[str], features: Sequence[str], group: str | None
) -> None:
    missing = [
        c for c in [*outcomes, *features, *([group] if group else [])] if c not in data.columns
    ]
    if missing:
        raise ValueError(f"drivers: no column(s) {', '.join(missing)} in the data")
    not_numeric = [
        c
        for c in [*outcomes, *features]
        if not (data.schema[c].is_numeric() or data.schema[c] == pl.Boolean)
    ]
    if not_numeric:
        raise ValueError(f"drivers: column(s) {', '.join(not_numeric)} are not numeric")


def _drop_all_null(data: pl.DataFrame, features: list[str], notes: list[str]) -> list[str]:
    if not features:
        return []
    non_null = data.select(pl.col(f).cast(pl.Float64).is_finite().sum() for f in features).row(0)
    empty = [f for f, n in zip(features, non_null, strict=True) if n == 0]
    if empty:
        notes.append(f"drivers: dropped feature(s) with no values: {', '.join(empty)}")
    return [f for f in features if f not in empty]


def _float_matrix(data: pl.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Columns as one float64 array; nulls and infinities become NaN."""
    if not columns:
        return np.empty((data.height, 0))
    x = data.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy()
    return np.where(np.isfinite(x), x, np.nan)


def _group_codes(data: pl.DataFrame, group: str, notes: list[str]) -> np.ndarray:
    """Integer code per row; a row with a null group is its own group (independent of every other)."""
    codes = data.select(pl.col(group).rank("dense")).to_series().to_numpy().astype(float)
    null = np.isnan(codes)
    if null.any():
        start = np.nanmax(codes) + 1 if (~null).any() else 0
        codes[null] = start + np.arange(null.sum())
        notes.append(
            f"drivers: {int(null.sum())} row(s) with no {group} each count as their own group"
        )
    return codes.astype(np.int64)


def _fit_outcome(
    data, outcome, features, x_all, group, group_codes, alpha, max_mixed_rows, notes, dropped
) -> list[dict]:
    y = _float_matrix(data, [outcome])[:, 0]
    complete = np.isfinite(y) & ~np.isnan(x_all).any(axis=1)
    n = int(complete.sum())
    if n < data.height:
        notes.append(
            f"drivers: {outcome}: {data.height - n} of {data.height} row(s) left out for a null outcome or feature"
        )
    if n < len(features) + EXTRA_ROWS_NEEDED:
        notes.append(
            f"drivers: skipped {outcome}: {n} complete row(s) for {len(features)} feature(s) "
            f"(needs features + {EXTRA_ROWS_NEEDED})"
        )
        return []
    all_rows = bool(complete.all())
    y = y if all_rows else y[complete]
    if np.ptp(y) == 0:
        notes.append(f"drivers: skipped {outcome}: the outcome is constant")
        return []
    z, sd = standardize(x_all if all_rows else x_all[complete])
    keep, reasons = screen_features(z, sd, features)
    for reason in reasons:
        dropped.setdefault(reason, []).append(outcome)
    kept = [features[j] for j in keep]
    if not kept:
        notes.append(f"drivers: skipped {outcome}: no usable feature")
        return []
    if n < len(kept) + EXTRA_ROWS_NEEDED:
        notes.append(
            f"drivers: skipped {outcome}: {n} complete row(s) for {len(kept)} feature(s) "
            f"(needs features + {EXTRA_ROWS_NEEDED})"
        )
        return []
    exog = np.empty((n, len(keep) + 1))
    exog[:, 0] = 1.0
    exog[:, 1:] = z[:, keep]
    del z
    codes = None if group_codes is None else (group_codes if all_rows else group_codes[complete])
    fit = _fit(
        standardize(y[:, None])[0][:, 0], exog, group, codes, alpha, max_mixed_rows, outcome, notes
    )
    return [
        {
            "outcome": outcome,
            "feature": name,
            "coef_std": fit.coef[i],
            "std_error": fit.std_error[i],
            "ci_low": fit.ci[i, 0],
            "ci_high": fit.ci[i, 1],
            "p_value": fit.p_value[i],
            "p_adjusted": None,
            "n": n,
            "model": fit.model,
            "r2": fit.r2,
        }
        for i, name in enumerate(kept, start=1)
    ]


def standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z scores by column (ddof=1) and the columns' sd; a constant column stays all zero."""
    z = x - x.mean(axis=0)
    sd = np.sqrt(np.einsum("ij,ij->j", z, z) / (len(z) - 1))
    z /= np.where(sd > 0, sd, 1.0)
    return z, sd


def screen_features(
    z: np.ndarray, sd: np.ndarray, names: Sequence[str]
) -> tuple[list[int], list[str]]:
    """Columns worth a coefficient, in order, and why the others were dropped.

    `z` is the standardized data. A column is dropped when it is constant, or when the columns kept
    before it explain all but MIN_TOLERANCE of its variance (so with shares that sum to one, the
    last share becomes the reference)."""
    reasons = [f"constant feature {names[j]!r}" for j in range(len(sd)) if not sd[j] > 0]
    varying = [j for j in range(len(sd)) if sd[j] > 0]
    zv = z if len(varying) == z.shape[1] else z[:, varying]
    corr = zv.T @ zv / (len(z) - 1)
    keep: list[int] = []
    for pos, j in enumerate(varying):
        if keep:
            c = corr[keep, pos]
            r2 = float(c @ np.linalg.solve(corr[np.ix_(keep, keep)], c))
            if 1 - r2 < MIN_TOLERANCE:
                reasons.append(
                    f"feature {names[j]!r}, collinear with the features before it (R² = {min(r2, 1.0):.4f})"
                )
                continue
        keep.append(pos)
    return [varying[p] for p in keep], reasons


def _fit(y, exog, group, codes, alpha, max_mixed_rows, outcome, notes) -> Fit:
    if group is None:
        return _ols(y, exog, alpha, "ols-hc3", cov_type="HC3")
    if np.bincount(codes).max() < 2:
        notes.append(f"drivers: {outcome}: no {group} repeats; fitted OLS with HC3 errors")
        return _ols(y, exog, alpha, "ols-hc3", cov_type="HC3")
    if len(y) <= max_mixed_rows:
        try:
            return _mixed(y, exog, codes, alpha, f"mixedlm:{group}", outcome, notes)
        except (np.linalg.LinAlgError, ValueError) as err:
            notes.append(
                f"drivers: {outcome}: MixedLM failed ({type(err).__name__}); fitted OLS with "
                f"errors clustered by {group}"
            )
    return _ols(
        y, exog, alpha, f"ols-cluster:{group}", cov_type="cluster", cov_kwds={"groups": codes}
    )


def _ols(y, exog, alpha, model, **fit_kwargs) -> Fit:
    import statsmodels.api as sm

    res = sm.OLS(y, exog, hasconst=True).fit(**fit_kwargs)
    return Fit(res.params, res.bse, res.conf_int(alpha), res.pvalues, float(res.rsquared), model)


def _mixed(y, exog, codes, alpha, model, outcome, notes) -> Fit:
    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    k = exog.shape[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        res = sm.MixedLM(y, exog, groups=codes).fit(reml=True)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(
            f"drivers: {outcome}: MixedLM warned about convergence (e.g. a group variance at "
            "the boundary); estimates kept"
        )
    fixed = exog @ res.fe_params
    var_fixed = float(np.var(fixed, ddof=1))
    var_group = float(np.asarray(res.cov_re)[0, 0])
    r2 = var_fixed / (var_fixed + var_group + float(res.scale))
    return Fit(
        np.asarray(res.fe_params),
        np.asarray(res.bse_fe),
        np.asarray(res.conf_int(alpha))[:k],
        np.asarray(res.pvalues)[:k],
        r2,
        model,
    )


def _adjust(table: pl.DataFrame) -> pl.DataFrame:
    return table.with_columns(
        p_adjusted=pl.Series(
            bh_adjust(table["p_value"].to_numpy()), dtype=pl.Float64, nan_to_null=True
        )
    )


def bh_adjust(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg over the finite p values; NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="fdr_bh")[1]
    return out
