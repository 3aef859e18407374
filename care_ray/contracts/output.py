"""What the model must answer per item: the schema (from schemas/output.schema.json), a tolerant
parse, validation, and the check that each quote really occurs in the session."""

from __future__ import annotations

import copy
import json
import re
from enum import StrEnum
from functools import cache
from typing import Any, cast

import jsonschema

from care_ray.common.errors import ReasonedError
from care_ray.common.paths import schemas_dir


class OutputError(StrEnum):
    TRUNCATED = "truncated"  # stopped at max_tokens before the JSON closed
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    ENGINE_ERROR = "engine_error"


class InvalidOutput(ReasonedError):
    """A model answer that cannot be used; `reason` is an OutputError."""


@cache
def _file_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(
        (schemas_dir() / "output.schema.json").read_text(encoding="utf-8")
    )
    return schema


def output_schema(
    max_rationale_chars: int | None = None,
    max_quotes: int | None = None,
    max_quote_chars: int | None = None,
    score_only: bool = False,
) -> dict[str, Any]:
    """The output schema, optionally with tighter length bounds: guided decoding then cannot run
    past max_tokens, which matters most for small or weak models that ramble. `score_only` is the
    ablation's answer, {"score": n}: a model trained without rationales must not be forced to write one."""
    schema = copy.deepcopy(_file_schema())
    props = schema["properties"]
    if score_only:
        schema["properties"] = {"score": props["score"]}
        schema["required"] = ["score"]
        return schema
    if max_rationale_chars:
        props["rationale"]["maxLength"] = max_rationale_chars
    if max_quotes is not None:
        props["quotes"]["maxItems"] = max_quotes
    if max_quote_chars:
        props["quotes"]["items"]["maxLength"] = max_quote_chars
    return schema


def format_item_output(score: int, rationale: str, quotes: list[str]) -> str:
    """The exact text a model is trained to produce (compact JSON, score first)."""
    return json.dumps(
        {"score": int(score), "rationale": rationale, "quotes": list(quotes)},
        ensure_ascii=False,
        separators=(",", ":"),
    )


@cache
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def parse_item_output(
    text: str, schema: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    """Parse and validate one model answer. Guided output can still carry raw control characters
    inside strings, so JSON is parsed with strict=False before schema validation."""
    # one compiled validator per schema: jsonschema.validate re-checks the schema on every call
    validator = _validator(json.dumps(schema or _file_schema(), sort_keys=True))
    stripped = text.strip()
    # tolerate a code fence or chatter around the object (the hf fallback has no guidance)
    if not stripped.startswith("{"):
        m = re.search(r"\{.*\}", stripped, flags=re.S)
        stripped = m.group(0) if m else stripped
    try:
        value = json.loads(stripped, strict=False)
    except json.JSONDecodeError as e:
        if finish_reason == "length":
            raise InvalidOutput(
                OutputError.TRUNCATED, f"output cut at max_tokens ({len(text)} chars)"
            ) from None
        raise InvalidOutput(OutputError.INVALID_JSON, f"{e.msg} at char {e.pos}") from None
    value = _without_undecodable_tails(value)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        path = "/".join(map(str, error.absolute_path)) or "(root)"
        raise InvalidOutput(OutputError.SCHEMA_VIOLATION, f"{path}: {error.message[:200]}")
    # every output schema's root is an object, so a value that passed validation is a dict
    return cast(dict[str, Any], value)


def _without_undecodable_tails(value: Any) -> Any:
    """Strings with the replacement characters at their end removed. A byte-level tokenizer can
    end a string (at a length bound) inside a multi-byte character: the grammar counted one
    character, the detokenizer shows one U+FFFD per byte, and the answer would fail its own
    maxLength. Those bytes are no text; everything before them is kept."""
    if isinstance(value, str):
        return value.rstrip("\ufffd")
    if isinstance(value, list):
        return [_without_undecodable_tails(v) for v in value]
    if isinstance(value, dict):
        return {k: _without_undecodable_tails(v) for k, v in value.items()}
    return value


_WS = re.compile(r"\s+")


def normalize_quote(s: str) -> str:
    """Whitespace collapsed and case folded: how a quote is matched against the dialogue."""
    return _WS.sub(" ", s).strip().casefold()


def quote_found_share(quotes: list[str], dialogue: str) -> float | None:
    """Share of quotes that occur verbatim (whitespace and case normalised) in the dialogue;
    None when the answer quotes nothing."""
    if not quotes:
        return None
    hay = normalize_quote(dialogue)
    return sum(1 for q in quotes if normalize_quote(q) and normalize_quote(q) in hay) / len(quotes)


# a span in quotation marks (ASCII, curly, CJK corner brackets) of 4 to 400 characters
_QUOTED = re.compile(r"[\"“「『]([^\"”」』]{4,400})[\"”」』]")


def quotes_in_rationale(rationale: str, dialogue: str, max_quotes: int = 5) -> list[str]:
    """Quoted spans of a reference rationale that really occur in the dialogue (normalised)."""
    hay = normalize_quote(dialogue)
    found: list[str] = []
    for m in _QUOTED.finditer(rationale):
        q = m.group(1).strip()
        if q and normalize_quote(q) in hay and q not in found:
            found.append(q)
    return found[:max_quotes]
