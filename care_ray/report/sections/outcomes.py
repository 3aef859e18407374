"""Alliance and outcomes: how each alliance measure (the model's goal, task and bond, or a rating
label of the corpus) goes with each outcome label of the same sessions — Pearson r and the partial r
controlling for session length, each with the interval the analysis wrote, p adjusted over the table.

Every pair gets a sentence with its n and intervals, stated as an association; one sentence places
the figures next to the psychotherapy benchmark (alliance–outcome r ≈ .28, Flückiger et al. 2018)."""

from __future__ import annotations

import polars as pl

from care_ray.report.blocks import Block, Bullets, Paragraph, Section, Table
from care_ray.report.format import ci, est_ci, finite, integer, level, num, p_cell, p_text
from care_ray.report.load import Findings

BENCHMARK = (
    "For scale: across psychotherapy studies the alliance–outcome association averages r ≈ .28 "
    "(Flückiger et al. 2018, 295 studies)."
)
SOURCES = {
    "scores": "the model's predicted alliance dimensions",
    "labels": "the corpus's own rating labels",
}


def _sentence(r: dict, alpha: float) -> str:
    control = str(r["covariate"] or "session length")
    partial = finite(r["partial_r"])
    partial_text = (
        f"controlling for {control}, partial r = {est_ci(r['partial_r'], r['partial_lo'], r['partial_hi'])}"
        if partial is not None
        else f"no partial r controlling for {control}"
    )
    return (
        f"{r['predictor']} and {r['outcome']} (n = {integer(r['n'])} sessions): "
        f"r = {est_ci(r['r'], r['r_lo'], r['r_hi'])} ({level(alpha)} CI), "
        f"{p_text(r['p_value'])}, adjusted {p_text(r['p_adjusted'])}; {partial_text}."
    )


def outcomes_section(an: Findings, sid: str) -> Section | None:
    links = an.tables.get("outcome_links")
    if links is None or links.height == 0:
        return None
    alpha = an.alpha
    sources = [SOURCES.get(str(s), str(s)) for s in dict.fromkeys(links["source"].to_list())]
    rows = links.sort(["predictor", "outcome"]).iter_rows(named=True)
    shown = [dict(r) for r in rows]
    n_sig = links.filter(pl.col("p_adjusted") < alpha).height
    blocks: list[Block] = [
        Paragraph(
            f"How {' and '.join(sources)} go with the outcome labels of the same sessions: "
            f"{len(shown)} pair(s), {n_sig} with adjusted p < {alpha:g}.",
            "These are associations between measures of the same sessions, not effects of the "
            "alliance on the outcome.",
            BENCHMARK,
        ),
        Bullets(_sentence(r, alpha) for r in shown),
        Table(
            [
                "predictor",
                "outcome",
                "n",
                "r",
                f"{level(alpha)} CI",
                "partial r",
                f"{level(alpha)} CI",
                "controlling for",
                "p",
                "adjusted p",
            ],
            [
                [
                    str(r["predictor"]),
                    str(r["outcome"]),
                    integer(r["n"]),
                    num(r["r"]),
                    ci(r["r_lo"], r["r_hi"]),
                    num(r["partial_r"]),
                    ci(r["partial_lo"], r["partial_hi"]),
                    str(r["covariate"] or ""),
                    p_cell(r["p_value"]),
                    p_cell(r["p_adjusted"]),
                ]
                for r in shown
            ],
            caption="Pearson r and partial r with Fisher z intervals; p adjusted by "
            "Benjamini–Hochberg over the table",
            numeric_from=2,
        ),
    ]
    return Section(sid, "Alliance and outcomes", blocks)
