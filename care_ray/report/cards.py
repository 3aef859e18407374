"""`care-ray cards`: one self-contained HTML card per counselor and an index page, from the figures
care_ray.analytics.cards computes (this module only words and draws them).

The cards are laid out by templates/card.html.j2 and cards_index.html.j2 in the report's
autoescaping environment: every value, quotes included, is escaped. The plots are inline SVG drawn
by the template from coordinates computed here (no matplotlib: thousands of cards render in
seconds), with no scripts and no external resources. Cards render in a process pool over chunks of
counselors, a bounded number of chunks in flight, so memory stays flat however many there are."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from care_ray.analytics.cards import (
    CardData,
    CardsConfig,
    build_cards,
    cards_table,
    chunks,
    mean_score,
)
from care_ray.report.format import ci, level, num, plural
from care_ray.report.page import environment

CHUNK = 50  # cards per task of the pool
IN_PROCESS_BELOW = 200  # fewer cards than this render in this process (no pool start-up)
BINS = 24
W, H, PAD = 420, 96, 28  # plot size and left/right padding (SVG user units)

_shared: dict[str, Any] = {}  # what every card of a run shares (set in each worker)


def file_name(counselor_id: str) -> str:
    """A card's file name: the id made safe, plus a hash so that two ids never share a file."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", counselor_id)[:60] or "counselor"
    return f"{safe}-{hashlib.sha1(counselor_id.encode()).hexdigest()[:8]}.html"


def title_of(outcome: str) -> str:
    return outcome.replace("_", " ").capitalize()


# --- plots: coordinates for the template -------------------------------------------------------


def _scale(lo: float, hi: float, width: float) -> Any:
    span = (hi - lo) or 1.0
    return lambda v: PAD + (float(v) - lo) / span * (width - 2 * PAD)


def _range(
    values: Sequence[float] | np.ndarray, outcome_scale: tuple[float, float] | None
) -> tuple[float, float]:
    if outcome_scale:
        return outcome_scale
    lo, hi = float(np.min(values)), float(np.max(values))
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


def histogram(pop: Sequence[float], dim: dict[str, Any], scale: tuple[float, float] | None) -> dict:
    """Bars of every counselor's pooled mean, with this counselor's estimate and interval."""
    values = np.array([v for v in pop if v is not None and np.isfinite(v)], dtype=float)
    if not len(values):
        return {}
    lo, hi = _range(values, scale)
    x = _scale(lo, hi, W)
    counts, edges = np.histogram(values, bins=BINS, range=(lo, hi))
    top = max(int(counts.max()), 1)
    base = H - 22
    bars = [
        {
            "x": round(x(edges[i]), 1),
            "w": round(max(x(edges[i + 1]) - x(edges[i]) - 1, 1), 1),
            "y": round(base - c / top * (base - 18), 1),
            "h": round(c / top * (base - 18), 1),
        }
        for i, c in enumerate(counts)
        if c
    ]
    mark = dim.get("pooled_mean")
    ticks = [{"x": round(x(t), 1), "label": f"{t:g}"} for t in np.linspace(lo, hi, 5)]
    plot = {"bars": bars, "base": base, "ticks": ticks, "width": W, "height": H}
    if mark is not None:
        plot["mark"] = round(x(mark), 1)
        plot["lo"] = round(x(dim["pooled_lo"]), 1)
        plot["hi"] = round(x(dim["pooled_hi"]), 1)
    if dim.get("population_mean") is not None:
        plot["mu"] = round(x(dim["population_mean"]), 1)
    return plot


def trend_plot(dim: dict[str, Any], scale: tuple[float, float] | None) -> dict:
    """The counselor's session scores in time order with the fitted line."""
    y = dim.get("points") or []
    if len(y) < 3:
        return {}
    lo, hi = _range(y, scale)
    n = len(y)
    px = lambda i: PAD + i / max(n - 1, 1) * (W - 2 * PAD)  # noqa: E731
    top, bottom = 10, H - 22
    py = lambda v: bottom - (float(v) - lo) / ((hi - lo) or 1.0) * (bottom - top)  # noqa: E731
    points = [{"x": round(px(i), 1), "y": round(py(v), 1)} for i, v in enumerate(y)]
    plot: dict[str, Any] = {"points": points, "width": W, "height": H, "base": bottom}
    if dim.get("slope") is not None:
        mean, mid = float(np.mean(y)), (n - 1) / 2
        plot["line"] = {
            "x1": round(px(0), 1),
            "y1": round(py(mean - dim["slope"] * mid), 1),
            "x2": round(px(n - 1), 1),
            "y2": round(py(mean + dim["slope"] * mid), 1),
        }
    plot["ticks"] = [{"y": round(py(t), 1), "label": f"{t:g}"} for t in (lo, hi)]
    return plot


