"""report: one self-contained HTML page from the tables evaluate and analyze write. It renders
what the tables hold (statistics are computed where the tables are made), with Jinja2 templates
that escape every value, one module per section.

May import: common, contracts, cluster, models, corpus, scoring, evaluation, rationales, training,
analytics (every room but cli)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from care_ray.report.load import (
        ANALYSIS_KIND,
        ANALYSIS_TABLES,
        EVALUATION_KIND,
        EVALUATION_TABLES,
        Findings,
        ReportError,
        folder_kind,
        load_findings,
    )
    from care_ray.report.page import build_report, write_report

# Imported on first use: the CLI imports ReportConfig for every command, and the page's modules
# bring in matplotlib and Jinja2, which only `care-ray report` needs.
_EXPORTS = {
    "ANALYSIS_KIND": "care_ray.report.load",
    "ANALYSIS_TABLES": "care_ray.report.load",
    "EVALUATION_KIND": "care_ray.report.load",
    "EVALUATION_TABLES": "care_ray.report.load",
    "Findings": "care_ray.report.load",
    "ReportError": "care_ray.report.load",
    "folder_kind": "care_ray.report.load",
    "load_findings": "care_ray.report.load",
    "build_report": "care_ray.report.page",
    "write_report": "care_ray.report.page",
}

__all__ = [
    "ANALYSIS_KIND",
    "ANALYSIS_TABLES",
    "EVALUATION_KIND",
    "EVALUATION_TABLES",
    "Findings",
    "ReportConfig",
    "ReportError",
    "build_report",
    "folder_kind",
    "load_findings",
    "write_report",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


class ReportConfig(BaseModel):
    """One self-contained report.html (inline plots, tables, a sentence per finding) from
    evaluate/analyze output; prints its path."""

    model_config = ConfigDict(extra="forbid")

    out: Path = Field(description="folder for report.html")
    evaluation: list[Path] = Field(
        default_factory=list,
        description="a folder written by `care-ray evaluate`; repeatable (e.g. a model against a "
        "baseline on a sample, and the baseline on every rated session)",
    )
    analysis: list[Path] = Field(
        default_factory=list, description="a folder written by `care-ray analyze`; repeatable"
    )
    title: str | None = Field(None, description="the page's title")
