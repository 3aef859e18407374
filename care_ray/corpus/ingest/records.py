"""Input records as read from files, before they become sessions: the unit that is either
written or quarantined, so counts can reconcile."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from care_ray.contracts.session import ContractError, Reason


class _TextEncoding(TypedDict):
    encoding: str
    errors: str


# Lines are decoded with surrogateescape so that one bad byte costs one record, not the file.
_ENCODING: _TextEncoding = {"encoding": "utf-8", "errors": "surrogateescape"}


@dataclass
class RawRecord:
    origin: str  # "file:line" — where a user finds it again
    raw: str  # the record as it was read (bad bytes shown as U+FFFD)
    value: Any = None  # parsed JSON object / CSV row dict; None when rejected
    error: ContractError | None = None


def has_invalid_utf8(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _reject(origin: str, raw: str, reason: Reason, detail: str) -> RawRecord:
    return RawRecord(origin, printable(raw), None, ContractError(reason, detail))


def iter_json_lines(path: Path) -> Iterator[RawRecord]:
    """One record per non-blank line; a bad line is a rejected record, the file goes on."""
    with open(path, newline="\n", **_ENCODING) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            origin = f"{path.name}:{lineno}"
            line = line.rstrip("\r\n")
            if has_invalid_utf8(line):
                yield _reject(origin, line, Reason.INVALID_UTF8, "line is not valid UTF-8")
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                yield _reject(
                    origin,
                    line,
                    Reason.MALFORMED_RECORD,
                    f"invalid JSON at column {e.colno}: {e.msg}",
                )
                continue
            if not isinstance(value, dict):
                yield _reject(origin, line, Reason.MALFORMED_RECORD, "line is not a JSON object")
                continue
            yield RawRecord(origin, line, value)


def iter_json_array(path: Path) -> Iterator[RawRecord]:
    """Elements of a top-level JSON array (ESConv's FailedESConv.json layout)."""
    text = path.read_text(**_ENCODING)
    try:
        values = json.loads(text)
    except json.JSONDecodeError as e:
        yield _reject(
            path.name,
            text[:10_000],
            Reason.MALFORMED_RECORD,
            f"file is not valid JSON (line {e.lineno}: {e.msg})",
        )
        return
    if not isinstance(values, list):
        yield _reject(
            path.name,
            text[:10_000],
            Reason.MALFORMED_RECORD,
            "expected a JSON array of conversations",
        )
        return
    for i, value in enumerate(values):
        raw = json.dumps(value, ensure_ascii=False)
        origin = f"{path.name}[{i}]"
        if has_invalid_utf8(raw):
            yield _reject(origin, raw, Reason.INVALID_UTF8, "element is not valid UTF-8")
        elif not isinstance(value, dict):
            yield _reject(origin, raw, Reason.MALFORMED_RECORD, "element is not a JSON object")
        else:
            yield RawRecord(origin, raw, value)


def iter_json_any(path: Path) -> Iterator[RawRecord]:
    with open(path, "rb") as f:
        head = f.read(64).lstrip()
    return iter_json_array(path) if head.startswith(b"[") else iter_json_lines(path)


def iter_csv_rows(path: Path, delimiter: str = ",") -> Iterator[RawRecord]:
    """CSV with a header; a row whose field count differs from the header is malformed."""
    with open(path, newline="", **_ENCODING) as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        while True:
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield _reject(
                    f"{path.name}:{start}", "", Reason.MALFORMED_RECORD, f"CSV error: {e}"
                )
                continue
            if not row or all(not c.strip() for c in row):
                continue
            origin = f"{path.name}:{start}"
            raw = delimiter.join(row)
            if len(row) != len(header):
                yield _reject(
                    origin,
                    raw,
                    Reason.MALFORMED_RECORD,
                    f"{len(row)} fields, header has {len(header)}",
                )
            elif has_invalid_utf8(raw):
                yield _reject(origin, raw, Reason.INVALID_UTF8, "row is not valid UTF-8")
            else:
                yield RawRecord(origin, raw, dict(zip(header, row, strict=True)))
