"""`care-ray analyze`: population, counselor profiles, interaction features, drivers, group contrasts,
challenges and trajectories from a corpus and its scores (or its own numeric labels), as Parquet tables.

Session-level questions are SQL in queries/ run by DuckDB over the Parquet; features over the turns
are Polars (features.py); regressions, contrasts and text statistics are the sibling modules.
A table that the input cannot support is left out and `manifest.json` notes say why.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

import duckdb
import polars as pl
import pyarrow.dataset as ds
from pydantic import BaseModel, ConfigDict, Field

from care_ray.analytics.features import (
    BASE_FEATURES,
    FAMILIES,
    TurnFeatures,
    compute_features,
    driver_features,
    feature_name,
    load_vocabulary,
)
from care_ray.analytics.notes import compact_notes, left_out
from care_ray.analytics.specs import (
    BASE_BY,
    ID_COLUMNS,
    AnalysisError,
    GroupBy,
    Outcome,
    parse_by,
    parse_outcomes,
)
from care_ray.analytics.timeline import (
    TIMELINE_TABLES,
    TimelineSettings,
    timeline_links,
    timeline_tables,
)
from care_ray.cluster.storage import PathOrURI
from care_ray.common.options import cli
from care_ray.common.sql import connect, parquet_glob, read_query
from care_ray.corpus.reader import redaction_summary

log = logging.getLogger(__name__)

SCORE_OUTCOMES = ("goal", "task", "bond")
TABLES = (
    "population",
    "counselor_profiles",
    "features",
    "transitions",
    "transition_tests",
    "weakest_outcome",
    "drivers",
    "contrasts",
    "challenge_terms",
    "challenge_clusters",
    "trajectories",
    "trajectory_summary",
    "trajectory_clients",
    "outcome_links",
    *TIMELINE_TABLES,
    "timeline_links",
)
# Without any outcome (no --scores, no numeric label) only these are written (mode "features"):
# the features, and the timeline of ratings the turns carry (its own outcome).
NEED_OUTCOMES = tuple(
    t
    for t in TABLES
    if t not in ("features", "transitions", "transition_tests", "contrasts", *TIMELINE_TABLES)
)
OUTCOME_HELP = (
    "with --scores: goal, task, bond (default all three); any numeric label as labels.KEY (or KEY); "
    "a difference or sum as NAME=TERM-TERM, e.g. "
    "emotion_drop=labels.initial_emotion_intensity-labels.final_emotion_intensity. "
    "Without --scores the default is every label the corpus has."
)
BY_HELP = (
    "source | language | metadata.KEY | labels.KEY | KEY (metadata, then labels) | "
    "NAME=COLUMN:V1,V2 (two groups: those values vs 'other')"
)


class AnalyzeConfig(BaseModel):
    """Findings from a corpus and its scores (or its own labels): population, counselor
    profiles, interaction features and transitions, drivers, group contrasts, challenges,
    trajectories."""

    model_config = ConfigDict(extra="forbid")

    sessions: Path = Field(description="corpus folder written by `care-ray ingest`")
    out: Path = Field(description="folder for the Parquet tables and manifest.json")
    scores: PathOrURI | None = Field(
        None,
        description="a `care-ray score` run folder or URI; without it the outcomes are session "
        "labels (model-free)",
    )
    score_kind: Literal["auto", "expected", "greedy"] = Field(
        "auto",
        description="which score of --scores: 'expected' (Σ s·p(s) at the score token, kept by "
        "`score --score-logprobs`), 'greedy' (the decoded score), or 'auto': expected where the "
        "run kept it. manifest.json says which was read",
    )
    outcomes: list[str] = Field(
        default_factory=list,
        description=f"repeatable or comma-separated; {OUTCOME_HELP}",
        json_schema_extra=cli(flag="--outcome"),
    )
    outcome_labels: list[str] = Field(
        default_factory=list,
        description="repeatable or comma-separated: the outcome labels (labels.KEY, KEY or "
        "NAME=TERM-TERM) that outcome_links relates the scores (model-free: the --outcome "
        "labels) to; default every numeric label and every label-only derived --outcome",
        json_schema_extra=cli(flag="--outcome-label"),
    )
    by: list[str] = Field(
        default_factory=list,
        description=f"repeatable: contrast and break down by {BY_HELP}; population is always by "
        "source too",
    )
    vocabulary: Path | None = Field(
        None,
        description="YAML mapping label spellings: {strategy: {raw: canonical}, reaction: {raw: "
        "canonical}}; without it shares are compared within a source only",
    )
    low_threshold: float = Field(
        2.0,
        description="low = value <= this: the population's low_share per outcome and the "
        "low-scored items whose rationales make the challenges (the paper's <= 2)",
    )
    min_sessions: int = Field(
        5, ge=2, description="counselors with at least this many sessions are profiled"
    )
    min_group: int = Field(
        5, ge=2, description="groups smaller than this are left out of contrasts"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="intervals are 1 - alpha")
    min_label_sessions: int = Field(
        10,
        ge=1,
        description="a strategy/reaction label enters the drivers if at least this many sessions show it",
    )
    max_docs: int = Field(
        20000, ge=10, description="low-item rationales sampled per dimension for challenges"
    )
    clusters: int | None = Field(
        None,
        ge=2,
        description="rationale clusters per dimension (default: chosen by the clustering)",
    )
    rupture_drop: float = Field(
        2.0,
        gt=0,
        description="timeline: a drop of at least this between consecutive points of a session's "
        "curve (its rated turns) is a rupture",
    )
    repair_within: float = Field(
        1.0,
        ge=0,
        description="timeline: a rupture is repaired when a later point of the session is back "
        "within this of the value before the drop",
    )
    timeline_examples: int = Field(
        3, ge=0, description="timeline: the largest drops whose dialogue is kept for the report"
    )
    seed: int = 0
    memory_limit: str = Field(
        "3GB", pattern=r"^\d+(\.\d+)?\s*([KMGT]i?B|B)$", description="DuckDB memory limit, e.g. 3GB"
    )
    batch_size: int = Field(20000, ge=1, description="sessions per batch when reading turns")
    max_mixed_rows: int = Field(
        20000,
        ge=0,
        description="above this many sessions the drivers use clustered OLS instead of a mixed model",
    )


# --- the session frame -----------------------------------------------------------------------------


def _sessions_root(corpus: Path) -> Path:
    corpus = Path(corpus)
    root = corpus / "sessions" if (corpus / "sessions").is_dir() else corpus
    if not root.is_dir():
        raise AnalysisError(f"no sessions corpus at {corpus} (expected {corpus}/sessions/)")
    if not any(root.rglob("*.parquet")):
        raise AnalysisError(f"the corpus at {corpus} has no sessions")
    return root


def _bind_parquet(
    con: duckdb.DuckDBPyConnection, name: str, folder: Path, hive: bool = True
) -> None:
    con.read_parquet(parquet_glob(folder), hive_partitioning=hive, union_by_name=True).create_view(
        name
    )


def _query(con: duckdb.DuckDBPyConnection, name: str) -> pl.DataFrame:
    return con.sql(read_query(name)).pl()


def corpus_keys(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[str]]:
    """(label keys, metadata keys) of the bound `sessions` view."""
    keys = _query(con, "analysis_keys")
    of = lambda kind: sorted(keys.filter(pl.col("kind") == kind).get_column("key").to_list())  # noqa: E731
    return of("labels"), of("metadata")


def session_values(
    con: duckdb.DuckDBPyConnection, labels: set[str], metadata: set[str]
) -> pl.DataFrame:
    """session_id + one column per requested label (labels.KEY, float) and metadata key (metadata.KEY)."""
    wanted = pl.DataFrame(
        {
            "kind": ["labels"] * len(labels) + ["metadata"] * len(metadata),
            "key": sorted(labels) + sorted(metadata),
        },
        schema={"kind": pl.String, "key": pl.String},
    )
    con.register("wanted", wanted)
    values = _query(con, "analysis_values")
    con.unregister("wanted")
    frame = values.select("session_id").unique()
    for kind, value_col in (("labels", "num"), ("metadata", "txt")):
        part = values.filter(pl.col("kind") == kind)
        if part.is_empty():
            continue
        wide = part.with_columns((pl.lit(kind + ".") + pl.col("key")).alias("name")).pivot(
            on="name", index="session_id", values=value_col, aggregate_function="first"
        )
        frame = frame.join(wide, on="session_id", how="left")
    for key in labels:
        if f"labels.{key}" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.Float64).alias(f"labels.{key}"))
    for key in metadata:
        if f"metadata.{key}" not in frame.columns:
            frame = frame.with_columns(pl.lit(None, pl.String).alias(f"metadata.{key}"))
    return frame


def load_scores(
    scores: str | Path, kind: str = "auto"
) -> tuple[pl.DataFrame, tuple[str, ...], str, str | None]:
    """Per-session dimension scores of a scoring run (a local folder or a URI): its sessions/
    table, or recomputed from its committed items/; and which score they are. "expected" (Σ s·p(s)
    at the score token, `<dim>_expected`) where the run kept it and `kind` is "auto" or
    "expected" ("auto": only where every decoded score has one); else "greedy" (the decoded
    score). The chosen kind takes the dimensions' names, so every analysis reads one kind and the
    manifest says which; and a note where the two kinds cover different sessions."""
    from care_ray.scoring.results import NoScores, read_session_scores

    try:
        arrow, _ = read_session_scores(scores)
    except NoScores as e:
        raise AnalysisError(str(e)) from None
    table = pl.from_arrow(arrow)
    assert isinstance(table, pl.DataFrame)
    columns = tuple(c for c in SCORE_OUTCOMES if c in table.columns)
    if "session_id" not in table.columns or not columns:
        raise AnalysisError(
            f"{scores}: the scores have no session_id or no {'/'.join(SCORE_OUTCOMES)} columns"
        )
    kept = all(
        f"{c}_expected" in table.columns
        and table.get_column(f"{c}_expected").null_count() < table.height
        for c in columns
    )
    if kind == "expected" and not kept:
        raise AnalysisError(
            f"{scores}: the run kept no expected scores; score with --score-logprobs K, or "
            "analyze its decoded scores with --score-kind greedy"
        )
    # an expected score needs all of a dimension's items read (their subset of the decoded ones)
    nulls = lambda c: table.get_column(c).null_count()  # noqa: E731
    missing = sum(nulls(f"{c}_expected") - nulls(c) for c in columns) if kept else 0
    auto = kind == "auto" and not missing
    used = "expected" if kept and (kind == "expected" or auto) else "greedy"
    note = (
        f"{missing} session dimension(s) have a decoded score but no expected one (an item "
        "without a readable score token): "
        + ("left out" if used == "expected" else "the decoded scores are analysed instead")
        if missing and kind != "greedy"
        else None
    )
    source = {c: f"{c}_expected" if used == "expected" else c for c in columns}
    picked = table.select(
        "session_id", *(pl.col(source[c]).cast(pl.Float64).alias(c) for c in columns)
    )
    return picked, columns, used, note


def _group_column(group: GroupBy) -> pl.Expr:
    value = pl.col(group.column).cast(pl.String)
    if group.column.startswith("labels."):
        # 4.0 and 4 are one group: print whole numbers without the decimal point.
        num = pl.col(group.column).cast(pl.Float64)
        value = (
            pl.when(num == num.round(0))
            .then(num.cast(pl.Int64).cast(pl.String))
            .otherwise(num.cast(pl.String))
        )
    if group.values is not None:
        value = (
            pl.when(value.is_in(list(group.values)))
            .then(pl.lit(",".join(group.values)))
            .when(value.is_not_null())
            .then(pl.lit("other"))
        )
    return value.alias(group.name)


# --- tables -----------------------------------------------------------------------------------------


def _outcomes_long(frame: pl.DataFrame, outcomes: list[str]) -> pl.DataFrame:
    return (
        frame.select(
            "session_id", "client_id", "counselor_id", "session_index", "started_at", *outcomes
        )
        .unpivot(
            on=outcomes,
            index=["session_id", "client_id", "counselor_id", "session_index", "started_at"],
            variable_name="outcome",
            value_name="value",
        )
        .filter(pl.col("value").is_not_null() & pl.col("value").is_finite())
    )


def _groups_long(frame: pl.DataFrame, groups: list[GroupBy]) -> pl.DataFrame:
    names = ["source"] + [g.name for g in groups if g.name != "source"]
    parts = [
        frame.select("session_id", pl.lit("all").alias("group_by"), pl.lit("all").alias("grp"))
    ]
    parts += [
        frame.select(
            "session_id", pl.lit(name).alias("group_by"), pl.col(name).cast(pl.String).alias("grp")
        )
        for name in names
    ]
    return pl.concat(parts).filter(pl.col("grp").is_not_null())


def _set_variables(con: duckdb.DuckDBPyConnection, **values: Any) -> None:
    for name, value in values.items():
        con.execute(f"SET VARIABLE {name} = ?", [value])  # name is ours, never user input


def sql_tables(
    frame: pl.DataFrame,
    outcomes: list[str],
    groups: list[GroupBy],
    cfg: AnalyzeConfig,
    notes: list[str],
) -> dict[str, pl.DataFrame]:
    """population, counselor_profiles and the trajectory tables from the queries/ SQL, with the
    intervals of their means and shares at 1 − alpha added here (the SQL stays plain aggregates)."""
    from care_ray.analytics.intervals import with_mean_interval

    con = connect(cfg.memory_limit)
    _set_variables(
        con,
        low_threshold=float(cfg.low_threshold),
        min_sessions=int(cfg.min_sessions),
        z=_normal_quantile(cfg.alpha),
    )
    con.register("session_outcomes", _outcomes_long(frame, outcomes))
    con.register("session_groups", _groups_long(frame, groups))
    tables = {"population": with_mean_interval(_query(con, "population"), cfg.alpha)}
    tables.update(_counselor_profiles(con, frame, cfg, notes))
    tables.update(_trajectories(con, notes, cfg.alpha))
    con.close()
    return tables


def _normal_quantile(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / 2))


def _counselor_profiles(
    con: duckdb.DuckDBPyConnection, frame: pl.DataFrame, cfg: AnalyzeConfig, notes: list[str]
) -> dict[str, pl.DataFrame]:
    counts = frame.get_column("counselor_id").drop_nulls().value_counts()
    if counts.is_empty():
        notes.append("counselor_profiles: absent — no session has a counselor_id")
        return {}
    if not (counts.get_column("count") >= cfg.min_sessions).any():
        notes.append(
            f"counselor_profiles: absent — no counselor has {cfg.min_sessions} or more sessions (--min-sessions)"
        )
        return {}
    profiles = _query(con, "counselor_profiles")
    if profiles.is_empty():
        notes.append(
            f"counselor_profiles: absent — no counselor has {cfg.min_sessions} or more sessions with an outcome"
        )
        return {}
    return {"counselor_profiles": profiles}


def _trajectories(
    con: duckdb.DuckDBPyConnection, notes: list[str], alpha: float
) -> dict[str, pl.DataFrame]:
    points = _query(con, "trajectory_points")
    if points.is_empty():
        notes.append(
            "trajectories, trajectory_summary, trajectory_clients: absent — no client has two "
            "or more sessions with an outcome and a session_index or started_at"
        )
        return {}
    con.register("trajectory_points", points)
    trajectories = _query(con, "trajectories")
    con.register("trajectories", trajectories)
    return {
        "trajectories": trajectories,
        "trajectory_summary": _query(con, "trajectory_summary"),
        "trajectory_clients": _client_intervals(
            _query(con, "trajectory_clients"), trajectories, alpha
        ),
    }


def _client_intervals(
    clients: pl.DataFrame, trajectories: pl.DataFrame, alpha: float
) -> pl.DataFrame:
    """trajectory_clients with the t interval of the mean per-client slope (mean_slope_lo/hi) and
    the Wilson interval of the share of clients rising (share_rising_lo/hi), at 1 − alpha: the
    clients are the units, so the intervals are over their slopes and their rises."""
    from care_ray.analytics.intervals import with_mean_interval, with_wilson_interval

    per_outcome = trajectories.group_by("outcome").agg(
        _slope_sd=pl.col("slope").filter(pl.col("slope").is_finite()).std(ddof=1),
        _slopes=pl.col("slope").filter(pl.col("slope").is_finite()).count(),
        _rising=pl.col("rises").sum(),
        _clients=pl.col("rises").count(),
    )
    table = clients.join(per_outcome, on="outcome", how="left", maintain_order="left")
    table = with_mean_interval(table, alpha, mean="mean_slope", sd="_slope_sd", n="_slopes")
    table = with_wilson_interval(
        table,
        alpha,
        share="share_rising",
        successes=table["_rising"],
        trials=table["_clients"],
    )
    return table.drop("_slope_sd", "_slopes", "_rising", "_clients")


def transition_tables(
    transitions: pl.DataFrame, alpha: float, notes: list[str]
) -> dict[str, pl.DataFrame]:
    """transitions with each cell's interval and residual, and transition_tests (features.py)."""
    from care_ray.analytics.features import transition_statistics

    cells, tests, test_notes = transition_statistics(transitions, alpha)
    notes.extend(test_notes)
    return {"transitions": cells} | ({"transition_tests": tests} if not tests.is_empty() else {})


