"""`care-ray rationales draft | export | import` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from care_ray.cli_errors import fail as _fail
from care_ray.cli_errors import load_options


def register(app: typer.Typer) -> None:
    """Add the `rationales` command group to `app`."""
    group = typer.Typer(
        help="Teacher-drafted rationales for rated sessions, reviewed by experts, for sft-data.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="rationales")

    @group.command(
        "draft",
        help=(
            "Draft one rationale per rated (session, item) with a teacher model, for review. "
            "The teacher is given the client's rating (client_wai, or a proxy label through "
            "--label-map) and explains it in the client's voice with quotes; drafts whose "
            "quotes are not in the transcript or that argue for another score are flagged, "
            "not dropped."
        ),
    )
    def draft(
        sessions: Annotated[
            str | None,
            typer.Option(help="corpus folder written by `care-ray ingest` (required)"),
        ] = None,
        teacher: Annotated[
            str | None,
            typer.Option(help="the teacher model folder: safetensors, tokenizer, chat template"),
        ] = None,
        out: Annotated[
            str | None,
            typer.Option(help="output folder (drafts.parquet, items/, errors/); rerun to resume"),
        ] = None,
        label_map: Annotated[
            list[str] | None,
            typer.Option(
                "--label-map",
                help="ratings for sessions without client_wai: LABEL=DIMENSIONS_OR_ITEMS, "
                "repeatable \\[default: ESConv's empathy=bond relevance=goal,task]",
            ),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option(
                "--config",
                help="YAML with `care-ray score`'s keys for the engine (num_engines, "
                "gpus_per_engine, max_model_len, ...) plus label_map",
            ),
        ] = None,
        items: Annotated[
            str | None, typer.Option(help="all | goal | task | bond | '1,2,10'")
        ] = None,
        limit: Annotated[
            int | None, typer.Option(help="draft the first N rated sessions, in corpus order")
        ] = None,
        num_engines: Annotated[
            int | None, typer.Option(help="engine replicas (Ray actors)")
        ] = None,
        gpus_per_engine: Annotated[
            float | None, typer.Option(help="GPUs per replica (0 = CPU)")
        ] = None,
        max_model_len: Annotated[int | None, typer.Option(help="context length")] = None,
        max_new_tokens: Annotated[
            int | None, typer.Option(help="token budget per draft \\[default: 512]")
        ] = None,
        max_rationale_chars: Annotated[
            int | None, typer.Option(help="bound each draft (guided decoding)")
        ] = None,
        temperature: Annotated[float | None, typer.Option(help="0 = greedy")] = None,
        retry_errors: Annotated[
            str | None, typer.Option(help="re-draft the pairs in errors/: 'all' or reasons")
        ] = None,
        overwrite: Annotated[
            bool | None, typer.Option("--overwrite", help="discard what --out holds, start over")
        ] = None,
        ray_address: Annotated[str | None, typer.Option(help="Ray cluster to join")] = None,
        progress: Annotated[
            bool | None, typer.Option("--progress/--no-progress", help="a progress bar on stderr")
        ] = None,
    ) -> None:
        given = {k: v for k, v in locals().items() if k not in ("config", "teacher", "label_map")}
        given["model"] = teacher
        from care_ray.paths import refuse_relative_in_job
        from care_ray.rationales.draft import DraftConfig, draft_corpus

        if label_map is not None:
            pairs = [entry.split("=", 1) for entry in label_map]
            bad = [entry for entry, pair in zip(label_map, pairs, strict=True) if len(pair) != 2]
            if bad:
                _fail(f"--label-map takes LABEL=DIMENSIONS_OR_ITEMS, got {bad[0]!r}")
            given["label_map"] = {k.strip(): v.strip() for k, v in pairs}
        cfg = load_options(DraftConfig, config, given)
        try:
            refuse_relative_in_job(
                {"--sessions": cfg.sessions, "--teacher": cfg.model, "--out": cfg.out}
            )
            manifest = draft_corpus(cfg)
        except (FileNotFoundError, ValueError) as e:
            _fail(str(e).replace("--model", "--teacher"))
        shown = ("kind", "sessions_in", "items_in", "items_scored", "items_errors", "drafts")
        summary = {k: manifest[k] for k in shown if k in manifest}
        summary["flagged"] = manifest.get("flagged")
        summary["flags"] = manifest.get("flags")
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))

    @group.command(
        "export",
        help=(
            "Write the review file: one row per draft with the dialogue around each quote and "
            "the reviewer's columns (decision accept|edit|reject, edited_text, reviewer, "
            "faithfulness, relevance, informativeness 1-5, comment)."
        ),
    )
    def export(
        drafts: Annotated[str, typer.Option("--drafts", help="a `rationales draft` output folder")],
        out: Annotated[Path, typer.Option("--out", help="the review file: .jsonl or .csv")],
        sessions: Annotated[
            str | None,
            typer.Option(help="the corpus the drafts came from \\[default: the draft run's]"),
        ] = None,
        only_flagged: Annotated[
            bool, typer.Option("--only-flagged", help="only drafts with a flag")
        ] = False,
        sample: Annotated[
            int | None,
            typer.Option(help="a seeded sample of N drafts (e.g. for a second reviewer's ratings)"),
        ] = None,
        seed: Annotated[int, typer.Option(help="the sample's seed")] = 0,
    ) -> None:
        from care_ray.rationales.review import ReviewError, export_review

        try:
            result = export_review(drafts, out, sessions, only_flagged, sample, seed)
        except (ReviewError, FileNotFoundError, OSError) as e:
            _fail(str(e))
        typer.echo(json.dumps(result, indent=2))

    @group.command(
        "import",
        help=(
            "Take reviewed files back: every row is checked first (nothing is written if any "
            "is wrong); decisions and ratings join the draft folder, a later import of a "
            "draft replacing an earlier one; counts per reviewer and rating agreement go to "
            "review.json."
        ),
    )
    def import_(
        drafts: Annotated[
            str, typer.Option("--drafts", help="the `rationales draft` folder reviewed")
        ],
        files: Annotated[list[Path], typer.Argument(help="review files (.jsonl or .csv)")],
        sessions: Annotated[
            str | None,
            typer.Option(help="the corpus the drafts came from \\[default: the draft run's]"),
        ] = None,
    ) -> None:
        from care_ray.rationales.review import ReviewError, import_reviews

        try:
            summary = import_reviews(drafts, files, sessions)
        except (ReviewError, FileNotFoundError, OSError) as e:
            _fail(str(e))
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))
