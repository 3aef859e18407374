"""`care-ray sft-data` and `care-ray finetune` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from care_ray.cli_errors import fail as _fail


def register(app: typer.Typer) -> None:
    """Add the training commands to `app`."""

    @app.command("sft-data")
    def sft_data(
        sessions: Annotated[
            str,
            typer.Option(
                "--sessions",
                help="a corpus folder written by `care-ray ingest`, a local path or a URI",
            ),
        ],
        out: Annotated[
            str,
            typer.Option(
                "--out",
                help="folder for examples.parquet + manifest.json, a local path or an s3://, "
                "gs:// URI",
            ),
        ],
        target: Annotated[
            str, typer.Option(help="score+rationale (CARE) | score (the ablation)")
        ] = "score+rationale",
        folds: Annotated[
            int, typer.Option(help="client-disjoint folds, stratified on the session's mean score")
        ] = 5,
        label_map: Annotated[
            list[str] | None,
            typer.Option(
                "--label-map",
                help="proxy targets for sessions without client_wai: "
                "LABEL=DIMENSIONS_OR_ITEMS, repeatable (default ESConv: empathy=bond "
                "relevance=goal,task)",
            ),
        ] = None,
        items: Annotated[
            str | None, typer.Option(help="rubric items: all | a dimension | ids such as 1,3,4")
        ] = None,
        rubric: Annotated[
            Path | None, typer.Option(help="rubric file; default: the session's language")
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(
                help="model folder whose tokenizer applies scoring's token budget (with --max-model-len)"
            ),
        ] = None,
        max_model_len: Annotated[
            int | None,
            typer.Option(
                help="cut long transcripts exactly as `care-ray score` does at this context length"
            ),
        ] = None,
        max_new_tokens: Annotated[
            int, typer.Option(help="the answer's token reserve in that budget (same as scoring's)")
        ] = 512,
        align_prefix_blocks: Annotated[
            int | None,
            typer.Option(
                "--align-prefix-blocks",
                help="train on prompts whose shared part is padded to this KV block size, as "
                "`score --align-prefix-blocks --block-size N` sends them (needs --model and "
                "--max-model-len)",
            ),
        ] = None,
        max_sessions: Annotated[
            int | None,
            typer.Option(help="a deterministic sample of this many sessions (smoke runs)"),
        ] = None,
        seed: Annotated[int, typer.Option()] = 123,
        rationales: Annotated[
            str | None,
            typer.Option(
                help="a `care-ray rationales draft` folder: its reviewed rationales become targets"
            ),
        ] = None,
        drafts: Annotated[
            str,
            typer.Option(
                help="unreviewed drafts of --rationales as targets too: none | unflagged | all"
            ),
        ] = "none",
        missing_rationale: Annotated[
            str,
            typer.Option(
                help="a target no source gives a rationale: skip (counted in the manifest) | "
                "template (a fixed sentence naming the rating) | error"
            ),
        ] = "skip",
        rationale_key: Annotated[
            str, typer.Option(help="metadata key of reference rationales; {item} = item id")
        ] = "rationale_{item}",
        feedback_key: Annotated[
            str,
            typer.Option(help="metadata key of the client's free-text feedback (proxy rationales)"),
        ] = "seeker_question1",
    ) -> None:
        """Build chat-format SFT examples, one per (session, item), with client-disjoint folds."""
        from care_ray.training.sft_data import (
            SFTDataError,
            SFTOptions,
            make_sft_data,
            parse_label_map,
        )

        try:
            if model is not None:
                from care_ray.model_check import check_model_folder

                check_model_folder(model, need_weights=False)  # sft-data reads only its tokenizer
            if label_map is not None:
                from care_ray.rubric import load_rubric

                parse_label_map(
                    label_map, load_rubric(rubric) if rubric else load_rubric()
                )  # fail fast on a typo
                spec = {
                    k.strip(): v.strip() for k, v in (entry.split("=", 1) for entry in label_map)
                }
            else:
                spec = None
            opts = SFTOptions(
                target=target,
                folds=folds,
                seed=seed,
                label_map=spec,
                items=items,
                rationale_key=rationale_key,
                feedback_key=feedback_key,
                max_sessions=max_sessions,
                drafts=drafts,
                missing_rationale=missing_rationale,
            )
            manifest = make_sft_data(
                sessions,
                out,
                opts,
                rubric_path=rubric,
                tokenizer_path=model,
                max_model_len=max_model_len,
                max_new_tokens=max_new_tokens,
                rationales_dir=rationales,
                align_to=align_prefix_blocks,
            )
        except (SFTDataError, FileNotFoundError, ValueError, OSError) as e:
            _fail(str(e))
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))

    @app.command("finetune")
    def finetune(
        config: Annotated[
            Path, typer.Option("--config", help="YAML config (see configs/finetune-*.yaml)")
        ],
        set_: Annotated[
            list[str] | None,
            typer.Option(
                "--set",
                help="override a setting of the config: KEY=VALUE, KEY dotted (lora.r=32), "
                "VALUE as in YAML (folds=[0]); repeatable",
            ),
        ] = None,
        out: Annotated[
            str | None,
            typer.Option(
                "--out",
                help="one folder for the run: output_dir = OUT, storage_path = OUT/ray-results; "
                "a local path or an s3://, gs:// URI",
            ),
        ] = None,
    ) -> None:
        """Rationale-augmented SFT on Ray Train (LoRA or full), one run per held-out fold; the best
        checkpoint by held-out Pearson r is written as a PEFT adapter folder (LoRA) or a model folder
        (full) with metrics.json."""
        from care_ray.model_check import check_model_folder
        from care_ray.paths import refuse_relative_in_job
        from care_ray.training.config import (
            ConfigError,
            load_finetune_config,
            out_overrides,
            parse_overrides,
        )
        from care_ray.training.trainer import held_out_folds, run_finetune

        try:
            overrides = parse_overrides(set_ or [])
            if out is not None:
                clash = sorted(
                    k for k in overrides if k.split(".")[0] in ("output_dir", "storage_path")
                )
                if clash:
                    raise ConfigError(
                        f"--out sets output_dir and storage_path; drop --set {clash[0]} or --out"
                    )
                overrides = {**out_overrides(out), **overrides}
            cfg = load_finetune_config(config, overrides, origin="--set")
            # under `ray job submit` a relative path would resolve in Ray's temporary copy of the working dir
            refuse_relative_in_job(
                {
                    f"{config}: {key}": getattr(cfg, key)
                    for key in ("model", "data", "output_dir", "storage_path", "rubric")
                }
            )
            held_out_folds(cfg)  # the data exists and has the configured folds
            check_model_folder(cfg.model, option=f"{config}: model")
        except (ConfigError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        from care_ray.scoring import MissingClusterResources

        try:
            summary = run_finetune(cfg)
        except MissingClusterResources as e:  # found once Ray is up: still one line, not a trace
            _fail(str(e))
        typer.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