# Fewer paired sessions than this and the weakest-outcome test is not run: its p would mean little.
MIN_PAIRED = 10


def weakest_outcome_table(
    frame: pl.DataFrame, outcomes: list[Outcome], mode: str, notes: list[str]
) -> dict[str, pl.DataFrame]:
    """weakest_outcome: is the outcome with the lowest mean lower than the next-lowest on the same
    sessions? The paired Wilcoxon signed-rank test over the sessions that have both (it assumes no
    normality of the differences; zero differences are dropped, scipy's default), with the mean of
    (outcome − runner_up). Ranking means only makes sense on one scale, so the table is written
    only when every outcome is a model score (goal, task, bond: the same 1-5 items)."""
    names = [o.name for o in outcomes]
    on_one_scale = mode == "scores" and all(
        len(o.terms) == 1 and o.terms[0].sign > 0 and o.terms[0].column in SCORE_OUTCOMES
        for o in outcomes
    )
    if not on_one_scale or len(names) < 2:
        notes.append(
            "weakest_outcome: absent — needs two or more outcomes that are model scores on one "
            "scale (goal, task, bond)"
        )
        return {}
    from scipy.stats import wilcoxon

    means = frame.select(pl.col(n).filter(pl.col(n).is_finite()).mean() for n in names).row(0)
    ranked = sorted((m, n) for m, n in zip(means, names, strict=True) if m is not None)
    if len(ranked) < 2:
        return {}
    (_, weakest), (_, runner_up) = ranked[:2]
    both = (
        frame.select(weakest, runner_up)
        .drop_nulls()
        .filter(pl.col(weakest).is_finite() & pl.col(runner_up).is_finite())
    )
    difference = (both[weakest] - both[runner_up]).to_numpy()
    if both.height < MIN_PAIRED or not difference.any():
        why = (
            f"only {both.height} session(s) have"
            if both.height < MIN_PAIRED
            else "no session differs on"
        )
        notes.append(f"weakest_outcome: absent — {why} both {weakest} and {runner_up}")
        return {}
    result = wilcoxon(difference)
    row = {
        "outcome": weakest,
        "runner_up": runner_up,
        "n": both.height,
        "mean_difference": float(difference.mean()),
        "test": "wilcoxon_signed_rank",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
    }
    return {"weakest_outcome": pl.DataFrame([row])}


