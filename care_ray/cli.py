"""The `care-ray` command: each command turns its options into a config and makes one library call."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from care_ray.cli_errors import (  # noqa: F401 - validation_message: part of this module's API
    UserError,
    fail,
    load_options,
    validation_message,
)
from care_ray.yaml_files import read_yaml_mapping

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="care-ray: client-perceived alliance (WAI-SR) at corpus scale.",
)
log = logging.getLogger("care_ray")


_fail = fail  # the name the commands here use


def _parse_map(pairs: list[str], mapping_file: Path | None) -> dict:
    """The --mapping YAML overlaid with the --map KEY=VALUE pairs: one spec for mapping_from_spec,
    which treats both alike (a scalar or a comma-separated string where a list is expected)."""

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


_INGEST_EXAMPLE = """care-ray ingest export.csv --out corpus \\
    --map session=conv_id --map role=speaker --map text=utterance \\
    --map order=turn_no --map client_values=patient \\
    --map counselor_values=therapist --map strategy=therapist_code \\
    --map reaction=patient_code --map metadata=quality_flag,topic"""


def _ingest_help() -> str:
    """The ingest command's help: every mapping key with its description, from TurnsMapping itself."""
    from care_ray.ingest import mapping_help

    keys = "\n".join(f"  {line}" for line in mapping_help().splitlines())
    return (
        "Read sessions, validate them against the contract, write sessions/ + quarantine/ + manifest.json.\n\n"
        "The format is inferred from the input (.csv/.tsv: turns-csv; JSON: esconv, sessions-jsonl or turns-jsonl by "
        "the first record) unless --format is given. Turn-per-row exports need a mapping: --map KEY=COLUMN per key "
        "(list keys take COL1,COL2), or the same keys in a --mapping YAML file. Columns no key names are not kept; "
        "the summary lists them.\n\n"
        f"Mapping keys (each takes a column name unless marked value):\n{keys}\n\n"
        f"Example, an utterance-per-row CSV:\n  {_INGEST_EXAMPLE}\n\n"
        "Ends with a summary (written, quarantined by reason, dropped turns, unmapped label values, columns not kept) "
        "and the manifest path; exits 1 when nothing was written."
    )


def _default_null_values() -> str:
    from care_ray.ingest import DEFAULT_NULL_VALUES

    return ",".join(v for v in DEFAULT_NULL_VALUES if v)


def _ingest_values(fmt: str, null_values: str | None, map_values: Path | None, mapping):
    """LabelValues from --null-values and --map-values (turn-per-row formats only)."""
    from care_ray.ingest import LabelValues
    from care_ray.ingest.mapping import load_value_maps, parse_null_values

    if not fmt.startswith("turns-"):
        if null_values is not None or map_values is not None:
            raise UserError(
                f"--null-values/--map-values apply to turns-csv and turns-jsonl, not {fmt}"
            )
        return None
    return LabelValues(
        null_values=parse_null_values(null_values),
        maps=load_value_maps(map_values, mapping) if map_values else {},
    )


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"care-ray {version('care-ray')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="debug logging (may include record origins, never transcript text)",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from care_ray.model_check import go_offline

    go_offline()  # before any command can import a hub client


