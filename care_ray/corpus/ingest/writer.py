"""Writes an ingested corpus: hive-partitioned sessions, a quarantine table, and a manifest whose
counts reconcile (input records = records written + records quarantined)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from care_ray.common.errors import UserError
from care_ray.contracts.session import ContractError, Reason, normalise_session, sessions_to_table

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("origin", pa.string(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("n_input_records", pa.int64(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
    ]
)


WRITE_MODES = ("create", "append", "overwrite")
EMPTY_TURN_POLICIES = ("drop", "quarantine")
_COUNT_KEYS = (
    "input_records",
    "records_written",
    "records_quarantined",
    "sessions_written",
    "turns_written",
    "quarantine_rows",
    "turns_dropped",
    "sessions_with_dropped_turns",
)
DROPPED_TURNS_KEY = (
    "dropped_turns"  # session metadata key: how many blank turns ingest dropped from it
)


class CountsDoNotReconcile(RuntimeError):
    pass


class CorpusExists(UserError):
    """--out already holds a corpus and the mode does not say what to do with it."""


def drop_blank_turns(record: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The record without its turns whose text is missing or blank, and how many those were.
    A turn that is not an object, or whose text is not a string, is left for the contract to judge."""
    turns = record.get("turns")
    if not isinstance(turns, list):
        return record, 0
    kept = [
        t
        for t in turns
        if not (
            isinstance(t, dict)
            and (
                t.get("text") is None or (isinstance(t.get("text"), str) and not t["text"].strip())
            )
        )
    ]
    if turns and not kept:
        raise ContractError(Reason.EMPTY_SESSION, f"all {len(turns)} turns have no text")
    return (
        ({**record, "turns": kept}, len(turns) - len(kept))
        if len(kept) < len(turns)
        else (record, 0)
    )


def _holds_sessions(out: Path, manifest: dict[str, Any]) -> bool:
    """False for a corpus folder from an ingest that wrote nothing: replacing it loses nothing."""
    return int(manifest.get("sessions_written", 1)) > 0 or any(
        (Path(out) / "sessions").glob("source=*")
    )


def corpus_sources(out: Path, manifest: dict[str, Any]) -> set[str]:
    """Sources with sessions in the corpus (a source whose ingest wrote nothing may be ingested again)."""
    listed = {
        s
        for s, counts in manifest.get("by_source", {}).items()
        if int(counts.get("sessions_written", 1)) > 0
    }
    return listed | {
        p.name.removeprefix("source=") for p in (Path(out) / "sessions").glob("source=*")
    }


def existing_corpus(out: Path) -> dict[str, Any] | None:
    """The manifest of the corpus in `out`, if there is one."""
    path = Path(out) / "manifest.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    if (Path(out) / "sessions").is_dir():
        return {
            "by_source": {
                p.name.removeprefix("source="): {}
                for p in (Path(out) / "sessions").glob("source=*")
            }
        }
    return None


