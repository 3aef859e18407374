"""A scoring run's output folder, on a local disk or an object store, with a commit protocol that
needs no rename.

    out/items/part-<id>.parquet     scored (session, item) rows
    out/errors/part-<id>.parquet    pairs that could not be scored, with the reason and raw output
    out/_commits/<sub>.<id>         an empty marker per data file: the file is complete and counts
    out/sessions/, manifest.json, fingerprint.json, .run-id

A data file is written once under a unique name, then its marker; readers (resume, aggregation,
manifest, analytics) see only files with a marker, so a worker killed between the two leaves an
orphan that nobody reads and the next finalize removes. Consolidation (one row per pair) writes
new files and markers before it retires old ones, so a crash at any point leaves a folder the next
run can finish. All counting and planning is DuckDB over the committed files (queries/), never
sets of keys in Python: a driver stays small at millions of sessions."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from care_ray.cluster.storage import Location, location
from care_ray.common.sql import connect, read_query

log = logging.getLogger(__name__)

RESULT_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("item_id", pa.int32()),
        ("dimension", pa.string()),
        ("status", pa.string()),  # ok | error
        ("score", pa.float64()),  # the score; the mean of valid samples when samples > 1
        ("scores", pa.list_(pa.int8())),
        # p(value) at the score token over the rubric's values, lowest first (--score-logprobs)
        ("score_probs", pa.list_(pa.float64())),
        ("expected_score", pa.float64()),  # Σ value · p(value)
        ("score_sd", pa.float64()),  # the distribution's standard deviation
        ("score_unseen_max", pa.float64()),  # mass allowed values outside the top-k could hold
        ("rationale", pa.string()),
        ("quotes", pa.list_(pa.string())),
        ("quote_found", pa.float64()),
        ("n_valid_samples", pa.int32()),
        ("prompt_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("cached_tokens", pa.int32()),
        ("n_turns", pa.int32()),
        ("n_elided_turns", pa.int32()),
        ("truncated", pa.bool_()),
        ("attempts", pa.int8()),
        ("finish_reason", pa.string()),
        ("error_reason", pa.string()),
        ("error_detail", pa.string()),
        ("raw_output", pa.string()),
        ("n_items_selected", pa.int32()),
        ("model", pa.string()),
        ("adapter", pa.string()),
        ("rubric_id", pa.string()),
        ("engine", pa.string()),
        (
            "run_fingerprint",
            pa.string(),
        ),  # fingerprint.json of the folder: one configuration per folder
    ]
)
ITEM_COLUMNS = [
    c
    for c in RESULT_SCHEMA.names
    if c not in ("status", "error_reason", "error_detail", "raw_output")
]
ERROR_COLUMNS = [
    "session_id",
    "item_id",
    "dimension",
    "error_reason",
    "error_detail",
    "raw_output",
    "attempts",
    "prompt_tokens",
    "output_tokens",
    "truncated",
    "finish_reason",
    "n_items_selected",
    "model",
    "adapter",
    "rubric_id",
    "engine",
    "run_fingerprint",
]
SUBFOLDERS = {"items": ITEM_COLUMNS, "errors": ERROR_COLUMNS}
RUN_ID_FILE = ".run-id"
DRIVER_MEMORY = os.environ.get(
    "CARE_RAY_DRIVER_MEMORY", "512MB"
)  # DuckDB's cap in the scoring driver
COMMITS = "_commits"


def subschema(sub: str) -> pa.Schema:
    return pa.schema([RESULT_SCHEMA.field(c) for c in SUBFOLDERS[sub]])


class RunFolder:
    """The output folder of one scoring configuration (see the module docstring)."""

    def __init__(self, out: str | os.PathLike | Location):
        self.loc = out if isinstance(out, Location) else location(out)

    def __reduce__(self):  # Ray ships it to write tasks by its URI; filesystems are rebuilt there
        return (RunFolder, (self.loc.uri,))

    # --- markers and files -------------------------------------------------------------------

    def committed(self, sub: str) -> list[str]:
        """Filesystem paths of the committed data files of `sub` (items | errors)."""
        marked = {
            n.split(".", 1)[1] for n in self.loc.join(COMMITS).names() if n.startswith(sub + ".")
        }
        present = {
            n[len("part-") : -len(".parquet")]
            for n in self.loc.join(sub).names()
            if n.startswith("part-") and n.endswith(".parquet")
        }
        return [self.loc.join(sub, f"part-{i}.parquet").path for i in sorted(marked & present)]

    def write(self, sub: str, table: pa.Table) -> str:
        """One data file + its marker; returns the file id."""
        file_id = uuid.uuid4().hex
        self.loc.join(sub, f"part-{file_id}.parquet").write_parquet(table)
        self.loc.join(COMMITS, f"{sub}.{file_id}").write_text("")
        return file_id

    def write_results(self, results: pa.Table) -> dict[str, int]:
        """Split RESULT_SCHEMA rows into an items file and an errors file, each committed."""
        ok = results.filter(pc.equal(results.column("status"), "ok"))
        bad = results.filter(pc.equal(results.column("status"), "error"))
        if ok.num_rows:
            self.write("items", ok.select(ITEM_COLUMNS))
        if bad.num_rows:
            self.write("errors", bad.select(ERROR_COLUMNS))
        return {"items": ok.num_rows, "errors": bad.num_rows}

    def retire(self, sub: str, paths: Sequence[str]) -> None:
        """Un-commit, then delete, the given data files (markers first: a crash leaves orphans, not holes)."""
        for p in paths:
            file_id = p.rsplit("/part-", 1)[1][: -len(".parquet")]
            self.loc.join(COMMITS, f"{sub}.{file_id}").delete()
        for p in paths:
            Location(self.loc.fs, p, p).delete()

    def remove_orphans(self) -> int:
        """Delete data files without a marker (a killed or fenced-out writer's)."""
        n = 0
        for sub in SUBFOLDERS:
            keep = set(self.committed(sub))
            folder = self.loc.join(sub)
            for name in folder.names():
                path = folder.join(name).path
                if path not in keep:
                    folder.join(name).delete()
                    n += 1
        return n

    def ensure_tables(self) -> None:
        """A finished run has items/ and errors/ even when nothing landed there (a zero-row file
        with the schema), so a glob over it reads an empty table instead of failing."""
        for sub in SUBFOLDERS:
            if not self.committed(sub):
                self.write(sub, subschema(sub).empty_table())

    def run_id(self) -> str | None:
        text = self.loc.join(RUN_ID_FILE).read_text()
        return text.strip() if text is not None else None

    def claim(self, run_id: str) -> None:
        self.loc.join(RUN_ID_FILE).write_text(run_id + "\n")

    # --- reading -------------------------------------------------------------------------------

    def readable(self, sub: str) -> list[str]:
        """The data files a reader may use: the committed ones of a care-ray run folder, or every
        Parquet file under `sub` of a folder written without commit markers (by hand, or by a
        care-ray older than the protocol)."""
        if self.loc.join(COMMITS).is_dir():
            return self.committed(sub)
        return _parquet_files(self.loc.join(sub))

    def dataset(self, sub: str) -> ds.Dataset:
        files = self.committed(sub)
        if not files:
            return ds.dataset(subschema(sub).empty_table())
        return ds.dataset(files, filesystem=self.loc.fs, format="parquet")

    def read(self, sub: str, columns: list[str] | None = None) -> pa.Table:
        return self.dataset(sub).to_table(columns=columns)

    def connect(self, memory_limit: str = DRIVER_MEMORY) -> duckdb.DuckDBPyConnection:
        """DuckDB with views `items` and `errors` over the committed files only. Its memory is
        capped (joins and sorts spill to a temporary folder), so the driver's footprint does not
        grow with the run."""
        con = connect(memory_limit)
        for sub in SUBFOLDERS:
            files = self.committed(sub)
            if files and self.loc.local:
                con.read_parquet(files, union_by_name=True).create_view(sub)
            else:  # object stores through pyarrow: DuckDB's own S3 client is an extension it would have to download
                con.register(f"_{sub}_arrow", self.dataset(sub))
                con.sql(f"SELECT * FROM _{sub}_arrow").create_view(sub)
        return con

    def counts(self) -> dict[str, int]:
        return {
            sub: sum(
                pq.read_metadata(p, filesystem=self.loc.fs).num_rows for p in self.committed(sub)
            )
            for sub in SUBFOLDERS
        }

    def wipe(self) -> None:
        for name in (*SUBFOLDERS, COMMITS, "sessions"):
            self.loc.join(name).delete_dir()
        for name in ("manifest.json", "fingerprint.json"):
            self.loc.join(name).delete()

    # --- rewriting -----------------------------------------------------------------------------

    def rewrite(self, sub: str, con: duckdb.DuckDBPyConnection, query: str) -> None:
        """Replace `sub` by the result of `query` (streamed into one new committed file)."""
        old = self.committed(sub)
        columns = ", ".join(f'"{c}"' for c in SUBFOLDERS[sub])
        reader = con.sql(f"SELECT {columns} FROM ({query.strip().rstrip(';')})").to_arrow_reader(
            100_000
        )
        file_id = uuid.uuid4().hex
        target = self.loc.join(sub, f"part-{file_id}.parquet")
        tmp = target if not self.loc.local else self.loc.join(sub, f".tmp-{file_id}")
        with (
            self.loc.fs.open_output_stream(tmp.path) as stream,
            pq.ParquetWriter(stream, subschema(sub)) as writer,
        ):
            for batch in reader:
                writer.write_table(pa.Table.from_batches([batch]).cast(subschema(sub)))
        if tmp is not target:
            self.loc.fs.move(tmp.path, target.path)
        self.loc.join(COMMITS, f"{sub}.{file_id}").write_text("")
        self.retire(sub, old)


def consolidate_and_count(
    run: RunFolder,
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    item_ids: Sequence[int],
    memory_limit: str = DRIVER_MEMORY,
) -> tuple[dict[str, int], dict[str, int]]:
    """One pass over the run's rows grouped by pair (queries/results_pairs.sql): consolidation
    to one row per (session, item) — duplicates from retried write tasks go, a pair in both
    items/ and errors/ keeps its score, a folder is rewritten only when it has something to
    drop — and the selected pairs' counts, which consolidation does not change.
    Returns (rows dropped, counts over the selection)."""
    con = run.connect(memory_limit)
    bind_selection(con, session_ids, item_ids)
    row = con.sql(read_query("results_pairs")).fetchall()[0]
    names = ["items_duplicates", "errors_dropped", "items_scored", "items_errors"]
    values = dict(zip(names, (int(v or 0) for v in row[:4]), strict=True))
    dropped = {k: values[k] for k in names[:2]}
    items_in = len(session_ids) * len(item_ids)
    counts = {
        "items_in": items_in,
        "items_scored": values["items_scored"],
        "items_errors": values["items_errors"],
        "missing": items_in - values["items_scored"] - values["items_errors"],
        "sessions_with_errors": int(row[4] or 0),
    }
    if dropped["items_duplicates"]:
        run.rewrite("items", con, read_query("results_items_deduplicated"))
        con = run.connect(memory_limit)
    if dropped["errors_dropped"]:
        run.rewrite("errors", con, read_query("results_errors_kept"))
    return dropped, counts


def consolidate(run: RunFolder, memory_limit: str = DRIVER_MEMORY) -> dict[str, int]:
    """consolidate_and_count with nothing selected: the rows dropped."""
    return consolidate_and_count(run, [], [], memory_limit)[0]


def bind_selection(
    con: duckdb.DuckDBPyConnection,
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    item_ids: Sequence[int],
) -> None:
    """Views `selected` (session_id, pos) and `wanted` (item_id) for the planning queries; ids
    stay an Arrow array (DuckDB scans it in place), never a million Python strings."""
    ids = (
        session_ids
        if isinstance(session_ids, pa.Array | pa.ChunkedArray)
        else pa.array(session_ids, pa.string())
    )
    selected = pa.table({"session_id": ids, "pos": pa.array(np.arange(len(ids), dtype=np.int64))})
    con.register("selected", selected)
    con.register("wanted", pa.table({"item_id": pa.array(item_ids, pa.int32())}))


def pending_plan(
    run: RunFolder,
    session_ids: Sequence[str],
    item_ids: Sequence[int],
    memory_limit: str = DRIVER_MEMORY,
) -> tuple[pa.Table, int]:
    """(the selected sessions that still have pairs to score, with those items — null: all of
    them; pairs already done)."""
    con = run.connect(memory_limit)
    bind_selection(con, session_ids, item_ids)
    plan = con.sql(read_query("results_pending")).to_arrow_table()
    # every selected pair is done or in the plan: no second pass over the rows to count them
    lengths = pc.list_value_length(plan.column("missing"))
    missing = pc.sum(pc.fill_null(lengths, len(item_ids))).as_py() or 0
    return plan, len(session_ids) * len(item_ids) - int(missing)


def release_errors(
    run: RunFolder,
    reasons: set[str],
    session_ids: Sequence[str],
    item_ids: Sequence[int],
    memory_limit: str = DRIVER_MEMORY,
) -> int:
    """Take the selected pairs whose error reason is in `reasons` out of errors/, so this run
    scores them again (a kill before they are rescored leaves them pending, never lost)."""
    con = run.connect(memory_limit)
    bind_selection(con, session_ids, item_ids)
    con.register("released_reasons", pa.table({"reason": pa.array(sorted(reasons), pa.string())}))
    n = con.sql(read_query("results_released_count")).fetchall()[0][0]
    if n:
        run.rewrite("errors", con, read_query("results_errors_unreleased"))
    return int(n)


def reconcile(
    run: RunFolder,
    session_ids: Sequence[str] | pa.Array | pa.ChunkedArray,
    counts: dict[str, int],
    memory_limit: str = DRIVER_MEMORY,
) -> dict[str, Any]:
    """The manifest: consolidate_and_count's counts over the selected pairs and the run's
    totals; raises if any selected pair is neither scored nor failed."""
    if counts["missing"]:
        raise RuntimeError(
            f"scoring counts do not reconcile: {counts['missing']} of {counts['items_in']} "
            "selected pairs are neither scored nor failed"
        )
    con = run.connect(memory_limit)
    prompt_tokens, cached_tokens, reasons, rubrics, fingerprints = con.sql(
        read_query("results_totals")
    ).fetchall()[0]
    return {
        "sessions_in": len(session_ids),
        "sessions_complete": len(session_ids) - counts["sessions_with_errors"],
        "sessions_with_errors": counts["sessions_with_errors"],
        "items_in": counts["items_in"],
        "items_scored": counts["items_scored"],
        "items_errors": counts["items_errors"],
        "errors_by_reason": dict(reasons or {}),
        "items_by_rubric": dict(rubrics or {}),
        "prompt_tokens": int(prompt_tokens or 0),
        "cached_prompt_tokens": int(cached_tokens or 0),
        "fingerprints": list(fingerprints or []),
    }


def write_session_scores(run: RunFolder, memory_limit: str = DRIVER_MEMORY) -> int:
    """sessions/ from queries/session_scores.sql over the committed items; returns its rows."""
    con = run.connect(memory_limit)
    reader = con.sql(read_query("session_scores")).to_arrow_reader(100_000)
    run.loc.join("sessions").delete_dir()
    return run.loc.join("sessions", "part-00000.parquet").write_parquet_stream(reader)


def _parquet_files(folder: Location) -> list[str]:
    """Every Parquet file under `folder` (recursively), as filesystem paths."""
    if not folder.is_dir():
        return []
    infos = folder.fs.get_file_info(pafs.FileSelector(folder.path, recursive=True))
    return sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    )