def drivers_table(
    frame: pl.DataFrame,
    turn_features: TurnFeatures,
    outcomes: list[str],
    cfg: AnalyzeConfig,
    notes: list[str],
) -> dict[str, pl.DataFrame]:
    from care_ray.analytics.drivers import fit_drivers

    features, feature_notes = driver_features(turn_features, min_sessions=cfg.min_label_sessions)
    notes.extend(feature_notes)
    repeats = frame.get_column("counselor_id").drop_nulls().value_counts()
    group = "counselor_id" if (repeats.get_column("count") > 1).any() else None
    table, fit_notes = fit_drivers(
        frame, outcomes, features, group=group, alpha=cfg.alpha, max_mixed_rows=cfg.max_mixed_rows
    )
    notes.extend(fit_notes)
    if table.is_empty():
        notes.append("drivers: absent — no outcome could be fitted")
        return {}
    return {"drivers": table}


def contrast_variables(turn_features: TurnFeatures, outcomes: list[str]) -> list[str]:
    """Outcomes, base features and the label shares every source using that family uses (see features.py)."""
    shared = []
    for family in FAMILIES:
        labels = turn_features.label_sources.get(family, {})
        family_sources = {s for srcs in labels.values() for s in srcs}
        shared += [
            feature_name(family, lab)
            for lab in sorted(labels)
            if set(labels[lab]) == family_sources
        ]
    return [*outcomes, *BASE_FEATURES, *shared]


