"""`care-ray redact` over a corpus: a Ray Data job whose workers each hold one Presidio analyzer
and anonymizer (the stateful pseudonym operator is not thread-safe, so nothing is shared), and a
driver that writes the redacted sessions through the ingest CorpusWriter, so the output is a corpus
in the same contract with the same quarantine/manifest discipline (sessions in = written +
quarantined). Logs and the summary carry counts only, never redacted text."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from care_ray.common.errors import UserError
from care_ray.contracts.session import ContractError, Reason
from care_ray.corpus.redact.core import (
    REASONS,
    RedactionPolicy,
    counts_table,
    normalize,
    redact_session,
)
from care_ray.corpus.redact.engine import (
    DEFAULT_ENTITIES,
    NER_ENTITIES,
    build_analyzer,
    build_anonymizer,
    check_ner_model,
)

log = logging.getLogger("care_ray.redact")
MIN_KEY_BYTES = 16
PATTERN_ONLY_NOTE = (
    "no --ner-model: only pattern entities were redacted; names, places and organisations were not"
)


def load_allow(path: Path | None) -> frozenset[str]:
    """One term per line, case-insensitive; blank lines and #-comments are skipped."""
    if path is None:
        return frozenset()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--allow: cannot read {path} ({type(e).__name__})") from None
    return frozenset(
        normalize(line) for line in lines if line.strip() and not line.lstrip().startswith("#")
    )


def load_key(path: Path | None) -> bytes | None:
    """The secret that links placeholders across sessions: at least 16 bytes after stripping
    (a short key makes the keyed hash guessable from a list of names)."""
    if path is None:
        return None
    try:
        key = Path(path).read_bytes().strip()
    except OSError as e:
        raise UserError(f"--key-file: cannot read {path} ({type(e).__name__})") from None
    if len(key) < MIN_KEY_BYTES:
        raise UserError(
            f"--key-file: {path} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} "
            "(e.g. `head -c 32 /dev/urandom | base64 > key`)"
        )
    return key


def parse_thresholds(items: list[str], yaml_file: Path | None = None) -> dict[str, float]:
    """ENTITY=SCORE pairs (and/or a YAML {ENTITY: SCORE}); scores between 0 and 1."""
    from care_ray.common.yamlfile import read_yaml_mapping

    raw: dict[str, Any] = {}
    if yaml_file is not None:
        raw.update(read_yaml_mapping(yaml_file, "--thresholds", "ENTITY: SCORE lines", UserError))
    for item in items:
        if "=" not in item:
            raise UserError(f"--threshold takes ENTITY=SCORE (e.g. PERSON=0.6), got {item!r}")
        name, value = item.split("=", 1)
        raw[name.strip()] = value.strip()
    out = {}
    for name, value in raw.items():
        try:
            score = float(value)
        except (TypeError, ValueError):
            raise UserError(f"--threshold {name}: {value!r} is not a number") from None
        if not 0.0 <= score <= 1.0:
            raise UserError(f"--threshold {name}: {score} is not between 0 and 1")
        out[str(name).upper()] = score
    return out


def check_entities(entities: tuple[str, ...], ner_model: Path | None) -> tuple[str, ...]:
    """The entities to look for; NER entities are dropped (and said so) without a model."""
    known = set(DEFAULT_ENTITIES) | {"US_PASSPORT", "US_DRIVER_LICENSE", "UK_NHS", "CRYPTO"}
    unknown = sorted(set(entities) - known)
    if unknown:
        raise UserError(
            f"--entities: unknown {', '.join(unknown)}; choose from {', '.join(sorted(known))}"
        )
    if ner_model is None:
        return tuple(e for e in entities if e not in NER_ENTITIES)
    return entities


class RedactActor:
    """One Ray worker: one analyzer + one anonymizer, many sessions. Returns per session its
    redacted record (JSON), its counts, and the placeholder mapping only when asked for."""

    def __init__(self, policy: RedactionPolicy, ner_model: str | None, with_mapping: bool):
        from care_ray.corpus.redact.engine import offline_tldextract

        offline_tldextract()
        self.policy = policy
        self.with_mapping = with_mapping
        self.analyzer = build_analyzer(Path(ner_model) if ner_model else None)
        self.anonymizer = build_anonymizer()

    def __call__(self, table: pa.Table) -> dict[str, list[Any]]:
        from care_ray.contracts.session import conform_table
        from care_ray.corpus.reader import _json_default, row_to_session

        out: dict[str, list[Any]] = {
            k: [] for k in ("session_id", "source", "record", "counts", "mapping", "error")
        }
        for row in conform_table(table).to_pylist():
            session = row_to_session(row)
            record = counts = mapping = error = None
            try:
                redacted, found, pseudonyms = redact_session(
                    session, self.analyzer, self.anonymizer, self.policy
                )
                record = json.dumps(redacted, ensure_ascii=False, default=_json_default)
                counts = json.dumps([[e, r, n] for (e, r), n in found.items()])
                if self.with_mapping:
                    mapping = json.dumps(
                        [[p, e, s] for p, (e, s) in pseudonyms.originals.items()],
                        ensure_ascii=False,
                    )
            except Exception as e:  # one bad session is quarantined, not the whole job
                error = type(e).__name__
            for k, v in zip(
                out,
                (session["session_id"], session["source"], record, counts, mapping, error),
                strict=True,
            ):
                out[k].append(v)
        return out


