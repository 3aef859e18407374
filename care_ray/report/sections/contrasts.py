"""Group contrasts: how each outcome and feature differs between the groups of a --by column (the
analysis's tests: Welch's t for two groups, Kruskal–Wallis for more, p adjusted per column).

The contrasts with the smallest adjusted p are described and plotted (group means with the
intervals the table carries); every contrast is in the table at the end."""

from __future__ import annotations

import math

import polars as pl

from care_ray.report.blocks import Block, Bullets, Details, Paragraph, Plot, Section, Table
from care_ray.report.figures import (
    MODEL_COLOR,
    figure,
    left_labels,
    panels,
    plot,
    row_labels,
    whiskers,
)
from care_ray.report.format import finite, integer, level, num, p_cell, p_text, plural, short
from care_ray.report.load import Findings

MAX_CONTRASTS = 12

Contrast = tuple[str, str, pl.DataFrame]  # by, variable, its group rows


def _contrasts(table: pl.DataFrame) -> list[Contrast]:
    keys = dict.fromkeys(zip(table["by"].to_list(), table["variable"].to_list(), strict=True))
    return [
        (by, var, table.filter((pl.col("by") == by) & (pl.col("variable") == var)))
        for by, var in keys
    ]


def _first(frame: pl.DataFrame, column: str) -> object:
    """The contrast's value of a column repeated on each of its group rows (first non-null)."""
    values = [
        v
        for v in frame[column].to_list()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    return values[0] if values else None


def _p(g: pl.DataFrame) -> float:
    """The adjusted p of a contrast (its raw p when no adjusted one was written)."""
    for column in ("p_adjusted", "p_value"):
        p = finite(_first(g, column))
        if p is not None:
            return p
    return 1.0


def _figure(by: str, items: list[tuple[str, pl.DataFrame]], fig_id: str, caption: str) -> Plot:
    """One figure per grouping: its contrasts share the groups, so the panels line up."""
    groups = list(dict.fromkeys(v for _, g in items for v in g["grp"].to_list()))
    ncols = min(len(items), 3)
    fig = figure(2.9 * ncols + 1.4, (0.3 * len(groups) + 0.9) * math.ceil(len(items) / 3) + 0.3)
    axes = panels(fig, len(items), 3)
    for k, (ax, (var, g)) in enumerate(zip(axes, items, strict=True)):
        by_grp = {r["grp"]: r for r in g.iter_rows(named=True)}
        ys = [i for i, v in enumerate(groups) if v in by_grp]
        rs = [by_grp[v] for v in groups if v in by_grp]
        whiskers(ax, ys, rs, "mean", "mean_lo", "mean_hi", MODEL_COLOR)
        row_labels(ax, left_labels(groups, k, 22), f"{short(var, 30)}\n{p_text(_p(g))}", fontsize=9)
    return plot(fig, fig_id, caption)


def _group_phrase(r: dict) -> str:
    return f"{r['grp']} {num(r['mean'])} (sd {num(r['sd'])}, n = {integer(r['n'])})"


def _sentence(by: str, var: str, g: pl.DataFrame) -> str:
    rows = sorted(
        (r for r in g.iter_rows(named=True) if finite(r["mean"]) is not None),
        key=lambda r: r["mean"],
    )
    if len(rows) <= 3:
        described = "; ".join(_group_phrase(r) for r in rows)
    else:
        described = (
            f"lowest in {_group_phrase(rows[0])}, highest in "
            f"{_group_phrase(rows[-1])}, across {len(rows)} groups"
        )
    effect, measure = _first(g, "effect_size"), _first(g, "effect_measure")
    test, statistic = _first(g, "test"), _first(g, "statistic")
    p, p_adj = _first(g, "p_value"), _first(g, "p_adjusted")
    tail = []
    if effect is not None:
        tail.append(f"{measure or 'effect size'} = {num(effect)}")
    if test is not None:
        tail.append(
            f"{test} {num(statistic)}, {p_text(p)}"
            + (f", adjusted {p_text(p_adj)}" if p_adj is not None else "")
        )
    return f"{var} by {by}: {described}" + (f" — {', '.join(tail)}." if tail else ".")


def _table(contrasts: list[Contrast]) -> Details:
    rows = []
    for by, var, g in contrasts:
        ranked = sorted(
            (r for r in g.iter_rows(named=True) if finite(r["mean"]) is not None),
            key=lambda r: r["mean"],
        )
        low, high = (
            (
                f"{ranked[0]['grp']} {num(ranked[0]['mean'])}",
                f"{ranked[-1]['grp']} {num(ranked[-1]['mean'])}",
            )
            if ranked
            else ("– –", "– –")
        )
        rows.append(
            [
                by,
                var,
                integer(g.height),
                integer(g["n"].sum()),
                low,
                high,
                f"{num(_first(g, 'effect_size'))} {_first(g, 'effect_measure') or ''}".strip(),
                f"{_first(g, 'test') or ''} {num(_first(g, 'statistic'))}".strip(),
                p_cell(_first(g, "p_value")),
                p_cell(_first(g, "p_adjusted")),
            ]
        )
    table = Table(
        [
            "by",
            "variable",
            "groups",
            "n",
            "lowest mean",
            "highest mean",
            "effect",
            "test",
            "p",
            "adjusted p",
        ],
        rows,
        numeric_from=2,
    )
    return Details(f"All {len(contrasts):,} contrasts (table)", [table])


def contrasts_section(an: Findings, sid: str) -> Section | None:
    table = an.tables.get("contrasts")
    if table is None or table.height == 0:
        return None
    alpha = an.alpha
    contrasts = sorted(_contrasts(table), key=lambda item: _p(item[2]))
    significant = [item for item in contrasts if _p(item[2]) < alpha]
    shown = significant[:MAX_CONTRASTS] or contrasts[:3]
    if significant:
        intro = (
            f"{plural(len(contrasts), 'contrast')} between groups; {len(significant)} differ at "
            f"adjusted p < {alpha:g}"
            + (
                f"; the {MAX_CONTRASTS} with the smallest p are described."
                if len(significant) > MAX_CONTRASTS
                else "."
            )
        )
    else:
        intro = (
            f"{plural(len(contrasts), 'contrast')} between groups; none differs at adjusted "
            f"p < {alpha:g}. The {len(shown)} with the smallest p:"
        )
    has_ci = {"mean_lo", "mean_hi"} <= set(table.columns)
    means = f"group means with {level(alpha)} CIs" if has_ci else "group means"
    blocks: list[Block] = [
        Paragraph(
            intro,
            "Differences between groups are associations; they need not be caused by the grouping.",
        ),
        Bullets(_sentence(by, var, g) for by, var, g in shown),
    ]
    for k, by in enumerate(dict.fromkeys(b for b, _, _ in shown)):
        caption = (
            f"By {by}: {means}; each panel title gives the adjusted p of the test between the "
            "groups."
        )
        items = [(v, g) for b, v, g in shown if b == by]
        blocks.append(_figure(str(by), items, f"{sid}-fig{k}", caption))
    blocks.append(_table(contrasts))
    return Section(sid, "Group contrasts", blocks)
