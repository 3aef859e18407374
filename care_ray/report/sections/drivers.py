"""Drivers: which session features go with each outcome, from the analysis's regressions of the
outcome on standardized features (coefficients with intervals, p adjusted for the many features).

Only features significant after adjustment are named in the text; the plot also shows the strongest
of the rest, so a reader sees what was not found as well as what was. Associations, not causes."""

from __future__ import annotations

import math

import polars as pl

from care_ray.report.blocks import Block, Bullets, Paragraph, Plot, Section, Table
from care_ray.report.figures import (
    MUTED_COLOR,
    SIGNIFICANT_COLOR,
    figure,
    legend_below,
    panels,
    plot,
    whiskers,
)
from care_ray.report.format import ci, finite, integer, level, num, p_cell, p_text, plural, short
from care_ray.report.load import Findings

MAX_DRIVERS = 12


def _shown(d: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """The strongest features by |coefficient|, every significant one included."""
    d = d.with_columns(
        pl.col("coef_std").abs().alias("_abs"),
        (pl.col("p_adjusted") < alpha).fill_null(False).alias("_sig"),
    )
    keep = d.sort(["_sig", "_abs"], descending=True, nulls_last=True).head(
        max(MAX_DRIVERS, int(d["_sig"].sum()))
    )
    return keep.sort("coef_std", nulls_last=True)


def _figure(drivers: pl.DataFrame, outcomes: list[str], fig_id: str, alpha: float) -> Plot:
    tallest = max(_shown(drivers.filter(pl.col("outcome") == o), alpha).height for o in outcomes)
    fig = figure(
        min(3.8 * len(outcomes), 11.5) + 1.0,
        (0.28 * tallest + 1.0) * math.ceil(len(outcomes) / 3) + 0.5,
    )
    axes = panels(fig, len(outcomes), 3, sharex=True)
    for ax, outcome in zip(axes, outcomes, strict=True):
        d = _shown(drivers.filter(pl.col("outcome") == outcome), alpha)
        for significant, color, label in (
            (False, MUTED_COLOR, "not significant"),
            (True, SIGNIFICANT_COLOR, f"adjusted p < {alpha:g}"),
        ):
            idx = [i for i, s in enumerate(d["_sig"].to_list()) if s == significant]
            if idx:
                sub = d[idx]
                whiskers(ax, idx, sub, "coef_std", "ci_low", "ci_high", color, label=label)
        ax.axvline(0, color="black", linewidth=0.7)
        ax.set_yticks(range(d.height), [short(f, 40) for f in d["feature"].to_list()])
        ax.set_ylim(-0.5, d.height - 0.5)
        ax.set_title(outcome)
        ax.set_xlabel("standardized coefficient")
    legend_below(fig, axes[0])
    return plot(
        fig,
        fig_id,
        f"Standardized regression coefficients with {level(alpha)} CIs; red = significant after "
        f"multiple-testing adjustment (at most {MAX_DRIVERS} non-significant features "
        "shown per outcome).",
    )


def _text(drivers: pl.DataFrame, outcomes: list[str], alpha: float) -> list[str]:
    out = []
    for outcome in outcomes:
        d = drivers.filter(pl.col("outcome") == outcome)
        first = d.row(0, named=True)
        sig = d.filter(pl.col("p_adjusted") < alpha).sort("p_adjusted")
        head = (
            f"{first['model'] or 'Linear'} regression of {outcome} on {d.height} "
            f"standardized features (n = {integer(first['n'])} sessions, R² = {num(first['r2'])})"
        )
        if sig.height == 0:
            out.append(
                f"{head}: no feature is associated with {outcome} after multiple-testing adjustment."
            )
            continue
        listed = "; ".join(
            f"{r['feature']} "
            f"({'+' if (finite(r['coef_std']) or 0) > 0 else ''}{num(r['coef_std'])}, "
            f"{level(alpha)} CI {ci(r['ci_low'], r['ci_high'])}, adjusted {p_text(r['p_adjusted'])})"
            for r in sig.head(5).iter_rows(named=True)
        )
        more = f" and {sig.height - 5} more" if sig.height > 5 else ""
        out.append(
            f"{head}: after multiple-testing adjustment, {plural(sig.height, 'feature')} "
            f"{'is' if sig.height == 1 else 'are'} associated with {outcome}: "
            f"{listed}{more}."
        )
    out.append("These are associations in observational data, not causal effects.")
    return out


def drivers_section(an: Findings, sid: str) -> Section | None:
    drivers = an.tables.get("drivers")
    if drivers is None or drivers.height == 0:
        return None
    alpha = an.alpha
    outcomes = list(dict.fromkeys(drivers["outcome"].to_list()))
    sig = drivers.filter(pl.col("p_adjusted") < alpha).sort(["outcome", "p_adjusted"])
    rows = [
        [
            r["outcome"],
            r["feature"],
            num(r["coef_std"]),
            ci(r["ci_low"], r["ci_high"]),
            num(r["std_error"]),
            p_cell(r["p_value"]),
            p_cell(r["p_adjusted"]),
        ]
        for r in sig.iter_rows(named=True)
    ]
    text = _text(drivers, outcomes, alpha)
    blocks: list[Block] = [
        Bullets(text[:-1]),
        Paragraph(text[-1]),
        _figure(drivers, outcomes, f"{sid}-fig", alpha),
    ]
    if rows:
        blocks.append(
            Table(
                ["outcome", "feature", "β (std)", f"{level(alpha)} CI", "SE", "p", "adjusted p"],
                rows,
                caption="Features significant after adjustment",
                numeric_from=2,
            )
        )
    return Section(sid, "Drivers", blocks)
