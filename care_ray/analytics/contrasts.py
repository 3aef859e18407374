"""Group contrasts: how the mean of each variable differs between the groups of one column.

Two groups: Welch's t test (unequal variances) and Hedges' g, the bias-corrected standardized mean
difference (statsmodels `effectsize_smd`), of the first group minus the second in sorted order; the
`effect_measure` names the direction, e.g. "hedges_g (female − male)". More groups: the
Kruskal–Wallis H test with epsilon² = H / (n − 1) (Tomczak & Tomczak 2014) as its effect size.
The test's statistic, p and effect are repeated on every group row of the variable. p values are
adjusted by Benjamini–Hochberg over the variables of the one `by` column. Each group's mean carries
its t interval at 1 − alpha (mean_lo, mean_hi), so that a reader sees how well each mean is known.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from care_ray.analytics.drivers import bh_adjust
from care_ray.analytics.intervals import with_mean_interval

CONTRAST_SCHEMA = {
    "by": pl.String,
    "variable": pl.String,
    "grp": pl.String,
    "n": pl.Int64,
    "mean": pl.Float64,
    "mean_lo": pl.Float64,
    "mean_hi": pl.Float64,
    "sd": pl.Float64,
    "effect_size": pl.Float64,
    "effect_measure": pl.String,
    "test": pl.String,
    "statistic": pl.Float64,
    "p_value": pl.Float64,
    "p_adjusted": pl.Float64,
}


def group_contrasts(
    data: pl.DataFrame,
    by: str,
    variables: Sequence[str],
    min_group: int = 5,
    alpha: float = 0.05,
) -> tuple[pl.DataFrame, list[str]]:
    """Per-group n, mean (with its t interval at 1 − alpha) and sd of each variable, with the test
    of a difference between the groups.

    Rows with no `by` value or no value of the variable are left out; groups with fewer than
    `min_group` (at least 2) values are dropped; a variable left with fewer than 2 groups is skipped.
    Raises ValueError when a named column is missing or a variable is not numeric."""
    _check_columns(data, by, variables)
    notes: list[str] = []
    null_by = data[by].null_count()
    if null_by:
        notes.append(f"contrasts: {null_by} row(s) with no {by} left out")
    present = data.filter(pl.col(by).is_not_null()).with_columns(
        pl.col(by).cast(pl.String).alias("_grp")
    )
    tables = [
        t
        for v in dict.fromkeys(variables)
        if (t := _contrast(present, by, v, max(min_group, 2), notes)) is not None
    ]
    if not tables:
        return pl.DataFrame(schema=CONTRAST_SCHEMA), notes
    table = with_mean_interval(pl.concat(tables), alpha)
    per_variable = table.unique("variable", keep="first", maintain_order=True)
    adjusted = per_variable.select(
        "variable",
        p_adjusted=pl.Series(
            bh_adjust(per_variable["p_value"].to_numpy()), dtype=pl.Float64, nan_to_null=True
        ),
    )
    return table.drop("p_adjusted").join(
        adjusted, on="variable", how="left", maintain_order="left"
    ).select(CONTRAST_SCHEMA.keys()), notes


def _check_columns(data: pl.DataFrame, by: str, variables: Sequence[str]) -> None:
    missing = [c for c in [by, *variables] if c not in data.columns]
    if missing:
        raise ValueError(f"contrasts: no column(s) {', '.join(missing)} in the data")
    not_numeric = [
        v for v in variables if not (data.schema[v].is_numeric() or data.schema[v] == pl.Boolean)
    ]
    if not_numeric:
        raise ValueError(f"contrasts: column(s) {', '.join(not_numeric)} are not numeric")


def _contrast(
    present: pl.DataFrame, by: str, variable: str, min_group: int, notes: list[str]
) -> pl.DataFrame | None:
    values = (
        present.select("_grp", value=pl.col(variable).cast(pl.Float64))
        .filter(pl.col("value").is_finite())
        .sort("_grp")
    )
    stats = values.group_by("_grp", maintain_order=True).agg(
        n=pl.len(), mean=pl.col("value").mean(), sd=pl.col("value").std(ddof=1)
    )
    small = stats.filter(pl.col("n") < min_group)
    if small.height:
        notes.append(
            f"contrasts: {by}/{variable}: dropped {small.height} group(s) with fewer than {min_group} values"
        )
    stats = stats.filter(pl.col("n") >= min_group)
    if stats.height < 2:
        notes.append(
            f"contrasts: skipped {by}/{variable}: fewer than 2 groups with at least {min_group} values"
        )
        return None
    samples = _samples(
        values.filter(pl.col("_grp").is_in(stats["_grp"].implode())), stats["n"].to_numpy()
    )
    if stats.height == 2:
        test = _two_groups(samples, stats)
    else:
        test = _many_groups(samples)
    if test["p_value"] is None:
        notes.append(f"contrasts: {by}/{variable}: no test (the values do not vary)")
    return stats.select(
        by=pl.lit(by),
        variable=pl.lit(variable),
        grp=pl.col("_grp"),
        n=pl.col("n").cast(pl.Int64),
        mean="mean",
        sd="sd",
        effect_size=pl.lit(test["effect_size"], dtype=pl.Float64),
        effect_measure=pl.lit(test["effect_measure"]),
        test=pl.lit(test["test"]),
        statistic=pl.lit(test["statistic"], dtype=pl.Float64),
        p_value=pl.lit(test["p_value"], dtype=pl.Float64),
        p_adjusted=pl.lit(None, dtype=pl.Float64),
    )


def _samples(values: pl.DataFrame, counts: np.ndarray) -> list[np.ndarray]:
    """Each group's values, in the group order of `counts` (values are sorted by group)."""
    return np.split(values["value"].to_numpy(), np.cumsum(counts)[:-1])


def _two_groups(samples: list[np.ndarray], stats: pl.DataFrame) -> dict:
    from scipy import stats as sps
    from statsmodels.stats.meta_analysis import effectsize_smd

    a, b = samples
    first, second = stats["_grp"].to_list()
    measure = f"hedges_g ({first} − {second})"
    if np.ptp(np.concatenate(samples)) == 0:
        return _no_test("welch_t", measure)
    result = sps.ttest_ind(a, b, equal_var=False)
    g, _ = effectsize_smd(a.mean(), a.std(ddof=1), len(a), b.mean(), b.std(ddof=1), len(b))
    return {
        "effect_size": float(g),
        "effect_measure": measure,
        "test": "welch_t",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
    }


def _many_groups(samples: list[np.ndarray]) -> dict:
    from scipy import stats as sps

    if np.ptp(np.concatenate(samples)) == 0:
        return _no_test("kruskal_wallis", "epsilon_squared")
    result = sps.kruskal(*samples)
    n = sum(len(s) for s in samples)
    return {
        "effect_size": float(result.statistic) / (n - 1),
        "effect_measure": "epsilon_squared",
        "test": "kruskal_wallis",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
    }


def _no_test(test: str, measure: str) -> dict:
    return {
        "effect_size": None,
        "effect_measure": measure,
        "test": test,
        "statistic": None,
        "p_value": None,
    }
