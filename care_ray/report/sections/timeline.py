"""Alliance over the session: the mean curve of the within-session ratings over the session's
course with its interval band, how many sessions have a rupture (a drop of at least δ between
consecutive ratings) and how many ruptures were repaired, each with its Wilson interval, what the
counselor did before drops and rises against stretches with no change, and the dialogue around
the largest drops. All of it is as the analysis wrote it; the section only phrases and plots."""

from __future__ import annotations

import polars as pl

from care_ray.report.blocks import Block, Bullets, Details, Paragraph, Plot, Section, Table
from care_ray.report.figures import figure, plot
from care_ray.report.format import est_ci, integer, level, num, p_cell, p_text, pct, pct_ci
from care_ray.report.load import Findings

DIMENSION_NAMES = {
    "turn_rating": "the client's own ratings during the session",
    "goal": "the model's goal at cut points",
    "task": "the model's task at cut points",
    "bond": "the model's bond at cut points",
}
MAX_PRECEDENTS = 8


def _name(dimension: str) -> str:
    return DIMENSION_NAMES.get(dimension, dimension)


def _curve_figure(curve: pl.DataFrame, fig_id: str, ci_level: str) -> Plot:
    fig = figure(7.5, 3.4)
    ax = fig.subplots()
    for dimension in dict.fromkeys(curve["dimension"].to_list()):
        c = curve.filter(pl.col("dimension") == dimension).sort("position")
        x = c["position"].to_list()
        ax.plot(x, c["mean"].to_list(), marker="o", label=dimension)
        lo, hi = c["mean_lo"].fill_null(float("nan")), c["mean_hi"].fill_null(float("nan"))
        ax.fill_between(x, lo.to_list(), hi.to_list(), alpha=0.2)
    ax.set_xlim(0, 1)
    if curve["mean"].is_between(1, 5).all():  # a rating scale: the band is cut at its ends
        ax.set_ylim(0.8, 5.2)
    ax.set_xlabel("position in the session (0 = first turn, 1 = last)")
    ax.set_ylabel("mean rating")
    ax.legend(fontsize=8, loc="best")
    return plot(
        fig,
        fig_id,
        f"Mean within-session rating by tenth of the session, with its {ci_level} interval "
        "(a band); each point pools every rating given in that tenth.",
    )


def _summary_blocks(
    summary: pl.DataFrame, drop: float, within: float, ci_level: str
) -> list[Block]:
    order = {d: i for i, d in enumerate(DIMENSION_NAMES)}
    summary = summary.sort(
        pl.col("dimension").replace_strict(order, default=len(order)), "group_by", "grp"
    )
    overall = summary.filter(pl.col("group_by") == "all").to_dicts()

    def share(r: dict, name: str) -> str:
        return pct_ci(r[name], r.get(f"{name}_lo"), r.get(f"{name}_hi"))

    sentences = [
        f"{_name(r['dimension'])}: {integer(r['sessions_with_rupture'])} of "
        f"{integer(r['sessions'])} sessions ({share(r, 'rupture_share')}, "
        f"Wilson {ci_level} CI) have at least one rupture; of their {integer(r['ruptures'])} "
        f"ruptures, {integer(r['repaired'])} were repaired "
        f"({share(r, 'repaired_share')})."
        for r in overall
    ]
    rows = summary.filter(pl.col("group_by") != "all").to_dicts()
    blocks: list[Block] = [
        Paragraph(
            f"A rupture is a drop of at least {num(drop, 1)} points between two consecutive "
            f"ratings of a session; it is repaired when a later rating of the same session is back "
            f"within {num(within, 1)} of the rating before the drop.",
        ),
        Bullets(sentences),
    ]
    if rows:
        blocks.append(
            Table(
                [
                    "dimension",
                    "by",
                    "group",
                    "sessions",
                    f"with a rupture [{ci_level} CI]",
                    "ruptures",
                    f"repaired [{ci_level} CI]",
                ],
                [
                    [
                        str(r["dimension"]),
                        str(r["group_by"]),
                        str(r["grp"]),
                        integer(r["sessions"]),
                        pct_ci(
                            r["rupture_share"], r.get("rupture_share_lo"), r.get("rupture_share_hi")
                        ),
                        integer(r["ruptures"]),
                        pct_ci(
                            r["repaired_share"],
                            r.get("repaired_share_lo"),
                            r.get("repaired_share_hi"),
                        ),
                    ]
                    for r in rows
                ],
                numeric_from=3,
            )
        )
    return blocks


