"""Alliance over the session: each session's curve of within-session ratings, the ruptures in it
(a drop of at least `rupture_drop` between consecutive points), whether each was repaired (a later
point of the same session back within `repair_within` of the value before the drop), and what the
counselor did in the turns before drops and rises, against stretches where nothing changed.

Model-free, the curve is the ratings a corpus carries on its turns (`turns.rating`: FailedESConv's
seeker feedback, "how helpful so far"); the tables keep a `dimension` column (`turn_rating` here)
so that a model's scores at cut points fill the same tables. The points and segments are SQL
(queries/timeline_*.sql) over the corpus; rupture/repair logic, tests and intervals are here.
Everything is stated as association: a strategy seen before drops is not shown to cause them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from scipy import stats

from care_ray.analytics.drivers import bh_adjust
from care_ray.analytics.intervals import with_wilson_interval
from care_ray.common.sql import connect, parquet_glob, read_query

TIMELINE_TABLES = (
    "timeline_points",
    "timeline_curve",
    "timeline_sessions",
    "ruptures",
    "timeline_summary",
    "timeline_precedents",
    "timeline_dialogue",
)
CURVE_BINS = 10  # the mean curve is drawn over tenths of the session
SEGMENT_KINDS = ("drop", "rise")  # each compared with "steady" (no change at all)


@dataclass(frozen=True)
class TimelineSettings:
    rupture_drop: float  # a drop of at least this between consecutive points is a rupture
    repair_within: float  # repaired: a later point >= value before the drop - this
    examples: int  # ruptures whose dialogue is kept for the report (the largest drops)
    min_sessions: int  # counselors with this many sessions get a summary row
    alpha: float


def scored_points(scores: str | Path, score_kind: str | None) -> pl.DataFrame | None:
    """A scores folder's timeline (OUT/timeline/points.parquet, written by `score --timeline`)
    and the full-session scores of the same items (cut_turn -1), as (session_id, dimension,
    cut_turn, value); value: the expected score where `score_kind` is expected and it was kept.
    None when the folder has no timeline."""
    import pyarrow.parquet as pq

    from care_ray.cluster.storage import location
    from care_ray.scoring.results import RunFolder
    from care_ray.scoring.timeline import POINTS_FILE, TIMELINE_DIR

    target = location(scores).join(TIMELINE_DIR).join(POINTS_FILE)
    if not target.exists():
        return None
    with target.fs.open_input_file(target.path) as f:
        cuts = pl.from_arrow(pq.read_table(f))
    assert isinstance(cuts, pl.DataFrame)
    ends = pl.from_arrow(
        RunFolder(scores).read(
            "items",
            columns=["session_id", "item_id", "dimension", "score", "expected_score", "rationale"],
        )
    )
    assert isinstance(ends, pl.DataFrame)
    ends = ends.filter(pl.col("item_id").is_in(cuts.get_column("item_id").unique().implode()))

    def value(frame: pl.DataFrame) -> pl.Expr:
        if score_kind == "expected" and "expected_score" in frame.columns:
            return pl.coalesce(pl.col("expected_score"), pl.col("score"))
        return pl.col("score")

    columns = ["session_id", "dimension", "cut_turn", "value", "rationale"]
    return pl.concat(
        [
            cuts.with_columns(value(cuts).cast(pl.Float64).alias("value")).select(columns),
            ends.with_columns(
                pl.lit(-1, pl.Int32).alias("cut_turn"), value(ends).cast(pl.Float64).alias("value")
            ).select(columns),
        ],
        how="vertical_relaxed",
    )


def timeline_points(
    corpus: Path, memory_limit: str, scored: pl.DataFrame | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(points, segments) of the corpus's rated turns and, given `scored` (scored_points), the
    model's curves; both empty when no session has two points on any dimension."""
    con = connect(memory_limit)
    con.read_parquet(parquet_glob(corpus), hive_partitioning=True, union_by_name=True).create_view(
        "sessions"
    )
    parts = []
    if "rating" in str(con.sql("SELECT turns FROM sessions LIMIT 0").types[0]).lower():
        parts.append(con.sql(read_query("timeline_points")).pl())
    if scored is not None:
        con.register("scored_points", scored)
        parts.append(con.sql(read_query("timeline_model_points")).pl())
    parts = [p for p in parts if p.height]
    if not parts:
        con.close()
        return pl.DataFrame(), pl.DataFrame()
    points = pl.concat(parts, how="vertical_relaxed")
    con.register("timeline_points", points)
    segments = con.sql(read_query("timeline_segments")).pl() if points.height else pl.DataFrame()
    con.close()
    return points, segments


