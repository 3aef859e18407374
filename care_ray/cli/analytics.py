"""`care-ray analyze`: findings from a corpus and its scores (or its own labels)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care_ray.analytics.analyze import AnalyzeConfig
from care_ray.cli.options import command
from care_ray.common.errors import UserError


def analyze_command(cfg: AnalyzeConfig) -> None:
    from care_ray.analytics.analyze import analyze

    if not cfg.sessions.exists():
        raise UserError(f"corpus not found: {cfg.sessions}")
    if cfg.scores is not None and "://" not in cfg.scores and not Path(cfg.scores).exists():
        raise UserError(f"scores not found: {cfg.scores}")
    manifest = analyze(cfg)
    typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    command(app, "analyze", AnalyzeConfig, analyze_command)