def contrasts_table(
    frame: pl.DataFrame,
    groups: list[GroupBy],
    variables: list[str],
    cfg: AnalyzeConfig,
    notes: list[str],
) -> dict[str, pl.DataFrame]:
    from care_ray.analytics.contrasts import group_contrasts

    names = ["source"] + [g.name for g in groups if g.name != "source"]
    parts = []
    for name in names:
        n_groups = frame.get_column(name).drop_nulls().n_unique()
        if n_groups < 2:
            notes.append(f"contrasts: {name} has {n_groups} group(s); nothing to contrast")
            continue
        # sorted by group once: each variable's test then slices contiguous groups instead of sorting 1M rows again
        grouped = frame.with_columns(pl.col(name).cast(pl.String)).sort(name, nulls_last=True)
        table, contrast_notes = group_contrasts(
            grouped, by=name, variables=variables, min_group=cfg.min_group, alpha=cfg.alpha
        )
        notes.extend(contrast_notes)
        if not table.is_empty():
            parts.append(table)
    if not parts:
        notes.append("contrasts: absent — no --by column with two or more groups")
        return {}
    return {"contrasts": pl.concat(parts, how="diagonal_relaxed")}


def challenge_tables(cfg: AnalyzeConfig, notes: list[str]) -> dict[str, pl.DataFrame]:
    """Distinctive terms and clusters of low-item rationales (scores mode with items/)."""
    if cfg.scores is None:
        notes.append(
            "challenge_terms, challenge_clusters: absent — model-free mode has no rationales (pass --scores)"
        )
        return {}
    from care_ray.scoring.results import RunFolder

    run = RunFolder(cfg.scores)
    items = run.readable("items")  # an unfinished run: its committed files only
    if not items:
        notes.append("challenge_terms, challenge_clusters: absent — the scoring run has no items/")
        return {}
    from care_ray.analytics.challenges import cluster_rationales, distinctive_terms

    con = connect(cfg.memory_limit)
    con.register("_items_arrow", ds.dataset(items, filesystem=run.loc.fs, format="parquet"))
    con.sql("SELECT * FROM _items_arrow").create_view("items")
    _bind_parquet(con, "sessions", _sessions_root(cfg.sessions))
    _set_variables(
        con, low_threshold=float(cfg.low_threshold), max_docs=int(cfg.max_docs), seed=int(cfg.seed)
    )
    docs = _query(con, "low_items")
    con.close()
    if docs.is_empty():
        notes.append(
            f"challenge_terms, challenge_clusters: absent — no item rationale with a score <= {cfg.low_threshold}"
        )
        return {}
    for row in (
        docs.group_by("dimension")
        .agg(pl.len(), pl.col("n_low").first())
        .sort("dimension")
        .iter_rows(named=True)
    ):
        if row["len"] < row["n_low"]:
            notes.append(
                f"challenges: {row['dimension']}: a sample of {row['len']} of {row['n_low']} "
                "low-scored items (--max-docs); cluster sizes are the sample's"
            )
    out = {
        "challenge_terms": distinctive_terms(docs),
        "challenge_clusters": cluster_rationales(
            docs, k=cfg.clusters, max_docs=cfg.max_docs, seed=cfg.seed
        ),
    }
    return {name: table for name, table in out.items() if not table.is_empty()}


