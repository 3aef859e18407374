"""`care-ray cards`: the figures of one feedback card per counselor (issue #23).

Every number a card shows is computed here, from an analysis folder (`care-ray analyze`; run here
into OUT/analysis when none is given) and the corpus (and the scores' items/ for the moments):

- standing: counselor_profiles' empirical-Bayes pooled mean per dimension with its interval and n,
  beside the population of every profiled counselor's pooled mean (a histogram, never a rank);
- trend: the OLS slope of the counselor's session scores on the session's order in time
  (started_at, else session_index, else session_id), with its t interval at 1 − alpha;
- drivers: for the population's significant drivers (p_adjusted < alpha), the counselor's mean of
  the feature beside the mean of the counselors in the top quarter of that dimension;
- moments: the counselor's low-scored items (score <= low_threshold) with rationale, quote and the
  turns around it, each assigned to the population's challenge cluster whose top terms it shares most.

Model-free (no --scores): the outcomes are the clients' own WAI-SR ratings (client_wai, mean of each
dimension's items) where the corpus has them, else its numeric labels, as `care-ray analyze` uses them.
`cards_table` flattens the cards into one row per counselor (cards.parquet)."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from care_ray.analytics.analyze import (
    AnalysisError,
    AnalyzeConfig,
    _bind_parquet,
    _query,
    _sessions_root,
    analyze,
)
from care_ray.cluster.storage import PathOrURI
from care_ray.common.options import cli
from care_ray.common.sql import connect

CLIENT_WAI_SCORES = "client_wai_scores"  # the scores-like folder of the clients' own ratings
TOP_SHARE = 0.25  # "the strongest": counselors in the top quarter of a dimension's pooled means
DRIVERS_PER_DIMENSION = 2
CONTEXT_TURNS = 2  # turns shown before and after the quoted one
FEATURE_WORDS = {
    "n_turns": "turns per session",
    "client_turns": "client turns per session",
    "counselor_turns": "counselor turns per session",
    "client_words": "client words per session",
    "counselor_words": "counselor words per session",
    "client_words_per_turn": "words per client turn",
    "counselor_words_per_turn": "words per counselor turn",
    "counselor_talk_share": "share of the words spoken by the counselor",
    "counselor_question_rate": "questions per counselor turn",
}


_SCORES_HELP = (
    "a `care-ray score` run folder or URI; without it the outcomes are the clients' own ratings "
    "(client_wai) or the corpus's labels (model-free)"
)
_ANALYSIS_HELP = (
    "a folder written by `care-ray analyze` on this corpus; without it the analysis is run into "
    "OUT/analysis"
)
_COUNSELORS_HELP = (
    "repeatable: only these counselors' cards (default every counselor with --min-sessions)"
)


class CardsConfig(BaseModel):
    """One self-contained feedback card (HTML) per counselor with enough sessions, an index page
    and cards.parquet: standing per dimension beside the population, strengths, the weakest
    dimension, moments from their own low-scored sessions, what goes with stronger alliance, and
    the trend over time."""

    model_config = ConfigDict(extra="forbid")

    sessions: Path = Field(description="corpus folder written by `care-ray ingest`")
    out: Path = Field(description="folder for index.html, cards/ and cards.parquet")
    scores: PathOrURI | None = Field(None, description=_SCORES_HELP)
    analysis: Path | None = Field(None, description=_ANALYSIS_HELP)
    counselors: list[str] = Field(
        default_factory=list,
        description=_COUNSELORS_HELP,
        json_schema_extra=cli(flag="--counselor"),
    )
    min_sessions: int = Field(5, ge=2, description="counselors with fewer sessions get no card")
    quotes: bool = Field(
        True, description="show quotes, rationales and dialogue; --no-quotes: counts only"
    )
    sort_by_score: bool = Field(
        False, description="order the index by mean pooled score (default: alphabetical)"
    )
    low_threshold: float = Field(2.0, description="a moment is an item scored <= this")
    max_moments: int = Field(6, ge=0, description="moments quoted per card at most")
    alpha: float = Field(0.05, gt=0, lt=1, description="intervals are 1 - alpha")
    workers: int | None = Field(
        None, ge=1, description="processes rendering cards (default: the CPU count)"
    )
    memory_limit: str = Field(
        "3GB", pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B|B)$", description="DuckDB memory limit"
    )


@dataclass
class CardData:
    """What the cards are made from, shared by every card."""

    mode: str  # scores | client_wai | labels
    outcomes: list[str]
    alpha: float
    low_threshold: float
    population: dict[str, list[float]]  # every profiled counselor's pooled mean per outcome
    population_mean: dict[str, float]
    cards: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    analysis: str = ""
    score_kind: str | None = None  # with model scores: "expected" (Σ s·p(s)) or "greedy"


# --- the analysis ------------------------------------------------------------------------------


def _client_wai_scores(cfg: CardsConfig, folder: Path) -> bool:
    """Write the clients' own ratings as a scores-like sessions/ table (dimension means of
    client_wai); False when no session has them."""
    from care_ray.contracts.rubric import load_rubric

    con = connect(cfg.memory_limit)
    _bind_parquet(con, "sessions", _sessions_root(cfg.sessions))
    try:
        wai = con.sql(
            "SELECT session_id, client_wai FROM sessions WHERE client_wai IS NOT NULL"
        ).pl()
    except Exception:  # an older corpus without the column
        return False
    finally:
        con.close()
    if wai.is_empty():
        return False
    rubric = load_rubric()
    long = wai.with_columns(pl.int_ranges(1, pl.col("client_wai").list.len() + 1).alias("item"))
    long = long.explode("client_wai", "item").drop_nulls("client_wai")
    dims = pl.DataFrame(
        {"item": [i.id for i in rubric.items], "dimension": [i.dimension for i in rubric.items]},
        schema={"item": pl.Int64, "dimension": pl.String},
    )
    wide = (
        long.with_columns(pl.col("item").cast(pl.Int64))
        .join(dims, on="item")
        .group_by("session_id", "dimension")
        .agg(pl.col("client_wai").cast(pl.Float64).mean())
        .pivot(on="dimension", index="session_id", values="client_wai")
    )
    (folder / "sessions").mkdir(parents=True, exist_ok=True)
    wide.select("session_id", *[d for d in rubric.dimensions if d in wide.columns]).write_parquet(
        folder / "sessions" / "part-00000.parquet"
    )
    return True


def ensure_analysis(cfg: CardsConfig) -> tuple[Path, str]:
    """(the analysis folder, the mode: scores | client_wai | labels), running analyze if needed."""
    if cfg.analysis is not None:
        manifest = _manifest(cfg.analysis)
        used = str(manifest.get("scores") or "")
        mode = "client_wai" if Path(used).name == CLIENT_WAI_SCORES else manifest.get("mode")
        return cfg.analysis, str(mode)
    out = Path(cfg.out) / "analysis"
    scores: PathOrURI | None = cfg.scores
    mode = "scores" if scores else "labels"
    if scores is None and _client_wai_scores(cfg, out / CLIENT_WAI_SCORES):
        scores, mode = str(out / CLIENT_WAI_SCORES), "client_wai"
    analyze(
        AnalyzeConfig(
            sessions=cfg.sessions,
            out=out,
            scores=scores,
            min_sessions=cfg.min_sessions,
            low_threshold=cfg.low_threshold,
            alpha=cfg.alpha,
            memory_limit=cfg.memory_limit,
        )
    )
    return out, mode


def _manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise AnalysisError(f"--analysis {folder}: no manifest.json (a `care-ray analyze` folder?)")
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def _table(folder: Path, name: str) -> pl.DataFrame | None:
    path = Path(folder) / f"{name}.parquet"
    return pl.read_parquet(path) if path.is_file() else None


# --- per-counselor figures ---------------------------------------------------------------------


@cache
def _t_quantile(q: float, df: int) -> float:
    from scipy.stats import t as student

    return float(student.ppf(q, df))


def trend(y: np.ndarray, alpha: float) -> dict[str, float | None]:
    """OLS slope of y on its order 0..n-1 with the t interval at 1 − alpha (n >= 3, else None)."""
    n = len(y)
    empty: dict[str, float | None] = {"slope": None, "slope_lo": None, "slope_hi": None}
    if n < 3:
        return empty
    x = np.arange(n, dtype=float)
    xc = x - x.mean()
    sxx = float((xc**2).sum())
    slope = float((xc * (y - y.mean())).sum() / sxx)
    resid = y - y.mean() - slope * xc
    se = math.sqrt(float((resid**2).sum()) / (n - 2) / sxx)
    half = _t_quantile(1 - alpha / 2, n - 2) * se
    return {"slope": slope, "slope_lo": slope - half, "slope_hi": slope + half}


def _session_frame(folder: Path, cfg: CardsConfig, outcomes: list[str]) -> pl.DataFrame:
    features = _table(folder, "features")
    if features is None:
        raise AnalysisError(f"{folder}: no features.parquet (an analysis with outcomes?)")
    con = connect(cfg.memory_limit)
    _bind_parquet(con, "sessions", _sessions_root(cfg.sessions))
    when = _query(con, "analysis_sessions").select("session_id", "started_at")
    con.close()
    frame = features.join(when, on="session_id", how="left")
    return frame.filter(pl.col("counselor_id").is_not_null()).sort(
        "counselor_id", "started_at", "session_index", "session_id", nulls_last=True
    )


def _chosen(cfg: CardsConfig, frame: pl.DataFrame, profiled: set[str]) -> list[str]:
    """The counselors to card: --counselor ids (checked) or every profiled one, sorted."""
    if not cfg.counselors:
        return sorted(profiled)
    counts = dict(frame.group_by("counselor_id").len().iter_rows())
    wanted = [c.strip() for spec in cfg.counselors for c in spec.split(",") if c.strip()]
    for cid in wanted:
        if cid not in counts:
            near = difflib.get_close_matches(cid, list(counts), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise AnalysisError(f"--counselor {cid!r}: no such counselor in the corpus{hint}")
        if cid not in profiled:
            raise AnalysisError(
                f"--counselor {cid!r} has {counts[cid]} session(s) with an outcome; a card needs "
                f"{cfg.min_sessions} (--min-sessions)"
            )
    return sorted(set(wanted))


def _driver_rows(
    drivers: pl.DataFrame | None,
    frame: pl.DataFrame,
    profiles: pl.DataFrame,
    outcomes: list[str],
    alpha: float,
) -> tuple[list[dict[str, Any]], pl.DataFrame]:
    """The population's significant drivers (strongest first per outcome) with the top-quarter
    counselors' mean, and each counselor's mean of every such feature."""
    if drivers is None or drivers.is_empty():
        return [], pl.DataFrame({"counselor_id": []}, schema={"counselor_id": pl.String})
    sig = (
        drivers.filter(
            (pl.col("p_adjusted") < alpha)
            & pl.col("outcome").is_in(outcomes)
            & pl.col("feature").is_in(frame.columns)
        )
        .sort(pl.col("coef_std").abs(), descending=True)
        .group_by("outcome", maintain_order=True)
        .head(DRIVERS_PER_DIMENSION)
    )
    features = sorted(set(sig.get_column("feature").to_list()))
    means = frame.group_by("counselor_id").agg(pl.col(f).cast(pl.Float64).mean() for f in features)
    rows = []
    for d in sig.iter_rows(named=True):
        ranked = profiles.filter(pl.col("outcome") == d["outcome"])
        cut = ranked.get_column("pooled_mean").quantile(1 - TOP_SHARE, "linear")
        top = ranked.filter(pl.col("pooled_mean") >= cut).get_column("counselor_id")
        feature = d["feature"]
        in_top = means.filter(pl.col("counselor_id").is_in(top.implode()))
        rows.append(
            {
                "outcome": d["outcome"],
                "feature": feature,
                "label": feature_label(feature),
                "coef_std": float(d["coef_std"]),
                "p_adjusted": float(d["p_adjusted"]),
                "top_mean": in_top.get_column(feature).mean(),
                "population_mean": means.get_column(feature).mean(),
                "n_top": in_top.height,
            }
        )
    return rows, means


def feature_label(feature: str) -> str:
    if feature in FEATURE_WORDS:
        return FEATURE_WORDS[feature]
    family, _, label = feature.partition(":")
    what = {"strategy": "counselor turns", "reaction": "client turns"}.get(family, "turns")
    return f"share of {what} labelled “{label}”" if label else feature


def _assign_cluster(rationale: str, clusters: list[tuple[int, list[str]]]) -> int:
    """The cluster whose top terms the rationale contains most (-1: none)."""
    text = (rationale or "").lower()
    best, best_hits = -1, 0
    for number, terms in clusters:
        hits = sum(1 for term in terms if term and term in text)
        if hits > best_hits:
            best, best_hits = number, hits
    return best


def _low_items(scores: PathOrURI | None, session_ids: list[str], low: float) -> pl.DataFrame | None:
    """The low-scored items of these sessions (the filter pushed into the Parquet scan, so only
    they are read); None without a scoring run's items/."""
    if scores is None:
        return None
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from care_ray.scoring.results import RunFolder

    run = RunFolder(scores)
    files = run.readable("items")
    if not files:
        return None
    dataset = ds.dataset(files, filesystem=run.loc.fs, format="parquet")
    columns = [
        c
        for c in ("session_id", "item_id", "dimension", "score", "rationale", "quotes")
        if c in dataset.schema.names
    ]
    if len(columns) < 4 or columns[:4] != ["session_id", "item_id", "dimension", "score"]:
        return None
    wanted = (pc.field("score") <= low) & pc.field("session_id").isin(
        pa.array(session_ids, pa.string())
    )
    items = pl.from_arrow(dataset.to_table(columns=columns, filter=wanted))
    assert isinstance(items, pl.DataFrame)
    return items.sort("score", "session_id", "item_id")


