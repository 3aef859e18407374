"""Matplotlib for the report: every plot is rendered to SVG and inlined in the page, so the page
needs no scripts, no image files and no network, and stays sharp at any zoom.

`RC` is the style every figure is drawn under (build_report applies it); `plot` turns a finished
figure into a Plot block. The SVG is the only markup made in Python: it is matplotlib's output
(text drawn as paths, its comments and metadata stripped), marked safe as Markup so the templates
insert it as is."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from markupsafe import Markup
from matplotlib.figure import Figure

from care_ray.report.blocks import Plot
from care_ray.report.format import finite, short

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.typing import RcKeyType

MODEL_COLOR, COUNSELOR_COLOR, SIGNIFICANT_COLOR, MUTED_COLOR = (
    "#1f6fb4",
    "#e07b16",
    "#c0392b",
    "#8a8a8a",
)
RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "path",  # glyphs as paths: the page renders the same without the fonts installed
    "svg.hashsalt": "care-ray",  # deterministic clip-path ids (made unique per figure in svg())
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

_SVG_ID = re.compile(r'\bid="([^"]+)"')
_SVG_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def element_id(name: str) -> str:
    """`name` as an HTML id: letters, digits, "-" and "_" only."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


def svg(fig: Figure, prefix: str) -> Markup:
    """The figure as an inline <svg class="plot">, its ids prefixed so that several figures can
    share one HTML document (matplotlib reuses glyph and clip-path ids across files). `prefix`
    must be an element_id. The figure's own text is drawn as paths; the comments and metadata that
    repeat it as text are dropped."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    out = buf.getvalue()
    out = out[out.index("<svg") :]
    out = re.sub(r"<metadata>.*?</metadata>|<!--.*?-->", "", out, flags=re.S)
    out = _SVG_ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', out)
    out = _SVG_REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", out)
    # labelled by the figure's caption (the template gives the figcaption this id)
    out = out.replace(
        "<svg ", f'<svg class="plot" role="img" aria-labelledby="{prefix}-caption" ', 1
    )
    return Markup(out)  # trusted: matplotlib's SVG writer escapes the text it puts in attributes


def plot(fig: Figure, fig_id: str, caption: str) -> Plot:
    """A finished figure as a Plot block with its caption."""
    prefix = element_id(fig_id)
    return Plot(id=prefix, svg=svg(fig, prefix), caption=caption)


def figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, max(height, 1.6)), layout="constrained")


def panels(fig: Figure, n: int, ncols: int, sharex: bool = False) -> list[Axes]:
    """n axes in rows of at most ncols; the grid's unused cells are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def legend_below(fig: Figure, ax: Axes) -> None:
    """One legend under all panels, where it cannot cover data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles), fontsize=8)


def row_labels(ax: Axes, labels: Sequence[str], title: str | None = None, **title_kw: Any) -> None:
    """One row per label, the first at the top, and the panel's title."""
    ax.set_yticks(range(len(labels)), list(labels))
    ax.set_ylim(len(labels) - 0.5, -0.5)
    if title is not None:
        ax.set_title(title, **title_kw)


def left_labels(labels: Sequence[str], k: int, width: int, ncols: int = 3) -> list[str]:
    """Row labels shortened to `width`, shown only on the left panel of each row of panels."""
    return [short(v, width) for v in labels] if k % ncols == 0 else [""] * len(labels)


def _column(rows: Sequence[Mapping[str, object]] | pl.DataFrame, name: str) -> list[object]:
    if isinstance(rows, pl.DataFrame):
        return rows[name].to_list() if name in rows.columns else [None] * rows.height
    return [r.get(name) for r in rows]


def _floats(values: Sequence[object]) -> np.ndarray:
    return np.array([np.nan if (f := finite(v)) is None else f for v in values], dtype=float)


def whiskers(
    ax: Axes,
    y: Sequence[float],
    rows: Sequence[Mapping[str, object]] | pl.DataFrame,
    est: str,
    lo: str,
    hi: str,
    color: str,
    label: str | None = None,
    marker: str = "o",
    filled: bool = True,
) -> None:
    """Dots at the rows' `est` column with horizontal whiskers from `lo` to `hi` (a missing bound
    or column: the dot alone)."""
    est_f, lo_f, hi_f = (_floats(_column(rows, c)) for c in (est, lo, hi))
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
