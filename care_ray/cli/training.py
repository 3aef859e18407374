"""`care-ray sft-data` and `care-ray finetune`: examples with client-disjoint folds, then Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care_ray.cli.options import Derived, command
from care_ray.training.config import FinetuneConfig, out_overrides
from care_ray.training.sft_data import SFTDataConfig


def sft_data_command(cfg: SFTDataConfig) -> None:
    from care_ray.contracts.rubric import load_rubric
    from care_ray.training.sft_data import make_sft_data, parse_label_map

    if cfg.model is not None:
        from care_ray.models.checks import check_model_folder

        check_model_folder(cfg.model, need_weights=False)  # sft-data reads only its tokenizer
    if cfg.label_map is not None:  # a typo fails before the corpus is read
        parse_label_map(cfg.label_map, load_rubric(cfg.rubric) if cfg.rubric else load_rubric())
    manifest = make_sft_data(
        cfg.sessions,
        cfg.out,
        cfg,
        rubric_path=cfg.rubric,
        tokenizer_path=cfg.model,
        max_model_len=cfg.max_model_len,
        max_new_tokens=cfg.max_new_tokens,
        rationales_dir=cfg.rationales,
        align_to=cfg.align_prefix_blocks,
    )
    typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))


def finetune_command(cfg: FinetuneConfig, config_file: Path | None = None) -> None:
    from care_ray.cluster.jobs import refuse_relative_in_job
    from care_ray.models.checks import check_model_folder
    from care_ray.training.trainer import held_out_folds, run_finetune

    # under `ray job submit` a relative path would resolve in Ray's temporary copy of the working dir
    def option(key: str) -> str:
        return f"{config_file}: {key}" if config_file else f"--{key.replace('_', '-')}"

    refuse_relative_in_job(
        {
            option(k): getattr(cfg, k)
            for k in ("model", "data", "output_dir", "storage_path", "rubric")
        }
    )
    held_out_folds(cfg)  # the data exists and has the configured folds
    check_model_folder(cfg.model, option=option("model"))
    summary = run_finetune(cfg)
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False, default=str))


OUT = Derived(
    "--out",
    "one folder for the run: output_dir = OUT, storage_path = OUT/ray-results; a local path or "
    "an s3://, gs:// URI",
    ("output_dir", "storage_path"),
    out_overrides,
)


def register(app: typer.Typer) -> None:
    command(app, "sft-data", SFTDataConfig, sft_data_command)
    command(app, "finetune", FinetuneConfig, finetune_command, derived=[OUT])
