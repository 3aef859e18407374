"""Utterance-per-row exports (CSV or JSON lines) with a user-given column mapping.

Rows are spilled to Parquet and re-read ordered by (session, order, file position) through
DuckDB, so input need not be sorted and memory stays bounded by the spill chunk, not the file.
A row that cannot be read at all (malformed, bad UTF-8, no session id, bad order value) is
quarantined alone; a session that breaks a contract rule is quarantined with all its rows. The
mapping itself is checked against the first rows, so a mapping mistake fails before anything is
written instead of quarantining every session."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from care_ray.common.sql import connect
from care_ray.contracts.session import ROLES, ContractError, Reason
from care_ray.corpus.ingest.mapping import LabelValues, MappingError, TurnsMapping
from care_ray.corpus.ingest.records import RawRecord, iter_csv_rows, iter_json_lines
from care_ray.corpus.ingest.types import Candidate

__all__ = ["MappingError", "TurnsMapping", "TurnsReader", "read_turns", "rows_to_session"]


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
        raise ContractError(
            Reason.BAD_VALUE, f"order value {value!r} is neither a number nor an ISO-8601 time"
        ) from None


_SPILL_SCHEMA = pa.schema(
    [
        ("_session", pa.string()),
        ("_order", pa.float64()),
        ("_seq", pa.int64()),
        ("_origin", pa.string()),
        ("_row", pa.string()),
    ]
)


def rows_to_session(rows: list[dict], m: TurnsMapping, values: LabelValues | None = None) -> dict:
    """Rows of one session, already in order → a session record (validated later by the contract)."""
    values = values or LabelValues()

    def role_of(v: Any) -> str:
        v = values.role(v)
        return "client" if v in m.client_values else "counselor" if v in m.counselor_values else v

    def first(col: str | None, is_null=_blank) -> Any:
        return next((r.get(col) for r in rows if not is_null(r.get(col))), None) if col else None

    def first_label(col: str) -> Any:
        return first(col, values.is_null)

    def wai(cols: list[str]) -> list | None:
        if not cols:
            return None
        ratings = [first_label(c) for c in cols]
        return None if all(v is None for v in ratings) else ratings

    turns = [
        {
            "role": role_of(r.get(m.role)),
            "text": r.get(m.text),
            "timestamp": r.get(m.timestamp) if m.timestamp else None,
            "strategy": values.label("strategy", r.get(m.strategy)) if m.strategy else None,
            "reaction": values.label("reaction", r.get(m.reaction)) if m.reaction else None,
            "rating": None if not m.rating or values.is_null(r.get(m.rating)) else r.get(m.rating),
        }
        for r in rows
    ]
    session_id = str(rows[0][m.session]).strip()
    labels = {c: first_label(c) for c in m.labels}
    metadata = {c: first(c) for c in m.metadata}
    return {
        "session_id": session_id,
        "client_id": first(m.client_id) or session_id,
        "counselor_id": first(m.counselor_id),
        "session_index": first(m.session_index),
        "started_at": first(m.started_at) or (turns[0]["timestamp"] if m.timestamp else None),
        "language": first(m.language) or m.default_language,
        "source": m.source,
        "turns": turns,
        "client_wai": wai(m.client_wai),
        "counselor_wai": wai(m.counselor_wai),
        "labels": {k: v for k, v in labels.items() if v is not None} or None,
        "metadata": {k: v for k, v in metadata.items() if v is not None} or None,
    }


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


_NUMERIC_HINT = {
    "labels": "labels are numbers; keep a text column with --map metadata={col}",
    "session_index": "session_index is an integer; keep a text column with --map metadata={col}",
    "rating": "ratings are numbers 1-5; map a turn-level code with --map strategy={col} or --map reaction={col}",
    "client_wai": "WAI-SR items are ratings 1-5; recode the column to numbers",
    "counselor_wai": "WAI-SR items are ratings 1-5; recode the column to numbers",
}


class _MappingProbe:
    """The first `limit` readable rows, checked against the mapping before anything is written: a
    mapped column no row has, and a numeric key whose column holds mostly text (a quality flag given
    as labels), are mapping mistakes, not bad records. A stray text value stays a record defect."""

    def __init__(self, mapping: TurnsMapping, values: LabelValues, limit: int):
        self.mapping, self.values, self.limit = mapping, values, limit
        self.numeric = mapping.numeric_columns()
        self.rows = 0
        self.columns: dict[str, None] = {}
        self.counts = {c: [0, 0] for c in self.numeric}  # column → [numbers, text]
        self.example: dict[str, tuple[Any, str]] = {}
        self.done = False

    def see(self, row: dict, origin: str, first_of_file: bool) -> None:
        if first_of_file or not self.done:
            self.columns.update(dict.fromkeys(row))
        if self.done:
            return
        self.rows += 1
        for col in self.numeric:
            v = row.get(col)
            if self.values.is_null(v):
                continue
            numeric = _is_number(v)
            self.counts[col][0 if numeric else 1] += 1
            if not numeric:
                self.example.setdefault(col, (v, origin))
        if self.rows >= self.limit:
            self.check()

    def check(self) -> None:
        if self.done:
            return
        self.done = True
        missing = [c for c in self.mapping.columns() if c not in self.columns]
        if missing and self.columns:
            raise MappingError(
                f"the mapping names columns the input lacks: {missing}; it has {list(self.columns)}"
            )
        for col, (numbers, text) in self.counts.items():
            if text > numbers:
                key = self.numeric[col]
                value, origin = self.example[col]
                raise MappingError(
                    f"--map {key}: column {col!r} holds text, not numbers ({text} of the first "
                    f"{numbers + text} values, "
                    f"e.g. {str(value)[:40]!r} at {origin}); " + _NUMERIC_HINT[key].format(col=col)
                )

    def not_kept(self) -> list[str]:
        used = set(self.mapping.columns())
        return [c for c in self.columns if c not in used]


class TurnsReader:
    """Candidates from utterance-per-row files; after iteration, `report()` says which input columns
    no mapping key used and which label values no --map-values entry covered."""

    def __init__(
        self,
        paths: list[Path],
        fmt: str,
        mapping: TurnsMapping,
        values: LabelValues | None = None,
        chunk_rows: int = 50_000,
        memory_limit: str = "1GB",
        probe_rows: int = 1000,
    ):
        self.paths, self.fmt, self.mapping = paths, fmt, mapping
        self.values = values or LabelValues()
        self.chunk_rows, self.memory_limit = chunk_rows, memory_limit
        self.probe = _MappingProbe(mapping, self.values, probe_rows)
        self.unmapped: dict[str, Counter] = {f: Counter() for f in self.values.maps}
        self._canonical_roles = {*ROLES, *mapping.client_values, *mapping.counselor_values}

    def report(self, top: int = 50) -> dict[str, Any]:
        return {
            "columns_not_kept": self.probe.not_kept(),
            "unmapped_values": {f: dict(c.most_common(top)) for f, c in self.unmapped.items() if c},
            "unmapped_values_distinct": {f: len(c) for f, c in self.unmapped.items() if c},
        }

    def _rows(self, path: Path) -> Iterator[RawRecord]:
        if self.fmt == "turns-csv":
            return iter_csv_rows(path, "\t" if path.suffix.lower() == ".tsv" else ",")
        return iter_json_lines(path)

    def _count_unmapped(self, row: dict) -> None:
        for field, counter in self.unmapped.items():
            value = row.get(getattr(self.mapping, field))
            canonical = self._canonical_roles if field == "role" else set()
            if self.values.is_unmapped(field, value, canonical):
                counter[str(value).strip()] += 1

    def _readable(self, rec: RawRecord) -> tuple[str, float | None]:
        """(session id, order key) of a parsed row, or ContractError."""
        session = rec.value.get(self.mapping.session)
        if _blank(session):
            raise ContractError(
                Reason.MISSING_FIELD, f"row has no session id in column {self.mapping.session!r}"
            )
        order = _order_key(rec.value.get(self.mapping.order)) if self.mapping.order else None
        return str(session).strip(), order

    def __iter__(self) -> Iterator[Candidate]:
        mapping = self.mapping
        with tempfile.TemporaryDirectory(prefix="care-ray-spill-") as spill:
            spill_dir = Path(spill)
            buffer: list[dict] = []
            parts = 0
            seq = 0

            def flush() -> None:
                nonlocal buffer, parts
                if buffer:
                    pq.write_table(
                        pa.Table.from_pylist(buffer, schema=_SPILL_SCHEMA),
                        spill_dir / f"spill-{parts:05d}.parquet",
                    )
                    parts += 1
                    buffer = []

            for path in self.paths:
                first_of_file = True
                for rec in self._rows(path):
                    if rec.error is None:
                        self.probe.see(rec.value, rec.origin, first_of_file)
                        first_of_file = False
                        self._count_unmapped(rec.value)
                        try:
                            session, order = self._readable(rec)
                        except ContractError as err:
                            rec.error = err
                    if rec.error is not None:
                        yield Candidate(rec.origin, rec.raw, 1, None, rec.error, mapping.source)
                        continue
                    buffer.append(
                        {
                            "_session": session,
                            "_order": order,
                            "_seq": seq,
                            "_origin": rec.origin,
                            "_row": json.dumps(rec.value, ensure_ascii=False),
                        }
                    )
                    seq += 1
                    if len(buffer) >= self.chunk_rows:
                        flush()
            flush()
            self.probe.check()
            if parts == 0:
                return
            con = connect(
                self.memory_limit,
                database=spill_dir / "sort.duckdb",
                temp_directory=spill_dir / "tmp",
                keep_insertion_order=True,
            )
            try:
                # sessions in the order they first appear in the input (the corpus order --limit promises),
                # turns by their order column, then by input position
                spilled = con.read_parquet(str(spill_dir / "spill-*.parquet")).set_alias("spilled")
                first_seen = spilled.aggregate(
                    "_session, min(_seq) AS _first_seq", "_session"
                ).set_alias("first_seen")
                ordered = spilled.join(first_seen, "_session").order(
                    "_first_seq, _order NULLS LAST, _seq"
                )
                yield from _group_sessions(
                    ordered.to_arrow_reader(self.chunk_rows), mapping, self.values
                )
            finally:
                con.close()


def read_turns(
    paths: list[Path],
    fmt: str,
    mapping: TurnsMapping,
    chunk_rows: int = 50_000,
    memory_limit: str = "1GB",
    values: LabelValues | None = None,
) -> Iterator[Candidate]:
    return iter(TurnsReader(paths, fmt, mapping, values, chunk_rows, memory_limit))


def _group_sessions(
    batches: pa.RecordBatchReader, mapping: TurnsMapping, values: LabelValues
) -> Iterator[Candidate]:
    current: str | None = None
    rows: list[dict] = []
    origins: list[str] = []

    def emit() -> Candidate:
        origin = (
            origins[0]
            if len(origins) == 1
            else f"{origins[0]}..{origins[-1]} ({len(origins)} rows)"
        )
        return Candidate(
            origin,
            json.dumps(rows, ensure_ascii=False),
            len(rows),
            rows_to_session(rows, mapping, values),
            None,
            mapping.source,
        )

    for batch in batches:
        for sid, origin, row in zip(
            batch.column("_session").to_pylist(),
            batch.column("_origin").to_pylist(),
            batch.column("_row").to_pylist(),
            strict=True,
        ):
            if sid != current and rows:
                yield emit()
                rows, origins = [], []
            current = sid
            rows.append(json.loads(row))
            origins.append(origin)
    if rows:
        yield emit()
