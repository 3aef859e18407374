"""`care-ray analyze` (registered on the main app by care_ray.cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from care_ray.analytics.analyze import BY_HELP, OUTCOME_HELP
from care_ray.cli_errors import fail as _fail


def register(app: typer.Typer) -> None:
    """Add the analyze command to `app`."""

    @app.command("analyze")
    def analyze_command(
        sessions: Annotated[
            Path, typer.Option("--sessions", help="corpus folder written by `care-ray ingest`")
        ],
        out: Annotated[
            Path, typer.Option("--out", help="folder for the Parquet tables and manifest.json")
        ],
        scores: Annotated[
            str | None,
            typer.Option(
                "--scores",
                help="a `care-ray score` run folder; without it the outcomes are session labels (model-free)",
            ),
        ] = None,
        outcome: Annotated[
            list[str] | None,
            typer.Option("--outcome", help=f"repeatable or comma-separated; {OUTCOME_HELP}"),
        ] = None,
        by: Annotated[
            list[str] | None,
            typer.Option(
                "--by",
                help=f"repeatable: contrast and break down by {BY_HELP}; population is always by source too",
            ),
        ] = None,
        vocabulary: Annotated[
            Path | None,
            typer.Option(
                "--vocabulary",
                help="YAML mapping label spellings: {strategy: {raw: canonical}, reaction: "
                "{raw: canonical}}; without it shares are compared within a source only",
            ),
        ] = None,
        low_threshold: Annotated[
            float,
            typer.Option(
                "--low-threshold",
                help="low = value <= this: the population's low_share per outcome and the "
                "low-scored items whose rationales make the challenges",
            ),
        ] = 2.0,
        min_sessions: Annotated[
            int,
            typer.Option(
                "--min-sessions", help="counselors with at least this many sessions are profiled"
            ),
        ] = 5,
        min_group: Annotated[
            int,
            typer.Option("--min-group", help="groups smaller than this are left out of contrasts"),
        ] = 5,
        alpha: Annotated[float, typer.Option("--alpha", help="intervals are 1 - alpha")] = 0.05,
        clusters: Annotated[
            int | None,
            typer.Option(
                "--clusters",
                help="rationale clusters per dimension (default: chosen automatically)",
            ),
        ] = None,
        max_docs: Annotated[
            int,
            typer.Option(
                "--max-docs", help="low-item rationales sampled per dimension for challenges"
            ),
        ] = 20000,
        seed: Annotated[int, typer.Option("--seed")] = 0,
        memory_limit: Annotated[
            str, typer.Option("--memory-limit", help="DuckDB memory limit, e.g. 3GB")
        ] = "3GB",
    ) -> None:
        """Findings from a corpus and its scores (or its own labels): population, counselor profiles,
        interaction features and transitions, drivers, group contrasts, challenges, trajectories."""
        from pydantic import ValidationError

        from care_ray.analytics.analyze import AnalysisError, AnalyzeConfig, analyze
        from care_ray.analytics.features import VocabularyError

        if not sessions.exists():
            _fail(f"corpus not found: {sessions}")
        if scores is not None and "://" not in scores and not Path(scores).exists():
            _fail(f"scores not found: {scores}")
        try:
            cfg = AnalyzeConfig(
                sessions=sessions,
                out=out,
                scores=scores,
                outcomes=outcome or [],
                by=by or [],
                vocabulary=vocabulary,
                low_threshold=low_threshold,
                min_sessions=min_sessions,
                min_group=min_group,
                alpha=alpha,
                clusters=clusters,
                max_docs=max_docs,
                seed=seed,
                memory_limit=memory_limit,
            )
            manifest = analyze(cfg)
        except ValidationError as e:
            _fail(
                "; ".join(
                    f"--{'.'.join(map(str, err['loc'])).replace('_', '-')}: {err['msg']}"
                    for err in e.errors()
                )
            )
        except (AnalysisError, VocabularyError, FileNotFoundError) as e:
            _fail(str(e))
        typer.echo(json.dumps(manifest, indent=2, ensure_ascii=False))
