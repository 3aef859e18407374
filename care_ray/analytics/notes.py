"""The analysis's notes: what was skipped and why, as manifest.json states it (one note per
message, not per variable; each absent table with its reason in `left_out`)."""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

_PER_VARIABLE_NOTE = re.compile(
    r"^contrasts: (?P<skipped>skipped )?(?P<by>[^/]+)/(?P<variable>.+?): (?P<message>.+)$"
)


def compact_notes(notes: list[str], shown: int = 4) -> list[str]:
    """One note per (by column, message) instead of one per variable."""
    merged: dict[tuple[str, str, str], list[str]] = {}
    out: list[str | tuple[str, str, str]] = []
    for note in notes:
        match = _PER_VARIABLE_NOTE.match(note)
        if match is None:
            out.append(note)
            continue
        key = (match["skipped"] or "", match["by"], match["message"])
        if key not in merged:
            merged[key] = []
            out.append(key)
        merged[key].append(match["variable"])

    def text(entry: str | tuple[str, str, str]) -> str:
        if isinstance(entry, str):
            return entry
        variables = merged[entry]
        listed = ", ".join(variables[:shown]) + (
            f", … ({len(variables)} in all)" if len(variables) > shown else ""
        )
        return f"contrasts: {entry[0]}{entry[1]}: {entry[2]} — {listed}"

    return [text(entry) for entry in out]


_ABSENT = re.compile(r"^(?P<tables>[a-z_]+(?:, [a-z_]+)*): absent — (?P<reason>.+)$")


def left_out(tables: Collection[str], notes: list[str], names: Sequence[str]) -> dict[str, str]:
    """Each table not written → why (from the notes that say a table is absent)."""
    reasons: dict[str, str] = {}
    for note in notes:
        if (match := _ABSENT.match(note)) is not None:
            for name in match["tables"].split(", "):
                reasons.setdefault(name, match["reason"])
    return {
        name: reasons.get(name, "the input did not support it (see notes)")
        for name in names
        if name not in tables
    }