# --- words -------------------------------------------------------------------------------------


def _standing(d: dict[str, Any], mode: str) -> str:
    if d["pooled_mean"] is None:
        return f"{title_of(d['outcome'])}: too few sessions with a value to estimate."
    return (
        f"{title_of(d['outcome'])}: {num(d['pooled_mean'])} {ci(d['pooled_lo'], d['pooled_hi'])} "
        f"from {plural(d['n'], 'session')}; the population mean is {num(d['population_mean'])}. "
        f"Your own mean is {num(d['raw_mean'])}; the estimate pulls it toward the population "
        f"mean the more, the fewer sessions it rests on."
    )


def strengths_and_weakest(card: dict[str, Any]) -> tuple[list[str], str | None]:
    dims = [d for d in card["dims"] if d["pooled_mean"] is not None]
    strengths = [
        f"{title_of(d['outcome'])} is a strength: {num(d['pooled_mean'])} "
        f"{ci(d['pooled_lo'], d['pooled_hi'])} lies wholly above the population mean of "
        f"{num(d['population_mean'])}."
        for d in dims
        if d["is_strength"]
    ]
    if not strengths and dims:
        best = max(dims, key=lambda d: d["pooled_mean"] - d["population_mean"])
        if best["pooled_mean"] > best["population_mean"]:
            strengths.append(
                f"Your relatively strongest dimension is {title_of(best['outcome'])}: "
                f"{num(best['pooled_mean'])} against a population mean of "
                f"{num(best['population_mean'])}, though its interval "
                f"{ci(best['pooled_lo'], best['pooled_hi'])} still includes that mean."
            )
    weak = next((d for d in dims if d["is_weakest"]), None)
    if weak is None:
        return strengths, None
    name = title_of(weak["outcome"])
    gap = weak["pooled_mean"] - weak["population_mean"]
    sentence = (
        f"Your weakest dimension, relative to the population, is {name}: "
        f"{num(weak['pooled_mean'])} {ci(weak['pooled_lo'], weak['pooled_hi'])} against a "
        f"population mean of {num(weak['population_mean'])} ({gap:+.2f})."
    )
    sentence += (
        " Its whole interval lies below the population mean."
        if weak["is_below"]
        else " Its interval still includes the population mean, so the gap may be chance."
    )
    return strengths, sentence


def trend_sentence(d: dict[str, Any], alpha: float) -> str:
    name = title_of(d["outcome"])
    n = len(d.get("points") or [])
    if d.get("slope") is None:
        return f"{name}: {plural(n, 'session')}, too few for a trend (3 or more are needed)."
    direction = (
        "rising" if d["slope_lo"] > 0 else "falling" if d["slope_hi"] < 0 else "no clear change"
    )
    return (
        f"{name} over your {plural(n, 'session')} in time order: {d['slope']:+.3f} per session "
        f"{ci(d['slope_lo'], d['slope_hi'], 3)} ({level(alpha)} interval) — {direction}."
    )


def driver_sentence(d: dict[str, Any]) -> str:
    name = title_of(d["outcome"])
    more = "more" if d["coef_std"] > 0 else "less"
    yours = d.get("yours")
    return (
        f"Counselors with the strongest {name} scores (the top quarter: {plural(d['n_top'], 'counselor')}) average "
        f"{num(d['top_mean'])} {d['label']}; yours is {num(yours)} (all counselors: "
        f"{num(d['population_mean'])}). Across sessions, {more} of it goes with higher {name} "
        f"({d['coef_std']:+.2f} sd per sd, the other features held fixed). An association, not a "
        "rule."
    )


def _scale_of(mode: str) -> tuple[float, float] | None:
    return (1.0, 5.0) if mode in ("scores", "client_wai") else None


