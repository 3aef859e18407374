"""Population: each outcome's distribution over all sessions and within each group, the weakest
outcome, and the share of low-scored sessions.

Means carry the t interval the analysis wrote (population's mean_lo/mean_hi); whether the weakest
outcome is lower than the runner-up on the same sessions is the analysis's weakest_outcome test.
Only outcomes on one scale (model scores) are ranked: labels are different measures, so none of
them is called the weakest."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import polars as pl
from matplotlib.axes import Axes

from care_ray.report.blocks import Block, Bullets, Heading, Paragraph, Plot, Section, Table
from care_ray.report.figures import (
    MODEL_COLOR,
    figure,
    left_labels,
    legend_below,
    panels,
    plot,
    row_labels,
    whiskers,
)
from care_ray.report.format import (
    est_ci,
    finite,
    integer,
    level,
    num,
    p_text,
    pct,
    plural,
)
from care_ray.report.load import Findings

MAX_GROUPS = 15
# Smaller groups stay in the tables but out of plots and "lowest/highest" sentences: their CIs
# span the scale.
MIN_GROUP_N = 10
TEST_NAMES = {"wilcoxon_signed_rank": "Wilcoxon signed-rank"}


def _mean(r: dict) -> str:
    return est_ci(r["mean"], r.get("mean_lo"), r.get("mean_hi"))


def _mean_label(has_ci: bool, ci_level: str) -> str:
    """The legend's name for the mean marks: "mean, 95% CI", or "mean" without intervals."""
    return f"mean, {ci_level} CI" if has_ci else "mean"


def _mean_phrase(label: str) -> str:
    """The mean marks in a caption's words: "mean with 95% CI"."""
    return label.replace(", ", " with ")


def _summary_marks(ax: Axes, ys: Sequence[float], rs: Sequence[dict], mean_label: str) -> None:
    """Interquartile bar, median tick and mean (with its interval when the table has one) per row."""
    boxes = [
        (y, q25, q75)
        for y, r in zip(ys, rs, strict=True)
        if (q25 := finite(r["q25"])) is not None and (q75 := finite(r["q75"])) is not None
    ]
    ax.barh(
        [y for y, _, _ in boxes],
        [b - a for _, a, b in boxes],
        left=[a for _, a, _ in boxes],
        height=0.55,
        color="#d6e4f0",
        label="interquartile range",
    )
    medians = [
        (y, m) for y, r in zip(ys, rs, strict=True) if (m := finite(r["median"])) is not None
    ]
    ax.scatter(
        [m for _, m in medians],
        [y for y, _ in medians],
        marker="|",
        s=160,
        linewidths=2,
        color="#444444",
        label="median",
        zorder=3,
    )
    whiskers(ax, ys, rs, "mean", "mean_lo", "mean_hi", MODEL_COLOR, label=mean_label)


def _overall_figure(rows: list[dict], outcomes: list[str], fig_id: str, mean_label: str) -> Plot:
    fig = figure(7.0, 0.42 * len(outcomes) + 1.2)
    ax = fig.subplots()
    by_outcome = {r["outcome"]: r for r in rows}
    present = [o for o in outcomes if o in by_outcome]
    _summary_marks(ax, list(range(len(present))), [by_outcome[o] for o in present], mean_label)
    row_labels(ax, present)
    ax.set_xlabel("score")
    legend_below(fig, ax)
    return plot(
        fig,
        fig_id,
        f"Each outcome over all sessions: {_mean_phrase(mean_label)}, median and "
        "interquartile range.",
    )


def _groups_figure(
    rows: list[dict],
    groups: list[str],
    outcomes: list[str],
    fig_id: str,
    caption: str,
    comparable: bool,
    mean_label: str,
) -> Plot:
    fig = figure(
        min(3.0 * len(outcomes), 9.5) + 1.4,
        (0.3 * len(groups) + 0.8) * math.ceil(len(outcomes) / 3) + 0.4,
    )
    axes = panels(fig, len(outcomes), 3, sharex=comparable)
    for k, (ax, outcome) in enumerate(zip(axes, outcomes, strict=True)):
        by_grp = {r["grp"]: r for r in rows if r["outcome"] == outcome}
        ys = [i for i, g in enumerate(groups) if g in by_grp]
        _summary_marks(ax, ys, [by_grp[g] for g in groups if g in by_grp], mean_label)
        row_labels(ax, left_labels(groups, k, 26), outcome)
    legend_below(fig, axes[0])
    return plot(fig, fig_id, caption)


