"""`care-ray evaluate` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from care_ray.cli_errors import fail as _fail


def register(app: typer.Typer) -> None:
    """Add the evaluation command to `app`."""

    @app.command("evaluate")
    def evaluate(
        scores: Annotated[
            str,
            typer.Option(
                "--scores",
                help="a scoring run folder (`care-ray score --out`): sessions/, else items/",
            ),
        ],
        sessions: Annotated[
            str,
            typer.Option("--sessions", help="the corpus folder that was scored, a path or a URI"),
        ],
        out: Annotated[
            Path,
            typer.Option(
                "--out",
                help="folder for metrics.json, pairs/agreement/calibration.parquet, calibration.svg",
            ),
        ],
        truth: Annotated[
            list[str] | None,
            typer.Option(
                "--truth",
                help="what to compare with, repeatable: client_wai (default: the client's own "
                "WAI-SR, dimension = mean of its rated items) "
                "or labels.NAME=DIMENSION[,DIMENSION] (a numeric session label stands for "
                "those dimensions, e.g. --truth labels.empathy=bond "
                "--truth labels.relevance=goal,task); labels.NAME alone compares NAME with "
                "every dimension. The counselor baseline "
                "(counselor_wai, where present) is compared with the same truth",
            ),
        ] = None,
        folds: Annotated[
            Path | None,
            typer.Option(
                "--folds",
                help="an sft-data folder (or its examples.parquet): per-fold metrics and mean ± SD",
            ),
        ] = None,
        fold_key: Annotated[
            str | None,
            typer.Option(
                "--fold-key", help="a session metadata key that holds the fold (instead of --folds)"
            ),
        ] = None,
        resamples: Annotated[
            int, typer.Option(help="bootstrap resamples for the intervals (0 = none)")
        ] = 1000,
        seed: Annotated[int, typer.Option(help="bootstrap and sampling seed")] = 123,
        level: Annotated[float, typer.Option(help="confidence level of the intervals")] = 0.95,
        bootstrap_max_n: Annotated[
            int,
            typer.Option(
                help="above this many sessions in a cell, bootstrap a seeded subsample and "
                "rescale the interval by sqrt(subsample/n)"
            ),
        ] = 2000,
        fold_intervals: Annotated[
            bool,
            typer.Option(
                "--fold-intervals",
                help="bootstrap intervals for each fold's rows too (default: overall rows only)",
            ),
        ] = False,
        bin_width: Annotated[
            float, typer.Option(help="width of the predicted-score bins of the calibration table")
        ] = 0.5,
        rubric: Annotated[
            Path | None,
            typer.Option(help="rubric file (item → dimension); default: the English WAI-SR"),
        ] = None,
        rationale_key: Annotated[
            str, typer.Option(help="session metadata key of reference rationales; {item} = item id")
        ] = "rationale_{item}",
        rationale_max_pairs: Annotated[
            int,
            typer.Option(
                help="ROUGE on at most this many (session, item) rationale pairs (a seeded sample)"
            ),
        ] = 2000,
    ) -> None:
        """Agreement of a scoring run's dimension scores with the client's own ratings (or a proxy label):
        Pearson r, Spearman rho and MSE with bootstrap intervals, the counselor baseline and the
        model ÷ counselor ratio, per-fold mean ± SD, calibration, quote and rationale checks."""
        from pydantic import ValidationError

        from care_ray.evaluate import EvaluateConfig, EvaluateError, evaluate_run

        try:
            config = EvaluateConfig(
                scores=scores,
                sessions=sessions,
                out=out,
                truth=truth or ["client_wai"],
                folds=folds,
                fold_key=fold_key,
                resamples=resamples,
                seed=seed,
                level=level,
                bootstrap_max_n=bootstrap_max_n,
                fold_intervals=fold_intervals,
                bin_width=bin_width,
                rubric=rubric,
                rationale_key=rationale_key,
                rationale_max_pairs=rationale_max_pairs,
            )
        except ValidationError as e:
            from care_ray.cli_errors import validation_message

            _fail(validation_message(e))
        try:
            metrics = evaluate_run(config)
        except (EvaluateError, FileNotFoundError) as e:
            _fail(str(e))
        typer.echo(json.dumps(metrics, indent=2, ensure_ascii=False))