@app.command(help=_ingest_help())
def ingest(
    inputs: Annotated[list[Path], typer.Argument(help="input files or folders")],
    out: Annotated[Path, typer.Option("--out", help="corpus folder to write")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="esconv | turns-csv | turns-jsonl | sessions-jsonl (default: inferred from the input)",
        ),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="turns-*: KEY=COLUMN, repeated; the keys are listed above, e.g. --map "
            "session=conv_id --map metadata=topic,quality_flag",
        ),
    ] = None,
    mapping_file: Annotated[
        Path | None,
        typer.Option(
            "--mapping",
            help="turns-*: the mapping as a YAML file (the same keys and values as --map)",
        ),
    ] = None,
    empty_turns: Annotated[
        str,
        typer.Option(
            help="a turn with blank text: drop it (counted in the manifest and the session's "
            "metadata.dropped_turns) or quarantine its whole session"
        ),
    ] = "drop",
    null_values: Annotated[
        str | None,
        typer.Option(
            help="turns-*: comma-separated values meaning 'no label' in strategy, reaction, "
            "rating, labels and WAI columns, case-insensitive; blank always counts; a list "
            "given replaces the defaults (default: " + _default_null_values() + ")"
        ),
    ] = None,
    map_values: Annotated[
        Path | None,
        typer.Option(
            help="turns-*: YAML {role|strategy|reaction or its column: {raw value: canonical "
            "value}}; values it does not list are reported in the summary and manifest"
        ),
    ] = None,
    source: Annotated[
        str | None, typer.Option(help="override the source name (the partition key)")
    ] = None,
    chunk_size: Annotated[
        int, typer.Option(help="sessions per written part; bounds memory")
    ] = 1000,
    mode: Annotated[
        str,
        typer.Option(
            help="when --out already holds a corpus: create (refuse), append (add new sources; "
            "ids already there are duplicates), overwrite (replace it)"
        ),
    ] = "create",
    json_: Annotated[
        bool,
        typer.Option(
            "--json", help="print the full manifest as JSON on stdout (the summary goes to stderr)"
        ),
    ] = False,
) -> None:
    """Read sessions, validate them against the contract, write sessions/ + quarantine/ + manifest.json."""
    from care_ray.ingest import (
        FORMATS,
        MappingError,
        infer_format,
        ingest_files,
        ingest_summary,
        mapping_from_spec,
        nothing_written,
    )

    if fmt is not None and fmt not in FORMATS:
        _fail(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    mapping = None
    try:
        fmt = fmt or infer_format(inputs)
        if fmt.startswith("turns-"):
            mapping = mapping_from_spec(_parse_map(map_ or [], mapping_file))
        elif map_ or mapping_file:
            raise UserError(
                f"--map/--mapping apply to turns-csv and turns-jsonl, not {fmt} (pass --format "
                f"if the input was taken for {fmt})"
            )
        values = _ingest_values(fmt, null_values, map_values, mapping)
        manifest = ingest_files(
            fmt,
            inputs,
            out,
            mapping=mapping,
            chunk_size=chunk_size,
            source=source,
            mode=mode,
            empty_turns=empty_turns,
            values=values,
        )
    except (UserError, MappingError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    summary = ingest_summary(manifest, out)
    if json_:
        typer.echo(summary, err=True)
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
    else:
        typer.echo(summary)
    why = nothing_written(manifest, out)
    if why:
        typer.secho(f"error: {why}", fg="red", err=True)
        raise typer.Exit(1)


@app.command()
def validate(
    corpus: Annotated[Path, typer.Argument(help="a corpus folder written by `care-ray ingest`")],
) -> None:
    """Check a corpus against the session contract and its manifest; print a summary."""
    from care_ray.corpus import validate_corpus

    try:
        summary = validate_corpus(corpus)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    if not summary["ok"]:
        raise typer.Exit(1)


@app.command()
def export(
    corpus: Annotated[Path, typer.Argument(help="a corpus folder")],
    out: Annotated[Path, typer.Option("--out", help="sessions-jsonl file to write")],
) -> None:
    """Write a corpus as sessions-jsonl (one session per line in the contract; `ingest --format
    sessions-jsonl` reads it back)."""
    from care_ray.corpus import export_sessions_jsonl

    try:
        n = export_sessions_jsonl(corpus, out)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(f"wrote {n} sessions to {out}")


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Option("--out", help="folder for the model")],
    seed: Annotated[int, typer.Option()] = 0,
    max_len: Annotated[int, typer.Option(help="max positions")] = 4096,
) -> None:
    """Build a tiny random Llama (+ local tokenizer, chat template) for tests and cluster smoke runs."""
    from care_ray.tiny_model import build_tiny_model

    path = build_tiny_model(out, seed=seed, max_position_embeddings=max_len)
    typer.echo(f"tiny model written to {path}")


def _d(field: str) -> str:
    """' [default: X]' from ScoreConfig, so --help shows the value a run really gets (the options
    themselves default to None: a --config file fills what the command line leaves out)."""
    from care_ray.scoring import ScoreConfig

    info = ScoreConfig.model_fields[field]
    value = info.get_default(call_default_factory=True)
    return (
        ""
        if value is None
        else f" \\[default: {str(value).lower() if isinstance(value, bool) else value}]"
    )  # \\[: not rich markup


