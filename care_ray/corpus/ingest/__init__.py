"""Ingest: source files → a validated sessions corpus (+ quarantine, + manifest).

One reader per format turns input records into Candidates; the CorpusWriter validates each
against the contract, writes or quarantines it, and reconciles the counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from care_ray.corpus.ingest.esconv import esconv_files, read_esconv
from care_ray.corpus.ingest.formats import FORMATS, FormatUnknown, infer_format
from care_ray.corpus.ingest.mapping import (
    DEFAULT_NULL_VALUES,
    LabelValues,
    MappingError,
    TurnsMapping,
    mapping_from_spec,
    mapping_help,
)
from care_ray.corpus.ingest.records import iter_json_lines
from care_ray.corpus.ingest.summary import ingest_summary, nothing_written
from care_ray.corpus.ingest.turns import TurnsReader
from care_ray.corpus.ingest.types import Candidate
from care_ray.corpus.ingest.writer import (
    EMPTY_TURN_POLICIES,
    WRITE_MODES,
    CorpusExists,
    CorpusWriter,
)

__all__ = [
    "DEFAULT_NULL_VALUES",
    "EMPTY_TURN_POLICIES",
    "FORMATS",
    "WRITE_MODES",
    "Candidate",
    "CorpusExists",
    "FormatUnknown",
    "LabelValues",
    "MappingError",
    "TurnsMapping",
    "infer_format",
    "ingest_files",
    "ingest_summary",
    "mapping_from_spec",
    "mapping_help",
    "nothing_written",
]


def _expand(inputs: list[Path], fmt: str) -> list[Path]:
    paths: list[Path] = []
    for p in map(Path, inputs):
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
        if p.is_dir():
            if fmt == "esconv":
                paths += esconv_files(p)
            else:
                suffixes = {".csv", ".tsv"} if fmt == "turns-csv" else {".jsonl", ".json"}
                paths += sorted(q for q in p.iterdir() if q.suffix.lower() in suffixes)
        else:
            paths.append(p)
    if not paths:
        raise FileNotFoundError(f"no {fmt} input files in {[str(p) for p in inputs]}")
    return paths


def _esconv_candidates(paths: list[Path]) -> Iterator[Candidate]:
    for rec, session in read_esconv(paths):
        yield Candidate(rec.origin, rec.raw, 1, session, rec.error, "esconv")


def _sessions_jsonl_candidates(paths: list[Path]) -> Iterator[Candidate]:
    for rec in (r for p in paths for r in iter_json_lines(p)):
        source = (rec.value or {}).get("source") or "sessions-jsonl"
        yield Candidate(rec.origin, rec.raw, 1, rec.value, rec.error, str(source))


def ingest_files(
    fmt: str | None,
    inputs: list[Path],
    out: Path,
    mapping: TurnsMapping | None = None,
    chunk_size: int = 1000,
    source: str | None = None,
    mode: str = "create",
    empty_turns: str = "drop",
    values: LabelValues | None = None,
) -> dict[str, Any]:
    """Ingest `inputs` of format `fmt` (None: inferred from the files) into `out`/{sessions,quarantine,manifest.json};
    returns the manifest. `mode`: create (refuse an `out` that holds a corpus), append (add new sources to it;
    ids already there are duplicates) or overwrite (replace it). `empty_turns`: drop blank turns (counted
    per session in metadata.dropped_turns) or quarantine their session. `values`: null label values and
    label vocabularies, for the turns formats."""
    fmt = fmt or infer_format(inputs)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    paths = _expand(inputs, fmt)
    reader = None
    if fmt == "esconv":
        candidates = _esconv_candidates(paths)
    elif fmt == "sessions-jsonl":
        candidates = _sessions_jsonl_candidates(paths)
    else:
        if mapping is None:
            raise MappingError(
                f"format {fmt} needs a column mapping: --map session=COLUMN --map role=COLUMN --map text=COLUMN "
                "(see care-ray ingest --help)"
            )
        if source:
            mapping = mapping.model_copy(update={"source": source})
        reader = TurnsReader(paths, fmt, mapping, values, chunk_rows=max(chunk_size * 50, 1000))
        candidates = iter(reader)
    writer = CorpusWriter(
        out, chunk_size=chunk_size, mode=mode, source=source, empty_turns=empty_turns
    )  # candidates are lazy: a clash is refused before reading
    try:
        for c in candidates:
            src = source or c.source
            writer.add_input(src, c.n_input_records)
            if c.error is not None:
                writer.reject(
                    src,
                    c.origin,
                    c.error,
                    c.raw,
                    c.n_input_records,
                    (c.session or {}).get("session_id"),
                )
            else:
                assert c.session is not None  # a candidate without an error has a session
                if source:
                    c.session["source"] = source
                writer.add_session(c.session, c.n_input_records, c.origin, c.raw)
        return writer.close(
            {
                "format": fmt,
                "inputs": [str(p) for p in paths],
                **(reader.report() if reader else {}),
            }
        )
    except BaseException:
        writer.abort()
        raise