def _histogram_figure(features: pl.DataFrame, outcomes: list[str], fig_id: str) -> Plot | None:
    present = [o for o in outcomes if o in features.columns and features.schema[o].is_numeric()]
    if not present:
        return None
    fig = figure(min(3.0 * len(present), 9.5) + 0.6, 2.3 * math.ceil(len(present) / 3))
    axes = panels(fig, len(present), 3)
    for ax, outcome in zip(axes, present, strict=True):
        values = features[outcome].drop_nulls().drop_nans().to_numpy()
        uniq, counts = np.unique(values, return_counts=True)
        if len(uniq) <= 25:
            # scores are means of four 1-5 items: discrete, so bars at the values, not bins
            width = float(np.min(np.diff(uniq))) * 0.8 if len(uniq) > 1 else 0.2
            ax.bar(uniq, counts, width=width, color=MODEL_COLOR)
        else:
            ax.hist(values, bins="auto", color=MODEL_COLOR)
        ax.set_title(f"{outcome} (n = {len(values):,})")
        ax.set_xlabel("score")
    axes[0].set_ylabel("sessions")
    return plot(fig, fig_id, "Distribution of each outcome over all sessions.")


def _weakest_test(table: pl.DataFrame | None, weakest: str) -> str | None:
    """The analysis's paired test of the weakest outcome against the runner-up, as a sentence."""
    if table is None:
        return None
    rows = [r for r in table.iter_rows(named=True) if r["outcome"] == weakest]
    if not rows:
        return None
    r = rows[0]
    difference = finite(r["mean_difference"])
    if difference is None:
        return None
    test = TEST_NAMES.get(str(r["test"]), str(r["test"] or "paired test"))
    how = "lower than" if difference < 0 else "higher than"
    return (
        f"On the {integer(r['n'])} sessions with both, {weakest} is {how} {r['runner_up']} by "
        f"{abs(difference):.2f} on average ({test} {p_text(r['p_value'])})."
    )


def _all_text(
    rows: list[dict], an: Findings, low: str, has_ci: bool, ci_level: str
) -> list[str | None]:
    ranked = sorted((r for r in rows if finite(r["mean"]) is not None), key=lambda r: r["mean"])
    if not ranked:
        return []
    n = max(int(finite(r["n"]) or 0) for r in rows)
    out: list[str | None]
    if an.comparable and len(ranked) > 1:
        weakest = ranked[0]
        out = [
            f"Over {n:,} sessions, {weakest['outcome']} has the lowest mean of the "
            f"{len(ranked)} outcomes: {_mean(weakest)}"
            + (f" ({ci_level} CI of the mean)" if has_ci else "")
            + ", against "
            + ", ".join(f"{r['outcome']} {_mean(r)}" for r in ranked[1:])
            + ".",
            _weakest_test(an.tables.get("weakest_outcome"), weakest["outcome"]),
        ]
    else:
        means = ", ".join(f"{r['outcome']} {_mean(r)}" for r in ranked)
        out = [
            f"Means over {n:,} sessions" + (f" ({ci_level} CIs)" if has_ci else "") + f": {means}."
        ]
        if len(ranked) > 1:
            out.append(
                "These outcomes are different labels, possibly on different scales, so none is "
                "named the weakest."
            )
    shares = [
        f"{r['outcome']} {pct(r['low_share'], 1)}"
        for r in ranked
        if finite(r["low_share"]) is not None
    ]
    if shares:
        out.append(f"Share of sessions scoring {low}: " + ", ".join(shares) + ".")
    return out


def _by_text(
    by: str, rows: list[dict], outcomes: list[str], comparable: bool, has_ci: bool
) -> list[str]:
    sentences = []
    for outcome in outcomes:
        rs = [
            r
            for r in rows
            if r["outcome"] == outcome
            and finite(r["mean"]) is not None
            and (finite(r["n"]) or 0) >= MIN_GROUP_N
        ]
        if len(rs) < 2:
            continue
        low, high = min(rs, key=lambda r: r["mean"]), max(rs, key=lambda r: r["mean"])
        low_hi, high_lo = finite(low.get("mean_hi")), finite(high.get("mean_lo"))
        overlap = (
            ""
            if not has_ci or low_hi is None or high_lo is None
            else "; the intervals do not overlap."
            if low_hi < high_lo
            else "; the intervals overlap."
        )
        sentences.append(
            f"{outcome}: lowest in {low['grp']} ({_mean(low)}, n = {integer(low['n'])}), "
            f"highest in {high['grp']} ({_mean(high)}, n = {integer(high['n'])})" + (overlap or ".")
        )
    weakest = [r["outcome"] for r in rows if r["is_weakest"]]
    if comparable and weakest:
        top = max(set(weakest), key=weakest.count)
        sentences.append(
            f"{top} is the weakest outcome in {weakest.count(top)} of "
            f"{len({r['grp'] for r in rows})} {by} groups."
        )
    return sentences


def _low_phrase(meta: dict) -> str:
    threshold = finite(meta.get("low_threshold"))
    return (
        f"≤ {threshold:g}"
        if threshold is not None
        else "at or below the analysis's low-score threshold"
    )