# --- the orchestrator -------------------------------------------------------------------------------


def _link_outcomes(
    cfg: AnalyzeConfig,
    outcomes: list[Outcome],
    labels: list[str],
    mode: str,
    score_columns: tuple[str, ...],
) -> list[Outcome]:
    """The outcome labels of outcome_links: --outcome-label, or every numeric label and every
    derived --outcome made of labels alone. A name an outcome has must be that outcome."""
    if mode == "features":
        return []
    specs = cfg.outcome_labels or [
        *(f"labels.{key}" for key in labels),
        *(
            f"{o.name}=" + "".join(f"{'+' if t.sign > 0 else '-'}{t.column}" for t in o.terms)
            for o in outcomes
            if len(o.terms) > 1 and all(t.column.startswith("labels.") for t in o.terms)
        ),
    ]
    links = parse_outcomes(specs, (), labels) if specs else []
    known = {o.name: o for o in outcomes}
    clash = [
        o.name
        for o in links
        if known.get(o.name, o) != o or (o.name not in known and o.name in score_columns)
    ]
    if clash:
        raise AnalysisError(
            f"--outcome-label name(s) {', '.join(clash)} are outcomes defined otherwise; name them with NAME=…"
        )
    return links


def build_frame(
    cfg: AnalyzeConfig, notes: list[str]
) -> tuple[pl.DataFrame, list[Outcome], list[GroupBy], str, list[Outcome], str | None]:
    """One row per analysed session: ids, outcomes, the outcome labels of outcome_links and --by
    columns (no turn features yet). Mode: scores, labels, or features (no outcome at all); and
    the kind of score read (None without scores)."""
    con = connect(cfg.memory_limit)
    _bind_parquet(con, "sessions", _sessions_root(cfg.sessions))
    labels, metadata = corpus_keys(con)
    base = _query(con, "analysis_sessions")
    if base.is_empty():
        raise AnalysisError(f"the corpus at {cfg.sessions} has no sessions")
    scores, score_columns, score_kind, score_note = (
        load_scores(cfg.scores, cfg.score_kind) if cfg.scores else (None, (), None, None)
    )
    if score_note:
        notes.append(f"scores: {score_note}")
    outcomes = parse_outcomes(cfg.outcomes, score_columns, labels)
    mode = "scores" if cfg.scores else ("labels" if outcomes else "features")
    links = _link_outcomes(cfg, outcomes, labels, mode, score_columns)
    groups = parse_by(cfg.by, metadata, labels)
    taken = (
        {o.name for o in outcomes}
        | set(ID_COLUMNS)
        | set(BASE_FEATURES)
        | {"started_at", "language"}
    )
    clash = [g.name for g in groups if g.name not in BASE_BY and g.name in taken]
    if clash:
        raise AnalysisError(
            f"--by name(s) {', '.join(clash)} clash with an outcome or column name; choose another NAME"
        )
    wanted_labels = {
        t.column[len("labels.") :]
        for o in outcomes + links
        for t in o.terms
        if t.column.startswith("labels.")
    }
    wanted_labels |= {g.column[len("labels.") :] for g in groups if g.column.startswith("labels.")}
    wanted_metadata = {
        g.column[len("metadata.") :] for g in groups if g.column.startswith("metadata.")
    }
    frame = base
    if wanted_labels or wanted_metadata:
        frame = frame.join(
            session_values(con, wanted_labels, wanted_metadata), on="session_id", how="left"
        )
    con.close()
    if scores is not None:
        shared = frame.join(scores, on="session_id", how="semi").height
        if shared == 0:
            raise AnalysisError(
                f"the scores at {cfg.scores} share no session_id with the corpus at {cfg.sessions}"
            )
        if shared < scores.height:
            notes.append(
                f"{scores.height - shared} scored session(s) are not in the corpus and were left out"
            )
        frame = frame.join(scores, on="session_id", how="left")
    frame = frame.with_columns(
        *(o.expr() for o in outcomes), *(_group_column(g) for g in groups if g.name not in BASE_BY)
    )
    frame = frame.with_columns(o.expr() for o in links if o not in outcomes)
    names = [o.name for o in outcomes]
    if mode == "features":
        notes.append(
            f"{', '.join(NEED_OUTCOMES)}: absent — no outcome: the corpus has no numeric labels "
            "and no --scores was given, so only the features, transitions and contrasts of the "
            "features are written"
        )
        return frame, outcomes, groups, mode, links, score_kind
    analysed = frame.filter(pl.any_horizontal(pl.col(n).is_not_null() for n in names))
    if analysed.is_empty():
        raise AnalysisError(f"no session has a value for any outcome ({', '.join(names)})")
    if analysed.height < frame.height:
        notes.append(
            f"{frame.height - analysed.height} of {frame.height} session(s) have no outcome and were left out"
        )
    return analysed, outcomes, groups, mode, links, score_kind