def card_context(card: dict[str, Any], shared: dict[str, Any]) -> dict[str, Any]:
    mode, alpha = shared["mode"], shared["alpha"]
    scale = _scale_of(mode)
    strengths, weakest = strengths_and_weakest(card)
    dims = [
        {
            **d,
            "title": title_of(d["outcome"]),
            "standing": _standing(d, mode),
            "histogram": histogram(shared["population"].get(d["outcome"], []), d, scale),
            "trend_plot": trend_plot(d, scale),
            "trend": trend_sentence(d, alpha),
        }
        for d in card["dims"]
    ]
    groups: dict[tuple[str, int], dict[str, Any]] = {}
    for c in card["challenges"]:
        groups[(c["dimension"], c["cluster"])] = {**c, "moments": []}
    for m in card["moments"]:
        groups.setdefault(
            (m["dimension"], m["cluster"]),
            {"dimension": m["dimension"], "cluster": m["cluster"], "top_terms": "", "n_items": 0},
        )["moments"].append(m)
    return {
        "card": card,
        "dims": dims,
        "strengths": strengths,
        "weakest": weakest,
        "drivers": [driver_sentence(d) for d in card["drivers"] if d.get("yours") is not None],
        "challenges": list(groups.values()),
        "level_text": level(alpha),
        "n_low": sum(c["n_items"] for c in card["challenges"]),
        **shared,
    }


def render_card(card: dict[str, Any], shared: dict[str, Any]) -> str:
    return environment().get_template("card.html.j2").render(**card_context(card, shared))


def _render_chunk(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    out = Path(_shared["out"])
    written = []
    for card in cards:
        name = file_name(card["counselor_id"])
        (out / name).write_text(render_card(card, _shared), encoding="utf-8")
        written.append((card["counselor_id"], name))
    return written


def _init(shared: dict[str, Any]) -> None:
    _shared.clear()
    _shared.update(shared)


def write_cards(
    data: CardData, out: Path, quotes: bool, sort_by_score: bool, workers: int | None = None
) -> Path:
    """OUT/cards/*.html (one per counselor) and OUT/index.html; returns the index's path."""
    folder = Path(out) / "cards"
    folder.mkdir(parents=True, exist_ok=True)
    shared = {
        "out": str(folder),
        "mode": data.mode,
        "score_kind": data.score_kind,
        "alpha": data.alpha,
        "low_threshold": data.low_threshold,
        "population": data.population,
        "quotes": quotes,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    workers = workers or os.cpu_count() or 1
    names: dict[str, str] = {}
    if workers == 1 or len(data.cards) < IN_PROCESS_BELOW:
        _init(shared)
        names.update(_render_chunk(data.cards))
    else:
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init, initargs=(shared,)
        ) as pool:
            pending: set[Future] = set()
            for part in chunks(data.cards, CHUNK):
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for f in done:
                        names.update(f.result())
                pending.add(pool.submit(_render_chunk, part))
            for f in pending:
                names.update(f.result())
    rows = [
        {
            "counselor_id": c["counselor_id"],
            "n_sessions": c["n_sessions"],
            "href": f"cards/{names[c['counselor_id']]}",
            "score": mean_score(c),
        }
        for c in data.cards
    ]
    rows.sort(key=lambda r: r["counselor_id"])
    if sort_by_score:
        rows.sort(key=lambda r: -r["score"] if np.isfinite(r["score"]) else np.inf)
    index = Path(out) / "index.html"
    index.write_text(
        environment()
        .get_template("cards_index.html.j2")
        .render(rows=rows, sort_by_score=sort_by_score, **shared),
        encoding="utf-8",
    )
    return index


def write_card_set(cfg: CardsConfig) -> tuple[int, str, Path]:
    """`care-ray cards`: build the cards, write OUT/cards.parquet, the card pages and the index;
    returns (cards written, mode, index path)."""
    data = build_cards(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    table = cards_table(data)
    if not cfg.quotes:
        table = table.drop("moments")
    table.write_parquet(out / "cards.parquet")
    index = write_cards(data, out, cfg.quotes, cfg.sort_by_score, cfg.workers)
    return len(data.cards), data.mode, index
