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
# Scorers beyond the first and the counselor (baselines): colours apart from those two.
OTHER_COLORS = ("#2e8b57", "#8e44ad", "#7f6a00", "#c0392b")


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


def rater_order(meta: dict, agreement: pl.DataFrame) -> list[str]:
    """The raters in the order evaluate was given them (metrics.json "raters"), the counselor
    last; a folder from before several scorers has "model" and "counselor"."""
    named = [r.get("name") for r in meta.get("raters") or [] if isinstance(r, dict)]
    order = [str(n) for n in named if n] or ["model"]
    present = list(dict.fromkeys(agreement["rater"].to_list()))
    order = [r for r in order if r in present]
    return (
        order
        + [r for r in present if r not in order and r != "counselor"]
        + (["counselor"] if "counselor" in present else [])
    )


def first_rater(meta: dict) -> str:
    named = [r.get("name") for r in meta.get("raters") or [] if isinstance(r, dict)]
    return str(named[0]) if named and named[0] else "model"


def _no_interval_reason(row: dict, meta: dict) -> str:
    """Why a cell with a point estimate has no interval, in the reader's terms."""
    n = finite(row.get("n"))
    if n is not None and n < 3:
        return f"n = {integer(n)}"
    if not (meta.get("bootstrap") or {}).get("resamples"):
        return "no bootstrap"
    if row.get("fold") is not None and not (meta.get("bootstrap") or {}).get("fold_intervals"):
        return "per-fold rows are not bootstrapped"
    degenerate = finite(row.get("ci_degenerate"))
    if degenerate:
        return f"{integer(degenerate)} resamples had a constant side"
    return "the bootstrap was undefined"


def stat_cell(row: dict, stat: str, meta: dict) -> str:
    """An estimate with its interval; a point without one says why (small n, constant resamples)
    rather than standing bare next to cells that have intervals."""
    est, lo, hi = row.get(stat), row.get(f"{stat}_lo"), row.get(f"{stat}_hi")
    if finite(est) is not None and (finite(lo) is None or finite(hi) is None):
        return f"{num(est)} (no interval: {_no_interval_reason(row, meta)})"
    return est_ci(est, lo, hi)