def mark_ruptures(
    points: pl.DataFrame, segments: pl.DataFrame, settings: TimelineSettings
) -> pl.DataFrame:
    """One row per rupture with `repaired` and the first `repair_turn` (null when never repaired)."""
    drops = segments.filter(pl.col("change") <= -settings.rupture_drop).with_columns(
        (-pl.col("change")).alias("drop"),
        (pl.col("turn_after") - pl.col("turn_before") - 1).alias("turns_between"),
    )
    later = points.select(
        "session_id",
        "dimension",
        pl.col("turn_index").alias("later_turn"),
        pl.col("value").alias("later_value"),
    )
    said = points.select(
        "session_id",
        "dimension",
        pl.col("turn_index").alias("turn_after"),
        pl.col("rationale").alias("rationale_after"),
    )
    repairs = (
        drops.select("session_id", "dimension", "turn_after", "value_before")
        .join(later, on=["session_id", "dimension"])
        .filter(
            (pl.col("later_turn") > pl.col("turn_after"))
            & (pl.col("later_value") >= pl.col("value_before") - settings.repair_within)
        )
        .group_by("session_id", "dimension", "turn_after")
        .agg(pl.col("later_turn").min().alias("repair_turn"))
    )
    return (
        drops.join(repairs, on=["session_id", "dimension", "turn_after"], how="left")
        .join(said, on=["session_id", "dimension", "turn_after"], how="left")
        .with_columns(pl.col("repair_turn").is_not_null().alias("repaired"))
        .select(
            "session_id",
            "source",
            "counselor_id",
            "dimension",
            "turn_before",
            "turn_after",
            "value_before",
            "value_after",
            "drop",
            "repaired",
            "repair_turn",
            "turns_between",
            "strategies",
            "rationale_after",  # the model's full answer at the cut after a drop, where given
        )
        .sort("session_id", "dimension", "turn_before")
    )


def session_curves(points: pl.DataFrame, ruptures: pl.DataFrame) -> pl.DataFrame:
    """Per session and dimension: the curve's points, start, end, minimum, ruptures, repairs."""
    counts = ruptures.group_by("session_id", "dimension").agg(
        pl.len().alias("ruptures"), pl.col("repaired").sum().alias("repaired")
    )
    return (
        points.sort("turn_index")
        .group_by("session_id", "source", "counselor_id", "dimension", maintain_order=True)
        .agg(
            pl.len().alias("n_points"),
            pl.col("value").first().alias("start"),
            pl.col("value").last().alias("end"),
            pl.col("value").min().alias("minimum"),
            pl.col("value").mean().alias("mean"),
        )
        .join(counts, on=["session_id", "dimension"], how="left")
        .with_columns(pl.col("ruptures", "repaired").fill_null(0).cast(pl.Int64))
        .sort("session_id", "dimension")
    )


def curve_table(points: pl.DataFrame, alpha: float) -> pl.DataFrame:
    """The mean curve per dimension over tenths of the session (by the points' positions), with
    the t interval of each tenth's mean. A session with two points in one tenth counts twice."""
    from care_ray.analytics.intervals import with_mean_interval

    binned = points.with_columns(
        (pl.col("position") * CURVE_BINS)
        .floor()
        .clip(0, CURVE_BINS - 1)
        .cast(pl.Int32)
        .alias("bin")
    )
    table = (
        binned.group_by("dimension", "bin")
        .agg(
            pl.len().alias("n"),
            pl.col("session_id").n_unique().alias("sessions"),
            pl.col("value").mean().alias("mean"),
            pl.col("value").std().alias("sd"),
        )
        .with_columns(((pl.col("bin") + 0.5) / CURVE_BINS).alias("position"))
        .sort("dimension", "bin")
        .select("dimension", "bin", "position", "n", "sessions", "mean", "sd")
    )
    return with_mean_interval(table, alpha)


def _summary_rows(curves: pl.DataFrame, group_by: str, column: str | None) -> pl.DataFrame:
    grp = pl.lit("all") if column is None else pl.col(column).cast(pl.Utf8)
    return (
        curves.with_columns(grp.alias("grp"))
        .filter(pl.col("grp").is_not_null())
        .group_by("dimension", "grp")
        .agg(
            pl.len().alias("sessions"),
            (pl.col("ruptures") > 0).sum().alias("sessions_with_rupture"),
            pl.col("ruptures").sum().alias("ruptures"),
            pl.col("repaired").sum().alias("repaired"),
        )
        .with_columns(pl.lit(group_by).alias("group_by"))
    )