def merge_manifests(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The corpus manifest after an append: counts add up, per-source and per-reason tables merge,
    and each ingest is listed with its own counts."""
    merged = dict(new)
    for k in _COUNT_KEYS:
        merged[k] = int(old.get(k, 0)) + int(new.get(k, 0))
    merged["by_source"] = {**old.get("by_source", {}), **new.get("by_source", {})}
    reasons = Counter(old.get("quarantined_by_reason", {})) + Counter(
        new.get("quarantined_by_reason", {})
    )
    merged["quarantined_by_reason"] = dict(sorted(reasons.items()))
    merged["quarantine_examples"] = {
        **new.get("quarantine_examples", {}),
        **old.get("quarantine_examples", {}),
    }
    previous = old.get("ingests") or [
        {k: v for k, v in old.items() if k not in ("ingests", "kind", "contract_version")}
    ]
    merged["ingests"] = [
        *previous,
        {k: v for k, v in new.items() if k not in ("kind", "contract_version")},
    ]
    return merged


class CorpusWriter:
    """Collects sessions and rejects, flushing every `chunk_size` so memory is bounded by the
    chunk, not the input. Writes to a staging folder and swaps it in at close, so a crashed
    ingest leaves the previous corpus intact and a rerun starts clean."""

    def __init__(
        self,
        out: Path,
        chunk_size: int = 1000,
        mode: str = "create",
        source: str | None = None,
        empty_turns: str = "drop",
    ):
        self.out = Path(out)
        self.chunk_size = chunk_size
        if mode not in WRITE_MODES:
            raise ValueError(f"--mode must be one of {', '.join(WRITE_MODES)}, got {mode!r}")
        if empty_turns not in EMPTY_TURN_POLICIES:
            raise ValueError(
                f"--empty-turns must be one of {', '.join(EMPTY_TURN_POLICIES)}, got {empty_turns!r}"
            )
        self.mode = mode
        self.empty_turns = empty_turns
        self.previous = existing_corpus(self.out) if mode != "overwrite" else None
        if (
            self.previous is not None
            and mode == "create"
            and not _holds_sessions(self.out, self.previous)
        ):
            self.previous = None  # an ingest that wrote nothing left it; the rerun replaces it
        if self.previous is not None:
            sources = sorted(corpus_sources(self.out, self.previous))
            if mode == "create":
                raise CorpusExists(
                    f"{self.out} already holds a corpus (sources: {', '.join(sources) or 'none'}); "
                    "use --mode append to add new sources to it, --mode overwrite to replace it, or another --out"
                )
            if source is not None and source in sources:
                raise CorpusExists(
                    f"source {source!r} is already in {self.out}; append under another "
                    "--source, or use --mode overwrite"
                )
        self.created_out = not self.out.exists()
        self.staging = self.out / f".staging-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir(parents=True)
        self.sessions: list[dict] = []
        self.rejects: list[dict] = []
        self.seen_ids: set[str] = self._existing_ids() if self.previous is not None else set()
        self.part = 0
        self.counts: Counter = Counter()
        self.by_source: dict[str, Counter] = {}
        self.by_reason: Counter = Counter()
        self.examples: dict[str, dict[str, str]] = {}
        self.started = time.time()

    def _existing_ids(self) -> set[str]:
        """Ids already in the corpus: an appended session with one of them is a duplicate."""
        import pyarrow.dataset as ds

        root = self.out / "sessions"
        if not root.is_dir():
            return set()
        return set(
            ds.dataset(root, format="parquet", partitioning="hive")
            .to_table(columns=["session_id"])
            .column("session_id")
            .to_pylist()
        )

    def _src(self, source: str) -> Counter:
        return self.by_source.setdefault(source, Counter())

    def add_input(self, source: str, n: int = 1) -> None:
        self.counts["input_records"] += n
        self._src(source)["input_records"] += n

    def add_session(
        self, record: dict[str, Any], n_input_records: int, origin: str, raw: str | None = None
    ) -> bool:
        """Validate and keep a session, or quarantine it with its reason. Returns True if kept."""
        source = str(record.get("source") or "unknown")
        try:
            kept, dropped = drop_blank_turns(record) if self.empty_turns == "drop" else (record, 0)
            session = normalise_session(kept)
            if session["session_id"] in self.seen_ids:
                raise ContractError(
                    Reason.DUPLICATE_SESSION_ID, f"session_id {session['session_id']!r} seen before"
                )
        except ContractError as err:
            self.reject(
                source,
                origin,
                err,
                raw if raw is not None else json.dumps(record, ensure_ascii=False, default=str),
                n_input_records,
                record.get("session_id"),
            )
            return False
        if dropped:
            session["metadata"] = {**(session["metadata"] or {}), DROPPED_TURNS_KEY: str(dropped)}
        self.seen_ids.add(session["session_id"])
        self.sessions.append(session)
        for counter in (self.counts, self._src(source)):
            counter["records_written"] += n_input_records
            counter["sessions_written"] += 1
            counter["turns_dropped"] += dropped
            counter["sessions_with_dropped_turns"] += dropped > 0
        self.counts["turns_written"] += len(session["turns"])
        if len(self.sessions) >= self.chunk_size:
            self._flush_sessions()
        return True

    def reject(
        self,
        source: str,
        origin: str,
        err: ContractError,
        raw: str,
        n_input_records: int = 1,
        session_id: Any = None,
    ) -> None:
        self.rejects.append(
            {
                "source": source,
                "origin": origin,
                "session_id": None if session_id is None else str(session_id),
                "reason": err.reason.value,
                "detail": err.detail,
                "n_input_records": n_input_records,
                "raw": raw,
            }
        )
        self.counts["records_quarantined"] += n_input_records
        self.counts["quarantine_rows"] += 1
        self._src(source)["records_quarantined"] += n_input_records
        self.by_reason[err.reason.value] += 1
        self.examples.setdefault(err.reason.value, {"origin": origin, "detail": err.detail})
        if len(self.rejects) >= self.chunk_size:
            self._flush_rejects()

    def _flush_sessions(self) -> None:
        if not self.sessions:
            return
        table = sessions_to_table(self.sessions)
        pq.write_to_dataset(
            table,
            self.staging / "sessions",
            partitioning=["source"],
            partitioning_flavor="hive",
            basename_template=f"part-{self.part:05d}-{{i}}.parquet",
        )
        self.part += 1
        self.sessions = []

    def _flush_rejects(self) -> None:
        if not self.rejects:
            return
        qdir = self.staging / "quarantine"
        qdir.mkdir(exist_ok=True)
        n = len(list(qdir.iterdir()))
        pq.write_table(
            pa.Table.from_pylist(self.rejects, schema=QUARANTINE_SCHEMA),
            qdir / f"part-{n:05d}.parquet",
        )
        self.rejects = []

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self._flush_sessions()
        self._flush_rejects()
        c = self.counts
        if c["input_records"] != c["records_written"] + c["records_quarantined"]:
            raise CountsDoNotReconcile(
                f"read {c['input_records']} records but wrote {c['records_written']} and "
                f"quarantined {c['records_quarantined']}"
            )
        (self.staging / "sessions").mkdir(exist_ok=True)
        (self.staging / "quarantine").mkdir(exist_ok=True)
        manifest = {
            "kind": "care-ray sessions corpus",
            "contract_version": 1,
            **{k: c[k] for k in _COUNT_KEYS},
            "empty_turns": self.empty_turns,
            "by_source": {s: dict(v) for s, v in sorted(self.by_source.items())},
            "quarantined_by_reason": dict(sorted(self.by_reason.items())),
            "quarantine_examples": dict(sorted(self.examples.items())),
            "seconds": round(time.time() - self.started, 3),
            **(extra or {}),
        }
        if self.previous is not None:
            return self._close_append(manifest)
        (self.staging / "manifest.json").write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        )
        for name in ("sessions", "quarantine", "manifest.json"):
            target = self.out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (self.staging / name).rename(target)
        shutil.rmtree(self.staging)
        return manifest

    def _close_append(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Move this ingest's source partitions and quarantine files in beside the corpus's."""
        new_parts = sorted((self.staging / "sessions").glob("source=*"))
        had = corpus_sources(self.out, self.previous or {})
        clash = sorted(set(self.by_source) & had)
        if clash:
            raise CorpusExists(
                f"source {clash[0]!r} is already in {self.out}; append under another --source, or use --mode overwrite"
            )
        merged = merge_manifests(self.previous or {}, manifest)
        (self.out / "sessions").mkdir(exist_ok=True)
        (self.out / "quarantine").mkdir(exist_ok=True)
        for part in new_parts:
            part.rename(self.out / "sessions" / part.name)
        tag = uuid.uuid4().hex[:8]
        for f in sorted((self.staging / "quarantine").glob("*.parquet")):
            f.rename(self.out / "quarantine" / f"{tag}-{f.name}")
        tmp = self.out / f".tmp-manifest-{tag}.json"
        tmp.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.out / "manifest.json")
        shutil.rmtree(self.staging)
        return merged

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.created_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()  # a failed first ingest leaves no trace