def analyze(cfg: AnalyzeConfig) -> dict[str, Any]:
    """Run every analysis the input supports; write the tables and manifest.json to cfg.out."""
    started = time.perf_counter()
    notes: list[str] = []
    vocabulary = load_vocabulary(cfg.vocabulary)
    frame, outcomes, groups, mode, links, score_kind = build_frame(cfg, notes)
    names = [o.name for o in outcomes]
    turn_features = compute_features(
        cfg.sessions,
        vocabulary,
        batch_size=cfg.batch_size,
        session_ids=frame.get_column("session_id"),
    )
    frame = frame.join(turn_features.sessions.drop("source"), on="session_id", how="left")
    feature_columns = [
        c for c in turn_features.sessions.columns if c not in ("session_id", "source")
    ]
    tables: dict[str, pl.DataFrame] = {
        "features": frame.select(*ID_COLUMNS, *names, *feature_columns)
    }
    if turn_features.transitions.is_empty():
        notes.append(
            "transitions, transition_tests: absent — no counselor turn with a strategy is followed by "
            "a client turn with a reaction"
        )
    else:
        tables.update(transition_tables(turn_features.transitions, cfg.alpha, notes))
    if len(turn_features.sources) > 1 and not cfg.vocabulary:
        notes.append(
            "strategy/reaction shares are per source (a label is null in sessions of a source "
            "that never uses it); pass --vocabulary to map spellings"
        )
    if mode != "features":
        tables.update(sql_tables(frame, names, groups, cfg, notes))
        tables.update(weakest_outcome_table(frame, outcomes, mode, notes))
        tables.update(drivers_table(frame, turn_features, names, cfg, notes))
        tables.update(outcome_links_table(frame, outcomes, links, mode, cfg.alpha, notes))
    tables.update(
        contrasts_table(frame, groups, contrast_variables(turn_features, names), cfg, notes)
    )
    if mode != "features":
        tables.update(challenge_tables(cfg, notes))
    # the curves against the session-level outcomes: the labels analysed, or with --scores the
    # outcome labels (not the model's own session scores, which end its curves)
    targets = [o.name for o in links] if mode == "scores" else names
    tables.update(_timeline(cfg, frame, groups, targets, vocabulary.strategy, score_kind, notes))
    return write_outputs(
        cfg,
        tables,
        {
            "kind": "care-ray analysis",
            "mode": mode,
            "corpus_redaction": redaction_summary(cfg.sessions),
            "outcomes": names,
            "outcome_definitions": {
                o.name: " ".join(
                    f"{'+' if t.sign > 0 else '-'} {t.column}" for t in o.terms
                ).lstrip("+ ")
                for o in outcomes
            },
            "by": [g.name for g in groups],
            "n_sessions": frame.height,
            "sessions": str(cfg.sessions),
            "scores": str(cfg.scores) if cfg.scores else None,
            "score_kind": score_kind,
            "low_threshold": cfg.low_threshold,
            "outcome_labels": [o.name for o in links],
            "alpha": cfg.alpha,
            "timeline": {"rupture_drop": cfg.rupture_drop, "repair_within": cfg.repair_within},
            "left_out": left_out(tables, notes, TABLES),
            "notes": compact_notes(notes),
        },
        started,
    )


