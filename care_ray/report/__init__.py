"""report: one self-contained HTML page from the tables evaluate and analyze write. It renders
what the tables hold (statistics are computed where the tables are made), with Jinja2 templates
that escape every value, one module per section.

May import: common, contracts, cluster, models, corpus, scoring, evaluation, rationales, training,
analytics (every room but cli)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from care_ray.report.page import (
    ANALYSIS_KIND,
    EVALUATION_KIND,
    Findings,
    ReportError,
    build_report,
    load_findings,
    write_report,
)

__all__ = [
    "ANALYSIS_KIND",
    "EVALUATION_KIND",
    "Findings",
    "ReportConfig",
    "ReportError",
    "build_report",
    "load_findings",
    "write_report",
]


class ReportConfig(BaseModel):
    """One self-contained report.html (inline plots, tables, a sentence per finding) from
    evaluate/analyze output; prints its path."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="folder for report.html")
    evaluation: Path | None = Field(None, description="a folder written by `care-ray evaluate`")
    analysis: list[Path] = Field(
        default_factory=list, description="a folder written by `care-ray analyze`; repeatable"
    )
    title: str | None = Field(None, description="the page's title")
