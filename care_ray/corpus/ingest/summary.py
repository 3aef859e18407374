"""What an ingest tells a person at the end: a few lines from the manifest (never transcript text)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def this_ingest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The counts of the ingest that just ran (an appended corpus's manifest lists each ingest)."""
    return (manifest.get("ingests") or [manifest])[-1]


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def ingest_summary(manifest: dict[str, Any], out: Path) -> str:
    m = this_ingest(manifest)
    n_files = len(m.get("inputs", []))
    lines = [
        f"ingest {m.get('format', '?')} ({_plural(n_files, 'file')}) → {out}",
        f"  written:        {_plural(m['sessions_written'], 'session')} "
        f"({m['records_written']} of {m['input_records']} input records, "
        f"{_plural(m['turns_written'], 'turn')})",
    ]
    reasons = ", ".join(f"{r} {n}" for r, n in _by_count(m.get("quarantined_by_reason", {})))
    lines.append(
        f"  quarantined:    {m['records_quarantined']} input records"
        + (f" in {_plural(m['quarantine_rows'], 'row')}: {reasons}" if reasons else "")
    )
    if m.get("turns_dropped"):
        lines.append(
            f"  dropped turns:  {m['turns_dropped']} empty, from "
            f"{_plural(m['sessions_with_dropped_turns'], 'session')} "
            "(kept; counted in metadata.dropped_turns; --empty-turns quarantine rejects such sessions)"
        )
    for field, values in (m.get("unmapped_values") or {}).items():
        distinct = (m.get("unmapped_values_distinct") or {}).get(field, len(values))
        shown = ", ".join(f"{v!r} {n}" for v, n in list(values.items())[:10])
        more = f" and {distinct - 10} more" if distinct > 10 else ""
        lines.append(f"  unmapped {field}: {shown}{more} (not in --map-values; stored as spelled)")
    if m.get("columns_not_kept"):
        lines.append(
            f"  not kept:       {', '.join(m['columns_not_kept'])} — map them as metadata to keep them"
        )
    if "ingests" in manifest:
        lines.append(
            f"  corpus now:     {_plural(manifest['sessions_written'], 'session')} from "
            f"{', '.join(sorted(manifest.get('by_source', {})))}"
        )
    lines.append(f"manifest: {Path(out) / 'manifest.json'}")
    return "\n".join(lines)


def nothing_written(manifest: dict[str, Any], out: Path, top: int = 3) -> str | None:
    """Why an ingest wrote no session — its top reasons with one example each — or None if it wrote some."""
    m = this_ingest(manifest)
    if m["sessions_written"] > 0:
        return None
    if m["input_records"] == 0:
        return f"nothing was written: the inputs hold no records ({', '.join(m.get('inputs', []))})"
    examples = m.get("quarantine_examples", {})
    lines = [
        f"nothing was written: all {m['input_records']} input records were quarantined (see "
        f"{Path(out) / 'quarantine'}). Top reasons:"
    ]
    for reason, n in _by_count(m.get("quarantined_by_reason", {}))[:top]:
        ex = examples.get(reason)
        lines.append(f"  {reason} ×{n}" + (f", e.g. {ex['origin']}: {ex['detail']}" if ex else ""))
    lines.append(
        "Fix the mapping or the input and rerun the same command: a corpus or source with no sessions is replaced."
    )
    return "\n".join(lines)