def summary_table(
    curves: pl.DataFrame, groups: pl.DataFrame | None, settings: TimelineSettings
) -> pl.DataFrame:
    """The share of sessions with a rupture and the share of ruptures repaired, with Wilson
    intervals: over all sessions, by source, by each `--by` group (columns of `groups` besides
    session_id) and per counselor with at least `min_sessions` sessions. The repaired share's
    interval treats ruptures as independent (several in one session are not)."""
    parts = [_summary_rows(curves, "all", None), _summary_rows(curves, "source", "source")]
    if groups is not None:
        joined = curves.join(groups, on="session_id", how="left")
        parts += [
            _summary_rows(joined, name, name) for name in groups.columns if name != "session_id"
        ]
    counselors = curves.filter(
        pl.col("counselor_id").is_not_null()
        & (pl.len().over("counselor_id", "dimension") >= settings.min_sessions)
    )
    if counselors.height:
        parts.append(_summary_rows(counselors, "counselor", "counselor_id"))
    table = (
        pl.concat(parts)
        .with_columns(
            (pl.col("sessions_with_rupture") / pl.col("sessions")).alias("rupture_share"),
            (pl.col("repaired") / pl.col("ruptures")).alias("repaired_share"),
        )
        .select(
            "dimension",
            "group_by",
            "grp",
            "sessions",
            "sessions_with_rupture",
            "rupture_share",
            "ruptures",
            "repaired",
            "repaired_share",
        )
    )
    table = with_wilson_interval(
        table,
        settings.alpha,
        share="rupture_share",
        successes=table["sessions_with_rupture"],
        trials=table["sessions"],
    )
    return with_wilson_interval(
        table,
        settings.alpha,
        share="repaired_share",
        successes=table["repaired"],
        trials=table["ruptures"],
    ).fill_nan(None)


def precedents_table(
    segments: pl.DataFrame, settings: TimelineSettings, strategy_map: dict[str, str]
) -> pl.DataFrame:
    """Per strategy: the share of drop (and of rise) segments with that strategy in the turns
    between the two ratings, against the share of steady segments (no change), Fisher's exact
    test, Benjamini-Hochberg adjusted over every row. Segments changing by less than
    `rupture_drop` but not zero are neither and are left out of the comparison."""
    delta = settings.rupture_drop
    kind = (
        pl.when(pl.col("change") <= -delta)
        .then(pl.lit("drop"))
        .when(pl.col("change") >= delta)
        .then(pl.lit("rise"))
        .when(pl.col("change") == 0)
        .then(pl.lit("steady"))
    )
    labelled = segments.with_columns(
        kind.alias("kind"),
        pl.col("strategies").list.eval(pl.element().replace(strategy_map)).list.unique(),
    ).filter(pl.col("kind").is_not_null())
    rows = []
    for dimension in labelled.get_column("dimension").unique().sort().to_list():
        of_dim = labelled.filter(pl.col("dimension") == dimension)
        n = {k: of_dim.filter(pl.col("kind") == k).height for k in (*SEGMENT_KINDS, "steady")}
        present = (
            of_dim.explode("strategies")
            .drop_nulls("strategies")
            .group_by("kind", "strategies")
            .agg(pl.col("session_id").len().alias("with"))
        )
        count = {(k, s): w for k, s, w in present.iter_rows()}
        for strategy in sorted({s for _, s in count}):
            steady = count.get(("steady", strategy), 0)
            for segment in SEGMENT_KINDS:
                if not n[segment] or not n["steady"]:
                    continue
                with_ = count.get((segment, strategy), 0)
                counts = [[with_, n[segment] - with_], [steady, n["steady"] - steady]]
                odds, p = stats.fisher_exact(counts)
                rows.append(
                    {
                        "dimension": dimension,
                        "strategy": strategy,
                        "segment": segment,
                        "segments": n[segment],
                        "with_strategy": with_,
                        "share": with_ / n[segment],
                        "steady_segments": n["steady"],
                        "steady_with_strategy": steady,
                        "steady_share": steady / n["steady"],
                        "odds_ratio": float(odds),
                        "p_value": float(p),
                    }
                )
    if not rows:
        return pl.DataFrame()
    table = pl.DataFrame(rows)
    adjusted = bh_adjust(table.get_column("p_value").to_numpy())
    return (
        table.with_columns(pl.Series("p_adjusted", adjusted))
        .with_columns(pl.col("odds_ratio").replace([np.inf], [None]))
        .sort("dimension", "segment", "p_value", "strategy")
    )


