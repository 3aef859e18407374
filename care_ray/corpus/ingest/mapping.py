"""What the user tells ingest about a turn-per-row export: which column holds what (TurnsMapping),
which values mean "no label" and how label vocabularies translate (LabelValues).

The field descriptions here are the documentation: `care-ray ingest --help` is generated from them."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from care_ray.common.errors import UserError
from care_ray.contracts.session import ROLES


class MappingError(UserError):
    """The mapping does not fit the input: unknown key, missing column, text in a numeric column."""


class TurnsMapping(BaseModel):
    """Which input column holds what. Only session, role and text are required."""

    model_config = ConfigDict(extra="forbid")

    session: str = Field(description="session (conversation) id")
    role: str = Field(description="speaker (role) of the turn")
    text: str = Field(description="utterance text")
    order: str | None = Field(
        None, description="turn order, numbers or ISO-8601; default: file order"
    )
    client_values: list[str] = Field(
        default_factory=lambda: ["client"], description="role values of the client"
    )
    counselor_values: list[str] = Field(
        default_factory=lambda: ["counselor"], description="role values of the counselor"
    )
    client_id: str | None = Field(None, description="client id; default: the session id")
    counselor_id: str | None = Field(None, description="counselor id")
    session_index: str | None = Field(
        None, description="the session's number for its client, 1-based"
    )
    started_at: str | None = Field(
        None, description="session start, ISO-8601; default: first timestamp"
    )
    timestamp: str | None = Field(None, description="each turn's time, ISO-8601")
    language: str | None = Field(
        None, description="language tag (en, zh, ...); default: default_language"
    )
    default_language: str = Field("en", description="language when no language column")
    strategy: str | None = Field(
        None, description="turn-level counselor behaviour code, e.g. strategy"
    )
    reaction: str | None = Field(
        None, description="turn-level client behaviour code, e.g. reaction"
    )
    rating: str | None = Field(None, description="numeric rating given at a turn, 1-5")
    labels: list[str] = Field(
        default_factory=list, description="session-level numeric columns; text: metadata"
    )
    metadata: list[str] = Field(
        default_factory=list, description="session-level columns kept as text, e.g. topic"
    )
    client_wai: list[str] = Field(
        default_factory=list, description="12 columns: client's WAI-SR items 1..12"
    )
    counselor_wai: list[str] = Field(
        default_factory=list, description="12 columns: counselor's WAI-SR items 1..12"
    )
    source: str = Field("turns", description="source name, the corpus partition")

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
        single = [
            self.session,
            self.role,
            self.text,
            self.order,
            self.timestamp,
            self.client_id,
            self.counselor_id,
            self.session_index,
            self.started_at,
            self.language,
            self.strategy,
            self.reaction,
            self.rating,
        ]
        return (
            [c for c in single if c]
            + self.labels
            + self.metadata
            + self.client_wai
            + self.counselor_wai
        )

    def numeric_columns(self) -> dict[str, str]:
        """column → the mapping key that needs numbers in it."""
        keyed = {c: k for k in ("labels", "client_wai", "counselor_wai") for c in getattr(self, k)}
        keyed.update({getattr(self, k): k for k in ("rating", "session_index") if getattr(self, k)})
        return keyed


MAPPING_KEYS: tuple[str, ...] = tuple(TurnsMapping.model_fields)
LIST_KEYS = frozenset(
    k for k, f in TurnsMapping.model_fields.items() if "list" in str(f.annotation)
)
VALUE_KEYS = frozenset({"default_language", "source"})  # a value, not a column name

# What exports call the things the keys name: the nearest key by meaning, where spelling is no help.
_SYNONYMS = {
    "speaker": "role",
    "speaker_role": "role",
    "who": "role",
    "author": "role",
    "sender": "role",
    "interlocutor": "role",
    "utterance": "text",
    "message": "text",
    "content": "text",
    "msg": "text",
    "body": "text",
    "conversation": "session",
    "conversation_id": "session",
    "conv": "session",
    "dialog": "session",
    "dialogue": "session",
    "session_id": "session",
    "turn": "order",
    "seq": "order",
    "position": "order",
    "index": "order",
    "time": "timestamp",
    "lang": "language",
    "client_value": "client_values",
    "counselor_value": "counselor_values",
    "therapist_id": "counselor_id",
    "patient_id": "client_id",
    "label": "labels",
    "meta": "metadata",
}


def nearest_key(key: str) -> str | None:
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    close = difflib.get_close_matches(
        key, MAPPING_KEYS, n=1, cutoff=0.6
    ) or difflib.get_close_matches(
        key.replace("counsellor", "counselor"), MAPPING_KEYS, n=1, cutoff=0.6
    )
    return close[0] if close else None


def _unknown_key_message(key: str, value: Any) -> str:
    near = nearest_key(key)
    shown = ",".join(map(str, value)) if isinstance(value, list) else value
    if near:
        return f"unknown mapping key {key!r}; did you mean {near!r}? (--map {near}={shown})"
    return (
        f"unknown mapping key {key!r}; to keep a session-level column use --map metadata={shown} "
        f"(valid keys: {', '.join(MAPPING_KEYS)}; see care-ray ingest --help)"
    )


def _as_list(value: Any) -> list[str]:
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    return [str(v).strip() for v in items if v is not None and str(v).strip()]


def mapping_from_spec(spec: Mapping[str, Any]) -> TurnsMapping:
    """A TurnsMapping from `--map` pairs or a `--mapping` YAML (both give the same dict): keys may use
    dashes, a list key takes a list or a comma-separated string, and an unknown key is an error that
    names the nearest valid one."""
    clean: dict[str, Any] = {}
    for raw_key, value in spec.items():
        key = str(raw_key).strip().replace("-", "_")
        if key not in MAPPING_KEYS:
            raise MappingError(_unknown_key_message(key, value))
        if value is None:
            continue
        clean[key] = _as_list(value) if key in LIST_KEYS else str(value).strip()
    missing = [k for k in ("session", "role", "text") if not clean.get(k)]
    if missing:
        raise MappingError(
            "the mapping needs "
            + ", ".join(f"--map {k}=COLUMN" for k in missing)
            + " (see care-ray ingest --help for every key)"
        )
    try:
        return TurnsMapping(**clean)
    except ValidationError as e:
        raise MappingError(
            "bad column mapping: "
            + "; ".join(str(err["msg"]).removeprefix("Value error, ") for err in e.errors())
        ) from None


def mapping_help() -> str:
    """One line per mapping key, from the field descriptions (so the help cannot drift from the code)."""
    lines = []
    for key, field in TurnsMapping.model_fields.items():
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        notes = ["required"] if field.is_required() else []
        notes += (
            ["value"] if key in VALUE_KEYS else ["list"] if key in LIST_KEYS and not default else []
        )
        if default:
            notes.append(f"default: {','.join(default) if isinstance(default, list) else default}")
        lines.append(f"{key:<17} {field.description}" + (f" ({'; '.join(notes)})" if notes else ""))
    return "\n".join(lines)


# ---- label values ---------------------------------------------------------------------------------

DEFAULT_NULL_VALUES = ("", "n/a", "na", "none", "null", "nan", "-")


def _blank(value: Any) -> bool:
    return value is None or not str(value).strip()


LABEL_FIELDS = ("role", "strategy", "reaction")  # what --map-values may translate


class LabelValues(BaseModel):
    """How raw label cells become stored labels: `null_values` (compared case-insensitively; blank is
    always null) mean "no label" in label, rating and WAI columns; `maps` translates raw values of
    role, strategy and reaction to canonical ones (None = no label). Values not in a map keep their
    spelling and are counted as unmapped."""

    model_config = ConfigDict(frozen=True)

    null_values: tuple[str, ...] = DEFAULT_NULL_VALUES
    maps: dict[str, dict[str, str | None]] = {}
    _folded: frozenset[str] = PrivateAttr(frozenset())

    def model_post_init(self, context: Any) -> None:
        self._folded = frozenset(v.strip().casefold() for v in self.null_values)

    def is_null(self, value: Any) -> bool:
        if value is None:
            return True
        text = str(value).strip().casefold()
        return not text or text in self._folded

    def label(self, field: str, value: Any) -> str | None:
        """The stored value of a strategy/reaction cell: None for a null value, else mapped."""
        if self.is_null(value):
            return None
        text = str(value).strip()
        table = self.maps.get(field, {})
        return table[text] if text in table else text

    def role(self, value: Any) -> str:
        text = "" if value is None else str(value).strip()
        return self.maps.get("role", {}).get(text, text) or ""

    def is_unmapped(
        self, field: str, value: Any, canonical: AbstractSet[str] = frozenset()
    ) -> bool:
        """True for a value of a mapped field that the map does not know (and that is no canonical value)."""
        table = self.maps.get(field)
        if table is None or _blank(value) or (field != "role" and self.is_null(value)):
            return False
        text = str(value).strip()
        return (
            text not in table
            and text not in {v for v in table.values() if v is not None}
            and text not in canonical
        )


def parse_null_values(text: str | None) -> tuple[str, ...]:
    """`--null-values` as given: comma-separated; None → the defaults."""
    if text is None:
        return DEFAULT_NULL_VALUES
    return tuple(dict.fromkeys(["", *(v.strip() for v in text.split(","))]))


def load_value_maps(
    path: Path, mapping: TurnsMapping | None = None
) -> dict[str, dict[str, str | None]]:
    """A `--map-values` YAML: {role|strategy|reaction or the column mapped to one: {raw: canonical}}."""
    from care_ray.common.yamlfile import read_yaml_mapping

    loaded = read_yaml_mapping(
        path, "--map-values", "{column: {raw value: canonical value}}", MappingError
    )
    by_column = {
        getattr(mapping, f): f for f in LABEL_FIELDS if mapping is not None and getattr(mapping, f)
    }
    maps: dict[str, dict[str, str | None]] = {}
    for key, table in loaded.items():
        field = str(key) if str(key) in LABEL_FIELDS else by_column.get(str(key))
        if field is None:
            valid = [*LABEL_FIELDS, *by_column]
            raise MappingError(
                f"{path}: {key!r} is not role, strategy, reaction or a column mapped to one (valid: {', '.join(valid)})"
            )
        if not isinstance(table, dict):
            raise MappingError(
                f"{path}: {key!r} must map raw values to canonical values, got {type(table).__name__}"
            )
        maps.setdefault(field, {}).update(
            {str(raw).strip(): None if v is None else str(v).strip() for raw, v in table.items()}
        )
    if "role" in maps:
        bad = sorted(
            {v for v in maps["role"].values() if v is not None}
            - set(ROLES)
            - set(mapping.client_values if mapping else ())
            - set(mapping.counselor_values if mapping else ())
        )
        if bad:
            raise MappingError(
                f"{path}: role values must map to client or counselor (or a "
                f"client_values/counselor_values value), not {bad}"
            )
    return maps
