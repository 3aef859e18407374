"""`care-ray evaluate`: agreement of a scoring run with the clients' own ratings (or a proxy);
`care-ray baseline`: the lexical baseline a model must beat, written as a scores folder."""

from __future__ import annotations

import json

import typer

from care_ray.cli.options import command
from care_ray.evaluation.baseline import BaselineConfig
from care_ray.evaluation.evaluate import EvaluateConfig


def evaluate_command(cfg: EvaluateConfig) -> None:
    from care_ray.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(cfg)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


def baseline_command(cfg: BaselineConfig) -> None:
    from care_ray.evaluation.baseline import run_baseline

    manifest = run_baseline(cfg)
    summary = {
        "scores": str(cfg.out),
        "mode": manifest["mode"],
        "counts": manifest["counts"],
        "folds": manifest.get("folds", {}).get("source"),
        "alphas": {f"{f['target']}@{f['fold']}": f["alpha"] for f in manifest["fits"]},
        "scored": manifest.get("scored"),
        "seconds": manifest["seconds"],
        "next": None
        if cfg.score is not None
        else f"care-ray evaluate --scores {cfg.out} --sessions {cfg.sessions} "
        + " ".join(f"--truth {t}" for t in cfg.truth)
        + f" --folds {cfg.out} --out EVAL_DIR",
    }
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    command(app, "evaluate", EvaluateConfig, evaluate_command)
    command(app, "baseline", BaselineConfig, baseline_command)
