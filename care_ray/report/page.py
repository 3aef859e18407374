"""`care-ray report`: one self-contained report.html from the folders `care-ray evaluate` and
`care-ray analyze` write (the tables of the findings contract).

Tables in, HTML string out: every plot is matplotlib rendered to inline SVG (no scripts, no external
URLs), every value that came from a table is escaped, and every finding gets a sentence that says what
was measured, on how many sessions, and with what uncertainty. A section appears only when its table
does. Quotes in challenge examples are shown (they are part of the product) but never logged.
"""

from __future__ import annotations

import html
import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats
from scipy.stats.contingency import association
from statsmodels.stats.proportion import proportion_confint

from care_ray.common.errors import UserError

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

EVALUATION_KIND = "care-ray evaluation"
ANALYSIS_KIND = "care-ray analysis"
LEVEL = 0.95
ALPHA = 0.05
DEFAULT_TITLE = "care-ray report"

# Columns each table must have (the findings contract); extra columns are ignored.
EVALUATION_TABLES: dict[str, tuple[str, ...]] = {
    "agreement": (
        "rater",
        "dimension",
        "fold",
        "n",
        "pearson",
        "pearson_lo",
        "pearson_hi",
        "spearman",
        "spearman_lo",
        "spearman_hi",
        "mse",
        "mse_lo",
        "mse_hi",
    ),
    "calibration": (
        "dimension",
        "bin",
        "bin_lo",
        "bin_hi",
        "n",
        "predicted_mean",
        "observed_mean",
        "observed_sd",
    ),
    "pairs": ("session_id", "dimension", "predicted", "observed"),
}
ANALYSIS_TABLES: dict[str, tuple[str, ...]] = {
    "population": (
        "group_by",
        "grp",
        "outcome",
        "n",
        "mean",
        "sd",
        "q25",
        "median",
        "q75",
        "low_share",
        "is_weakest",
    ),
    "counselor_profiles": (
        "counselor_id",
        "outcome",
        "n_sessions",
        "raw_mean",
        "pooled_mean",
        "pooled_lo",
        "pooled_hi",
        "rank",
        "is_strength",
        "is_weakest",
    ),
    "features": ("session_id",),
    "transitions": ("source", "strategy", "reaction", "n", "share"),
    "drivers": (
        "outcome",
        "feature",
        "coef_std",
        "std_error",
        "ci_low",
        "ci_high",
        "p_value",
        "p_adjusted",
        "n",
        "model",
        "r2",
    ),
    "contrasts": (
        "by",
        "variable",
        "grp",
        "n",
        "mean",
        "sd",
        "effect_size",
        "effect_measure",
        "test",
        "statistic",
        "p_value",
        "p_adjusted",
    ),
    "challenge_terms": ("dimension", "term", "count", "log_odds", "z"),
    "challenge_clusters": (
        "dimension",
        "cluster",
        "size",
        "top_terms",
        "example_rationale",
        "example_quote",
    ),
    "trajectories": ("client_id", "outcome", "n_sessions", "first", "last", "slope", "rises"),
    "trajectory_summary": ("outcome", "session_index", "n", "mean"),
    "trajectory_clients": ("outcome", "n_clients", "share_rising", "mean_slope"),
}

MODEL_COLOR, COUNSELOR_COLOR, SIGNIFICANT_COLOR, MUTED_COLOR = (
    "#1f6fb4",
    "#e07b16",
    "#c0392b",
    "#8a8a8a",
)
_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "path",  # glyphs as paths: the page renders the same without the fonts installed
    "svg.hashsalt": "care-ray",  # deterministic clip-path ids (made unique per figure in _svg)
    "text.parse_math": False,  # a "$" in a counselor id or a term is text, not mathtext
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}


class ReportError(UserError):
    """A folder that is missing or is not an evaluate/analyze output: a one-line user error."""


@dataclass(frozen=True)
class Findings:
    """One evaluate or analyze output folder: its metrics.json / manifest.json and the tables present."""

    kind: str
    path: Path
    meta: dict
    tables: dict[str, pl.DataFrame]

    @property
    def label(self) -> str:
        return self.path.resolve().name or str(self.path)


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    body: str


# ----------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReportError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(value, dict):
        raise ReportError(f"{path} is not a JSON object")
    return value


def folder_kind(path: Path) -> tuple[str | None, dict]:
    """The "kind" written in metrics.json (evaluate) or manifest.json (analyze), and that file's content."""
    for name in ("metrics.json", "manifest.json"):
        if (path / name).is_file():
            meta = _read_json(path / name)
            if meta.get("kind") in (EVALUATION_KIND, ANALYSIS_KIND):
                return meta["kind"], meta
    for name in ("metrics.json", "manifest.json"):
        if (path / name).is_file():
            return _read_json(path / name).get("kind"), {}
    return None, {}


