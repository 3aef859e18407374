"""`care-ray score` and `care-ray plan`: score a corpus, or size the run before it starts."""

from __future__ import annotations

import json

import typer

from care_ray.cli.options import command
from care_ray.scoring.config import ScoreConfig
from care_ray.scoring.plan import PlanConfig


def score_command(cfg: ScoreConfig) -> None:
    from care_ray.cluster.jobs import refuse_relative_in_job
    from care_ray.scoring.pipeline import score_corpus

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
    shown = {k: v for k, v in manifest.items() if k not in ("config", "versions")}
    typer.echo(json.dumps(shown, indent=2))
    if manifest["items_scored"] == 0 and manifest["items_in"] > 0:
        raise typer.Exit(1)


def plan_command(cfg: PlanConfig) -> None:
    from care_ray.scoring.plan import default_tokens, estimate, measure_corpus_tokens, plan_table

    if cfg.corpus is None:
        tokens = default_tokens(cfg.output_tokens)
    else:
        tokenizer = None
        if cfg.model is not None:
            from care_ray.models.checks import check_model_folder
            from care_ray.scoring.prompts import load_tokenizer

            check_model_folder(cfg.model, need_weights=False)  # its tokenizer and template only
            tokenizer = load_tokenizer(str(cfg.model))
        defaults = ScoreConfig.model_fields
        tokens = measure_corpus_tokens(
            cfg.corpus,
            sample=cfg.sample,
            seed=cfg.seed,
            tokenizer=tokenizer,
            tokenizer_name=cfg.model,
            chars_per_token=cfg.chars_per_token,
            max_model_len=cfg.max_model_len or defaults["max_model_len"].default,
            max_new_tokens=cfg.max_new_tokens or defaults["max_new_tokens"].default,
            block_size=cfg.block_size,
            output_tokens_per_item=cfg.output_tokens,
        )
    result = estimate(
        cfg.sessions, tokens, gpu=cfg.gpu, gpus=cfg.gpus, price_usd_per_gpu_hour=cfg.price
    )
    typer.echo(json.dumps(result.to_dict(), indent=2) if cfg.print_json else plan_table(result))


def register(app: typer.Typer) -> None:
    command(app, "score", ScoreConfig, score_command)
    command(app, "plan", PlanConfig, plan_command)