def _agreement_figure(overall: pl.DataFrame, fig_id: str, ci_level: str, raters: list[str]) -> Plot:
    dims = list(dict.fromkeys(overall["dimension"].to_list()))
    metrics = [("pearson", "Pearson r"), ("spearman", "Spearman ρ"), ("mse", "MSE")]
    fig = figure(8.5, 0.32 * len(dims) * max(1, len(raters)) + 1.3)
    axes = panels(fig, len(metrics), 3)
    colors = {raters[0]: MODEL_COLOR, "counselor": COUNSELOR_COLOR}
    others = [r for r in raters if r not in colors]
    colors.update({r: OTHER_COLORS[i % len(OTHER_COLORS)] for i, r in enumerate(others)})
    spread = min(0.35, 0.1 * len(raters))
    offsets = np.linspace(-spread, spread, len(raters)) if len(raters) > 1 else [0.0]
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
        f"Agreement with the reference rating per dimension, {ci_level} confidence intervals "
        f"({', '.join(raters)}; the counselor is the counselor's own rating where available)."
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
    model = overall.filter(pl.col("rater") == first_rater(meta))
    out = [
        f"{first_rater(meta).capitalize()} scores were compared with {truth_name(meta)} on "
        f"{integer(meta.get('n_sessions'))} sessions ({how})."
    ]
    if model.height:
        parts = [
            f"{r['dimension']} {stat_cell(r, 'pearson', meta)} (n = {integer(r['n'])})"
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


def _agreement_table(overall: pl.DataFrame, meta: dict, ci_level: str, raters: list[str]) -> Table:
    ratios = meta.get("model_vs_counselor") or {}
    first = first_rater(meta)
    rows = []
    rank = {r: i for i, r in enumerate(raters)}
    ordered = sorted(overall.iter_rows(named=True), key=lambda r: rank.get(r["rater"], len(rank)))
    for r in ordered:
        ratio = num(ratios.get(r["dimension"])) if r["rater"] == first else ""
        rows.append(
            [
                r["rater"],
                r["dimension"],
                integer(r["n"]),
                stat_cell(r, "pearson", meta),
                stat_cell(r, "spearman", meta),
                stat_cell(r, "mse", meta),
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
            f"r {first} / r counselor",
        ],
        rows,
        numeric_from=2,
    )


def comparison_sentence(r: dict, ci_level: str) -> str:
    """One pair of scorers on one dimension: who agrees better with the truth, by how much in
    Pearson r, or that the paired interval of the difference includes 0."""
    a, b, dim = r["rater_a"], r["rater_b"], r["dimension"]
    d, lo, hi = (
        finite(r.get("difference")),
        finite(r.get("difference_lo")),
        finite(r.get("difference_hi")),
    )
    if d is None:
        return f"{a} vs {b} on {dim}: the difference in r is undefined (a constant side)."
    if lo is None or hi is None:
        return (
            f"{a} vs {b} on {dim}: r differs by {num(d)} (no interval: n = {integer(r.get('n'))})."
        )
    if lo > 0:
        return f"{a} beats {b} on {dim} by {num(d)} [{num(lo)}, {num(hi)}] in r."
    if hi < 0:
        return f"{b} beats {a} on {dim} by {num(-d)} [{num(-hi)}, {num(-lo)}] in r."
    return (
        f"{a} and {b} do not differ detectably on {dim} (r difference {num(d)} "
        f"[{num(lo)}, {num(hi)}], {ci_level} paired bootstrap)."
    )


def _comparisons(comparisons: pl.DataFrame | None, ci_level: str) -> list[Block]:
    if comparisons is None or comparisons.height == 0:
        return []
    rows = list(comparisons.iter_rows(named=True))
    table = Table(
        [
            "rater a",
            "rater b",
            "dimension",
            "n",
            "r a",
            "r b",
            f"r a − r b [{ci_level} CI]",
            f"MSE a − MSE b [{ci_level} CI]",
        ],
        [
            [
                r["rater_a"],
                r["rater_b"],
                r["dimension"],
                integer(r["n"]),
                num(r["pearson_a"]),
                num(r["pearson_b"]),
                est_ci(r["difference"], r["difference_lo"], r["difference_hi"]),
                est_ci(r["mse_difference"], r["mse_difference_lo"], r["mse_difference_hi"]),
            ]
            for r in rows
        ],
        numeric_from=3,
    )
    return [
        Heading("Scorers side by side"),
        Paragraph(
            "Each pair of scorers on the sessions both scored, against the same truth; the "
            "intervals come from a paired bootstrap over sessions (a session's two predictions "
            "and its truth are resampled together)."
        ),
        Bullets(comparison_sentence(r, ci_level) for r in rows),
        table,
    ]


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


def _folds(agreement: pl.DataFrame, rater: str = "model") -> list[Block]:
    folds = agreement.filter(pl.col("fold").is_not_null() & (pl.col("rater") == rater))
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
            *(
                stat_cell(
                    {
                        "n": m.get("n"),
                        s: m.get(s),
                        f"{s}_lo": (m.get(f"{s}_ci") or [None, None])[0],
                        f"{s}_hi": (m.get(f"{s}_ci") or [None, None])[1],
                    },
                    s,
                    meta,
                )
                for s in ("pearson", "spearman", "mse")
            ),
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


def _score_kinds(meta: dict) -> list[Block]:
    """Which raters are expected scores, and whether their spread tells the misses (#30)."""
    raters = [r for r in meta.get("raters") or [] if isinstance(r, dict)]
    expected = [str(r.get("name")) for r in raters if r.get("score") == "expected"]
    if not expected:
        return []
    blocks: list[Block] = [
        Paragraph(
            f"{', '.join(expected)}: expected scores, Σ s·p(s) over the probabilities the model "
            "gave each rating at the score token, beside the decoded (greedy) score of the same "
            "run. The expected score keeps what the model knows when its most likely rating is "
            "the same for every session."
        )
    ]
    spread = meta.get("spread")
    by_dim = spread.get("by_dimension") if isinstance(spread, dict) else None
    if isinstance(by_dim, dict):
        lines = []
        for dim, m in by_dim.items():
            rho, ratio = m.get("spearman"), m.get("top_over_bottom")
            if rho is None:
                continue
            lines.append(
                f"{dim}: Spearman ρ {num(rho)} between the spread and the expected score's "
                f"absolute error (n {integer(m.get('n'))})"
                + (
                    f"; the widest tenth's mean error is {num(ratio)}× the narrowest tenth's"
                    if ratio is not None
                    else ""
                )
            )
        if lines:
            blocks += [
                Paragraph(
                    "Are the uncertain scores the ones that miss? Spread is the standard "
                    "deviation of the score token's distribution, averaged over a dimension's items."
                ),
                Bullets(lines),
            ]
    return blocks


def agreement_section(ev: Findings, section_id: str = "agreement") -> Section | None:
    """Agreement with the reference ratings: table and plot of r/ρ/MSE with CIs, counselor
    baseline, folds, calibration. `section_id` prefixes the figures' ids (several evaluations
    share a page)."""
    agreement = ev.tables.get("agreement")
    calibration = ev.tables.get("calibration")
    ci_level = _ci_level(ev.meta)
    blocks: list[Block] = []
    if agreement is not None and agreement.height:
        overall = _overall(agreement)
        raters = rater_order(ev.meta, overall)
        text = _agreement_sentences(ev.meta, overall)
        blocks += [
            Paragraph(text[0]),
            Bullets(text[1:]),
            _agreement_table(overall, ev.meta, ci_level, raters),
        ]
        if overall.height:
            blocks.append(_agreement_figure(overall, f"{section_id}-fig", ci_level, raters))
        blocks += _score_kinds(ev.meta)
        blocks += _comparisons(ev.tables.get("comparisons"), ci_level)
        blocks += _counselor_baseline(ev.meta) + _folds(agreement, first_rater(ev.meta))
    elif isinstance(ev.meta.get("dimensions"), dict):
        blocks += _from_metrics(ev.meta, ci_level)
    blocks.append(_rationale_text(ev.meta))
    if calibration is not None and calibration.height:
        blocks += [
            Heading("Calibration"),
            _calibration_figure(calibration, ev.tables.get("pairs"), f"{section_id}-calibration"),
        ]
    blocks = shown(blocks)
    return Section(section_id, "Agreement", blocks) if blocks else None
