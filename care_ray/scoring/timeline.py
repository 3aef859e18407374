"""Scoring at cut points (`care-ray score --timeline N`): each session is also scored as if it had
ended after one of N client turns spread over it — the transcript up to that turn, then the item,
exactly the prompt a session of that length gets — for one item per dimension, score only.

A cut point is a session of its own to the pipeline: `SID@tK` holds SID's turns 0..K. So the
cut-point sessions are written as a corpus (a local folder, streamed batch by batch, rebuilt the
same on every run), scored into OUT/timeline/ as a run folder of their own — with the same
exactly-once commits, resume, --retry-errors and object-store support as OUT/ — and their item
rows joined back to (session, cut turn, position) in OUT/timeline/points.parquet, the table
`care-ray analyze` reads. The cut sessions of one session are adjacent, so they share Ray Data
blocks and the engine's prefix cache serves the transcript they share."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from care_ray.cluster.storage import location
from care_ray.common.sql import read_query
from care_ray.contracts.rubric import Rubric

TIMELINE_DIR = "timeline"
POINTS_FILE = "points.parquet"
ANSWERS_DIR = "answers"  # OUT/timeline/answers/: full answers at the cut after a drop
CUT_MARK = "@t"
CUT_COLUMNS = ("session_id", "turns", "language", "source")


def cut_turns(roles: Sequence[str], n: int) -> list[int]:
    """Up to n turn indices, each a client turn, spread evenly over the session's client turns
    (the last turn of the session is its end, scored whole, so it is never a cut)."""
    last = len(roles) - 1
    client = [i for i, role in enumerate(roles) if role == "client" and i < last]
    if not client or n <= 0:
        return []
    if len(client) <= n:
        return client
    picks = np.linspace(0, len(client) - 1, n).round().astype(int)
    return sorted({client[i] for i in picks})


def default_items(rubric: Rubric) -> str:
    """The first item of each dimension, in the rubric's order."""
    first: dict[str, int] = {}
    for item in rubric.items:
        first.setdefault(item.dimension, item.id)
    return ",".join(str(i) for i in first.values())


def cut_sessions(batch: pa.Table, n: int) -> tuple[pa.Table, pa.Table]:
    """(the cut-point sessions of a batch of sessions, their cuts: session_id, cut_id, cut_turn,
    n_turns, position)."""
    sessions: dict[str, list] = {c: [] for c in CUT_COLUMNS}
    cuts: dict[str, list] = {
        k: [] for k in ("session_id", "cut_id", "cut_turn", "n_turns", "position")
    }
    for row in batch.select(list(CUT_COLUMNS)).to_pylist():
        turns = row["turns"] or []
        for k in cut_turns([t["role"] for t in turns], n):
            cut_id = f"{row['session_id']}{CUT_MARK}{k}"
            for c in CUT_COLUMNS:
                sessions[c].append(row[c])
            sessions["session_id"][-1] = cut_id
            sessions["turns"][-1] = turns[: k + 1]
            cuts["session_id"].append(row["session_id"])
            cuts["cut_id"].append(cut_id)
            cuts["cut_turn"].append(k)
            cuts["n_turns"].append(len(turns))
            cuts["position"].append(k / max(len(turns) - 1, 1))
    schema = batch.select(list(CUT_COLUMNS)).schema
    return pa.table(sessions, schema=schema), pa.table(
        cuts,
        schema=pa.schema(
            [
                ("session_id", pa.string()),
                ("cut_id", pa.string()),
                ("cut_turn", pa.int32()),
                ("n_turns", pa.int32()),
                ("position", pa.float64()),
            ]
        ),
    )


def write_cut_corpus(
    corpus: Path | str, session_ids: pa.ChunkedArray | Sequence[str], n: int, batch_size: int = 2000
) -> tuple[Path, pa.Table]:
    """The cut-point sessions of the selected sessions as a corpus in a new local folder, written
    batch by batch (memory stays at one batch's transcripts), and every cut's row."""
    from care_ray.corpus.reader import sessions_dataset

    source = sessions_dataset(corpus)
    wanted = pc.field("session_id").isin(pa.array(session_ids, pa.string()))
    folder = Path(tempfile.mkdtemp(prefix="care-ray-cuts-"))
    cut_rows: list[pa.Table] = []

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in source.to_batches(
            columns=list(CUT_COLUMNS), filter=wanted, batch_size=batch_size
        ):
            sessions, cuts = cut_sessions(pa.Table.from_batches([batch]), n)
            cut_rows.append(cuts)
            yield from sessions.to_batches()

    first = source.schema
    out_schema = pa.schema([first.field(c) for c in CUT_COLUMNS])
    ds.write_dataset(
        batches(),
        folder / "sessions",
        schema=out_schema,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([out_schema.field("source")]), flavor="hive"),
        existing_data_behavior="overwrite_or_ignore",
    )
    cuts = (
        pa.concat_tables(cut_rows)
        if cut_rows
        else cut_sessions(source.head(0, columns=list(CUT_COLUMNS)), n)[1]
    )
    return folder, cuts


def drop_cuts(out: str | Path, cuts: pa.Table, drop: float) -> pa.Table:
    """(cut_id, item_id) of every cut point that follows a drop of at least `drop` on its item."""
    from care_ray.scoring.results import RunFolder

    con = RunFolder(location(out).join(TIMELINE_DIR)).connect()
    con.register("cuts", cuts)
    con.execute("SET VARIABLE drop = ?", [float(drop)])
    drops = con.sql(read_query("timeline_drops")).to_arrow_table()
    con.close()
    return drops


def write_subset_corpus(folder: Path, session_ids: Sequence[str]) -> Path:
    """The sessions of a cut corpus with these ids, as a corpus in a new local folder."""
    from care_ray.corpus.reader import sessions_dataset

    source = sessions_dataset(folder)
    subset = Path(tempfile.mkdtemp(prefix="care-ray-cuts-"))
    ds.write_dataset(
        source.to_table(filter=pc.field("session_id").isin(pa.array(session_ids, pa.string()))),
        subset / "sessions",
        format="parquet",
        partitioning=ds.partitioning(pa.schema([source.schema.field("source")]), flavor="hive"),
    )
    return subset


def write_points(out: str | Path, cuts: pa.Table) -> int:
    """OUT/timeline/points.parquet: each scored cut-point item joined back to its session, cut
    turn and position, with the full answer where one was given after a drop
    (queries/timeline_scored_points.sql); returns its rows."""
    import pyarrow.parquet as pq

    from care_ray.scoring.results import RunFolder

    run = RunFolder(location(out).join(TIMELINE_DIR))
    answers = RunFolder(run.loc.join(ANSWERS_DIR)).read(
        "items", columns=["session_id", "item_id", "rationale", "quotes"]
    )
    con = run.connect()
    con.register("cuts", cuts)
    con.register("answers", answers)
    points = con.sql(read_query("timeline_scored_points")).to_arrow_table()
    con.close()
    target = run.loc.join(POINTS_FILE)
    with target.fs.open_output_stream(target.path) as f:
        pq.write_table(points, f)
    return points.num_rows


def remove_cut_corpus(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