def _first_quote(quotes: Any) -> str | None:
    if isinstance(quotes, str):
        return quotes or None
    return next((str(q) for q in (quotes or []) if q), None)


def _contexts(cfg: CardsConfig, session_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The turns (role, text) of these sessions, read from the corpus."""
    if not session_ids:
        return {}
    con = connect(cfg.memory_limit)
    _bind_parquet(con, "sessions", _sessions_root(cfg.sessions))
    con.register("wanted", pl.DataFrame({"session_id": sorted(session_ids)}))
    rows = con.sql(
        "SELECT session_id, [{'role': t.role, 'text': t.text} FOR t IN turns] AS turns "
        "FROM sessions SEMI JOIN wanted USING (session_id)"
    ).pl()
    con.close()
    return dict(rows.iter_rows())


def dialogue(turns: list[dict[str, Any]], quote: str | None) -> list[dict[str, Any]]:
    """The quoted turn (the first whose text holds the quote, or the quote holds) and
    CONTEXT_TURNS either side; [] when the quote is in no turn."""
    if not quote or not turns:
        return []
    q = " ".join(quote.lower().split())
    for i, turn in enumerate(turns):
        text = " ".join(str(turn.get("text") or "").lower().split())
        if text and (q in text or text in q):
            lo, hi = max(0, i - CONTEXT_TURNS), min(len(turns), i + CONTEXT_TURNS + 1)
            return [
                {"role": str(t.get("role")), "text": str(t.get("text") or ""), "quoted": j == i}
                for j, t in enumerate(turns[lo:hi], start=lo)
            ]
    return []


def _moments(
    cfg: CardsConfig,
    low: pl.DataFrame | None,
    clusters: pl.DataFrame | None,
    counselor_of: dict[str, str],
) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """Per counselor: the quoted moments (at most max_moments, lowest scores first) and the counts
    of low items per (dimension, challenge cluster)."""
    if low is None or low.is_empty():
        return {}, {}
    from care_ray.contracts.rubric import load_rubric

    item_text = {i.id: i.text for i in load_rubric().items}
    by_dim: dict[str, list[tuple[int, list[str]]]] = {}
    terms_of: dict[tuple[str, int], str] = {}
    for c in (clusters if clusters is not None else pl.DataFrame()).iter_rows(named=True):
        terms = [t.strip().lower() for t in str(c["top_terms"] or "").split(",")]
        by_dim.setdefault(c["dimension"], []).append((int(c["cluster"]), terms))
        terms_of[(c["dimension"], int(c["cluster"]))] = str(c["top_terms"] or "")
    has_text = "rationale" in low.columns
    moments: dict[str, list[dict]] = {}
    counts: dict[str, dict[tuple[str, int], int]] = {}
    for row in low.iter_rows(named=True):
        cid = counselor_of.get(row["session_id"])
        if cid is None:
            continue
        rationale = row.get("rationale") if has_text else None
        number = _assign_cluster(rationale or "", by_dim.get(row["dimension"], []))
        key = (row["dimension"], number)
        counts.setdefault(cid, {})[key] = counts.setdefault(cid, {}).get(key, 0) + 1
        mine = moments.setdefault(cid, [])
        seen = {m["session_id"] for m in mine}  # one moment per session: more of their work
        if (
            cfg.quotes
            and has_text
            and len(mine) < cfg.max_moments
            and row["session_id"] not in seen
        ):
            mine.append(
                {
                    "session_id": row["session_id"],
                    "item_id": int(row["item_id"]),
                    "item_text": item_text.get(int(row["item_id"]), ""),
                    "dimension": row["dimension"],
                    "score": float(row["score"]),
                    "cluster": number,
                    "rationale": rationale or "",
                    "quote": _first_quote(row.get("quotes")) or "",
                }
            )
    if cfg.quotes:
        turns = _contexts(cfg, {m["session_id"] for ms in moments.values() for m in ms})
        for ms in moments.values():
            for m in ms:
                m["dialogue"] = dialogue(turns.get(m["session_id"]) or [], m["quote"])
    challenge_counts = {
        cid: [
            {
                "dimension": dim,
                "cluster": number,
                "top_terms": terms_of.get((dim, number), "") if cfg.quotes else "",
                "n_items": n,
            }
            for (dim, number), n in sorted(found.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        for cid, found in counts.items()
    }
    return moments, challenge_counts


# --- the cards ---------------------------------------------------------------------------------


def build_cards(cfg: CardsConfig) -> CardData:
    """Every card's figures (the analysis is run first when --analysis is not given)."""
    folder, mode = ensure_analysis(cfg)
    manifest = _manifest(folder)
    if mode == "features":
        raise AnalysisError(
            "no outcome to card: the corpus has no client_wai ratings or numeric labels and no "
            "--scores was given"
        )
    outcomes = [str(o) for o in manifest.get("outcomes") or []]
    profiles = _table(folder, "counselor_profiles")
    if profiles is None or profiles.is_empty():
        raise AnalysisError(
            f"no counselor has {cfg.min_sessions} or more sessions with an outcome "
            "(counselor_profiles is empty)"
        )
    frame = _session_frame(folder, cfg, outcomes)
    population = {
        o: profiles.filter(pl.col("outcome") == o).get_column("pooled_mean").to_list()
        for o in outcomes
    }
    population_mean = {
        o: float(profiles.filter(pl.col("outcome") == o).get_column("population_mean").mean())  # type: ignore[arg-type]
        for o in outcomes
        if population[o]
    }
    profiles = profiles.filter(pl.col("n_sessions") >= cfg.min_sessions)
    chosen = _chosen(cfg, frame, set(profiles.get_column("counselor_id").to_list()))
    drivers, feature_means = _driver_rows(
        _table(folder, "drivers"), frame, profiles, outcomes, cfg.alpha
    )
    scores = cfg.scores if cfg.scores is not None else manifest.get("scores")
    if mode != "scores":
        scores = None
    mine = frame.filter(pl.col("counselor_id").is_in(chosen))
    counselor_of = dict(mine.select("session_id", "counselor_id").iter_rows())
    moments, challenges = _moments(
        cfg,
        _low_items(scores, list(counselor_of), cfg.low_threshold),
        _table(folder, "challenge_clusters"),
        counselor_of,
    )
    data = CardData(
        mode=mode,
        outcomes=outcomes,
        alpha=cfg.alpha,
        low_threshold=cfg.low_threshold,
        population=population,
        population_mean=population_mean,
        analysis=str(folder),
        score_kind=manifest.get("score_kind") if mode == "scores" else None,
    )
    prof = {
        (r["counselor_id"], r["outcome"]): r
        for r in profiles.filter(pl.col("counselor_id").is_in(chosen)).iter_rows(named=True)
    }
    yours = {r["counselor_id"]: r for r in feature_means.iter_rows(named=True)}
    sessions_of = mine.partition_by("counselor_id", as_dict=True, maintain_order=True)
    for cid in chosen:
        sessions = sessions_of[(cid,)]
        dims = []
        for o in outcomes:
            p = prof.get((cid, o))
            y = sessions.get_column(o).drop_nulls().to_numpy().astype(float)
            y = y[np.isfinite(y)]
            dims.append(
                {
                    "outcome": o,
                    "n": int(p["n_sessions"]) if p else len(y),
                    "raw_mean": p["raw_mean"] if p else None,
                    "pooled_mean": p["pooled_mean"] if p else None,
                    "pooled_lo": p["pooled_lo"] if p else None,
                    "pooled_hi": p["pooled_hi"] if p else None,
                    "population_mean": p["population_mean"] if p else population_mean.get(o),
                    "shrinkage": p["shrinkage"] if p else None,
                    "is_strength": bool(p and p["is_strength"]),
                    "is_below": bool(p and p["pooled_hi"] < p["population_mean"]),
                    "is_weakest": bool(p and p["is_weakest"]),
                    "points": [float(v) for v in y],
                    **trend(y, cfg.alpha),
                }
            )
        data.cards.append(
            {
                "counselor_id": cid,
                "n_sessions": sessions.height,
                "dims": dims,
                "drivers": [
                    {**d, "yours": (yours.get(cid) or {}).get(d["feature"])} for d in drivers
                ],
                "moments": moments.get(cid, []),
                "challenges": challenges.get(cid, []),
            }
        )
    return data


def mean_score(card: dict[str, Any]) -> float:
    values = [d["pooled_mean"] for d in card["dims"] if d["pooled_mean"] is not None]
    return float(np.mean(values)) if values else float("nan")


def cards_table(data: CardData) -> pl.DataFrame:
    """One row per counselor: every figure its card shows (dimension figures as OUTCOME_FIELD
    columns; drivers, moments and challenge counts as lists)."""
    rows = []
    for card in data.cards:
        row: dict[str, Any] = {
            "counselor_id": card["counselor_id"],
            "n_sessions": card["n_sessions"],
        }
        for d in card["dims"]:
            for key, value in d.items():
                if key not in ("outcome", "points"):
                    row[f"{d['outcome']}_{key}"] = value
        row["mean_pooled"] = mean_score(card)
        row["drivers"] = card["drivers"]
        row["moments"] = [{k: v for k, v in m.items() if k != "dialogue"} for m in card["moments"]]
        row["challenges"] = card["challenges"]
        row["n_low_items"] = sum(c["n_items"] for c in card["challenges"])
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def chunks(cards: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(cards), size):
        yield cards[start : start + size]
