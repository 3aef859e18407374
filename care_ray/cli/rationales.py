"""`care-ray rationales draft | export | import`: teacher-drafted rationales, reviewed by experts."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import BaseModel, ConfigDict, Field

from care_ray.cli.options import command
from care_ray.common.errors import UserError
from care_ray.common.options import cli
from care_ray.rationales.draft import DraftConfig


def draft_command(cfg: DraftConfig) -> None:
    from care_ray.cluster.jobs import refuse_relative_in_job
    from care_ray.rationales.draft import draft_corpus

    try:
        refuse_relative_in_job(
            {"--sessions": cfg.sessions, "--teacher": cfg.model, "--out": cfg.out}
        )
        manifest = draft_corpus(cfg)
    except (
        ValueError,
        OSError,
    ) as e:  # scoring's checks name the model --model; here it is --teacher
        raise UserError(str(e).replace("--model", "--teacher")) from None
    shown = ("kind", "sessions_in", "items_in", "items_scored", "items_errors", "drafts")
    summary = {k: manifest[k] for k in shown if k in manifest}
    summary["flagged"] = manifest.get("flagged")
    summary["flags"] = manifest.get("flags")
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


class ReviewExportOptions(BaseModel):
    """Write the review file: one row per draft with the dialogue around each quote and the
    reviewer's columns (decision accept|edit|reject, edited_text, reviewer, faithfulness,
    relevance, informativeness 1-5, comment)."""

    model_config = ConfigDict(extra="forbid")

    drafts: str = Field(description="a `rationales draft` output folder")
    out: Path = Field(description="the review file: .jsonl or .csv")
    sessions: str | None = Field(
        None, description="the corpus the drafts came from (default: the draft run's)"
    )
    only_flagged: bool = Field(False, description="only drafts with a flag")
    sample: int | None = Field(
        None, ge=1, description="a seeded sample of N drafts (e.g. for a second reviewer's ratings)"
    )
    seed: int = Field(0, description="the sample's seed")


def export_command(o: ReviewExportOptions) -> None:
    from care_ray.rationales.review import export_review

    result = export_review(o.drafts, o.out, o.sessions, o.only_flagged, o.sample, o.seed)
    typer.echo(json.dumps(result, indent=2))


class ReviewImportOptions(BaseModel):
    """Take reviewed files back: every row is checked first (nothing is written if any is
    wrong); decisions and ratings join the draft folder, a later import of a draft replacing an
    earlier one; counts per reviewer and rating agreement go to review.json."""

    model_config = ConfigDict(extra="forbid")

    files: list[Path] = Field(
        min_length=1,
        description="review files (.jsonl or .csv)",
        json_schema_extra=cli(argument=True),
    )
    drafts: str = Field(description="the `rationales draft` folder reviewed")
    sessions: str | None = Field(
        None, description="the corpus the drafts came from (default: the draft run's)"
    )


def import_command(o: ReviewImportOptions) -> None:
    from care_ray.rationales.review import import_reviews

    summary = import_reviews(o.drafts, o.files, o.sessions)
    typer.echo(json.dumps(summary, indent=2, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Teacher-drafted rationales for rated sessions, reviewed by experts, for sft-data.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="rationales")
    command(group, "draft", DraftConfig, draft_command)
    command(group, "export", ReviewExportOptions, export_command)
    command(group, "import", ReviewImportOptions, import_command)
