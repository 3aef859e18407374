"""`care-ray report`: one self-contained report.html from evaluate and analyze folders."""

from __future__ import annotations

import typer

from care_ray.cli.options import command
from care_ray.report import ReportConfig


def report_command(cfg: ReportConfig) -> None:
    from care_ray.report import write_report

    path = write_report(cfg.out, evaluation=cfg.evaluation, analyses=cfg.analysis, title=cfg.title)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    command(app, "report", ReportConfig, report_command)