class NoScores(FileNotFoundError):
    """A scores folder with neither sessions/ nor items/ to read."""


def read_session_scores(
    scores: str | os.PathLike, memory_limit: str = DRIVER_MEMORY
) -> tuple[pa.Table, str]:
    """Per-session dimension scores of a scoring run, local or in an object store: (table, where
    they came from). Its sessions/ table when finalize wrote one, else queries/session_scores.sql
    over the readable items/ (an unfinished run: its committed files only)."""
    run = RunFolder(scores)
    if not run.loc.is_dir():
        raise NoScores(f"scores folder not found: {run.loc.uri}")
    # finalize writes sessions/ whole, after consolidating: every file there counts
    sessions = _parquet_files(run.loc.join("sessions"))
    if sessions:
        table = ds.dataset(sessions, filesystem=run.loc.fs, format="parquet").to_table()
        return table, "sessions/"
    items = run.readable("items")
    if not items:
        raise NoScores(
            f"no scores in {run.loc.uri} (expected sessions/ or items/ of a `care-ray score` run)"
        )
    con = connect(memory_limit)
    dataset = ds.dataset(items, filesystem=run.loc.fs, format="parquet")
    con.register("_items_arrow", dataset)
    # a run from before expected scores has no such column: its sessions get none
    added = "" if "expected_score" in dataset.schema.names else ", NULL::DOUBLE AS expected_score"
    con.sql(f"SELECT *{added} FROM _items_arrow").create_view("items")
    return con.sql(read_query("session_scores")).to_arrow_table(), (
        "items/ (queries/session_scores.sql)"
    )


def read_item_rows(
    scores: str | os.PathLike, columns: list[str], session_ids: Sequence[str] | None = None
) -> pa.Table | None:
    """The readable items/ rows of a scoring run (local or object store), these columns only,
    for these sessions; None when there are none or a column is missing."""
    run = RunFolder(scores)
    files = run.readable("items")
    if not files:
        return None
    dataset = ds.dataset(files, filesystem=run.loc.fs, format="parquet")
    if not set(columns) <= set(dataset.schema.names):
        return None
    wanted = None
    if session_ids is not None:
        wanted = pc.field("session_id").isin(pa.array(list(session_ids), pa.string()))
    return dataset.to_table(columns=columns, filter=wanted)
