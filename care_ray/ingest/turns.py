"""Utterance-per-row exports (CSV or JSON lines) with a user-given column mapping.

Rows are spilled to Parquet and re-read ordered by (session, order, file position) through
DuckDB, so input need not be sorted and memory stays bounded by the spill chunk, not the file.
A row that cannot be read at all (malformed, bad UTF-8, no session id, bad order value) is
quarantined alone; a session that breaks a contract rule is quarantined with all its rows."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, model_validator

from care_ray.contract import ContractError, Reason
from care_ray.ingest.records import RawRecord, iter_csv_rows, iter_json_lines
from care_ray.ingest.types import Candidate


class TurnsMapping(BaseModel):
    """Which input column holds what. Only session, role and text are required."""

    session: str = Field(description="session id column")
    role: str = Field(description="speaker/role column")
    text: str = Field(description="utterance text column")
    client_values: list[str] = Field(default_factory=lambda: ["client"], description="role values that mean the client")
    counselor_values: list[str] = Field(default_factory=lambda: ["counselor"], description="role values that mean the counselor")
    order: str | None = Field(None, description="turn order column: numbers or ISO-8601 times; file order when absent")
    timestamp: str | None = None
    client_id: str | None = None
    counselor_id: str | None = None
    session_index: str | None = None
    started_at: str | None = None
    language: str | None = Field(None, description="language column; default_language when absent")
    default_language: str = "en"
    strategy: str | None = None
    reaction: str | None = None
    rating: str | None = None
    labels: list[str] = Field(default_factory=list, description="session-level numeric label columns")
    metadata: list[str] = Field(default_factory=list, description="session-level text columns")
    client_wai: list[str] = Field(default_factory=list, description="12 columns of client-rated WAI-SR items 1..12")
    counselor_wai: list[str] = Field(default_factory=list)
    source: str = "turns"

    @model_validator(mode="after")
    def _check(self) -> TurnsMapping:
        for name in ("client_wai", "counselor_wai"):
            cols = getattr(self, name)
            if cols and len(cols) != 12:
                raise ValueError(f"{name} needs 12 columns (items 1..12 in order), got {len(cols)}")
        overlap = set(self.client_values) & set(self.counselor_values)
        if overlap:
            raise ValueError(f"role values {sorted(overlap)} cannot mean both client and counselor")
        return self

    def columns(self) -> list[str]:
        single = [self.session, self.role, self.text, self.order, self.timestamp, self.client_id, self.counselor_id,
                  self.session_index, self.started_at, self.language, self.strategy, self.reaction, self.rating]
        return [c for c in single if c] + self.labels + self.metadata + self.client_wai + self.counselor_wai


class MappingError(ValueError):
    """The mapping names columns the input does not have."""


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def _order_key(value: Any) -> float | None:
    if _blank(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    try:
        return datetime.fromisoformat(str(value).strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ContractError(Reason.BAD_VALUE, f"order value {value!r} is neither a number nor an ISO-8601 time") from None


_SPILL_SCHEMA = pa.schema([("_session", pa.string()), ("_order", pa.float64()), ("_seq", pa.int64()), ("_origin", pa.string()), ("_row", pa.string())])


def _first(rows: list[dict], col: str | None) -> Any:
    if not col:
        return None
    return next((r.get(col) for r in rows if not _blank(r.get(col))), None)


def rows_to_session(rows: list[dict], m: TurnsMapping) -> dict:
    """Rows of one session, already in order → a session record (validated later by the contract)."""
    def role_of(v: Any) -> Any:
        v = "" if v is None else str(v).strip()
        return "client" if v in m.client_values else "counselor" if v in m.counselor_values else v

    def wai(cols: list[str]) -> list | None:
        if not cols:
            return None
        values = [_first(rows, c) for c in cols]
        return None if all(v is None for v in values) else values

    turns = [
        {
            "role": role_of(r.get(m.role)),
            "text": r.get(m.text),
            "timestamp": r.get(m.timestamp) if m.timestamp else None,
            "strategy": (r.get(m.strategy) or None) if m.strategy else None,
            "reaction": (r.get(m.reaction) or None) if m.reaction else None,
            "rating": None if not m.rating or _blank(r.get(m.rating)) else r.get(m.rating),
        }
        for r in rows
    ]
    session_id = str(rows[0][m.session]).strip()
    labels = {c: _first(rows, c) for c in m.labels}
    metadata = {c: _first(rows, c) for c in m.metadata}
    return {
        "session_id": session_id,
        "client_id": _first(rows, m.client_id) or session_id,
        "counselor_id": _first(rows, m.counselor_id),
        "session_index": _first(rows, m.session_index),
        "started_at": _first(rows, m.started_at) or (turns[0]["timestamp"] if m.timestamp else None),
        "language": _first(rows, m.language) or m.default_language,
        "source": m.source,
        "turns": turns,
        "client_wai": wai(m.client_wai),
        "counselor_wai": wai(m.counselor_wai),
        "labels": {k: v for k, v in labels.items() if v is not None} or None,
        "metadata": {k: v for k, v in metadata.items() if v is not None} or None,
    }


def read_turns(paths: list[Path], fmt: str, mapping: TurnsMapping, chunk_rows: int = 50_000, memory_limit: str = "1GB") -> Iterator[Candidate]:
    reader = iter_csv_rows if fmt == "turns-csv" else iter_json_lines
    with tempfile.TemporaryDirectory(prefix="care-ray-spill-") as spill:
        spill_dir = Path(spill)
        buffer: list[dict] = []
        parts = 0
        seq = 0
        checked_columns = False

        def flush() -> None:
            nonlocal buffer, parts
            if buffer:
                pq.write_table(pa.Table.from_pylist(buffer, schema=_SPILL_SCHEMA), spill_dir / f"spill-{parts:05d}.parquet")
                parts += 1
                buffer = []

        for path in paths:
            for rec in reader(path):
                if rec.error is None and not checked_columns:
                    missing = [c for c in mapping.columns() if c not in rec.value]
                    if missing:
                        raise MappingError(f"{path.name}: the mapping names columns the input lacks: {missing}; it has {sorted(rec.value)}")
                    checked_columns = True
                if rec.error is None:
                    try:
                        session = rec.value.get(mapping.session)
                        if _blank(session):
                            raise ContractError(Reason.MISSING_FIELD, f"row has no session id in column {mapping.session!r}")
                        order = _order_key(rec.value.get(mapping.order)) if mapping.order else None
                    except ContractError as err:
                        rec.error = err
                if rec.error is not None:
                    yield Candidate(rec.origin, rec.raw, 1, None, rec.error, mapping.source)
                    continue
                buffer.append({"_session": str(session).strip(), "_order": order, "_seq": seq, "_origin": rec.origin, "_row": json.dumps(rec.value, ensure_ascii=False)})
                seq += 1
                if len(buffer) >= chunk_rows:
                    flush()
        flush()
        if parts == 0:
            return
        con = duckdb.connect(str(spill_dir / "sort.duckdb"))
        try:
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = '{spill_dir / 'tmp'}'")
            # sessions in the order they first appear in the input (the corpus order --limit promises),
            # turns by their order column, then by input position
            spilled = con.read_parquet(str(spill_dir / "spill-*.parquet")).set_alias("spilled")
            first_seen = spilled.aggregate("_session, min(_seq) AS _first_seq", "_session").set_alias("first_seen")
            ordered = spilled.join(first_seen, "_session").order("_first_seq, _order NULLS LAST, _seq")
            yield from _group_sessions(ordered.to_arrow_reader(chunk_rows), mapping)
        finally:
            con.close()


def _group_sessions(batches: pa.RecordBatchReader, mapping: TurnsMapping) -> Iterator[Candidate]:
    current: str | None = None
    rows: list[dict] = []
    origins: list[str] = []

    def emit() -> Candidate:
        origin = origins[0] if len(origins) == 1 else f"{origins[0]}..{origins[-1]} ({len(origins)} rows)"
        return Candidate(origin, json.dumps(rows, ensure_ascii=False), len(rows), rows_to_session(rows, mapping), None, mapping.source)

    for batch in batches:
        for sid, origin, row in zip(batch.column("_session").to_pylist(), batch.column("_origin").to_pylist(), batch.column("_row").to_pylist(), strict=True):
            if sid != current and rows:
                yield emit()
                rows, origins = [], []
            current = sid
            rows.append(json.loads(row))
            origins.append(origin)
    if rows:
        yield emit()