@app.command()
def score(
    sessions: Annotated[
        str | None,
        typer.Option(
            help="corpus folder written by `care-ray ingest`, a local path or an object-store URI (required)"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="model folder: config.json, safetensors, tokenizer, chat template (required; never a hub id)"
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            help="output folder (items/, sessions/, errors/, manifest.json, fingerprint.json), "
            "a local path or an s3://, gs:// URI; rerun to resume (required)"
        ),
    ] = None,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors)"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", help="YAML with the same keys as these options (unknown keys are refused)"
        ),
    ] = None,
    items: Annotated[
        str | None,
        typer.Option(help="all | goal | task | bond | item ids '1,2,10'" + _d("items") + " (all)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="score the first N sessions of the corpus, in corpus order")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="vllm | hf (transformers fallback)" + _d("engine"))
    ] = None,
    num_engines: Annotated[
        int | None, typer.Option(help="engine replicas (Ray actors)" + _d("num_engines"))
    ] = None,
    gpus_per_engine: Annotated[
        float | None, typer.Option(help="GPUs per replica (0 = CPU)" + _d("gpus_per_engine"))
    ] = None,
    cpus_per_engine: Annotated[
        float | None,
        typer.Option(
            help="logical CPUs per replica \\[default: fit the node so read/write tasks keep a share]"
        ),
    ] = None,
    engine_resources: Annotated[
        str | None,
        typer.Option(
            help="Ray custom resources per replica as JSON, e.g. '{\"engine_node\": 1}': engines "
            "run only on nodes started with them (`ray start --resources`); placement only, "
            "not part of the run's fingerprint"
        ),
    ] = None,
    tensor_parallel_size: Annotated[
        int | None,
        typer.Option(
            "--tensor-parallel",
            help="tensor parallel degree per replica" + _d("tensor_parallel_size"),
        ),
    ] = None,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            help="context length; longer sessions lose their middle turns" + _d("max_model_len")
        ),
    ] = None,
    max_new_tokens: Annotated[
        int | None,
        typer.Option(
            help="token budget per answer (a failed answer is retried once with twice this)"
            + _d("max_new_tokens")
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0 = greedy" + _d("temperature"))
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            help="answers per item; > 1 gives a spread and needs --temperature > 0" + _d("samples")
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="sampling seed" + _d("seed"))] = None,
    language: Annotated[
        str | None,
        typer.Option(
            help="score every session with this language's rubric (en | zh) \\[default: each "
            "session's own language, as sft-data does]"
        ),
    ] = None,
    rubric: Annotated[
        Path | None,
        typer.Option(help="your own rubric YAML (see schemas/rubrics/) for every session"),
    ] = None,
    max_rationale_chars: Annotated[
        int | None,
        typer.Option(
            help="bound each rationale (guided decoding; a longer answer is an error row)"
        ),
    ] = None,
    max_quotes: Annotated[
        int | None, typer.Option(help="at most this many quotes per answer")
    ] = None,
    max_quote_chars: Annotated[int | None, typer.Option(help="bound each quote's length")] = None,
    score_only: Annotated[
        bool | None,
        typer.Option(
            "--score-only/--with-rationale",
            help="answers are {score} alone (models trained with --target score) \\[default: with-rationale]",
        ),
    ] = None,
    dtype: Annotated[
        str | None,
        typer.Option(
            help="weights dtype: auto | float32 | bfloat16 | float16 (auto = float32 on CPU)"
            + _d("dtype")
        ),
    ] = None,
    enable_prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--prefix-caching/--no-prefix-caching",
            help="reuse the shared transcript's KV cache across a session's items \\[default: prefix-caching]",
        ),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option(help="KV cache block size \\[default: 32 on CPU, the engine's own on GPU]"),
    ] = None,
    align_prefix_blocks: Annotated[
        bool | None,
        typer.Option(
            "--align-prefix-blocks",
            help="pad the part a session's prompts share to a KV block boundary (newline tokens "
            "after the transcript) so later prompts recompute only their item; off by default: "
            "a model fine-tuned by care-ray was trained without the padding",
        ),
    ] = None,
    kv_cache_gib: Annotated[
        float | None, typer.Option(help="KV cache GiB per CPU engine" + _d("kv_cache_gib"))
    ] = None,
    max_num_seqs: Annotated[
        int | None, typer.Option(help="sequences an engine batches at once" + _d("max_num_seqs"))
    ] = None,
    sessions_per_block: Annotated[
        int | None,
        typer.Option(
            help="sessions per Ray Data block (12 prompts each)" + _d("sessions_per_block")
        ),
    ] = None,
    prompt_workers: Annotated[
        int | None,
        typer.Option(
            help="prompt-building actors (each holds the tokenizer)" + _d("prompt_workers")
        ),
    ] = None,
    trust_remote_code: Annotated[
        bool | None,
        typer.Option(
            "--trust-remote-code",
            help="run the model folder's own Python code (off unless you set it)",
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: 'auto', host:port or ray://… \\[default: the job's "
            "cluster under `ray job submit`, else a private local Ray]"
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="a progress bar on stderr \\[default: progress]"
        ),
    ] = None,
    retry_errors: Annotated[
        str | None,
        typer.Option(
            help="re-score the pairs in errors/: 'all' or reasons (truncated, invalid_json, "
            "schema_violation, engine_error)"
        ),
    ] = None,
    overwrite: Annotated[
        bool | None,
        typer.Option(
            "--overwrite",
            help="discard what --out holds and start over (a rerun with another configuration is refused without it)",
        ),
    ] = None,
    shared_filesystem: Annotated[
        bool | None,
        typer.Option(
            "--shared-filesystem",
            help="a local --out is one filesystem mounted on every node (else a multi-node run "
            "needs an object-store URI)",
        ),
    ] = None,
) -> None:
    """Score every session × WAI-SR item with an LLM on Ray Data + vLLM.

    Rerun with the same --out to resume: pairs already in items/ or errors/ are skipped. The folder records a fingerprint of everything that changes results (model and adapter contents, rubric, prompt version, sampling, output bounds, token budget); a rerun with other settings is refused."""  # noqa: E501 - Typer keeps line breaks
    given = {k: v for k, v in locals().items() if k != "config"}
    cfg = load_options(_score_config_cls(), config, given)
    from care_ray.paths import refuse_relative_in_job
    from care_ray.scoring import score_corpus

    try:
        refuse_relative_in_job(
            {
                "--sessions": cfg.sessions,
                "--model": cfg.model,
                "--out": cfg.out,
                "--adapter": cfg.adapter,
                "--rubric": cfg.rubric,
            }
        )
        manifest = score_corpus(cfg)
    except (FileNotFoundError, ValueError) as e:  # FingerprintMismatch is a ValueError
        _fail(str(e))
    typer.echo(
        json.dumps({k: v for k, v in manifest.items() if k not in ("config", "versions")}, indent=2)
    )
    if manifest["items_scored"] == 0 and manifest["items_in"] > 0:
        raise typer.Exit(1)


