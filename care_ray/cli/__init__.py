"""cli: the `care-ray` Typer app. Every command is one module here that turns its options into a
config (one loader: YAML --config, flags, --set KEY=VALUE) and makes one library call; a user's
mistake is one line and exit 2.

May import: common, contracts, cluster, models, corpus, scoring, evaluation, rationales, training,
analytics, report (every room)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from care_ray.cli import analytics, corpus, demo, evaluation, rationales, report, scoring, training

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="care-ray: client-perceived alliance (WAI-SR) at corpus scale.",
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"care-ray {version('care-ray')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="debug logging (may include record origins, never transcript text)",
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from care_ray.cluster.offline import go_offline

    go_offline()  # before any command can import a hub client


# the pipeline's order: corpus, scoring, training, rationales, evaluation, analytics, report, demo
for group in (corpus, scoring, training, rationales, evaluation, analytics, report, demo):
    group.register(app)


def run() -> None:  # pragma: no cover - console entry for `python -m care_ray`
    app(prog_name="care-ray")


if __name__ == "__main__":  # pragma: no cover
    run()