def _timeline(
    cfg: AnalyzeConfig,
    frame: pl.DataFrame,
    groups: list[GroupBy],
    outcomes: list[str],
    strategy_map: dict[str, str],
    score_kind: str | None,
    notes: list[str],
) -> dict[str, pl.DataFrame]:
    """The timeline tables of the ratings the turns carry and of the scores' cut points, and
    their links to the outcomes."""
    from care_ray.analytics.timeline import scored_points

    settings = TimelineSettings(
        cfg.rupture_drop, cfg.repair_within, cfg.timeline_examples, cfg.min_sessions, cfg.alpha
    )
    by = [g.name for g in groups if g.name in frame.columns and g.name != "source"]
    tables = timeline_tables(
        _sessions_root(cfg.sessions),
        frame.select("session_id", *by) if by else None,
        settings,
        strategy_map,
        cfg.memory_limit,
        notes,
        scored_points(cfg.scores, score_kind) if cfg.scores else None,
    )
    links = (
        timeline_links(tables["timeline_sessions"], frame, outcomes, cfg.alpha, notes)
        if tables and outcomes
        else pl.DataFrame()
    )
    if not links.is_empty():
        tables["timeline_links"] = links
    elif tables:
        notes.append(
            "timeline_links: absent — no session-level outcome with enough sessions that have a curve"
        )
    return tables