def _all_blocks(
    rows: list[dict], outcomes: list[str], an: Findings, sid: str, has_ci: bool
) -> list[Block]:
    ci_level = level(an.alpha)
    features = an.tables.get("features")
    comparable = an.comparable
    text = [t for t in _all_text(rows, an, _low_phrase(an.meta), has_ci, ci_level) if t]
    weakest = [comparable and bool(r["is_weakest"]) for r in rows]
    table_rows = [
        [
            r["outcome"],
            integer(r["n"]),
            _mean(r),
            num(r["sd"]),
            f"{num(r['median'])} [{num(r['q25'])}, {num(r['q75'])}]",
            pct(r["low_share"], 1),
        ]
        + (["weakest" if w else ""] if comparable else [])
        for r, w in zip(rows, weakest, strict=True)
    ]
    mean_header = f"mean [{ci_level} CI]" if has_ci else "mean"
    headers = ["outcome", "n", mean_header, "sd", "median [IQR]", "low share"] + (
        [""] if comparable else []
    )
    mean_label = _mean_label(has_ci, ci_level)
    histogram = (
        _histogram_figure(features, outcomes, f"{sid}-hist") if features is not None else None
    )
    return [
        Paragraph(*text[:1]),
        Bullets(text[1:]),
        Table(headers, table_rows, highlight=weakest),
        histogram or _overall_figure(rows, outcomes, f"{sid}-all", mean_label),
    ]


def _by_table(
    rows: list[dict], groups: list[str], outcomes: list[str], comparable: bool, mean_header: str
) -> Table:
    by_key = {(r["grp"], r["outcome"]): r for r in rows}
    table = []
    for g in groups:
        rs = [by_key.get((g, o)) for o in outcomes]
        n = max((finite(r["n"]) or 0 for r in rs if r), default=0)
        weakest = (
            [", ".join(o for o, r in zip(outcomes, rs, strict=True) if r and r["is_weakest"])]
            if comparable
            else []
        )
        table.append([g, integer(n)] + [_mean(r) if r else "–" for r in rs] + weakest)
    headers = (
        ["group", "n"]
        + [f"{o} {mean_header}" for o in outcomes]
        + (["weakest"] if comparable else [])
    )
    return Table(headers, table)


def _by_blocks(
    by: str, rows: list[dict], outcomes: list[str], an: Findings, sid: str, has_ci: bool
) -> list[Block]:
    sizes: dict[str, float] = {}
    for r in rows:
        sizes[r["grp"]] = max(sizes.get(r["grp"], 0.0), finite(r["n"]) or 0.0)
    if len(sizes) < 2:
        return []  # one group is the whole corpus again
    ci_level = level(an.alpha)
    ordered = sorted(sizes, key=lambda g: -sizes[g])
    plotted = [g for g in ordered if sizes[g] >= MIN_GROUP_N][:MAX_GROUPS]
    left_out = len(ordered) - len(plotted)
    mean_label = _mean_label(has_ci, ci_level)
    intro = (
        f"{plural(len(sizes), 'group')}; means"
        + (f" with {ci_level} CIs." if has_ci else ".")
        + (
            f" {left_out} group(s) with fewer than {MIN_GROUP_N} sessions or beyond the "
            f"{MAX_GROUPS} largest are left out of the plot and the comparison (they are in "
            "the table)."
            if left_out
            else ""
        )
    )
    blocks: list[Block] = [
        Heading(f"By {by}"),
        Paragraph(intro),
        Bullets(_by_text(by, rows, outcomes, an.comparable, has_ci)),
    ]
    if len(plotted) > 1:
        blocks.append(
            _groups_figure(
                rows,
                plotted,
                outcomes,
                f"{sid}-by-{by}",
                f"Outcomes by {by}: {_mean_phrase(mean_label)}, median and "
                "interquartile range per group.",
                an.comparable,
                mean_label,
            )
        )
    mean_header = f"mean [{ci_level} CI]" if has_ci else "mean"
    blocks.append(_by_table(rows, ordered, outcomes, an.comparable, mean_header))
    return blocks


def population_section(an: Findings, sid: str) -> Section | None:
    """Outcome distributions overall and per group, the weakest outcome, the low-score share."""
    pop = an.tables.get("population")
    if pop is None or pop.height == 0:
        return None
    has_ci = {"mean_lo", "mean_hi"} <= set(pop.columns)
    outcomes = list(dict.fromkeys(pop["outcome"].to_list()))
    blocks: list[Block] = []
    for by in dict.fromkeys(pop["group_by"].to_list()):
        rows = pop.filter(pl.col("group_by") == by).to_dicts()
        blocks += (
            _all_blocks(rows, outcomes, an, sid, has_ci)
            if by == "all"
            else _by_blocks(str(by), rows, outcomes, an, sid, has_ci)
        )
    return Section(sid, "Population", blocks)
