"""Which reader an input needs, when the user does not say: from the file extension and the shape
of the first record, or an error that says which --format to pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from care_ray.common.errors import UserError

FORMATS = ("esconv", "turns-csv", "turns-jsonl", "sessions-jsonl")
ESCONV_FILES = ("train.json", "valid.json", "test.json", "FailedESConv.json")
_DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
_SNIFF_BYTES = 1 << 20


class FormatUnknown(UserError):
    """The inputs do not tell which reader they need."""


def _first_json_record(path: Path) -> Any:
    """The first JSON-lines record, or the first element of a top-level array; None when neither parses."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(_SNIFF_BYTES)
    text = head.lstrip()
    decoder = json.JSONDecoder()
    try:
        if text.startswith("["):
            value, _ = decoder.raw_decode(text[1:].lstrip())
            return value
        line = next((ln for ln in text.splitlines() if ln.strip()), "")
        return json.loads(line)
    except (json.JSONDecodeError, StopIteration):
        return None


def _shape_of(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("dialog"), list):
        return "esconv"
    if isinstance(record.get("turns"), list):
        return "sessions-jsonl"
    return "turns-jsonl"


def format_of_file(path: Path) -> str:
    if path.suffix.lower() in (".csv", ".tsv"):
        return "turns-csv"
    shape = _shape_of(_first_json_record(path))
    if shape is None:
        raise FormatUnknown(
            f"cannot tell the format of {path.name} from its extension or first record; "
            f"pass --format ({' | '.join(FORMATS)})"
        )
    return shape


def format_of(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    if path.is_file():
        return format_of_file(path)
    if any((path / name).exists() for name in ESCONV_FILES):
        return "esconv"
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in _DATA_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no input files ({', '.join(_DATA_SUFFIXES)}) in {path}")
    return _one_format({f: format_of_file(f) for f in files})


def _one_format(found: dict[Path, str]) -> str:
    kinds = sorted(set(found.values()))
    if len(kinds) == 1:
        return kinds[0]
    listed = ", ".join(f"{p.name}: {k}" for p, k in found.items())
    raise FormatUnknown(
        f"the inputs look like different formats ({listed}); ingest one format at a time or pass --format"
    )


def infer_format(inputs: list[Path]) -> str:
    """The one format all `inputs` (files or folders) share."""
    return _one_format({Path(p): format_of(Path(p)) for p in inputs})