@dataclass
class RedactRun:
    sessions: Path
    out: Path
    policy: RedactionPolicy
    ner_model: Path | None = None
    write_mapping: Path | None = None
    workers: int = 1
    batch_size: int = 16
    ray_address: str | None = None


def _open_private(path: Path):
    """A new file only its owner can read (0600 from the start, not chmod-ed after writing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w")


def redact_corpus(run: RedactRun) -> dict[str, Any]:
    """Redact every session of `run.sessions` into a new corpus at `run.out`; returns its manifest."""
    import ray

    from care_ray.cluster.ray import start_ray
    from care_ray.corpus.ingest.writer import CorpusWriter
    from care_ray.corpus.reader import sessions_dataset

    check_ner_model(run.ner_model)
    dataset = sessions_dataset(run.sessions)
    if not dataset.files:
        raise UserError(f"--sessions: {run.sessions} holds no sessions")
    root = Path(run.sessions) / "sessions"
    if not root.is_dir():
        root = Path(run.sessions)
    writer = CorpusWriter(run.out)
    mapping_file = _open_private(run.write_mapping) if run.write_mapping else None
    counts: Counter = Counter()
    try:
        start_ray(run.ray_address)
        redacted = ray.data.read_parquet(str(root), num_cpus=0.25).map_batches(
            RedactActor,
            fn_constructor_kwargs=dict(
                policy=run.policy,
                ner_model=str(run.ner_model) if run.ner_model else None,
                with_mapping=mapping_file is not None,
            ),
            batch_format="pyarrow",
            batch_size=run.batch_size,
            compute=ray.data.ActorPoolStrategy(size=run.workers),
            num_cpus=0.5,  # fractional: a whole core per actor starves the read tasks on 2 cores
        )
        for batch in redacted.iter_batches(batch_format="pyarrow", batch_size=None):
            assert isinstance(batch, pa.Table)
            for row in batch.to_pylist():
                _write_one(writer, row, counts, mapping_file)
        manifest = writer.close(extra={"redaction": _provenance(run, counts)})
    except BaseException:
        writer.abort()
        raise
    finally:
        if mapping_file is not None:
            mapping_file.close()
    log.info(
        "redacted %d sessions (%d quarantined): %s",
        manifest["sessions_written"],
        manifest["records_quarantined"],
        manifest["redaction"]["by_reason"],
    )
    return manifest


def _write_one(writer: Any, row: dict[str, Any], counts: Counter, mapping_file: Any) -> None:
    writer.add_input(row["source"])
    if row["error"] is not None:
        # the raw record is not kept: it is the unredacted text
        writer.reject(
            row["source"],
            "redact",
            ContractError(Reason.BAD_VALUE, f"redaction failed ({row['error']})"),
            json.dumps({"session_id": row["session_id"]}),
            session_id=row["session_id"],
        )
        return
    if writer.add_session(json.loads(row["record"]), 1, "redact", raw="{}"):
        for entity, reason, n in json.loads(row["counts"]):
            counts[(entity, reason)] += n
        if mapping_file is not None:
            for placeholder, entity, surface in json.loads(row["mapping"]):
                mapping_file.write(
                    json.dumps(
                        {
                            "session_id": row["session_id"],
                            "placeholder": placeholder,
                            "entity_type": entity,
                            "original": surface,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )


def _provenance(run: RedactRun, counts: Counter) -> dict[str, Any]:
    by_reason: Counter[str] = Counter()
    for (_, reason), n in counts.items():
        by_reason[reason] += n
    return {
        "redacted": True,
        "source_corpus": str(run.sessions),
        **run.policy.describe(str(run.ner_model) if run.ner_model else None),
        "note": None if run.ner_model else PATTERN_ONLY_NOTE,
        "by_entity": counts_table(counts),
        "by_reason": {r: by_reason.get(r, 0) for r in REASONS},
        "mapping_written": run.write_mapping is not None,
    }


def redact_summary(manifest: dict[str, Any], out: Path) -> str:
    """Counts only: what was written, what was redacted per entity and why the rest was kept."""
    red = manifest["redaction"]
    lines = [
        f"redacted corpus: {manifest['sessions_written']} sessions written, "
        f"{manifest['records_quarantined']} quarantined, of {manifest['input_records']} in",
        "  by reason: " + ", ".join(f"{k} {v}" for k, v in red["by_reason"].items()),
    ]
    for entity, reasons in red["by_entity"].items():
        lines.append(f"  {entity}: " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
    if red["note"]:
        lines.append(f"note: {red['note']}")
    lines.append(f"manifest: {Path(out) / 'manifest.json'}")
    return "\n".join(lines)
