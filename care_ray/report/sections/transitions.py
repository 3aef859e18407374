"""Strategy × reaction transitions: how a client reacts after each counselor strategy, per source.

The heatmap shows the share of each strategy's turns followed by each reaction. Whether the reaction
depends on the strategy is the analysis's chi-square test (transition_tests); the cells that occur
clearly more often than independence predicts are those with a Pearson residual above 2, each with
the Wilson interval of its share (columns of the transitions table)."""

from __future__ import annotations

import numpy as np
import polars as pl

from care_ray.report.blocks import Block, Bullets, Paragraph, Plot, Section
from care_ray.report.figures import figure, plot
from care_ray.report.format import finite, level, p_text, pct, short
from care_ray.report.load import Findings

# A Pearson residual above this marks a cell as clearly over-represented (about the 5% level for
# one cell; a screen for where to look, not a test of each cell).
RESIDUAL = 2.0
TOP_CELLS = 3


def _matrix(t: pl.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    strategies = sorted(set(t["strategy"].to_list()), key=str)
    reactions = sorted(set(t["reaction"].to_list()), key=str)
    counts = np.zeros((len(strategies), len(reactions)))
    for r in t.iter_rows(named=True):
        counts[strategies.index(r["strategy"]), reactions.index(r["reaction"])] += (
            finite(r["n"]) or 0
        )
    return strategies, reactions, counts


def _heatmap(
    strategies: list[str], reactions: list[str], counts: np.ndarray, fig_id: str, source: str
) -> Plot:
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = figure(max(4.0, 1.0 * len(reactions) + 3.2), 0.42 * len(strategies) + 1.6)
    ax = fig.subplots()
    ax.grid(False)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(len(strategies)):
        for j in range(len(reactions)):
            ax.text(
                j,
                i,
                f"{shares[i, j]:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if shares[i, j] > 0.55 else "black",
            )
    ax.set_xticks(range(len(reactions)), [short(r, 18) for r in reactions], rotation=30, ha="right")
    ax.set_yticks(
        range(len(strategies)),
        [f"{short(s, 30)} (n={int(totals[i, 0]):,})" for i, s in enumerate(strategies)],
    )
    ax.set_xlabel("client reaction")
    ax.set_ylabel("counselor strategy")
    fig.colorbar(image, ax=ax, label="share of the strategy's turns", shrink=0.8)
    return plot(
        fig,
        fig_id,
        f"{source}: share of each counselor strategy's turns followed by each client reaction "
        "(rows sum to 100%).",
    )


def _test_sentence(test: dict | None, alpha: float) -> str | None:
    if test is None or finite(test["chi2"]) is None:
        return None
    stats = (
        f"χ² = {finite(test['chi2']):.1f}, df = {int(finite(test['dof']) or 0)}, "
        f"{p_text(test['p_value'])}; Cramér's V = {finite(test['cramers_v']) or 0:.2f}"
    )
    p = finite(test["p_value"])
    if p is not None and p < alpha:
        return f"The reaction depends on the strategy ({stats})."
    return f"No dependence of reaction on strategy is detected ({stats})."


def _over_represented(cells: pl.DataFrame, ci_level: str) -> str | None:
    """The cells most above what independence predicts (residual > RESIDUAL), with their share's
    interval; None when the table has no residuals (an analysis written before it did)."""
    if "residual" not in cells.columns:
        return None
    top = (
        cells.with_columns(pl.col("n").sum().over("strategy").alias("_turns"))
        .filter(pl.col("residual") > RESIDUAL)
        .sort("residual", descending=True)
        .head(TOP_CELLS)
    )
    phrases = []
    for r in top.iter_rows(named=True):
        lo, hi = finite(r.get("share_lo")), finite(r.get("share_hi"))
        interval = (
            f", {ci_level} CI {pct(lo)}–{pct(hi)}" if lo is not None and hi is not None else ""
        )
        phrases.append(
            f"{r['reaction']} after {r['strategy']} ({pct(r['share'])}{interval}, "
            f"of {int(finite(r['_turns']) or 0):,} turns)"
        )
    return "More often than independence predicts: " + "; ".join(phrases) + "." if phrases else None


def transitions_section(an: Findings, sid: str) -> Section | None:
    transitions = an.tables.get("transitions")
    if transitions is None or transitions.height == 0:
        return None
    tests_table = an.tables.get("transition_tests")
    tests = (
        {str(r["source"]): r for r in tests_table.iter_rows(named=True)}
        if tests_table is not None
        else {}
    )
    ci_level = level(an.alpha)
    blocks: list[Block] = []
    for i, source in enumerate(dict.fromkeys(transitions["source"].to_list())):
        cells = transitions.filter(pl.col("source") == source)
        strategies, reactions, counts = _matrix(cells)
        blocks += [
            Paragraph(
                f"{source}: {int(counts.sum()):,} counselor turns with a following client "
                f"reaction, {len(strategies)} strategies × {len(reactions)} reactions."
            ),
            Bullets(
                [
                    _test_sentence(tests.get(str(source)), an.alpha),
                    _over_represented(cells, ci_level),
                ]
            ),
            _heatmap(strategies, reactions, counts, f"{sid}-fig{i}", str(source)),
        ]
    return Section(sid, "Strategy × reaction transitions", blocks)
