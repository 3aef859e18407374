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

from care_ray.contract import ContractError, Reason, normalise_session, sessions_to_table

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
_COUNT_KEYS = ("input_records", "records_written", "records_quarantined", "sessions_written", "turns_written", "quarantine_rows")


class CountsDoNotReconcile(RuntimeError):
    pass


class CorpusExists(ValueError):
    """--out already holds a corpus and the mode does not say what to do with it."""


def existing_corpus(out: Path) -> dict[str, Any] | None:
    """The manifest of the corpus in `out`, if there is one."""
    path = Path(out) / "manifest.json"
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))
    if (Path(out) / "sessions").is_dir():
        return {"by_source": {p.name.removeprefix("source="): {} for p in (Path(out) / "sessions").glob("source=*")}}
    return None


def merge_manifests(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The corpus manifest after an append: counts add up, per-source and per-reason tables merge,
    and each ingest is listed with its own counts."""
    merged = dict(new)
    for k in _COUNT_KEYS:
        merged[k] = int(old.get(k, 0)) + int(new.get(k, 0))
    merged["by_source"] = {**old.get("by_source", {}), **new.get("by_source", {})}
    reasons = Counter(old.get("quarantined_by_reason", {})) + Counter(new.get("quarantined_by_reason", {}))
    merged["quarantined_by_reason"] = dict(sorted(reasons.items()))
    previous = old.get("ingests") or [{k: v for k, v in old.items() if k not in ("ingests", "kind", "contract_version")}]
    merged["ingests"] = [*previous, {k: v for k, v in new.items() if k not in ("kind", "contract_version")}]
    return merged


class CorpusWriter:
    """Collects sessions and rejects, flushing every `chunk_size` so memory is bounded by the
    chunk, not the input. Writes to a staging folder and swaps it in at close, so a crashed
    ingest leaves the previous corpus intact and a rerun starts clean."""

    def __init__(self, out: Path, chunk_size: int = 1000, mode: str = "create", source: str | None = None):
        self.out = Path(out)
        self.chunk_size = chunk_size
        if mode not in WRITE_MODES:
            raise ValueError(f"--mode must be one of {', '.join(WRITE_MODES)}, got {mode!r}")
        self.mode = mode
        self.previous = existing_corpus(self.out) if mode != "overwrite" else None
        if self.previous is not None:
            sources = sorted(self.previous.get("by_source", {}))
            if mode == "create":
                raise CorpusExists(f"{self.out} already holds a corpus (sources: {', '.join(sources) or 'none'}); "
                                   "use --mode append to add new sources to it, --mode overwrite to replace it, or another --out")
            if source is not None and source in sources:
                raise CorpusExists(f"source {source!r} is already in {self.out}; append under another --source, or use --mode overwrite")
        self.staging = self.out / f".staging-{uuid.uuid4().hex[:8]}"
        self.staging.mkdir(parents=True)
        self.sessions: list[dict] = []
        self.rejects: list[dict] = []
        self.seen_ids: set[str] = self._existing_ids() if self.previous is not None else set()
        self.part = 0
        self.counts: Counter = Counter()
        self.by_source: dict[str, Counter] = {}
        self.by_reason: Counter = Counter()
        self.started = time.time()

    def _existing_ids(self) -> set[str]:
        """Ids already in the corpus: an appended session with one of them is a duplicate."""
        import pyarrow.dataset as ds

        root = self.out / "sessions"
        if not root.is_dir():
            return set()
        return set(ds.dataset(root, format="parquet", partitioning="hive").to_table(columns=["session_id"]).column("session_id").to_pylist())

    def _src(self, source: str) -> Counter:
        return self.by_source.setdefault(source, Counter())

    def add_input(self, source: str, n: int = 1) -> None:
        self.counts["input_records"] += n
        self._src(source)["input_records"] += n

    def add_session(self, record: dict[str, Any], n_input_records: int, origin: str, raw: str | None = None) -> bool:
        """Validate and keep a session, or quarantine it with its reason. Returns True if kept."""
        source = str(record.get("source") or "unknown")
        try:
            session = normalise_session(record)
            if session["session_id"] in self.seen_ids:
                raise ContractError(Reason.DUPLICATE_SESSION_ID, f"session_id {session['session_id']!r} seen before")
        except ContractError as err:
            self.reject(source, origin, err, raw if raw is not None else json.dumps(record, ensure_ascii=False, default=str), n_input_records, record.get("session_id"))
            return False
        self.seen_ids.add(session["session_id"])
        self.sessions.append(session)
        self.counts["records_written"] += n_input_records
        self.counts["sessions_written"] += 1
        self.counts["turns_written"] += len(session["turns"])
        self._src(source)["records_written"] += n_input_records
        self._src(source)["sessions_written"] += 1
        if len(self.sessions) >= self.chunk_size:
            self._flush_sessions()
        return True

    def reject(self, source: str, origin: str, err: ContractError, raw: str, n_input_records: int = 1, session_id: Any = None) -> None:
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
        pq.write_table(pa.Table.from_pylist(self.rejects, schema=QUARANTINE_SCHEMA), qdir / f"part-{n:05d}.parquet")
        self.rejects = []

    def close(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        self._flush_sessions()
        self._flush_rejects()
        c = self.counts
        if c["input_records"] != c["records_written"] + c["records_quarantined"]:
            raise CountsDoNotReconcile(
                f"read {c['input_records']} records but wrote {c['records_written']} and quarantined {c['records_quarantined']}"
            )
        (self.staging / "sessions").mkdir(exist_ok=True)
        (self.staging / "quarantine").mkdir(exist_ok=True)
        manifest = {
            "kind": "care-ray sessions corpus",
            "contract_version": 1,
            **{k: c[k] for k in ("input_records", "records_written", "records_quarantined", "sessions_written", "turns_written", "quarantine_rows")},
            "by_source": {s: dict(v) for s, v in sorted(self.by_source.items())},
            "quarantined_by_reason": dict(sorted(self.by_reason.items())),
            "seconds": round(time.time() - self.started, 3),
            **(extra or {}),
        }
        if self.previous is not None:
            return self._close_append(manifest)
        (self.staging / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
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
        had = set((self.previous or {}).get("by_source", {})) | {p.name.removeprefix("source=") for p in (self.out / "sessions").glob("source=*")}
        clash = sorted(set(self.by_source) & had)
        if clash:
            raise CorpusExists(f"source {clash[0]!r} is already in {self.out}; append under another --source, or use --mode overwrite")
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
