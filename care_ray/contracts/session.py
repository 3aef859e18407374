"""The session contract: Arrow schema built from schemas/session.schema.json, plus the rules a
session must satisfy, each failing with its own reason code."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa

from care_ray.common.errors import ReasonedError
from care_ray.common.paths import schemas_dir

ROLES = ("client", "counselor")


class Reason(StrEnum):
    """Why an input record went to quarantine. One code per kind of defect."""

    MALFORMED_RECORD = "malformed_record"  # unparsable line / JSON / CSV row
    INVALID_UTF8 = "invalid_utf8"
    MISSING_FIELD = "missing_field"  # a required field is absent or null
    BAD_VALUE = "bad_value"  # a field has the wrong type (e.g. rating "five")
    DUPLICATE_SESSION_ID = "duplicate_session_id"
    EMPTY_SESSION = "empty_session"  # no turns at all
    SINGLE_SPEAKER = "single_speaker"  # only client or only counselor turns
    UNKNOWN_ROLE = "unknown_role"
    EMPTY_TURN = "empty_turn"  # a turn whose text is blank
    RATING_OUT_OF_RANGE = "rating_out_of_range"


class ContractError(ReasonedError):
    """A record breaks the contract; `reason` (a Reason) says how, `detail` says where."""


_SCALARS = {
    "string": pa.string(),
    "int8": pa.int8(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def _arrow_type(spec: Any) -> pa.DataType:
    if isinstance(spec, str):
        return _SCALARS[spec]
    if "list" in spec:
        return pa.list_(_arrow_type(spec["list"]))
    if "struct" in spec:
        return pa.struct([_arrow_field(f) for f in spec["struct"]])
    if "map" in spec:
        key, value = spec["map"]
        return pa.map_(_arrow_type(key), _arrow_type(value))
    raise ValueError(f"unknown type spec in session schema: {spec!r}")


def _arrow_field(spec: Mapping[str, Any]) -> pa.Field:
    return pa.field(spec["name"], _arrow_type(spec["type"]), nullable=spec.get("nullable", True))


@dataclass(frozen=True)
class SessionContract:
    spec: dict[str, Any]
    schema: pa.Schema

    @property
    def required(self) -> list[str]:
        return [f["name"] for f in self.spec["fields"] if not f.get("nullable", True)]

    def field_spec(self, name: str) -> dict[str, Any]:
        return next(f for f in self.spec["fields"] if f["name"] == name)


@cache
def load_contract(path: Path | None = None) -> SessionContract:
    path = Path(path) if path else schemas_dir() / "session.schema.json"
    spec = json.loads(path.read_text(encoding="utf-8"))
    schema = pa.schema(
        [_arrow_field(f) for f in spec["fields"]],
        metadata={"care_ray.contract_version": str(spec["version"])},
    )
    return SessionContract(spec=spec, schema=schema)


def session_schema() -> pa.Schema:
    return load_contract().schema


def _check_ratings(name: str, values: Any, spec: Mapping[str, Any]) -> list[int | None] | None:
    if values is None:
        return None
    if not isinstance(values, list | tuple) or len(values) != spec["length"]:
        raise ContractError(Reason.BAD_VALUE, f"{name} must be a list of {spec['length']} ratings")
    out: list[int | None] = []
    for i, v in enumerate(values, start=1):
        if v is None:
            out.append(None)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ContractError(Reason.BAD_VALUE, f"{name} item {i} is not a number") from None
        if f != int(f) or not spec["min"] <= f <= spec["max"]:
            raise ContractError(
                Reason.RATING_OUT_OF_RANGE,
                f"{name} item {i} = {v!r} outside {spec['min']}..{spec['max']}",
            )
        out.append(int(f))
    return out


def _parse_time(value: Any, what: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, int | float):
        dt = datetime.fromtimestamp(float(value), tz=UTC)
    else:
        try:
            dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ContractError(Reason.BAD_VALUE, f"{what} is not an ISO-8601 time") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _turn_label(value: Any, what: str) -> str | None:
    """A strategy or reaction: text or absent. Anything else would fail the Arrow write."""
    if not value:
        return None
    if not isinstance(value, str):
        raise ContractError(Reason.BAD_VALUE, f"{what} is not text")
    return value


def normalise_session(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check one session against the contract and return it in canonical form.

    Raises ContractError with the first defect found. Pure: no I/O, no state across records
    (duplicate ids are the writer's business, since only it sees the whole stream).
    """
    contract = load_contract()
    for name in contract.required:
        value = record.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            if name == "turns":
                raise ContractError(Reason.EMPTY_SESSION, "session has no turns")
            raise ContractError(Reason.MISSING_FIELD, f"required field {name!r} is missing")
    turns = record["turns"]
    if not isinstance(turns, list):
        raise ContractError(Reason.BAD_VALUE, "turns must be a list")
    if not turns:
        raise ContractError(Reason.EMPTY_SESSION, "session has no turns")
    clean_turns = []
    for i, turn in enumerate(turns):
        role = turn.get("role")
        if role not in ROLES:
            raise ContractError(
                Reason.UNKNOWN_ROLE, f"turn {i} has role {role!r}; expected one of {ROLES}"
            )
        text = turn.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ContractError(Reason.EMPTY_TURN, f"turn {i} has no text")
        rating = turn.get("rating")
        if rating is not None:
            try:
                rating = float(rating)
            except (TypeError, ValueError):
                raise ContractError(Reason.BAD_VALUE, f"turn {i} rating is not a number") from None
            if not 1 <= rating <= 5:
                raise ContractError(
                    Reason.RATING_OUT_OF_RANGE, f"turn {i} rating {rating} outside 1..5"
                )
        clean_turns.append(
            {
                "role": role,
                "text": text,
                "timestamp": _parse_time(turn.get("timestamp"), f"turn {i} timestamp"),
                "strategy": _turn_label(turn.get("strategy"), f"turn {i} strategy"),
                "reaction": _turn_label(turn.get("reaction"), f"turn {i} reaction"),
                "rating": rating,
            }
        )
    if len({t["role"] for t in clean_turns}) < 2:
        raise ContractError(
            Reason.SINGLE_SPEAKER,
            f"all {len(clean_turns)} turns are {clean_turns[0]['role']} turns",
        )

    session_index = record.get("session_index")
    if session_index is not None:
        try:
            session_index = int(session_index)
        except (TypeError, ValueError):
            raise ContractError(Reason.BAD_VALUE, "session_index is not an integer") from None
    labels = record.get("labels") or None
    if labels is not None:
        try:
            labels = {str(k): float(v) for k, v in dict(labels).items() if v is not None}
        except (TypeError, ValueError):
            raise ContractError(Reason.BAD_VALUE, "labels must map names to numbers") from None
    metadata = record.get("metadata") or None
    if metadata is not None:
        metadata = {str(k): str(v) for k, v in dict(metadata).items() if v is not None}
    counselor_id = record.get("counselor_id")
    return {
        "session_id": str(record["session_id"]),
        "client_id": str(record["client_id"]),
        "counselor_id": None if counselor_id in (None, "") else str(counselor_id),
        "session_index": session_index,
        "started_at": _parse_time(record.get("started_at"), "started_at"),
        "language": str(record["language"]),
        "source": str(record["source"]),
        "turns": clean_turns,
        "client_wai": _check_ratings(
            "client_wai", record.get("client_wai"), contract.field_spec("client_wai")
        ),
        "counselor_wai": _check_ratings(
            "counselor_wai", record.get("counselor_wai"), contract.field_spec("counselor_wai")
        ),
        "labels": labels,
        "metadata": metadata,
    }


def sessions_to_table(sessions: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Canonical sessions (from normalise_session) → an Arrow table in the contract schema."""
    schema = session_schema()
    rows = []
    for s in sessions:
        row = dict(s)
        for key in ("labels", "metadata"):
            if row.get(key) is not None:
                row[key] = list(row[key].items())
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


def conform_table(table: pa.Table) -> pa.Table:
    """Cast a table read back from Parquet (hive partition columns come back as dictionaries,
    possibly reordered) to the contract schema, or fail naming the mismatch."""
    schema = session_schema()
    missing = [n for n in schema.names if n not in table.column_names]
    if missing:
        raise ValueError(f"not a care-ray sessions table: missing columns {missing}")
    return table.select(schema.names).cast(schema)