def dialogue_table(
    corpus: Path, ruptures: pl.DataFrame, settings: TimelineSettings
) -> pl.DataFrame:
    """The turns from the point before to the point after each of the `examples` largest drops."""
    if not settings.examples or ruptures.is_empty():
        return pl.DataFrame()
    largest = (
        ruptures.sort(["drop", "session_id", "turn_before"], descending=[True, False, False])
        .head(settings.examples)
        .with_row_index("rank", offset=1)
        .select(
            pl.col("rank").cast(pl.Int32),
            "session_id",
            pl.col("turn_before").alias("first_turn"),
            pl.col("turn_after").alias("last_turn"),
            "dimension",
            "drop",
            "value_before",
            "value_after",
            "repaired",
            "rationale_after",
        )
    )
    con = connect()
    con.read_parquet(parquet_glob(corpus), hive_partitioning=True, union_by_name=True).create_view(
        "sessions"
    )
    con.register("stretches", largest.select("session_id", "first_turn", "last_turn", "rank"))
    turns = con.sql(read_query("timeline_dialogue")).pl()
    con.close()
    return turns.join(
        largest.drop("session_id", "first_turn", "last_turn"), on="rank", how="left"
    ).sort("rank", "turn_index")


def timeline_tables(
    corpus: Path,
    groups: pl.DataFrame | None,
    settings: TimelineSettings,
    strategy_map: dict[str, str],
    memory_limit: str,
    notes: list[str],
    scored: pl.DataFrame | None = None,
) -> dict[str, pl.DataFrame]:
    """Every timeline table the corpus (its rated turns) and `scored` (a model's cut points)
    support; none, with a note, when no session has two points."""
    points, segments = timeline_points(corpus, memory_limit, scored)
    if points.is_empty():
        notes.append(
            f"{', '.join(TIMELINE_TABLES)}, timeline_links: absent — no session has two or more "
            "rated turns (turns.rating) and the scores have no timeline (score --timeline N)"
        )
        return {}
    ruptures = mark_ruptures(points, segments, settings)
    curves = session_curves(points, ruptures)
    tables = {
        "timeline_points": points,
        "timeline_curve": curve_table(points, settings.alpha),
        "timeline_sessions": curves,
        "ruptures": ruptures,
        "timeline_summary": summary_table(curves, groups, settings),
    }
    precedents = precedents_table(segments, settings, strategy_map)
    if precedents.is_empty():
        notes.append(
            "timeline_precedents: absent — no strategies in the turns between rated turns, or no "
            "drop, rise or steady stretch to compare"
        )
    else:
        tables["timeline_precedents"] = precedents
    dialogue = dialogue_table(corpus, ruptures, settings)
    if dialogue.is_empty():
        notes.append("timeline_dialogue: absent — no rupture, or --timeline-examples 0")
    else:
        tables["timeline_dialogue"] = dialogue
    return tables


def timeline_links(
    curves: pl.DataFrame, frame: pl.DataFrame, outcomes: list[str], alpha: float, notes: list[str]
) -> pl.DataFrame:
    """How each session's curve (its mean and its last point) relates to the session-level
    outcomes (e.g. the post-chat survey): outcome_links' r and partial r with Fisher intervals."""
    from care_ray.analytics.outcomes import Measure, outcome_links

    wide = curves.pivot(
        on="dimension", index="session_id", values=["mean", "end"], aggregate_function="first"
    )
    # polars names the pivoted columns VALUE_DIMENSION: turn_rating_mean, turn_rating_last
    wide = wide.rename(
        {
            c: c.split("_", 1)[1] + ("_mean" if c.startswith("mean_") else "_last")
            for c in wide.columns
            if c != "session_id"
        }
    )
    joined = frame.join(wide, on="session_id", how="inner")
    predictors = [Measure(c, frozenset({c})) for c in wide.columns if c != "session_id"]
    return outcome_links(
        joined,
        predictors,
        [Measure(o, frozenset({o})) for o in outcomes],
        "timeline",
        alpha,
        notes,
    )
