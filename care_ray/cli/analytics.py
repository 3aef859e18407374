"""`care-ray analyze`: findings from a corpus and its scores (or its own labels); `care-ray cards`:
one feedback card per counselor."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from care_ray.analytics.analyze import AnalyzeConfig
from care_ray.analytics.cards import CardsConfig
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


def cards_command(cfg: CardsConfig) -> None:
    from care_ray.report.cards import write_card_set

    if not cfg.sessions.exists():
        raise UserError(f"corpus not found: {cfg.sessions}")
    if cfg.scores is not None and "://" not in cfg.scores and not Path(cfg.scores).exists():
        raise UserError(f"scores not found: {cfg.scores}")
    if cfg.analysis is not None and not cfg.analysis.is_dir():
        raise UserError(f"analysis not found: {cfg.analysis}")
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"--out {cfg.out} exists and is not a folder")
    n_cards, mode, index = write_card_set(cfg)
    typer.echo(f"{n_cards} cards ({mode}); index: {index}")


def register(app: typer.Typer) -> None:
    command(app, "analyze", AnalyzeConfig, analyze_command)
    command(app, "cards", CardsConfig, cards_command)
