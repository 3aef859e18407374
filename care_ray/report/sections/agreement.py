"""Agreement: how well the model's scores match the reference ratings (evaluate's tables).

Pearson r, Spearman ρ and MSE per dimension with the evaluation's bootstrap intervals, the
counselor's own rating as the baseline, the spread over held-out folds, and calibration (mean
client rating per bin of predicted score)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from care_ray.report.blocks import (
    Block,
    Bullets,
    Heading,
    Paragraph,
    Plot,
    Section,
    Table,
    shown,
)
from care_ray.report.figures import (
    COUNSELOR_COLOR,
    MODEL_COLOR,
    MUTED_COLOR,
    figure,
    legend_below,
    panels,
    plot,
    row_labels,
    whiskers,
)
from care_ray.report.format import est_ci, finite, integer, level, num, pct
from care_ray.report.load import DEFAULT_ALPHA, Findings

# Sessions drawn per calibration panel; more only blur the picture and bloat the page.
MAX_POINTS = 2000


def truth_name(meta: dict) -> str:
    """What the scores were compared with: metrics.json "truth" is a name or {kind, dimensions, …}."""
    truth = meta.get("truth")
    if isinstance(truth, dict):
        dims = truth.get("dimensions")
        kinds = sorted({str(v) for v in dims.values()}) if isinstance(dims, dict) else []
        return ", ".join(kinds) or str(truth.get("kind") or "the reference ratings")
    return str(truth) if truth else "the reference ratings"


def _ci_level(meta: dict) -> str:
    """The level of the evaluation's intervals (its bootstrap's), "95%" when not recorded."""
    recorded = finite((meta.get("bootstrap") or {}).get("level"))
    return level(1 - recorded if recorded is not None and 0 < recorded < 1 else DEFAULT_ALPHA)


def _overall(agreement: pl.DataFrame) -> pl.DataFrame:
    return agreement.filter(pl.col("fold").is_null())


def _agreement_figure(overall: pl.DataFrame, fig_id: str, ci_level: str) -> Plot:
    dims = list(dict.fromkeys(overall["dimension"].to_list()))
    raters = [r for r in ("model", "counselor") if r in set(overall["rater"].to_list())]
    raters += [r for r in dict.fromkeys(overall["rater"].to_list()) if r not in raters]
    metrics = [("pearson", "Pearson r"), ("spearman", "Spearman ρ"), ("mse", "MSE")]
    fig = figure(8.5, 0.32 * len(dims) * max(1, len(raters)) + 1.3)
    axes = panels(fig, len(metrics), 3)
    colors = {"model": MODEL_COLOR, "counselor": COUNSELOR_COLOR}
    offsets = np.linspace(-0.15, 0.15, len(raters)) if len(raters) > 1 else [0.0]
    for ax, (metric, name) in zip(axes, metrics, strict=True):
        for rater, off in zip(raters, offsets, strict=True):
            rows = overall.filter(pl.col("rater") == rater)
            by_dim = {r["dimension"]: r for r in rows.iter_rows(named=True)}
            ys = [i + off for i, d in enumerate(dims) if d in by_dim]
            rs = [by_dim[d] for d in dims if d in by_dim]
            whiskers(
                ax,
                ys,
                rs,
                metric,
                f"{metric}_lo",
                f"{metric}_hi",
                colors.get(rater, MUTED_COLOR),
                rater,
            )
        row_labels(ax, dims if ax is axes[0] else [""] * len(dims), name)
    legend_below(fig, axes[0])
    caption = (
        f"Agreement with the client's rating per dimension, {ci_level} confidence intervals "
        "(model vs. the counselor's own rating where available)."
    )
    return plot(fig, fig_id, caption)


def _calibration_figure(calibration: pl.DataFrame, pairs: pl.DataFrame | None, fig_id: str) -> Plot:
    dims = list(dict.fromkeys(calibration["dimension"].to_list()))
    fig = figure(3.0 * min(len(dims), 3) + 0.5, 3.2 * math.ceil(len(dims) / 3))
    axes = panels(fig, len(dims), 3)
    values = [
        f
        for c in ("bin_lo", "bin_hi", "predicted_mean", "observed_mean")
        for v in calibration[c].to_list()
        if (f := finite(v)) is not None
    ]
    lo, hi = (min(values + [1.0]), max(values + [5.0])) if values else (1.0, 5.0)
    for ax, dim in zip(axes, dims, strict=True):
        if pairs is not None:
            p = pairs.filter(pl.col("dimension") == dim)
            p = p.sample(MAX_POINTS, seed=0) if p.height > MAX_POINTS else p
            ax.scatter(
                p["predicted"].to_numpy(),
                p["observed"].to_numpy(),
                s=6,
                color=MUTED_COLOR,
                alpha=0.25,
                linewidths=0,
                rasterized=p.height > 400,
                label="sessions",
            )
        c = calibration.filter(pl.col("dimension") == dim).sort("bin_lo")
        bins = [
            (x, y, finite(sd) or 0.0)
            for px, oy, sd in c.select("predicted_mean", "observed_mean", "observed_sd").rows()
            if (x := finite(px)) is not None and (y := finite(oy)) is not None
        ]
        ax.errorbar(
            [x for x, _, _ in bins],
            [y for _, y, _ in bins],
            yerr=[sd for _, _, sd in bins],
            fmt="o-",
            color=MODEL_COLOR,
            capsize=3,
            markersize=5,
            label="bin mean ± sd",
        )
        ax.plot(
            [lo, hi],
            [lo, hi],
            linestyle="--",
            color="black",
            linewidth=0.8,
            label="perfect calibration",
        )
        ax.set_xlim(lo - 0.1, hi + 0.1)
        ax.set_ylim(lo - 0.1, hi + 0.1)
        ax.set_aspect("equal")
        ax.set_title(dim)
        ax.set_xlabel("predicted")
        ax.set_ylabel("observed (client)")
    legend_below(fig, axes[0])
    caption = (
        "Calibration: mean client rating (± sd) per bin of predicted score; grey dots "
        f"are single sessions (at most {MAX_POINTS:,} per panel, a random sample), the dashed "
        "line is perfect calibration."
    )
    return plot(fig, fig_id, caption)


def _agreement_sentences(meta: dict, overall: pl.DataFrame) -> list[str]:
    boot = meta.get("bootstrap") or {}
    ci_level = _ci_level(meta)
    how = (
        f"{ci_level} bootstrap intervals over {integer(boot.get('resamples'))} resamples"
        if boot.get("resamples")
        else f"{ci_level} intervals"
    )
    model = overall.filter(pl.col("rater") == "model")
    out = [
        f"Model scores were compared with {truth_name(meta)} on "
        f"{integer(meta.get('n_sessions'))} sessions ({how})."
    ]
    if model.height:
        parts = [
            f"{r['dimension']} {est_ci(r['pearson'], r['pearson_lo'], r['pearson_hi'])} "
            f"(n = {integer(r['n'])})"
            for r in model.iter_rows(named=True)
        ]
        out.append("Pearson r per dimension: " + "; ".join(parts) + ".")
        ranked = [r for r in model.iter_rows(named=True) if finite(r["pearson"]) is not None]
        if len(ranked) > 1:
            best = max(ranked, key=lambda r: r["pearson"])
            worst = min(ranked, key=lambda r: r["pearson"])
            best_lo, worst_hi = finite(best["pearson_lo"]), finite(worst["pearson_hi"])
            separated = best_lo is not None and worst_hi is not None and best_lo > worst_hi
            out.append(
                f"Agreement is highest on {best['dimension']} and lowest on {worst['dimension']}; "
                + (
                    "their intervals do not overlap."
                    if separated
                    else "their intervals overlap, so this ordering is not established."
                )
            )
    ratios = {d: finite(v) for d, v in (meta.get("model_vs_counselor") or {}).items()}
    if any(v is not None for v in ratios.values()):
        out.append(
            "The model's r divided by the counselor's own rating's r: "
            + "; ".join(f"{d} {num(v)}×" for d, v in ratios.items() if v is not None)
            + "."
        )
    return out


def _agreement_table(overall: pl.DataFrame, meta: dict, ci_level: str) -> Table:
    ratios = meta.get("model_vs_counselor") or {}
    rows = []
    for r in overall.sort("rater", descending=True, maintain_order=True).iter_rows(named=True):
        ratio = num(ratios.get(r["dimension"])) if r["rater"] == "model" else ""
        rows.append(
            [
                r["rater"],
                r["dimension"],
                integer(r["n"]),
                est_ci(r["pearson"], r["pearson_lo"], r["pearson_hi"]),
                est_ci(r["spearman"], r["spearman_lo"], r["spearman_hi"]),
                est_ci(r["mse"], r["mse_lo"], r["mse_hi"]),
                ratio,
            ]
        )
    return Table(
        [
            "rater",
            "dimension",
            "n",
            f"Pearson r [{ci_level} CI]",
            f"Spearman ρ [{ci_level} CI]",
            f"MSE [{ci_level} CI]",
            "r model / r counselor",
        ],
        rows,
        numeric_from=2,
    )


def _counselor_baseline(meta: dict) -> list[Block]:
    baseline = {
        d: b for d, b in (meta.get("counselor_baseline") or {}).items() if isinstance(b, dict)
    }
    if not baseline:
        return []
    rows = [
        [
            d,
            integer(b.get("n")),
            num(b.get("pearson")),
            num(b.get("spearman")),
            num(b.get("mse")),
            num(b.get("mean_gap")),
        ]
        for d, b in baseline.items()
    ]
    gaps = [(d, g) for d, b in baseline.items() if (g := finite(b.get("mean_gap"))) is not None]
    text = Paragraph(
        "The counselor's own post-session rating as a predictor of the client's (the "
        "baseline the paper compares against); mean gap = counselor − client, averaged over "
        "sessions: " + "; ".join(f"{d} {num(g)}" for d, g in gaps) + "."
        if gaps
        else None
    )
    return [
        Heading("Counselor baseline"),
        text,
        Table(["dimension", "n", "Pearson r", "Spearman ρ", "MSE", "mean gap"], rows),
    ]


def _folds(agreement: pl.DataFrame) -> list[Block]:
    folds = agreement.filter(pl.col("fold").is_not_null() & (pl.col("rater") == "model"))
    if folds.height == 0:
        return []
    summary = folds.group_by("dimension", maintain_order=True).agg(
        pl.len().alias("folds"),
        pl.col("pearson").mean().alias("mean"),
        pl.col("pearson").std().alias("sd"),
        pl.col("pearson").min().alias("min"),
        pl.col("pearson").max().alias("max"),
        pl.col("n").sum().alias("n"),
    )
    rows = [
        [
            r["dimension"],
            integer(r["folds"]),
            integer(r["n"]),
            num(r["mean"]),
            num(r["sd"]),
            f"{num(r['min'])} – {num(r['max'])}",
        ]
        for r in summary.iter_rows(named=True)
    ]
    return [
        Heading("Folds"),
        Paragraph(
            f"Held-out folds: Pearson r per fold, summarised over {integer(summary['folds'].max())} "
            "folds (sd across folds shows how much the estimate moves with the split)."
        ),
        Table(["dimension", "folds", "sessions", "mean r", "sd", "range"], rows),
    ]


def _rationale_text(meta: dict) -> Paragraph:
    sentences = []
    share = finite(meta.get("quote_found_share"))
    if share is not None:
        sentences.append(
            f"{pct(share)} of the quotes the model cited as evidence were found in the transcript."
        )
    overlap = meta.get("rationale_overlap") or {}
    if finite(overlap.get("rouge1")) is not None:
        skipped = (
            f", {integer(overlap.get('skipped'))} skipped" if finite(overlap.get("skipped")) else ""
        )
        sentences.append(
            "Rationale overlap with reference rationales: ROUGE-1 "
            f"{num(overlap.get('rouge1'))}, ROUGE-L {num(overlap.get('rougeL'))} "
            f"(n = {integer(overlap.get('n'))}{skipped})."
        )
    return Paragraph(*sentences)


def _from_metrics(meta: dict, ci_level: str) -> list[Block]:
    """Agreement from metrics.json alone, for an evaluation folder without agreement.parquet."""
    rows = [
        [
            d,
            integer(m.get("n")),
            est_ci(m.get("pearson"), *(m.get("pearson_ci") or [None, None])),
            est_ci(m.get("spearman"), *(m.get("spearman_ci") or [None, None])),
            est_ci(m.get("mse"), *(m.get("mse_ci") or [None, None])),
        ]
        for d, m in meta["dimensions"].items()
    ]
    return [
        Paragraph(
            f"Agreement on {integer(meta.get('n_sessions'))} sessions (from metrics.json; "
            "agreement.parquet is missing)."
        ),
        Table(
            [
                "dimension",
                "n",
                f"Pearson r [{ci_level} CI]",
                f"Spearman ρ [{ci_level} CI]",
                f"MSE [{ci_level} CI]",
            ],
            rows,
        ),
    ]


def agreement_section(ev: Findings) -> Section | None:
    """Agreement with the reference ratings: table and plot of r/ρ/MSE with CIs, counselor
    baseline, folds, calibration."""
    agreement = ev.tables.get("agreement")
    calibration = ev.tables.get("calibration")
    ci_level = _ci_level(ev.meta)
    blocks: list[Block] = []
    if agreement is not None and agreement.height:
        overall = _overall(agreement)
        text = _agreement_sentences(ev.meta, overall)
        blocks += [
            Paragraph(text[0]),
            Bullets(text[1:]),
            _agreement_table(overall, ev.meta, ci_level),
        ]
        if overall.height:
            blocks.append(_agreement_figure(overall, "fig-agreement", ci_level))
        blocks += _counselor_baseline(ev.meta) + _folds(agreement)
    elif isinstance(ev.meta.get("dimensions"), dict):
        blocks += _from_metrics(ev.meta, ci_level)
    blocks.append(_rationale_text(ev.meta))
    if calibration is not None and calibration.height:
        blocks += [
            Heading("Calibration"),
            _calibration_figure(calibration, ev.tables.get("pairs"), "fig-calibration"),
        ]
    blocks = shown(blocks)
    return Section("agreement", "Agreement", blocks) if blocks else None
