"""`care-ray ingest | validate | export | tiny-model`: sources into a corpus and back, and the tiny
model for tests and smoke runs."""

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


def register(app: typer.Typer) -> None:
    command(app, "ingest", IngestOptions, ingest_command, help=_ingest_help())
    command(app, "validate", CorpusOptions, validate_command)
    command(app, "export", ExportOptions, export_command)
    command(app, "tiny-model", TinyModelOptions, tiny_model_command)