def outcome_links_table(
    frame: pl.DataFrame,
    outcomes: list[Outcome],
    links: list[Outcome],
    mode: str,
    alpha: float,
    notes: list[str],
) -> dict[str, pl.DataFrame]:
    """outcome_links (outcomes.py): the scores' dimensions (model-free: the --outcome labels)
    against the outcome labels."""
    from care_ray.analytics.outcomes import Measure, outcome_links

    measure = lambda o: Measure(o.name, frozenset(t.column for t in o.terms))  # noqa: E731
    if mode == "scores":
        scored = [c for c in SCORE_OUTCOMES if c in frame.columns]
        predictors = [Measure(c, frozenset({c})) for c in scored]
    else:
        predictors = [measure(o) for o in outcomes]
    table = outcome_links(frame, predictors, [measure(o) for o in links], mode, alpha, notes)
    if table.is_empty():
        notes.append("outcome_links: absent — no outcome label to relate the predictors to")
        return {}
    return {"outcome_links": table}


def write_outputs(
    cfg: AnalyzeConfig, tables: dict[str, pl.DataFrame], manifest: dict[str, Any], started: float
) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:  # a table left from an earlier run must not pass for this run's
        (out / f"{name}.parquet").unlink(missing_ok=True)
    for name, table in tables.items():
        table.write_parquet(out / f"{name}.parquet")
    manifest = {
        **manifest,
        "tables": {name: tables[name].height for name in TABLES if name in tables},
    }
    manifest["seconds"] = round(time.perf_counter() - started, 3)
    (out / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    log.info(
        "analysis written to %s: %s",
        out,
        ", ".join(f"{k} ({v})" for k, v in manifest["tables"].items()),
    )
    return manifest
