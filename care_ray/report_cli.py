"""`care-ray report` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from care_ray.cli_errors import fail as _fail


def register(app: typer.Typer) -> None:
    """Add the report command to `app`."""

    @app.command("report")
    def report(
        out: Annotated[Path, typer.Option("--out", metavar="DIR", help="folder for report.html")],
        evaluation: Annotated[
            Path | None,
            typer.Option(
                "--evaluation", metavar="DIR", help="a folder written by `care-ray evaluate`"
            ),
        ] = None,
        analysis: Annotated[
            list[Path] | None,
            typer.Option(
                "--analysis",
                metavar="DIR",
                help="a folder written by `care-ray analyze`; repeatable",
            ),
        ] = None,
        title: Annotated[
            str | None, typer.Option("--title", metavar="TEXT", help="the page's title")
        ] = None,
    ) -> None:
        """One self-contained report.html (inline plots, tables, a sentence per finding) from
        evaluate/analyze output; prints its path."""
        from care_ray.report import ReportError, write_report

        try:
            path = write_report(out, evaluation=evaluation, analyses=analysis or [], title=title)
        except (ReportError, OSError) as e:
            _fail(str(e))
        typer.echo(str(path))
