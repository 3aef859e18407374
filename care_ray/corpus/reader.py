"""Reading a sessions corpus back: dataset access, canonical dicts, JSON-lines export, validation."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from care_ray.contracts.session import ContractError, conform_table, normalise_session


def sessions_dataset(corpus: Path | str) -> ds.Dataset:
    """The hive-partitioned sessions of a corpus folder (the folder itself or its sessions/), a
    local path or an object-store URI."""
    from care_ray.cluster.storage import location

    top = location(corpus)
    root = top.join("sessions") if top.join("sessions").is_dir() else top
    if not root.is_dir():
        raise FileNotFoundError(f"no sessions corpus at {corpus} (expected {corpus}/sessions/)")
    return ds.dataset(root.path, filesystem=root.fs, format="parquet", partitioning="hive")


def open_sessions(corpus: Path | str, error: type[Exception] = FileNotFoundError) -> ds.Dataset:
    """sessions_dataset, with a missing or empty corpus said in one line as `error`."""
    try:
        dataset = sessions_dataset(corpus)
    except FileNotFoundError as e:
        raise error(str(e)) from None
    if not dataset.files:
        raise error(f"no sessions in {corpus}")
    return dataset


def iter_session_batches(corpus: Path | str, batch_size: int = 1000) -> Iterator[pa.Table]:
    for batch in sessions_dataset(corpus).to_batches(batch_size=batch_size):
        yield conform_table(pa.Table.from_batches([batch]))


def row_to_session(row: dict[str, Any]) -> dict[str, Any]:
    """An Arrow row (maps come back as key/value pairs) → the canonical session dict."""
    out = dict(row)
    for key in ("labels", "metadata"):
        if out.get(key) is not None:
            out[key] = dict(out[key])
    return out


def iter_sessions(corpus: Path | str, batch_size: int = 1000) -> Iterator[dict[str, Any]]:
    for table in iter_session_batches(corpus, batch_size):
        for row in table.to_pylist():
            yield row_to_session(row)


def _json_default(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    raise TypeError(f"cannot serialise {type(v).__name__}")


def export_sessions_jsonl(corpus: Path, out_file: Path) -> int:
    """Write the corpus as sessions-jsonl, the format `ingest --format sessions-jsonl` reads back."""
    n = 0
    out_file.parent.mkdir(parents=True, exist_ok=True)
    with open(out_file, "w", encoding="utf-8") as f:
        for s in iter_sessions(corpus):
            f.write(json.dumps(s, ensure_ascii=False, default=_json_default) + "\n")
            n += 1
    return n


def validate_corpus(corpus: Path) -> dict[str, Any]:
    """Re-check every session against the contract, ids for uniqueness, and the manifest's counts."""
    corpus = Path(corpus)
    problems: list[str] = []
    seen: set[str] = set()
    by_source: Counter = Counter()
    by_language: Counter = Counter()
    n_sessions = n_turns = with_client_wai = with_labels = 0
    try:
        batches = list(iter_session_batches(corpus))
    except (ValueError, pa.ArrowInvalid) as e:
        return {"ok": False, "problems": [f"schema: {e}"]}
    for table in batches:
        for row in table.to_pylist():
            s = row_to_session(row)
            n_sessions += 1
            try:
                normalise_session(s)
            except ContractError as e:
                problems.append(f"{s.get('session_id')}: {e}")
            if s["session_id"] in seen:
                problems.append(f"{s['session_id']}: duplicate session_id")
            seen.add(s["session_id"])
            n_turns += len(s["turns"])
            by_source[s["source"]] += 1
            by_language[s["language"]] += 1
            with_client_wai += s.get("client_wai") is not None
            with_labels += s.get("labels") is not None
    manifest_path = corpus / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    quarantined = 0
    if (corpus / "quarantine").is_dir() and any((corpus / "quarantine").iterdir()):
        quarantined = ds.dataset(corpus / "quarantine", format="parquet").count_rows()
    if manifest is not None:
        if manifest["sessions_written"] != n_sessions:
            problems.append(
                f"manifest says {manifest['sessions_written']} sessions written, corpus has {n_sessions}"
            )
        if manifest["quarantine_rows"] != quarantined:
            problems.append(
                f"manifest says {manifest['quarantine_rows']} quarantine rows, table has {quarantined}"
            )
        if (
            manifest["input_records"]
            != manifest["records_written"] + manifest["records_quarantined"]
        ):
            problems.append("manifest counts do not reconcile")
    return {
        "ok": not problems,
        "sessions": n_sessions,
        "turns": n_turns,
        "quarantine_rows": quarantined,
        "by_source": dict(by_source),
        "by_language": dict(by_language),
        "with_client_wai": with_client_wai,
        "with_labels": with_labels,
        "has_manifest": manifest is not None,
        "problems": problems[:50],
        "n_problems": len(problems),
    }


def redaction_summary(corpus: Path | str) -> str | None:
    """One line on how a corpus was de-identified (`care-ray redact` records it in the corpus's
    manifest.json), for the outputs made from it; None for a corpus that was not redacted."""
    from care_ray.cluster.storage import location

    text = location(corpus).join("manifest.json").read_text()
    redaction = (json.loads(text) if text else {}).get("redaction") or {}
    if not redaction.get("redacted"):
        return None
    entities = ", ".join(redaction.get("entities") or []) or "none"
    model = redaction.get("ner_model") or "no NER model (pattern entities only)"
    linked = (
        "linked across sessions by a keyed hash"
        if redaction.get("linked_across_sessions")
        else "numbered per session"
    )
    return f"redacted ({entities}; {model}; placeholders {linked})"
