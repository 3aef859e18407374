"""`care-ray evaluate`: agreement of a scoring run with the clients' own ratings (or a proxy)."""

from __future__ import annotations

import json

import typer

from care_ray.cli.options import command
from care_ray.evaluation.evaluate import EvaluateConfig


def evaluate_command(cfg: EvaluateConfig) -> None:
    from care_ray.evaluation.evaluate import evaluate_run

    metrics = evaluate_run(cfg)
    typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    command(app, "evaluate", EvaluateConfig, evaluate_command)