@app.command()
def demo(
    out: Annotated[
        Path,
        typer.Option(help="folder for the model, corpus, scores, evaluation, analyses and report"),
    ] = Path("demo-out"),
    sessions: Annotated[int, typer.Option(help="ESConv sessions to score")] = 16,
    esconv: Annotated[
        Path | None,
        typer.Option(help="ESConv folder (default: ../shared/data/esconv or $CARE_RAY_ESCONV)"),
    ] = None,
) -> None:
    """The whole pipeline on local Ray: tiny model → ingest ESConv → score a sample → evaluate →
    analyze → report.html (its path is the last line printed)."""
    from care_ray.demo import run_demo

    try:
        summary = run_demo(
            out, sessions=sessions, esconv=esconv, progress=lambda line: typer.echo(line, err=True)
        )
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2, default=str), err=True)
    typer.echo(summary["report"])


def _score_config_cls():
    from care_ray.scoring import ScoreConfig

    return ScoreConfig


from care_ray.training.cli import register as _register_training  # noqa: E402

_register_training(app)
from care_ray.analytics.cli import register as _register_analytics  # noqa: E402

_register_analytics(app)
from care_ray.report_cli import register as _register_report  # noqa: E402

_register_report(app)
from care_ray.evaluation_cli import register as _register_evaluation  # noqa: E402

_register_evaluation(app)
from care_ray.plan_cli import register as _register_plan  # noqa: E402

_register_plan(app)
from care_ray.rationales.cli import register as _register_rationales  # noqa: E402

_register_rationales(app)


def run() -> None:  # pragma: no cover - console entry for `python -m care_ray`
    app(prog_name="care-ray")


if __name__ == "__main__":  # pragma: no cover
    run()
