"""Challenges: what the model's rationales for low scores keep saying — the terms most
over-represented in them (z of the log-odds ratio against the other rationales) and clusters of
similar rationales, each with an example rationale and the transcript quote it cited.

Quotes are part of the product and are shown as written (escaped by the template like any other
text); the report never logs them."""

from __future__ import annotations

import polars as pl

from care_ray.report.blocks import Block, Bullets, Cluster, Heading, Paragraph, Plot, Section
from care_ray.report.figures import MUTED_COLOR, SIGNIFICANT_COLOR, figure, panels, plot, row_labels
from care_ray.report.format import as_text, finite, integer, num, pct, plural, short
from care_ray.report.load import Findings

TOP_TERMS = 10
# z of one term's log-odds ratio at the two-sided 5% level; not adjusted for the many terms.
Z_5_PERCENT = 1.96


def _terms_figure(terms: pl.DataFrame, dims: list[str], fig_id: str) -> Plot:
    fig = figure(min(3.4 * len(dims), 11) + 0.6, 0.26 * TOP_TERMS + 1.3)
    axes = panels(fig, len(dims), 3)
    for ax, dim in zip(axes, dims, strict=True):
        t = (
            terms.filter(pl.col("dimension") == dim)
            .sort("z", descending=True, nulls_last=True)
            .head(TOP_TERMS)
        )
        z = [(finite(v) or 0.0) for v in t["z"].to_list()]
        ax.barh(
            range(t.height),
            z,
            color=[SIGNIFICANT_COLOR if v > Z_5_PERCENT else MUTED_COLOR for v in z],
        )
        ax.axvline(Z_5_PERCENT, color="black", linestyle=":", linewidth=0.8)
        row_labels(ax, [short(v, 24) for v in t["term"].to_list()], dim)
        ax.set_xlabel("z of log-odds")
    return plot(
        fig,
        fig_id,
        "Terms most over-represented in the rationales of low-scored sessions (top "
        f"{TOP_TERMS} per dimension; red: z > {Z_5_PERCENT}).",
    )


def _clusters(clusters: pl.DataFrame) -> list[Block]:
    blocks: list[Block] = []
    for dim in dict.fromkeys(clusters["dimension"].to_list()):
        c = clusters.filter(pl.col("dimension") == dim).sort("size", descending=True)
        total = int(sum(finite(v) or 0 for v in c["size"].to_list()))
        blocks.append(
            Heading(f"{dim}: {plural(c.height, 'cluster')} of {total:,} low-scored rationales")
        )
        for r in c.iter_rows(named=True):
            share = (finite(r["size"]) or 0) / total if total else 0
            blocks.append(
                Cluster(
                    number=as_text(r["cluster"]),
                    size=integer(r["size"]),
                    share=pct(share),
                    top_terms=as_text(r["top_terms"]),
                    rationale=as_text(r["example_rationale"]),
                    quote=as_text(r["example_quote"]),
                )
            )
    return blocks


def _terms_text(terms: pl.DataFrame, dims: list[str]) -> list[str]:
    out = [
        "Terms are compared between the rationales of low-scored sessions and the rest of the "
        "rationales; z is the z-score of the term's log-odds ratio "
        f"(z > {Z_5_PERCENT} ≈ the 5% level for one term; not adjusted for the many terms compared)."
    ]
    for dim in dims:
        t = terms.filter((pl.col("dimension") == dim) & (pl.col("z") > Z_5_PERCENT)).sort(
            "z", descending=True
        )
        if t.height:
            listed = ", ".join(
                f"“{r['term']}” (z = {num(r['z'], 1)}, {integer(r['count'])}×)"
                for r in t.head(5).iter_rows(named=True)
            )
            out.append(f"{dim}: {plural(t.height, 'distinctive term')}, led by {listed}.")
        else:
            out.append(f"{dim}: no term stands out at z > {Z_5_PERCENT}.")
    return out


def challenges_section(an: Findings, sid: str) -> Section | None:
    terms, clusters = an.tables.get("challenge_terms"), an.tables.get("challenge_clusters")
    blocks: list[Block] = []
    if terms is not None and terms.height:
        dims = list(dict.fromkeys(terms["dimension"].to_list()))
        text = _terms_text(terms, dims)
        blocks += [
            Paragraph(text[0]),
            Bullets(text[1:]),
            _terms_figure(terms, dims, f"{sid}-terms"),
        ]
    if clusters is not None and clusters.height:
        blocks += [
            Heading("Recurring challenges (clusters of low-score rationales)"),
            Paragraph(
                "Each cluster groups the model's rationales for low scores; the example "
                "rationale and the transcript quote it cited are shown as written."
            ),
            *_clusters(clusters),
        ]
    return Section(sid, "Challenges", blocks) if blocks else None
