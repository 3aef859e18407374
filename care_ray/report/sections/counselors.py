"""Counselor profiles: each counselor's pooled (empirical-Bayes) mean per outcome with its interval,
ranked, and how many counselors can be told apart from the overall mean at all.

Pooling shrinks a counselor with few sessions toward the overall mean, so a lucky pair of sessions
does not top the ranking; the sentences count intervals, not raw means."""

from __future__ import annotations

import math

import polars as pl

from care_ray.report import figures as fg
from care_ray.report.blocks import Block, Bullets, Details, Paragraph, Plot, Section, Table
from care_ray.report.format import est_ci, finite, integer, num, short
from care_ray.report.load import Findings

TOP_COUNSELORS = 5


def _figure(
    profiles: pl.DataFrame, outcomes: list[str], overall: dict[str, float], fig_id: str
) -> Plot:
    n_shown = min(profiles["counselor_id"].n_unique(), 2 * TOP_COUNSELORS)
    fig = fg.figure(
        min(3.6 * len(outcomes), 11) + 0.8,
        (0.3 * n_shown + 1.0) * math.ceil(len(outcomes) / 3) + 0.5,
    )
    axes = fg.panels(fig, len(outcomes), 3, sharex=True)
    for ax, outcome in zip(axes, outcomes, strict=True):
        p = profiles.filter(pl.col("outcome") == outcome).sort("rank")
        shown = (
            p
            if p.height <= 2 * TOP_COUNSELORS
            else pl.concat([p.head(TOP_COUNSELORS), p.tail(TOP_COUNSELORS)])
        )
        ys = list(range(shown.height))
        fg.whiskers(
            ax,
            ys,
            shown,
            "pooled_mean",
            "pooled_lo",
            "pooled_hi",
            fg.MODEL_COLOR,
            "pooled mean, interval",
        )
        ax.scatter(
            shown["raw_mean"].to_list(),
            ys,
            marker="x",
            color=fg.MUTED_COLOR,
            s=20,
            label="raw mean",
            zorder=3,
        )
        if outcome in overall:
            ax.axvline(
                overall[outcome], color="black", linestyle="--", linewidth=0.8, label="overall mean"
            )
        if p.height > 2 * TOP_COUNSELORS:
            ax.axhline(TOP_COUNSELORS - 0.5, color=fg.MUTED_COLOR, linewidth=0.8, linestyle=":")
        labels = [
            f"#{r['rank']} {short(r['counselor_id'], 16)} (n={r['n_sessions']})"
            for r in shown.iter_rows(named=True)
        ]
        fg.row_labels(ax, labels, outcome)
    fg.legend_below(fig, axes[0])
    caption = (
        f"Counselors ranked by pooled mean (top and bottom {TOP_COUNSELORS} per "
        "outcome), with intervals; × marks the unpooled mean."
    )
    return fg.plot(fig, fig_id, caption)


def _overall_means(an: Findings) -> dict[str, float]:
    pop = an.tables.get("population")
    if pop is None:
        return {}
    rows = pop.filter(pl.col("group_by") == "all").iter_rows(named=True)
    return {r["outcome"]: mean for r in rows if (mean := finite(r["mean"])) is not None}


def _text(profiles: pl.DataFrame, outcomes: list[str], overall: dict[str, float]) -> list[str]:
    per_counselor = profiles.group_by("counselor_id").agg(pl.col("n_sessions").max())
    n_counselors = per_counselor.height
    out = [
        f"{n_counselors:,} counselors with {integer(per_counselor['n_sessions'].sum())} scored "
        f"sessions (median {num(per_counselor['n_sessions'].median(), 0)} per counselor). Pooled "
        "means shrink counselors with few sessions toward the overall mean."
    ]
    for outcome in outcomes:
        if outcome not in overall:
            continue
        p = profiles.filter(pl.col("outcome") == outcome)
        above = p.filter(pl.col("pooled_lo") > overall[outcome]).height
        below = p.filter(pl.col("pooled_hi") < overall[outcome]).height
        out.append(
            f"{outcome}: {above} counselor(s) have intervals entirely above the overall mean "
            f"({overall[outcome]:.2f}) and {below} entirely below; "
            f"the other {p.height - above - below} cannot be told apart from it."
        )
    weakest = profiles.filter(pl.col("is_weakest"))["outcome"].to_list()
    if weakest:
        top = max(set(weakest), key=weakest.count)
        out.append(
            f"{top} is the weakest outcome for {weakest.count(top)} of {n_counselors} counselors."
        )
    return out


def _table(profiles: pl.DataFrame, outcomes: list[str]) -> Details:
    """Every counselor, one row each: pooled mean [interval] and rank per outcome, best mean rank first."""
    cells = {(r["counselor_id"], r["outcome"]): r for r in profiles.iter_rows(named=True)}
    order = (
        profiles.group_by("counselor_id")
        .agg(pl.col("rank").mean().alias("mean_rank"), pl.col("n_sessions").max())
        .sort(["mean_rank", "counselor_id"])
    )
    rows = []
    for c in order.iter_rows(named=True):
        rs = [cells.get((c["counselor_id"], o)) for o in outcomes]
        rows.append(
            [c["counselor_id"], integer(c["n_sessions"])]
            + [
                f"{est_ci(r['pooled_mean'], r['pooled_lo'], r['pooled_hi'])} #{integer(r['rank'])}"
                if r
                else "–"
                for r in rs
            ]
            + [
                ", ".join(o for o, r in zip(outcomes, rs, strict=True) if r and r["is_strength"]),
                ", ".join(o for o, r in zip(outcomes, rs, strict=True) if r and r["is_weakest"]),
            ]
        )
    table = Table(
        ["counselor", "sessions"]
        + [f"{o}: pooled mean [interval] #rank" for o in outcomes]
        + ["strength", "weakest"],
        rows,
    )
    return Details(f"All {order.height:,} counselors (table)", [table])


def counselor_section(an: Findings, sid: str) -> Section | None:
    profiles = an.tables.get("counselor_profiles")
    if profiles is None or profiles.height == 0:
        return None
    outcomes = list(dict.fromkeys(profiles["outcome"].to_list()))
    overall = _overall_means(an)
    text = _text(profiles, outcomes, overall)
    blocks: list[Block] = [
        Paragraph(text[0]),
        Bullets(text[1:]),
        _figure(profiles, outcomes, overall, f"{sid}-fig"),
        _table(profiles, outcomes),
    ]
    return Section(sid, "Counselor profiles", blocks)