def _read_table(path: Path, name: str, required: Sequence[str]) -> pl.DataFrame:
    try:
        frame = pl.DataFrame(pq.read_table(path))
    except Exception as e:  # pyarrow raises several types for a damaged or empty file
        raise ReportError(f"{path}: cannot read {name} table ({type(e).__name__}: {e})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ReportError(f"{path}: {name} table lacks column(s) {', '.join(missing)}")
    return frame


def load_findings(path: Path, expected_kind: str) -> Findings:
    """Read one output folder, checking it is the kind the caller expects (evaluation or analysis)."""
    option = "--evaluation" if expected_kind == EVALUATION_KIND else "--analysis"
    path = Path(path)
    if not path.exists():
        raise ReportError(f"{option} folder not found: {path}")
    if not path.is_dir():
        raise ReportError(f"{option} {path} is not a folder")
    kind, meta = folder_kind(path)
    if kind is None:
        raise ReportError(
            f'{path} is neither a care-ray evaluation nor an analysis (no metrics.json or manifest.json with a "kind")'
        )
    if kind != expected_kind:
        hint = {
            EVALUATION_KIND: " (pass it with --evaluation)",
            ANALYSIS_KIND: " (pass it with --analysis)",
        }.get(kind, "")
        raise ReportError(f"{path} is a {kind!r} folder, not a {expected_kind}{hint}")
    spec = EVALUATION_TABLES if kind == EVALUATION_KIND else ANALYSIS_TABLES
    tables = {
        name: _read_table(path / f"{name}.parquet", name, cols)
        for name, cols in spec.items()
        if (path / f"{name}.parquet").exists()
    }
    return Findings(kind=kind, path=path, meta=meta, tables=tables)


# ----------------------------------------------------------------------------- numbers and text


def _f(value) -> float | None:
    """A finite float, or None for null/NaN/inf/non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _num(value, digits: int = 2) -> str:
    f = _f(value)
    return "–" if f is None else f"{f:.{digits}f}"


def _int(value) -> str:
    f = _f(value)
    return "–" if f is None else f"{int(round(f)):,}"


def _ci(lo, hi, digits: int = 2) -> str:
    return "" if _f(lo) is None or _f(hi) is None else f"[{_num(lo, digits)}, {_num(hi, digits)}]"


def _est_ci(est, lo, hi, digits: int = 2) -> str:
    ci = _ci(lo, hi, digits)
    return f"{_num(est, digits)} {ci}".strip()


def _pct_ci(share, lo, hi) -> str:
    return (
        f"{_pct(share)} [{_pct(lo)}, {_pct(hi)}]"
        if _f(lo) is not None and _f(hi) is not None
        else _pct(share)
    )


def _pct(value, digits: int = 0) -> str:
    f = _f(value)
    return "–" if f is None else f"{100 * f:.{digits}f}%"


def _p(value) -> str:
    f = _f(value)
    if f is None:
        return "p not available"
    return "p < 0.001" if f < 0.001 else f"p = {f:.3f}"


def _p_cell(value) -> str:
    f = _f(value)
    return "–" if f is None else ("< 0.001" if f < 0.001 else f"{f:.3f}")


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def mean_ci(mean, sd, n, level: float = LEVEL) -> tuple[float | None, float | None]:
    """t-interval of a mean from its summary (mean, sd, n); None when it cannot be formed."""
    m, s, k = _f(mean), _f(sd), _f(n)
    if m is None or s is None or k is None or k < 2:
        return None, None
    lo, hi = stats.t.interval(level, df=k - 1, loc=m, scale=s / math.sqrt(k)) if s > 0 else (m, m)
    return float(lo), float(hi)


def share_ci(share, n) -> tuple[float | None, float | None]:
    """Wilson interval of a share of n."""
    s, k = _f(share), _f(n)
    if s is None or k is None or k < 1:
        return None, None
    lo, hi = proportion_confint(int(round(s * k)), int(k), alpha=1 - LEVEL, method="wilson")
    return float(lo), float(hi)


def _short(text, limit: int = 38) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _para(*sentences: str) -> str:
    """A finding's text; sentences are plain text and escaped here."""
    return '<p class="finding">' + " ".join(_e(s) for s in sentences if s) + "</p>"


def _bullets(sentences: Iterable[str]) -> str:
    items = "".join(f"<li>{_e(s)}</li>" for s in sentences if s)
    return f'<ul class="findings">{items}</ul>' if items else ""


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence],
    caption: str | None = None,
    highlight: Sequence[bool] | None = None,
    numeric_from: int = 1,
) -> str:
    """An escaped HTML table; columns from `numeric_from` on are right-aligned, highlighted rows bold."""
    rows = list(rows)
    marks = list(highlight) if highlight is not None else [False] * len(rows)
    head = "".join(
        f"<th{' class=num' if i >= numeric_from else ''}>{_e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row, mark in zip(rows, marks, strict=True):
        cells = "".join(
            f"<td{' class=num' if i >= numeric_from else ''}>{_e(v)}</td>"
            for i, v in enumerate(row)
        )
        body.append(f"<tr{' class=hl' if mark else ''}>{cells}</tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return (
        f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


# ----------------------------------------------------------------------------- figures

_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def _svg(fig: Figure, fig_id: str, caption: str) -> str:
    """The figure as an inline <svg> inside <figure>, its ids prefixed so that several figures can share
    one HTML document (matplotlib reuses glyph and clip-path ids across files)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>|<!--.*?-->", "", svg, flags=re.S)
    prefix = re.sub(r"[^A-Za-z0-9_-]", "-", fig_id)
    svg = _SVG_ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = _SVG_REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", svg)
    svg = svg.replace("<svg ", f'<svg class="plot" role="img" aria-label="{_e(caption)}" ', 1)
    return f'<figure id="{_e(fig_id)}">{svg}<figcaption>{_e(caption)}</figcaption></figure>'


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, max(height, 1.6)), layout="constrained")


def _panels(fig: Figure, n: int, ncols: int, sharex: bool = False) -> list:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _legend_below(fig: Figure, ax) -> None:
    """One legend under all panels, where it cannot cover data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=8)


def _whiskers(
    ax,
    y: Sequence[float],
    est: Sequence,
    lo: Sequence,
    hi: Sequence,
    color,
    label: str | None = None,
    marker: str = "o",
    filled: bool = True,
) -> None:
    """Dots at `est` with horizontal whiskers lo..hi (missing bounds: dot only)."""
    est_f = np.array([_f(v) if _f(v) is not None else np.nan for v in est], dtype=float)
    lo_f = np.array([_f(v) if _f(v) is not None else np.nan for v in lo], dtype=float)
    hi_f = np.array([_f(v) if _f(v) is not None else np.nan for v in hi], dtype=float)
    err = np.vstack(
        [np.where(np.isnan(lo_f), 0, est_f - lo_f), np.where(np.isnan(hi_f), 0, hi_f - est_f)]
    )
    ax.errorbar(
        est_f,
        y,
        xerr=np.clip(np.nan_to_num(err), 0, None),
        fmt=marker,
        color=color,
        ecolor=color,
        elinewidth=1.4,
        capsize=3,
        markersize=5,
        markerfacecolor=color if filled else "white",
        label=label,
    )


# ----------------------------------------------------------------------------- evaluation


def _overall_agreement(agreement: pl.DataFrame) -> pl.DataFrame:
    return agreement.filter(pl.col("fold").is_null())


def _agreement_figure(overall: pl.DataFrame, fig_id: str) -> str:
    dims = list(dict.fromkeys(overall["dimension"].to_list()))
    raters = [r for r in ("model", "counselor") if r in set(overall["rater"].to_list())]
    raters += [r for r in dict.fromkeys(overall["rater"].to_list()) if r not in raters]
    metrics = [("pearson", "Pearson r"), ("spearman", "Spearman ρ"), ("mse", "MSE")]
    fig = _figure(8.5, 0.32 * len(dims) * max(1, len(raters)) + 1.3)
    axes = _panels(fig, len(metrics), 3)
    colors = {"model": MODEL_COLOR, "counselor": COUNSELOR_COLOR}
    offsets = np.linspace(-0.15, 0.15, len(raters)) if len(raters) > 1 else [0.0]
    for ax, (metric, name) in zip(axes, metrics, strict=True):
        for rater, off in zip(raters, offsets, strict=True):
            rows = overall.filter(pl.col("rater") == rater)
            by_dim = {r["dimension"]: r for r in rows.iter_rows(named=True)}
            ys = [i + off for i, d in enumerate(dims) if d in by_dim]
            rs = [by_dim[d] for d in dims if d in by_dim]
            _whiskers(
                ax,
                ys,
                [r[metric] for r in rs],
                [r[f"{metric}_lo"] for r in rs],
                [r[f"{metric}_hi"] for r in rs],
                colors.get(rater, MUTED_COLOR),
                label=rater,
            )
        ax.set_yticks(range(len(dims)), dims if ax is axes[0] else [""] * len(dims))
        ax.set_ylim(len(dims) - 0.5, -0.5)
        ax.set_title(name)
    _legend_below(fig, axes[0])
    caption = (
        f"Agreement with the client's rating per dimension, {int(LEVEL * 100)}% "
        "confidence intervals (model vs. the counselor's own rating where available)."
    )
    return _svg(fig, fig_id, caption)


MAX_POINTS = (
    2000  # sessions drawn per calibration panel; more only blur the picture and bloat the page
)


def _calibration_figure(calibration: pl.DataFrame, pairs: pl.DataFrame | None, fig_id: str) -> str:
    dims = list(dict.fromkeys(calibration["dimension"].to_list()))
    fig = _figure(3.0 * min(len(dims), 3) + 0.5, 3.2 * math.ceil(len(dims) / 3))
    axes = _panels(fig, len(dims), 3)
    values = [
        v
        for c in ("bin_lo", "bin_hi", "predicted_mean", "observed_mean")
        for v in calibration[c].to_list()
        if _f(v) is not None
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
        x = [_f(v) for v in c["predicted_mean"].to_list()]
        y = [_f(v) for v in c["observed_mean"].to_list()]
        sd = [_f(v) or 0.0 for v in c["observed_sd"].to_list()]
        keep = [i for i in range(len(x)) if x[i] is not None and y[i] is not None]
        ax.errorbar(
            [x[i] for i in keep],
            [y[i] for i in keep],
            yerr=[sd[i] for i in keep],
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
    _legend_below(fig, axes[0])
    caption = (
        "Calibration: mean client rating (± sd) per bin of predicted score; grey dots "
        f"are single sessions (at most {MAX_POINTS:,} per panel, a random sample), the dashed "
        "line is perfect calibration."
    )
    return _svg(fig, fig_id, caption)


def truth_name(meta: dict) -> str:
    """What the scores were compared with: metrics.json "truth" is a name or {kind, dimensions, …}."""
    truth = meta.get("truth")
    if isinstance(truth, dict):
        dims = truth.get("dimensions")
        kinds = sorted({str(v) for v in dims.values()}) if isinstance(dims, dict) else []
        return ", ".join(kinds) or str(truth.get("kind") or "the reference ratings")
    return str(truth) if truth else "the reference ratings"


def _agreement_sentences(meta: dict, overall: pl.DataFrame) -> list[str]:
    truth = truth_name(meta)
    boot = meta.get("bootstrap") or {}
    level = _f(boot.get("level")) or LEVEL
    how = (
        f"{int(round(level * 100))}% bootstrap intervals over {_int(boot.get('resamples'))} resamples"
        if boot.get("resamples")
        else f"{int(round(level * 100))}% intervals"
    )
    model = overall.filter(pl.col("rater") == "model")
    out = [
        f"Model scores were compared with {truth} on {_int(meta.get('n_sessions'))} sessions ({how})."
    ]
    if model.height:
        parts = [
            f"{r['dimension']} {_est_ci(r['pearson'], r['pearson_lo'], r['pearson_hi'])} (n = {_int(r['n'])})"
            for r in model.iter_rows(named=True)
        ]
        out.append("Pearson r per dimension: " + "; ".join(parts) + ".")
        ranked = [r for r in model.iter_rows(named=True) if _f(r["pearson"]) is not None]
        if len(ranked) > 1:
            best, worst = (
                max(ranked, key=lambda r: r["pearson"]),
                min(ranked, key=lambda r: r["pearson"]),
            )
            separated = (
                _f(best["pearson_lo"]) is not None
                and _f(worst["pearson_hi"]) is not None
                and best["pearson_lo"] > worst["pearson_hi"]
            )
            out.append(
                f"Agreement is highest on {best['dimension']} and lowest on {worst['dimension']}; "
                + (
                    "their intervals do not overlap."
                    if separated
                    else "their intervals overlap, so this ordering is not established."
                )
            )
    ratios = {d: _f(v) for d, v in (meta.get("model_vs_counselor") or {}).items()}
    if any(v is not None for v in ratios.values()):
        out.append(
            "The model's r divided by the counselor's own rating's r: "
            + "; ".join(f"{d} {_num(v)}×" for d, v in ratios.items() if v is not None)
            + "."
        )
    return out


def _agreement_table(overall: pl.DataFrame, meta: dict) -> str:
    ratios = meta.get("model_vs_counselor") or {}
    rows = []
    for r in overall.sort("rater", descending=True, maintain_order=True).iter_rows(named=True):
        ratio = _num(ratios.get(r["dimension"])) if r["rater"] == "model" else ""
        rows.append(
            [
                r["rater"],
                r["dimension"],
                _int(r["n"]),
                _est_ci(r["pearson"], r["pearson_lo"], r["pearson_hi"]),
                _est_ci(r["spearman"], r["spearman_lo"], r["spearman_hi"]),
                _est_ci(r["mse"], r["mse_lo"], r["mse_hi"]),
                ratio,
            ]
        )
    return html_table(
        [
            "rater",
            "dimension",
            "n",
            "Pearson r [95% CI]",
            "Spearman ρ [95% CI]",
            "MSE [95% CI]",
            "r model / r counselor",
        ],
        rows,
        numeric_from=2,
    )


def _counselor_baseline_table(meta: dict) -> str:
    baseline = meta.get("counselor_baseline") or {}
    if not baseline:
        return ""
    rows = [
        [
            d,
            _int(b.get("n")),
            _num(b.get("pearson")),
            _num(b.get("spearman")),
            _num(b.get("mse")),
            _num(b.get("mean_gap")),
        ]
        for d, b in baseline.items()
        if isinstance(b, dict)
    ]
    gaps = [
        (d, _f(b.get("mean_gap")))
        for d, b in baseline.items()
        if isinstance(b, dict) and _f(b.get("mean_gap")) is not None
    ]
    text = (
        _para(
            "The counselor's own post-session rating as a predictor of the client's (the "
            "baseline the paper compares against); "
            "mean gap = counselor − client, averaged over sessions: "
            + "; ".join(f"{d} {_num(g)}" for d, g in gaps)
            + "."
        )
        if gaps
        else ""
    )
    return (
        "<h4>Counselor baseline</h4>"
        + text
        + html_table(["dimension", "n", "Pearson r", "Spearman ρ", "MSE", "mean gap"], rows)
    )


def _folds_table(agreement: pl.DataFrame) -> str:
    folds = agreement.filter(pl.col("fold").is_not_null() & (pl.col("rater") == "model"))
    if folds.height == 0:
        return ""
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
            _int(r["folds"]),
            _int(r["n"]),
            _num(r["mean"]),
            _num(r["sd"]),
            f"{_num(r['min'])} – {_num(r['max'])}",
        ]
        for r in summary.iter_rows(named=True)
    ]
    text = _para(
        f"Held-out folds: Pearson r per fold, summarised over {_int(summary['folds'].max())} "
        "folds (sd across folds shows how much the estimate moves with the split)."
    )
    return (
        "<h4>Folds</h4>"
        + text
        + html_table(["dimension", "folds", "sessions", "mean r", "sd", "range"], rows)
    )


def _rationale_text(meta: dict) -> str:
    sentences = []
    share = _f(meta.get("quote_found_share"))
    if share is not None:
        sentences.append(
            f"{_pct(share)} of the quotes the model cited as evidence were found in the transcript."
        )
    overlap = meta.get("rationale_overlap") or {}
    if _f(overlap.get("rouge1")) is not None:
        skipped = _int(overlap.get("skipped"))
        skipped_note = f", {skipped} skipped" if _f(overlap.get("skipped")) else ""
        sentences.append(
            "Rationale overlap with reference rationales: ROUGE-1 "
            f"{_num(overlap.get('rouge1'))}, ROUGE-L {_num(overlap.get('rougeL'))} "
            f"(n = {_int(overlap.get('n'))}{skipped_note})."
        )
    return _para(*sentences) if sentences else ""


def agreement_section(ev: Findings) -> Section | None:
    """Agreement with the reference ratings: table and plot of r/ρ/MSE with CIs, counselor
    baseline, folds, calibration."""
    agreement = ev.tables.get("agreement")
    calibration = ev.tables.get("calibration")
    parts = []
    if agreement is not None and agreement.height:
        overall = _overall_agreement(agreement)
        text = _agreement_sentences(ev.meta, overall)
        parts += [_para(text[0]), _bullets(text[1:]), _agreement_table(overall, ev.meta)]
        if overall.height:
            parts.append(_agreement_figure(overall, "fig-agreement"))
        parts += [_counselor_baseline_table(ev.meta), _folds_table(agreement)]
    elif ev.meta.get("dimensions"):
        parts.append(
            _para(
                f"Agreement on {_int(ev.meta.get('n_sessions'))} sessions (from metrics.json; "
                "agreement.parquet is missing)."
            )
        )
        rows = [
            [
                d,
                _int(m.get("n")),
                _est_ci(m.get("pearson"), *(m.get("pearson_ci") or [None, None])),
                _est_ci(m.get("spearman"), *(m.get("spearman_ci") or [None, None])),
                _est_ci(m.get("mse"), *(m.get("mse_ci") or [None, None])),
            ]
            for d, m in ev.meta["dimensions"].items()
        ]
        parts.append(
            html_table(
                ["dimension", "n", "Pearson r [95% CI]", "Spearman ρ [95% CI]", "MSE [95% CI]"],
                rows,
            )
        )
    parts.append(_rationale_text(ev.meta))
    if calibration is not None and calibration.height:
        parts += [
            "<h4>Calibration</h4>",
            _calibration_figure(calibration, ev.tables.get("pairs"), "fig-calibration"),
        ]
    body = "".join(p for p in parts if p)
    return Section("agreement", "Agreement", body) if body else None


# ----------------------------------------------------------------------------- population

MAX_GROUPS = 15
# Smaller groups stay in the tables but out of plots and "lowest/highest" sentences: their CIs
# span the scale.
MIN_GROUP_N = 10


def _population_rows(pop: pl.DataFrame) -> list[dict]:
    rows = []
    for r in pop.iter_rows(named=True):
        lo, hi = mean_ci(r["mean"], r["sd"], r["n"])
        rows.append({**r, "mean_lo": lo, "mean_hi": hi})
    return rows


def _summary_marks(ax, ys: Sequence[float], rs: Sequence[dict]) -> None:
    """Interquartile bar, median tick and mean with its CI for each row."""
    boxes: list[tuple[float, float, float]] = []
    for y, r in zip(ys, rs, strict=True):
        q25, q75 = _f(r["q25"]), _f(r["q75"])
        if q25 is not None and q75 is not None:
            boxes.append((y, q25, q75))
    ax.barh(
        [y for y, _, _ in boxes],
        [b - a for _, a, b in boxes],
        left=[a for _, a, _ in boxes],
        height=0.55,
        color="#d6e4f0",
        label="interquartile range",
    )
    medians = [
        (y, _f(r["median"])) for y, r in zip(ys, rs, strict=True) if _f(r["median"]) is not None
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
    _whiskers(
        ax,
        ys,
        [r["mean"] for r in rs],
        [r["mean_lo"] for r in rs],
        [r["mean_hi"] for r in rs],
        MODEL_COLOR,
        label="mean, 95% CI",
    )


def _overall_figure(rows: list[dict], outcomes: list[str], fig_id: str) -> str:
    fig = _figure(7.0, 0.42 * len(outcomes) + 1.2)
    ax = fig.subplots()
    by_outcome = {r["outcome"]: r for r in rows}
    present = [o for o in outcomes if o in by_outcome]
    _summary_marks(ax, list(range(len(present))), [by_outcome[o] for o in present])
    ax.set_yticks(range(len(present)), present)
    ax.set_ylim(len(present) - 0.5, -0.5)
    ax.set_xlabel("score")
    _legend_below(fig, ax)
    return _svg(
        fig,
        fig_id,
        "Each outcome over all sessions: mean with 95% CI, median and interquartile range.",
    )


def _population_figure(
    rows: list[dict],
    groups: list[str],
    outcomes: list[str],
    fig_id: str,
    caption: str,
    comparable: bool,
) -> str:
    fig = _figure(
        min(3.0 * len(outcomes), 9.5) + 1.4,
        (0.3 * len(groups) + 0.8) * math.ceil(len(outcomes) / 3) + 0.4,
    )
    axes = _panels(fig, len(outcomes), 3, sharex=comparable)
    for k, (ax, outcome) in enumerate(zip(axes, outcomes, strict=True)):
        by_grp = {r["grp"]: r for r in rows if r["outcome"] == outcome}
        ys = [i for i, g in enumerate(groups) if g in by_grp]
        _summary_marks(ax, ys, [by_grp[g] for g in groups if g in by_grp])
        ax.set_yticks(
            range(len(groups)),
            [_short(g, 26) for g in groups] if k % 3 == 0 else [""] * len(groups),
        )
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_title(outcome)
    _legend_below(fig, axes[0])
    return _svg(fig, fig_id, caption)


def _histogram_figure(features: pl.DataFrame, outcomes: list[str], fig_id: str) -> str | None:
    present = [o for o in outcomes if o in features.columns and features.schema[o].is_numeric()]
    if not present:
        return None
    fig = _figure(min(3.0 * len(present), 9.5) + 0.6, 2.3 * math.ceil(len(present) / 3))
    axes = _panels(fig, len(present), 3)
    for ax, outcome in zip(axes, present, strict=True):
        values = features[outcome].drop_nulls().drop_nans().to_numpy()
        uniq, counts = np.unique(values, return_counts=True)
        if (
            len(uniq) <= 25
        ):  # scores are means of four 1-5 items: discrete, so bars at the values, not bins
            width = float(np.min(np.diff(uniq))) * 0.8 if len(uniq) > 1 else 0.2
            ax.bar(uniq, counts, width=width, color=MODEL_COLOR)
        else:
            ax.hist(values, bins="auto", color=MODEL_COLOR)
        ax.set_title(f"{outcome} (n = {len(values):,})")
        ax.set_xlabel("score")
    axes[0].set_ylabel("sessions")
    return _svg(fig, fig_id, "Distribution of each outcome over all sessions.")


def _weakest_test(features: pl.DataFrame | None, weakest: str, runner_up: str) -> str:
    """Paired test of the weakest outcome against the next-lowest on the same sessions."""
    if features is None or weakest not in features.columns or runner_up not in features.columns:
        return ""
    both = features.select(weakest, runner_up).drop_nulls().drop_nans()
    if both.height < 10:
        return ""
    diff = both[weakest].to_numpy() - both[runner_up].to_numpy()
    if not np.any(diff):
        return ""
    res = stats.wilcoxon(diff)
    return (
        f"On the {both.height:,} sessions with both, {weakest} is lower than {runner_up} by "
        f"{-np.mean(diff):.2f} on average "
        f"(Wilcoxon signed-rank {_p(res.pvalue)})."
    )


def _population_all_text(
    rows: list[dict], features: pl.DataFrame | None, low: str, comparable: bool
) -> list[str]:
    ranked = sorted((r for r in rows if _f(r["mean"]) is not None), key=lambda r: r["mean"])
    if not ranked:
        return []
    n = max(int(_f(r["n"]) or 0) for r in rows)
    means = ", ".join(
        f"{r['outcome']} {_est_ci(r['mean'], r['mean_lo'], r['mean_hi'])}" for r in ranked
    )
    if comparable and len(ranked) > 1:
        weakest = ranked[0]
        out = [
            f"Over {n:,} sessions, {weakest['outcome']} has the lowest mean of the {len(ranked)} outcomes: "
            f"{_est_ci(weakest['mean'], weakest['mean_lo'], weakest['mean_hi'])} (95% CI of the mean), against "
            + ", ".join(
                f"{r['outcome']} {_est_ci(r['mean'], r['mean_lo'], r['mean_hi'])}"
                for r in ranked[1:]
            )
            + ".",
            _weakest_test(features, weakest["outcome"], ranked[1]["outcome"]),
        ]
    else:
        out = [f"Means over {n:,} sessions (95% CIs): {means}."]
        if len(ranked) > 1:
            out.append(
                "These outcomes are different labels, possibly on different scales, so none is named the weakest."
            )
    shares = [
        f"{r['outcome']} {_pct(r['low_share'], 1)}"
        for r in ranked
        if _f(r["low_share"]) is not None
    ]
    if shares:
        out.append(f"Share of sessions scoring {low}: " + ", ".join(shares) + ".")
    return out


def _population_by_text(
    by: str, rows: list[dict], outcomes: list[str], comparable: bool
) -> list[str]:
    sentences = []
    for outcome in outcomes:
        rs = [
            r
            for r in rows
            if r["outcome"] == outcome
            and _f(r["mean"]) is not None
            and (_f(r["n"]) or 0) >= MIN_GROUP_N
        ]
        if len(rs) < 2:
            continue
        low, high = min(rs, key=lambda r: r["mean"]), max(rs, key=lambda r: r["mean"])
        separated = (
            low["mean_hi"] is not None
            and high["mean_lo"] is not None
            and low["mean_hi"] < high["mean_lo"]
        )
        sentences.append(
            f"{outcome}: lowest in {low['grp']} "
            f"({_est_ci(low['mean'], low['mean_lo'], low['mean_hi'])}, n = {_int(low['n'])}), "
            f"highest in {high['grp']} "
            f"({_est_ci(high['mean'], high['mean_lo'], high['mean_hi'])}, n = {_int(high['n'])})"
            + ("; the intervals do not overlap." if separated else "; the intervals overlap.")
        )
    weakest = [r["outcome"] for r in rows if r["is_weakest"]]
    if comparable and weakest:
        top = max(set(weakest), key=weakest.count)
        sentences.append(
            f"{top} is the weakest outcome in {weakest.count(top)} of {len({r['grp'] for r in rows})} {by} groups."
        )
    return sentences


def _low_phrase(meta: dict) -> str:
    threshold = _f(meta.get("low_threshold"))
    return (
        f"≤ {threshold:g}"
        if threshold is not None
        else "at or below the analysis's low-score threshold"
    )


def _comparable(an: Findings) -> bool:
    """Model scores (goal/task/bond) share one 1-5 scale; labels need not, so no label is called the weakest."""
    return an.meta.get("mode") != "labels"


def _population_all_html(rows: list[dict], outcomes: list[str], an: Findings, sid: str) -> str:
    features = an.tables.get("features")
    comparable = _comparable(an)
    text = [t for t in _population_all_text(rows, features, _low_phrase(an.meta), comparable) if t]
    weakest = [comparable and bool(r["is_weakest"]) for r in rows]
    table_rows = [
        [
            r["outcome"],
            _int(r["n"]),
            _est_ci(r["mean"], r["mean_lo"], r["mean_hi"]),
            _num(r["sd"]),
            f"{_num(r['median'])} [{_num(r['q25'])}, {_num(r['q75'])}]",
            _pct(r["low_share"], 1),
        ]
        + (["weakest" if w else ""] if comparable else [])
        for r, w in zip(rows, weakest, strict=True)
    ]
    headers = ["outcome", "n", "mean [95% CI]", "sd", "median [IQR]", "low share"] + (
        [""] if comparable else []
    )
    histogram = (
        _histogram_figure(features, outcomes, f"{sid}-hist") if features is not None else None
    )
    return (
        _para(*text[:1])
        + _bullets(text[1:])
        + html_table(headers, table_rows, highlight=weakest)
        + (histogram or _overall_figure(rows, outcomes, f"{sid}-all"))
    )


def _population_by_html(
    by: str, rows: list[dict], outcomes: list[str], sid: str, comparable: bool
) -> str:
    sizes: dict[str, float] = {}
    for r in rows:
        sizes[r["grp"]] = max(sizes.get(r["grp"], 0.0), _f(r["n"]) or 0.0)
    if len(sizes) < 2:
        return ""  # one group is the whole corpus again
    ordered = sorted(sizes, key=lambda g: -sizes[g])
    plotted = [g for g in ordered if sizes[g] >= MIN_GROUP_N][:MAX_GROUPS]
    left_out = len(ordered) - len(plotted)
    intro = f"{_plural(len(sizes), 'group')}; means with 95% CIs." + (
        f" {left_out} group(s) with fewer than {MIN_GROUP_N} sessions or beyond the "
        f"{MAX_GROUPS} largest are left out of the plot and the comparison (they are in "
        "the table)."
        if left_out
        else ""
    )
    figure = (
        _population_figure(
            rows,
            plotted,
            outcomes,
            f"{sid}-by-{by}",
            f"Outcomes by {by}: mean with 95% CI, median and interquartile range per group.",
            comparable,
        )
        if len(plotted) > 1
        else ""
    )
    return (
        f"<h4>By {_e(by)}</h4>"
        + _para(intro)
        + _bullets(_population_by_text(by, rows, outcomes, comparable))
        + figure
        + _population_by_table(rows, ordered, outcomes, comparable)
    )


def population_section(an: Findings, sid: str) -> Section | None:
    """Outcome distributions overall and per group, the weakest outcome, the low-score share."""
    pop = an.tables.get("population")
    if pop is None or pop.height == 0:
        return None
    outcomes = list(dict.fromkeys(pop["outcome"].to_list()))
    parts = []
    for by in dict.fromkeys(pop["group_by"].to_list()):
        rows = _population_rows(pop.filter(pl.col("group_by") == by))
        parts.append(
            _population_all_html(rows, outcomes, an, sid)
            if by == "all"
            else _population_by_html(str(by), rows, outcomes, sid, _comparable(an))
        )
    return Section(sid, "Population", "".join(parts))


def _population_by_table(
    rows: list[dict], groups: list[str], outcomes: list[str], comparable: bool
) -> str:
    by_key = {(r["grp"], r["outcome"]): r for r in rows}
    table = []
    for g in groups:
        rs = [by_key.get((g, o)) for o in outcomes]
        n = max((_f(r["n"]) or 0 for r in rs if r), default=0)
        weakest = (
            [", ".join(o for o, r in zip(outcomes, rs, strict=True) if r and r["is_weakest"])]
            if comparable
            else []
        )
        table.append(
            [g, _int(n)]
            + [_est_ci(r["mean"], r["mean_lo"], r["mean_hi"]) if r else "–" for r in rs]
            + weakest
        )
    headers = (
        ["group", "n"]
        + [f"{o} mean [95% CI]" for o in outcomes]
        + (["weakest"] if comparable else [])
    )
    return html_table(headers, table)


# ----------------------------------------------------------------------------- counselors

TOP_COUNSELORS = 5


def _counselor_figure(
    profiles: pl.DataFrame, outcomes: list[str], overall: dict[str, float], fig_id: str
) -> str:
    n_shown = min(profiles["counselor_id"].n_unique(), 2 * TOP_COUNSELORS)
    fig = _figure(
        min(3.6 * len(outcomes), 11) + 0.8,
        (0.3 * n_shown + 1.0) * math.ceil(len(outcomes) / 3) + 0.5,
    )
    axes = _panels(fig, len(outcomes), 3, sharex=True)
    for ax, outcome in zip(axes, outcomes, strict=True):
        p = profiles.filter(pl.col("outcome") == outcome).sort("rank")
        shown = (
            p
            if p.height <= 2 * TOP_COUNSELORS
            else pl.concat([p.head(TOP_COUNSELORS), p.tail(TOP_COUNSELORS)])
        )
        ys = list(range(shown.height))
        _whiskers(
            ax,
            ys,
            shown["pooled_mean"].to_list(),
            shown["pooled_lo"].to_list(),
            shown["pooled_hi"].to_list(),
            MODEL_COLOR,
            label="pooled mean, interval",
        )
        ax.scatter(
            shown["raw_mean"].to_list(),
            ys,
            marker="x",
            color=MUTED_COLOR,
            s=20,
            label="raw mean",
            zorder=3,
        )
        if outcome in overall:
            ax.axvline(
                overall[outcome], color="black", linestyle="--", linewidth=0.8, label="overall mean"
            )
        if p.height > 2 * TOP_COUNSELORS:
            ax.axhline(TOP_COUNSELORS - 0.5, color=MUTED_COLOR, linewidth=0.8, linestyle=":")
        labels = [
            f"#{r['rank']} {_short(r['counselor_id'], 16)} (n={r['n_sessions']})"
            for r in shown.iter_rows(named=True)
        ]
        ax.set_yticks(ys, labels)
        ax.set_ylim(len(ys) - 0.5, -0.5)
        ax.set_title(outcome)
    _legend_below(fig, axes[0])
    caption = (
        f"Counselors ranked by pooled mean (top and bottom {TOP_COUNSELORS} per "
        "outcome), with intervals; × marks the unpooled mean."
    )
    return _svg(fig, fig_id, caption)


def _overall_means(an: Findings) -> dict[str, float]:
    pop = an.tables.get("population")
    if pop is None:
        return {}
    rows = pop.filter(pl.col("group_by") == "all").iter_rows(named=True)
    return {r["outcome"]: float(r["mean"]) for r in rows if _f(r["mean"]) is not None}


def _counselor_text(
    profiles: pl.DataFrame, outcomes: list[str], overall: dict[str, float]
) -> list[str]:
    per_counselor = profiles.group_by("counselor_id").agg(pl.col("n_sessions").max())
    n_counselors = per_counselor.height
    out = [
        f"{n_counselors:,} counselors with {_int(per_counselor['n_sessions'].sum())} scored sessions "
        f"(median {_num(per_counselor['n_sessions'].median(), 0)} per counselor). Pooled means "
        "shrink counselors with few sessions toward the overall mean."
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


def _counselor_table(profiles: pl.DataFrame, outcomes: list[str]) -> str:
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
            [c["counselor_id"], _int(c["n_sessions"])]
            + [
                f"{_est_ci(r['pooled_mean'], r['pooled_lo'], r['pooled_hi'])} #{_int(r['rank'])}"
                if r
                else "–"
                for r in rs
            ]
            + [
                ", ".join(o for o, r in zip(outcomes, rs, strict=True) if r and r["is_strength"]),
                ", ".join(o for o, r in zip(outcomes, rs, strict=True) if r and r["is_weakest"]),
            ]
        )
    table = html_table(
        ["counselor", "sessions"]
        + [f"{o}: pooled mean [interval] #rank" for o in outcomes]
        + ["strength", "weakest"],
        rows,
    )
    return f"<details><summary>All {order.height:,} counselors (table)</summary>{table}</details>"


def counselor_section(an: Findings, sid: str) -> Section | None:
    profiles = an.tables.get("counselor_profiles")
    if profiles is None or profiles.height == 0:
        return None
    outcomes = list(dict.fromkeys(profiles["outcome"].to_list()))
    overall = _overall_means(an)
    text = _counselor_text(profiles, outcomes, overall)
    body = (
        _para(text[0])
        + _bullets(text[1:])
        + _counselor_figure(profiles, outcomes, overall, f"{sid}-fig")
        + _counselor_table(profiles, outcomes)
    )
    return Section(sid, "Counselor profiles", body)


# ----------------------------------------------------------------------------- drivers

MAX_DRIVERS = 12


def _drivers_shown(d: pl.DataFrame) -> pl.DataFrame:
    """The strongest features by |coefficient|, every significant one included."""
    d = d.with_columns(
        pl.col("coef_std").abs().alias("_abs"),
        (pl.col("p_adjusted") < ALPHA).fill_null(False).alias("_sig"),
    )
    keep = d.sort(["_sig", "_abs"], descending=True, nulls_last=True).head(
        max(MAX_DRIVERS, int(d["_sig"].sum()))
    )
    return keep.sort("coef_std", nulls_last=True)


def _drivers_figure(drivers: pl.DataFrame, outcomes: list[str], fig_id: str) -> str:
    tallest = max(_drivers_shown(drivers.filter(pl.col("outcome") == o)).height for o in outcomes)
    fig = _figure(
        min(3.8 * len(outcomes), 11.5) + 1.0,
        (0.28 * tallest + 1.0) * math.ceil(len(outcomes) / 3) + 0.5,
    )
    axes = _panels(fig, len(outcomes), 3, sharex=True)
    for ax, outcome in zip(axes, outcomes, strict=True):
        d = _drivers_shown(drivers.filter(pl.col("outcome") == outcome))
        for significant, color, label in (
            (False, MUTED_COLOR, "not significant"),
            (True, SIGNIFICANT_COLOR, f"adjusted p < {ALPHA}"),
        ):
            idx = [i for i, s in enumerate(d["_sig"].to_list()) if s == significant]
            if idx:
                sub = d[idx]
                _whiskers(
                    ax,
                    idx,
                    sub["coef_std"].to_list(),
                    sub["ci_low"].to_list(),
                    sub["ci_high"].to_list(),
                    color,
                    label=label,
                )
        ax.axvline(0, color="black", linewidth=0.7)
        ax.set_yticks(range(d.height), [_short(f, 40) for f in d["feature"].to_list()])
        ax.set_ylim(-0.5, d.height - 0.5)
        ax.set_title(outcome)
        ax.set_xlabel("standardized coefficient")
    _legend_below(fig, axes[0])
    return _svg(
        fig,
        fig_id,
        "Standardized regression coefficients with 95% CIs; red = significant after "
        f"multiple-testing adjustment (at most {MAX_DRIVERS} non-significant features "
        "shown per outcome).",
    )


def _drivers_text(drivers: pl.DataFrame, outcomes: list[str]) -> list[str]:
    out = []
    for outcome in outcomes:
        d = drivers.filter(pl.col("outcome") == outcome)
        first = d.row(0, named=True)
        sig = d.filter(pl.col("p_adjusted") < ALPHA).sort("p_adjusted")
        head = (
            f"{first['model'] or 'Linear'} regression of {outcome} on {d.height} "
            f"standardized features (n = {_int(first['n'])} sessions, R² = {_num(first['r2'])})"
        )
        if sig.height == 0:
            out.append(
                f"{head}: no feature is associated with {outcome} after multiple-testing adjustment."
            )
            continue
        listed = "; ".join(
            f"{r['feature']} "
            f"({'+' if (_f(r['coef_std']) or 0) > 0 else ''}{_num(r['coef_std'])}, 95% CI "
            f"{_ci(r['ci_low'], r['ci_high'])}, adjusted {_p(r['p_adjusted'])})"
            for r in sig.head(5).iter_rows(named=True)
        )
        more = f" and {sig.height - 5} more" if sig.height > 5 else ""
        out.append(
            f"{head}: after multiple-testing adjustment, {_plural(sig.height, 'feature')} "
            f"{'is' if sig.height == 1 else 'are'} associated with {outcome}: "
            f"{listed}{more}."
        )
    out.append("These are associations in observational data, not causal effects.")
    return out


def drivers_section(an: Findings, sid: str) -> Section | None:
    drivers = an.tables.get("drivers")
    if drivers is None or drivers.height == 0:
        return None
    outcomes = list(dict.fromkeys(drivers["outcome"].to_list()))
    sig = drivers.filter(pl.col("p_adjusted") < ALPHA).sort(["outcome", "p_adjusted"])
    rows = [
        [
            r["outcome"],
            r["feature"],
            _num(r["coef_std"]),
            _ci(r["ci_low"], r["ci_high"]),
            _num(r["std_error"]),
            _p_cell(r["p_value"]),
            _p_cell(r["p_adjusted"]),
        ]
        for r in sig.iter_rows(named=True)
    ]
    table = (
        html_table(
            ["outcome", "feature", "β (std)", "95% CI", "SE", "p", "adjusted p"],
            rows,
            caption="Features significant after adjustment",
            numeric_from=2,
        )
        if rows
        else ""
    )
    text = _drivers_text(drivers, outcomes)
    body = (
        _bullets(text[:-1])
        + _para(text[-1])
        + _drivers_figure(drivers, outcomes, f"{sid}-fig")
        + table
    )
    return Section(sid, "Drivers", body)


# ----------------------------------------------------------------------------- contrasts

MAX_CONTRASTS = 12


def _contrast_groups(contrasts: pl.DataFrame) -> list[tuple[str, str, pl.DataFrame]]:
    keys = list(
        dict.fromkeys(zip(contrasts["by"].to_list(), contrasts["variable"].to_list(), strict=True))
    )
    return [
        (by, var, contrasts.filter((pl.col("by") == by) & (pl.col("variable") == var)))
        for by, var in keys
    ]


def _first(frame: pl.DataFrame, column: str):
    values = [
        v
        for v in frame[column].to_list()
        if v is not None and not (isinstance(v, float) and math.isnan(v))
    ]
    return values[0] if values else None


def _contrast_p(g: pl.DataFrame) -> float:
    """The adjusted p of a contrast (its raw p when no adjusted one was written)."""
    for column in ("p_adjusted", "p_value"):
        p = _f(_first(g, column))
        if p is not None:
            return p
    return 1.0


def _contrast_figure(by: str, items: list[tuple[str, pl.DataFrame]], fig_id: str) -> str:
    """One figure per grouping: its contrasts share the groups, so the panels line up."""
    groups = list(dict.fromkeys(v for _, g in items for v in g["grp"].to_list()))
    ncols = min(len(items), 3)
    fig = _figure(2.9 * ncols + 1.4, (0.3 * len(groups) + 0.9) * math.ceil(len(items) / 3) + 0.3)
    axes = _panels(fig, len(items), 3)
    for k, (ax, (var, g)) in enumerate(zip(axes, items, strict=True)):
        by_grp = {r["grp"]: r for r in g.iter_rows(named=True)}
        ys = [i for i, v in enumerate(groups) if v in by_grp]
        rs = [by_grp[v] for v in groups if v in by_grp]
        cis = [mean_ci(r["mean"], r["sd"], r["n"]) for r in rs]
        _whiskers(
            ax, ys, [r["mean"] for r in rs], [c[0] for c in cis], [c[1] for c in cis], MODEL_COLOR
        )
        ax.set_yticks(
            range(len(groups)),
            [_short(v, 22) for v in groups] if k % 3 == 0 else [""] * len(groups),
        )
        ax.set_ylim(len(groups) - 0.5, -0.5)
        ax.set_title(f"{_short(var, 30)}\n{_p(_contrast_p(g))}", fontsize=9)
    return _svg(
        fig,
        fig_id,
        f"By {by}: group means with 95% CIs; each panel title gives the adjusted p of the test between the groups.",
    )


def _group_phrase(r: dict) -> str:
    return f"{r['grp']} {_num(r['mean'])} (sd {_num(r['sd'])}, n = {_int(r['n'])})"


def _contrast_sentence(by: str, var: str, g: pl.DataFrame) -> str:
    rows = sorted(
        (r for r in g.iter_rows(named=True) if _f(r["mean"]) is not None), key=lambda r: r["mean"]
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
        tail.append(f"{measure or 'effect size'} = {_num(effect)}")
    if test is not None:
        tail.append(
            f"{test} {_num(statistic)}, {_p(p)}"
            + (f", adjusted {_p(p_adj)}" if p_adj is not None else "")
        )
    return f"{var} by {by}: {described}" + (f" — {', '.join(tail)}." if tail else ".")


def _contrasts_table(groups: list[tuple[str, str, pl.DataFrame]]) -> str:
    rows = []
    for by, var, g in groups:
        ranked = sorted(
            (r for r in g.iter_rows(named=True) if _f(r["mean"]) is not None),
            key=lambda r: r["mean"],
        )
        low, high = (
            (ranked[0], ranked[-1])
            if ranked
            else ({"grp": "–", "mean": None}, {"grp": "–", "mean": None})
        )
        rows.append(
            [
                by,
                var,
                _int(g.height),
                _int(g["n"].sum()),
                f"{low['grp']} {_num(low['mean'])}",
                f"{high['grp']} {_num(high['mean'])}",
                f"{_num(_first(g, 'effect_size'))} {_first(g, 'effect_measure') or ''}".strip(),
                f"{_first(g, 'test') or ''} {_num(_first(g, 'statistic'))}".strip(),
                _p_cell(_first(g, "p_value")),
                _p_cell(_first(g, "p_adjusted")),
            ]
        )
    table = html_table(
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
    return f"<details><summary>All {len(groups):,} contrasts (table)</summary>{table}</details>"


def contrasts_section(an: Findings, sid: str) -> Section | None:
    contrasts = an.tables.get("contrasts")
    if contrasts is None or contrasts.height == 0:
        return None
    groups = sorted(_contrast_groups(contrasts), key=lambda item: _contrast_p(item[2]))
    significant = [item for item in groups if _contrast_p(item[2]) < ALPHA]
    shown = significant[:MAX_CONTRASTS] or groups[:3]
    if significant:
        intro = (
            f"{_plural(len(groups), 'contrast')} between groups; {len(significant)} differ at adjusted p < {ALPHA}"
            + (
                f"; the {MAX_CONTRASTS} with the smallest p are described."
                if len(significant) > MAX_CONTRASTS
                else "."
            )
        )
    else:
        intro = (
            f"{_plural(len(groups), 'contrast')} between groups; none differs at adjusted "
            f"p < {ALPHA}. The {len(shown)} with the smallest p:"
        )
    figures = []
    for k, by in enumerate(dict.fromkeys(b for b, _, _ in shown)):
        figures.append(
            _contrast_figure(str(by), [(v, g) for b, v, g in shown if b == by], f"{sid}-fig{k}")
        )
    body = (
        _para(
            intro,
            "Differences between groups are associations; they need not be caused by the grouping.",
        )
        + _bullets(_contrast_sentence(by, var, g) for by, var, g in shown)
        + "".join(figures)
        + _contrasts_table(groups)
    )
    return Section(sid, "Group contrasts", body)


# ----------------------------------------------------------------------------- transitions


def _transition_matrix(t: pl.DataFrame) -> tuple[list[str], list[str], np.ndarray]:
    strategies = sorted(set(t["strategy"].to_list()), key=str)
    reactions = sorted(set(t["reaction"].to_list()), key=str)
    counts = np.zeros((len(strategies), len(reactions)))
    for r in t.iter_rows(named=True):
        counts[strategies.index(r["strategy"]), reactions.index(r["reaction"])] += _f(r["n"]) or 0
    return strategies, reactions, counts


def _heatmap(
    strategies: list[str], reactions: list[str], counts: np.ndarray, fig_id: str, source: str
) -> str:
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    fig = _figure(max(4.0, 1.0 * len(reactions) + 3.2), 0.42 * len(strategies) + 1.6)
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
    ax.set_xticks(
        range(len(reactions)), [_short(r, 18) for r in reactions], rotation=30, ha="right"
    )
    ax.set_yticks(
        range(len(strategies)),
        [f"{_short(s, 30)} (n={int(totals[i, 0]):,})" for i, s in enumerate(strategies)],
    )
    ax.set_xlabel("client reaction")
    ax.set_ylabel("counselor strategy")
    fig.colorbar(image, ax=ax, label="share of the strategy's turns", shrink=0.8)
    return _svg(
        fig,
        fig_id,
        f"{source}: share of each counselor strategy's turns followed by each client reaction (rows sum to 100%).",
    )


def _transition_text(
    source: str, strategies: list[str], reactions: list[str], counts: np.ndarray
) -> list[str]:
    total = counts.sum()
    out = [
        f"{source}: {int(total):,} counselor turns with a following client reaction, "
        f"{len(strategies)} strategies × {len(reactions)} reactions."
    ]
    rows, cols = counts.sum(axis=1) > 0, counts.sum(axis=0) > 0
    table = counts[rows][:, cols]
    if table.shape[0] < 2 or table.shape[1] < 2:
        return out
    chi2, p, dof, expected = stats.chi2_contingency(table)
    v = association(table.astype(int), method="cramer")
    out.append(
        f"The reaction depends on the strategy (χ² = {chi2:.1f}, df = {dof}, {_p(p)}; Cramér's V = {v:.2f})."
        if p < ALPHA
        else f"No dependence of reaction on strategy is detected (χ² = {chi2:.1f}, df = {dof}, "
        f"{_p(p)}; Cramér's V = {v:.2f})."
    )
    residuals = (table - expected) / np.sqrt(expected)
    strat, react = (
        [s for s, k in zip(strategies, rows, strict=True) if k],
        [r for r, k in zip(reactions, cols, strict=True) if k],
    )
    top = sorted(
        ((residuals[i, j], i, j) for i in range(table.shape[0]) for j in range(table.shape[1])),
        reverse=True,
    )[:3]
    cells = []
    for res, i, j in top:
        if res <= 2:
            continue
        n_row = table[i].sum()
        lo, hi = share_ci(table[i, j] / n_row, n_row)
        cells.append(
            f"{react[j]} after {strat[i]} ({table[i, j] / n_row:.0%}, 95% CI "
            f"{lo:.0%}–{hi:.0%}, of {int(n_row):,} turns)"
        )
    if cells:
        out.append("More often than independence predicts: " + "; ".join(cells) + ".")
    return out


def transitions_section(an: Findings, sid: str) -> Section | None:
    transitions = an.tables.get("transitions")
    if transitions is None or transitions.height == 0:
        return None
    parts = []
    for i, source in enumerate(dict.fromkeys(transitions["source"].to_list())):
        strategies, reactions, counts = _transition_matrix(
            transitions.filter(pl.col("source") == source)
        )
        text = _transition_text(str(source), strategies, reactions, counts)
        parts.append(_para(text[0]) + _bullets(text[1:]))
        parts.append(_heatmap(strategies, reactions, counts, f"{sid}-fig{i}", str(source)))
    return Section(sid, "Strategy × reaction transitions", "".join(parts))


# ----------------------------------------------------------------------------- challenges

TOP_TERMS = 10


def _terms_figure(terms: pl.DataFrame, dims: list[str], fig_id: str) -> str:
    fig = _figure(min(3.4 * len(dims), 11) + 0.6, 0.26 * TOP_TERMS + 1.3)
    axes = _panels(fig, len(dims), 3)
    for ax, dim in zip(axes, dims, strict=True):
        t = (
            terms.filter(pl.col("dimension") == dim)
            .sort("z", descending=True, nulls_last=True)
            .head(TOP_TERMS)
        )
        z = [(_f(v) or 0.0) for v in t["z"].to_list()]
        ax.barh(
            range(t.height), z, color=[SIGNIFICANT_COLOR if v > 1.96 else MUTED_COLOR for v in z]
        )
        ax.axvline(1.96, color="black", linestyle=":", linewidth=0.8)
        ax.set_yticks(range(t.height), [_short(v, 24) for v in t["term"].to_list()])
        ax.set_ylim(t.height - 0.5, -0.5)
        ax.set_title(dim)
        ax.set_xlabel("z of log-odds")
    return _svg(
        fig,
        fig_id,
        "Terms most over-represented in the rationales of low-scored sessions (top "
        f"{TOP_TERMS} per dimension; red: z > 1.96).",
    )


def _as_text(value) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _clusters_html(clusters: pl.DataFrame) -> str:
    parts = []
    for dim in dict.fromkeys(clusters["dimension"].to_list()):
        c = clusters.filter(pl.col("dimension") == dim).sort("size", descending=True)
        total = int(sum(_f(v) or 0 for v in c["size"].to_list()))
        parts.append(
            f"<h4>{_e(dim)}: {_e(_plural(c.height, 'cluster'))} of {total:,} low-scored rationales</h4>"
        )
        for r in c.iter_rows(named=True):
            share = (_f(r["size"]) or 0) / total if total else 0
            quote = _as_text(r["example_quote"])
            parts.append(
                '<div class="cluster">'
                f"<p><strong>Cluster {_e(r['cluster'])}</strong> — {_e(_int(r['size']))} "
                f"rationales ({_e(_pct(share))}); top terms: "
                f"{_e(_as_text(r['top_terms']))}</p>"
                f'<p class="rationale">Example rationale: {_e(_as_text(r["example_rationale"]))}</p>'
                + (f'<blockquote class="quote">{_e(quote)}</blockquote>' if quote else "")
                + "</div>"
            )
    return "".join(parts)


def _terms_text(terms: pl.DataFrame, dims: list[str]) -> list[str]:
    out = [
        "Terms are compared between the rationales of low-scored sessions and the rest of the "
        "rationales; z is the z-score of the term's log-odds ratio "
        "(z > 1.96 ≈ the 5% level for one term; not adjusted for the many terms compared)."
    ]
    for dim in dims:
        t = terms.filter((pl.col("dimension") == dim) & (pl.col("z") > 1.96)).sort(
            "z", descending=True
        )
        if t.height:
            listed = ", ".join(
                f"“{r['term']}” (z = {_num(r['z'], 1)}, {_int(r['count'])}×)"
                for r in t.head(5).iter_rows(named=True)
            )
            out.append(f"{dim}: {_plural(t.height, 'distinctive term')}, led by {listed}.")
        else:
            out.append(f"{dim}: no term stands out at z > 1.96.")
    return out


def challenges_section(an: Findings, sid: str) -> Section | None:
    terms, clusters = an.tables.get("challenge_terms"), an.tables.get("challenge_clusters")
    parts = []
    if terms is not None and terms.height:
        dims = list(dict.fromkeys(terms["dimension"].to_list()))
        text = _terms_text(terms, dims)
        parts += [_para(text[0]), _bullets(text[1:]), _terms_figure(terms, dims, f"{sid}-terms")]
    if clusters is not None and clusters.height:
        parts += [
            "<h4>Recurring challenges (clusters of low-score rationales)</h4>",
            _para(
                "Each cluster groups the model's rationales for low scores; the example "
                "rationale and the transcript quote it cited are shown as written."
            ),
            _clusters_html(clusters),
        ]
    return Section(sid, "Challenges", "".join(parts)) if parts else None


# ----------------------------------------------------------------------------- trajectories


def _trajectory_figure(summary: pl.DataFrame, fig_id: str) -> str:
    outcomes = list(dict.fromkeys(summary["outcome"].to_list()))
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    for i, outcome in enumerate(outcomes):
        s = summary.filter(pl.col("outcome") == outcome).sort("session_index")
        top.plot(s["session_index"].to_list(), s["mean"].to_list(), marker="o", label=outcome)
        if i == 0:
            bottom.bar(
                s["session_index"].to_list(), s["n"].fill_null(0).to_list(), color=MUTED_COLOR
            )
    top.set_ylabel("mean score")
    top.legend(fontsize=8, loc="best")
    bottom.set_ylabel("clients")
    bottom.set_xlabel("session number")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _svg(
        fig,
        fig_id,
        "Mean outcome by session number over clients with repeated sessions (bottom: clients "
        "contributing at each session number).",
    )


def _trajectory_rows(an: Findings) -> list[dict]:
    clients = an.tables.get("trajectory_clients")
    per_client = an.tables.get("trajectories")
    rows = []
    for r in clients.iter_rows(named=True) if clients is not None else []:
        slope_lo = slope_hi = None
        if per_client is not None:
            slopes = (
                per_client.filter(pl.col("outcome") == r["outcome"])["slope"]
                .drop_nulls()
                .drop_nans()
                .to_numpy()
            )
            if len(slopes) > 1:
                slope_lo, slope_hi = mean_ci(
                    float(np.mean(slopes)), float(np.std(slopes, ddof=1)), len(slopes)
                )
        lo, hi = share_ci(r["share_rising"], r["n_clients"])
        rows.append(
            {**r, "slope_lo": slope_lo, "slope_hi": slope_hi, "rising_lo": lo, "rising_hi": hi}
        )
    return rows


def trajectories_section(an: Findings, sid: str) -> Section | None:
    summary = an.tables.get("trajectory_summary")
    if summary is not None:
        summary = summary.drop_nulls(["session_index", "mean"])
    rows = _trajectory_rows(an)
    if not rows and (summary is None or summary.height == 0):
        return None
    parts = []
    if rows:
        sentences = [
            f"{r['outcome']}: over {_int(r['n_clients'])} clients with repeated sessions, the "
            "mean change per session is "
            f"{_est_ci(r['mean_slope'], r['slope_lo'], r['slope_hi'], 3)} (95% CI), and "
            f"{_pct_ci(r['share_rising'], r['rising_lo'], r['rising_hi'])} of clients "
            "rise over their sessions (Wilson 95% CI)."
            for r in rows
        ]
        parts.append(
            _para(
                "Per-client trend of each outcome over the client's sessions (the slope of a "
                "line through the client's scores)."
            )
        )
        parts.append(_bullets(sentences))
        parts.append(
            html_table(
                ["outcome", "clients", "mean slope per session [95% CI]", "share rising [95% CI]"],
                [
                    [
                        r["outcome"],
                        _int(r["n_clients"]),
                        _est_ci(r["mean_slope"], r["slope_lo"], r["slope_hi"], 3),
                        _pct_ci(r["share_rising"], r["rising_lo"], r["rising_hi"]),
                    ]
                    for r in rows
                ],
            )
        )
    if summary is not None and summary.height:
        parts.append(_trajectory_figure(summary, f"{sid}-fig"))
    return Section(sid, "Trajectories", "".join(parts))


# ----------------------------------------------------------------------------- page


def _provenance(meta: dict) -> list[tuple[str, str]]:
    labels = {
        "mode": "outcomes from",
        "truth": "compared with",
        "model": "model",
        "adapter": "adapter",
        "rubric_id": "rubric",
        "rubric": "rubric file",
        "scores": "scores folder",
        "sessions": "corpus folder",
        "outcomes": "outcomes",
        "by": "grouped by",
        "created_at": "created",
    }
    out = []
    for key, label in labels.items():
        value = meta.get(key)
        if key == "truth" and value:
            out.append((label, truth_name(meta)))
        elif isinstance(value, list) and value:
            out.append((label, ", ".join(str(v) for v in value)))
        elif isinstance(value, str | int | float) and not isinstance(value, bool) and str(value):
            out.append((label, str(value)))
    return out


def _written_at(findings: Findings) -> str:
    name = "metrics.json" if findings.kind == EVALUATION_KIND else "manifest.json"
    path = findings.path / name
    if not path.exists():
        return "unknown"
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _source_block(findings: Findings, heading: str) -> str:
    items = [
        ("folder", str(findings.path)),
        ("written", _written_at(findings)),
        ("sessions", _int(findings.meta.get("n_sessions"))),
    ] + _provenance(findings.meta)
    tables = ", ".join(sorted(findings.tables)) or "none"
    items.append(("tables", tables))
    return (
        f"<div class=source><h3>{_e(heading)}</h3><dl>"
        + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
        + "</dl></div>"
    )


def _notes(an: Findings) -> str:
    notes = [str(n) for n in an.meta.get("notes") or []]
    if not notes:
        return ""
    return (
        "<details class=notes open><summary>Notes from the analysis (what was skipped and why)</summary><ul>"
        + "".join(f"<li>{_e(n)}</li>" for n in notes)
        + "</ul></details>"
    )


def analysis_sections(an: Findings, index: int) -> list[Section]:
    builders = (
        population_section,
        counselor_section,
        drivers_section,
        contrasts_section,
        transitions_section,
        challenges_section,
        trajectories_section,
    )
    names = (
        "population",
        "counselors",
        "drivers",
        "contrasts",
        "transitions",
        "challenges",
        "trajectories",
    )
    sections = [build(an, f"a{index}-{name}") for build, name in zip(builders, names, strict=True)]
    return [s for s in sections if s is not None]


_CSS = """
:root { --ink:#1d2733; --muted:#5b6673; --line:#d9dee4; --accent:#1f6fb4; --hl:#fff4e0; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  color: var(--ink); margin: 0; background: #f6f7f9; }
header, main, footer, nav { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 28px; }
h1 { font-size: 28px; margin: 0 0 4px; }
h2 { font-size: 22px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--accent); }
h3 { font-size: 18px; margin: 26px 0 8px; }
h4 { font-size: 15px; margin: 18px 0 6px; color: var(--muted); }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
section.finding-group { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 4px 22px 18px; margin: 18px 0; }
.meta { color: var(--muted); margin: 0 0 12px; }
.sources { display: flex; flex-wrap: wrap; gap: 14px; }
.source { background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 2px 16px 10px; flex: 1 1 340px; }
.source h3 { margin-top: 10px; font-size: 15px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 0; font-size: 13px; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
nav ol { font-size: 14px; background: #fff; border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 16px 10px 36px; margin: 16px 0 0; }
nav ol > li { margin: 3px 0; }
nav ul { display: inline; padding: 0; margin: 0 0 0 6px; }
nav ul::before { content: "— "; color: var(--muted); }
nav ul li { display: inline; }
nav ul li + li::before { content: " · "; color: var(--muted); }
p.finding { max-width: 80ch; }
ul.findings li { margin: 4px 0; max-width: 80ch; }
.table-wrap { overflow-x: auto; margin: 10px 0 16px; }
table { border-collapse: collapse; font-size: 13px; min-width: 50%; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef2f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.hl td { background: var(--hl); font-weight: 600; }
figure { margin: 12px 0 20px; }
svg.plot { display: block; max-width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; max-width: 90ch; }
.cluster { border-left: 3px solid var(--accent); padding: 2px 12px; margin: 10px 0; background: #fafbfc; }
.cluster p { margin: 4px 0; }
.rationale { color: var(--muted); }
blockquote.quote { margin: 6px 0; padding: 4px 10px; background: #f0f3f6; border-radius: 4px;
  white-space: pre-wrap; font-style: italic; }
details.notes { margin: 10px 0; font-size: 14px; }
footer { color: var(--muted); font-size: 13px; padding-bottom: 40px; }
"""


def build_report(
    evaluation: Findings | None,
    analyses: Sequence[Findings],
    title: str = DEFAULT_TITLE,
    generated_at: datetime | None = None,
) -> str:
    """The whole page as one HTML string (no scripts, no external resources)."""
    generated_at = generated_at or datetime.now(UTC)
    with rc_context(_RC):
        groups: list[tuple[str, str, list[Section], str]] = []
        if evaluation is not None:
            section = agreement_section(evaluation)
            intro = _para(
                f"{_int(evaluation.meta.get('n_sessions'))} sessions; model scores against "
                f"{truth_name(evaluation.meta)}."
            )
            if section is None:
                intro += _para("The evaluation folder holds no agreement tables.")
            groups.append(
                (
                    "evaluation",
                    f"Evaluation: {evaluation.label}",
                    [section] if section else [],
                    intro,
                )
            )
        for i, an in enumerate(analyses, start=1):
            heading = f"Analysis: {an.label}" if len(analyses) == 1 else f"Analysis {i}: {an.label}"
            sections = analysis_sections(an, i)
            mode = an.meta.get("mode")
            scored_from = (
                "model scores"
                if mode == "scores"
                else "labels"
                if mode == "labels"
                else "an unknown source"
            )
            intro = _para(
                f"{_int(an.meta.get('n_sessions'))} sessions; outcomes "
                f"{', '.join(map(str, an.meta.get('outcomes') or [])) or 'not listed'}"
                f" (from {scored_from})."
            ) + _notes(an)
            if not sections:
                intro += _para("This analysis holds none of the tables the report knows.")
            groups.append((f"a{i}", heading, sections, intro))
    sources = (
        [_source_block(evaluation, f"Evaluation: {evaluation.label}")] if evaluation else []
    ) + [_source_block(an, f"Analysis: {an.label}") for an in analyses]
    toc = []
    main = []
    for gid, heading, sections, intro in groups:
        sub = "".join(f'<li><a href="#{_e(s.id)}">{_e(s.title)}</a></li>' for s in sections)
        toc.append(
            f'<li><a href="#{_e(gid)}">{_e(heading)}</a>'
            + (f"<ul>{sub}</ul>" if sub else "")
            + "</li>"
        )
        body = "".join(
            f'<section class="finding-group" id="{_e(s.id)}"><h3>{_e(s.title)}</h3>{s.body}</section>'
            for s in sections
        )
        main.append(f'<section id="{_e(gid)}"><h2>{_e(heading)}</h2>{intro}{body}</section>')
    n_sessions = [
        int(_f(f.meta.get("n_sessions")) or 0)
        for f in ([evaluation] if evaluation else []) + list(analyses)
    ]
    summary = (
        f"Built {generated_at.strftime('%Y-%m-%d %H:%M UTC')} from "
        f"{_plural(len(n_sessions), 'output folder')} covering up to "
        f"{max(n_sessions, default=0):,} sessions."
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="care-ray report">
<title>{_e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<p class="meta">{_e(summary)}</p>
<div class="sources">{"".join(sources)}</div>
</header>
<nav aria-label="contents"><ol>{"".join(toc)}</ol></nav>
<main>{"".join(main)}</main>
<footer><p>Intervals are 95% unless stated. Findings describe associations in observational data,
not causes. Scores are model estimates of the client's perceived working alliance (WAI-SR), not
the client's own answers, unless the analysis used labels.</p></footer>
</body>
</html>
"""


def write_report(
    out: Path,
    evaluation: Path | None = None,
    analyses: Sequence[Path] = (),
    title: str | None = None,
) -> Path:
    """Load the folders, build the page, write OUT/report.html; returns its path."""
    if evaluation is None and not analyses:
        raise ReportError("nothing to report: give --evaluation DIR and/or --analysis DIR")
    ev = load_findings(evaluation, EVALUATION_KIND) if evaluation is not None else None
    ans = [load_findings(p, ANALYSIS_KIND) for p in analyses]
    page = build_report(ev, ans, title=title or DEFAULT_TITLE)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
