"""Scale checks: do the item ratings behave like the WAI-SR (evaluate's scale tables)?

Agreement cannot tell twelve predicted items that carry Goal, Task and Bond apart from one
judgement written twelve times; the reliability and factor-model tables can, for the predicted
items and the clients' own ratings side by side. The section leads with the verdict so that a
blob is visible before the numbers."""

from __future__ import annotations

import polars as pl

from care_ray.report.blocks import Block, Bullets, Heading, Paragraph, Section, Table, shown
from care_ray.report.format import est_ci, finite, integer, num
from care_ray.report.load import Findings

SOURCE_NAMES = {"predicted": "Predicted items", "client": "The clients' own ratings"}


def _source_name(source: str) -> str:
    return SOURCE_NAMES.get(source, source)


def _verdict_sentence(source: str, summary: dict, scale: pl.DataFrame, models: pl.DataFrame) -> str:
    """One sentence per source: the verdict in plain words, with the numbers it rests on."""
    name = _source_name(source)
    if summary.get("skipped"):
        return f"{name}: not checked ({summary['skipped']})."
    alphas = [a for a in scale.filter(pl.col("source") == source)["alpha"].to_list() if finite(a)]
    fits = {r["model"]: r for r in models.filter(pl.col("source") == source).iter_rows(named=True)}
    cfi3, cfi1 = finite(fits.get("three", {}).get("cfi")), finite(fits.get("one", {}).get("cfi"))
    verdict = summary.get("verdict") or {}
    if verdict.get("blob"):
        parts = []
        if verdict.get("all_alpha_high") and alphas:
            parts.append(f"α {num(min(alphas))}–{num(max(alphas))} on every dimension")
        if cfi3 is not None and cfi1 is not None and cfi3 - cfi1 < 0.01:
            parts.append(
                f"three factors fit no better than one (CFI {num(cfi3, 3)} vs {num(cfi1, 3)})"
            )
        return f"{name} are nearly interchangeable: " + (", ".join(parts) or "one factor") + "."
    fit = (
        f"three factors fit better than one (CFI {num(cfi3, 3)} vs {num(cfi1, 3)})"
        if cfi3 is not None and cfi1 is not None
        else "the factor models could not be compared"
    )
    span = f"; α {num(min(alphas))}–{num(max(alphas))}" if alphas else ""
    return f"{name} separate into dimensions: {fit}{span}."


def _reliability_table(source: str, scale: pl.DataFrame, item_rest: pl.DataFrame | None) -> Table:
    rows = []
    for r in scale.filter(pl.col("source") == source).iter_rows(named=True):
        rest = (
            item_rest.filter(
                (pl.col("source") == source) & (pl.col("dimension") == r["dimension"])
            )["r"].drop_nulls()
            if item_rest is not None
            else pl.Series([], dtype=pl.Float64)
        )
        rows.append(
            [
                r["dimension"],
                integer(r["n"]),
                est_ci(r["alpha"], r["alpha_lo"], r["alpha_hi"]),
                est_ci(r["omega"], r["omega_lo"], r["omega_hi"]),
                f"{num(rest.min())} – {num(rest.max())}" if rest.len() else "–",
            ]
        )
    return Table(
        ["dimension", "sessions", "Cronbach's α [CI]", "McDonald's ω [CI]", "item–rest r"],
        rows,
        caption=f"{_source_name(source)}: reliability per dimension.",
    )


def _models_table(models: pl.DataFrame) -> Table:
    rows = [
        [
            _source_name(r["source"]),
            r["model"],
            integer(r["n"]),
            num(r["cfi"], 3),
            num(r["rmsea"], 3),
            num(r["srmr"], 3),
            f"{num(r['chi2'], 1)} ({integer(r['df'])})",
            num(r["aic"], 1),
            num(r["bic"], 1),
        ]
        for r in models.iter_rows(named=True)
    ]
    return Table(
        ["source", "factors", "sessions", "CFI", "RMSEA", "SRMR", "χ² (df)", "AIC", "BIC"],
        rows,
        caption="Confirmatory factor models: one factor, two (Bond vs Goal+Task), three "
        "(Goal, Task, Bond). Higher CFI and lower RMSEA/SRMR fit better.",
        numeric_from=2,
    )


def _correlations_table(correlations: pl.DataFrame) -> Table:
    rows = [
        [
            _source_name(r["source"]),
            f"{r['dimension_a']} – {r['dimension_b']}",
            integer(r["n"]),
            num(r["r"]),
        ]
        for r in correlations.iter_rows(named=True)
    ]
    return Table(
        ["source", "dimensions", "sessions", "Pearson r"],
        rows,
        caption="Correlations of the dimension means.",
        numeric_from=2,
    )


def scale_section(ev: Findings, section_id: str = "scale") -> Section | None:
    """Reliability, item–rest correlations, dimension correlations and factor models per source,
    led by the verdict; None when the evaluation ran no scale checks."""
    summary = ev.meta.get("scale")
    scale = ev.tables.get("scale")
    if not isinstance(summary, dict) and scale is None:
        return None
    summary = summary if isinstance(summary, dict) else {}
    models = ev.tables.get("factor_models")
    empty_models = pl.DataFrame(schema={"source": pl.String, "model": pl.String, "cfi": pl.Float64})
    scale_rows = (
        scale
        if scale is not None
        else pl.DataFrame(schema={"source": pl.String, "alpha": pl.Float64})
    )
    sources = [s for s in ("predicted", "client") if isinstance(summary.get(s), dict)]
    sources += [s for s in dict.fromkeys(scale_rows["source"].to_list()) if s not in sources]
    sentences = [
        _verdict_sentence(
            s, summary.get(s) or {}, scale_rows, models if models is not None else empty_models
        )
        for s in sources
    ]
    blocks: list[Block] = [
        Paragraph(
            "Whether the item ratings behave like the WAI-SR: items of one dimension should agree "
            "(α, ω) without being copies of each other, and Goal, Task and Bond should be told "
            "apart (three factors fitting better than one)."
        ),
        Bullets(sentences),
    ]
    if scale is not None:
        for source in dict.fromkeys(scale["source"].to_list()):
            blocks.append(_reliability_table(source, scale, ev.tables.get("item_rest")))
    correlations = ev.tables.get("dimension_correlations")
    if correlations is not None and correlations.height:
        blocks.append(_correlations_table(correlations))
    if models is not None and models.height:
        blocks += [Heading("Factor models"), _models_table(models)]
    blocks = shown(blocks)
    return Section(section_id, "Scale checks", blocks)