def _precedent_blocks(precedents: pl.DataFrame, alpha: float) -> list[Block]:
    strongest = precedents.sort("p_value").head(MAX_PRECEDENTS).to_dicts()
    n_sig = precedents.filter(pl.col("p_adjusted") < alpha).height
    return [
        Paragraph(
            "What the counselor did in the turns between two ratings, for stretches that ended in a "
            "drop or a rise against stretches with no change (Fisher's exact test, p adjusted over "
            f"the table): {n_sig} of {precedents.height} comparisons with adjusted p < {alpha:g}.",
            "These are associations: a strategy seen before drops is not shown to cause them.",
        ),
        Table(
            [
                "strategy",
                "before",
                "share of those stretches",
                "share of steady stretches",
                "odds ratio",
                "adjusted p",
            ],
            [
                [
                    str(r["strategy"]),
                    f"{r['segment']} of {r['dimension']} ({integer(r['segments'])})",
                    pct(r["share"]),
                    pct(r["steady_share"]),
                    num(r["odds_ratio"]),
                    p_cell(r["p_adjusted"]),
                ]
                for r in strongest
            ],
            caption=f"The {len(strongest)} comparisons with the smallest p.",
            numeric_from=2,
        ),
    ]


def _dialogue_blocks(dialogue: pl.DataFrame) -> list[Block]:
    blocks: list[Block] = []
    for stretch in dialogue.partition_by("rank", maintain_order=True):
        turns = stretch.sort("turn_index").to_dicts()
        first, rank = turns[0], turns[0]["rank"]
        repaired = "repaired later" if first.get("repaired") else "not repaired"
        rows = [
            [
                str(t["turn_index"]),
                str(t["role"]),
                str(t["text"] or ""),
                str(t["strategy"] or ""),
                num(t["rating"], 0) if t["rating"] is not None else "",
            ]
            for t in turns
        ]
        blocks.append(
            Details(
                f"Drop {rank} of {first.get('dimension')}: {num(first.get('value_before'), 1)} → "
                f"{num(first.get('value_after'), 1)} "
                f"(turns {turns[0]['turn_index']}–{turns[-1]['turn_index']}, {repaired})",
                [
                    Table(["turn", "speaker", "text", "strategy", "rating"], rows, numeric_from=4),
                    Paragraph(
                        f"The model's answer at the cut after the drop: “{first['rationale_after']}”"
                        if first.get("rationale_after")
                        else None
                    ),
                ],
            )
        )
    return blocks


def timeline_section(an: Findings, sid: str) -> Section | None:
    summary = an.tables.get("timeline_summary")
    if summary is None or summary.height == 0:
        return None
    ci_level = level(an.alpha)
    settings = an.meta.get("timeline") or {}
    blocks: list[Block] = _summary_blocks(
        summary,
        settings.get("rupture_drop", float("nan")),
        settings.get("repair_within", float("nan")),
        ci_level,
    )
    links = an.tables.get("timeline_links")
    if links is not None and links.height:
        blocks.append(
            Bullets(
                f"{r['predictor']} and {r['outcome']} (n = {integer(r['n'])} sessions): r = "
                f"{est_ci(r['r'], r['r_lo'], r['r_hi'])} ({ci_level} CI), adjusted {p_text(r['p_adjusted'])}."
                for r in links.sort("predictor", "outcome").to_dicts()
            )
        )
    curve = an.tables.get("timeline_curve")
    if curve is not None and curve.height:
        blocks.append(_curve_figure(curve, f"{sid}-fig", ci_level))
    precedents = an.tables.get("timeline_precedents")
    if precedents is not None and precedents.height:
        blocks += _precedent_blocks(precedents, an.alpha)
    dialogue = an.tables.get("timeline_dialogue")
    if dialogue is not None and dialogue.height:
        blocks.append(
            Paragraph(
                "The dialogue around the largest drops, from the rating before to the rating after:"
            )
        )
        blocks += _dialogue_blocks(dialogue)
    return Section(sid, "Alliance over the session", blocks)
