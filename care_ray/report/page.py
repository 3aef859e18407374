"""`care-ray report`: one self-contained report.html from the folders `care-ray evaluate` and
`care-ray analyze` write (the tables of the findings contract).

Tables in, HTML string out, with these promises:
- every value that came from a table is escaped: the page is laid out by Jinja2 templates with
  autoescaping (templates/), and the only markup made in Python is matplotlib's SVG;
- every plot is matplotlib rendered to inline SVG — no scripts, no external URLs, one file;
- every finding gets a sentence that says what was measured, on how many sessions, and with what
  uncertainty — the intervals and tests the analysis wrote into its tables (the report computes
  none itself; where an older folder lacks them it shows the estimate alone);
- a section appears only when its table does (sections/);
- quotes in challenge examples are shown (they are part of the product) but never logged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from matplotlib import rc_context

from care_ray.report.blocks import Block, Bullets, Details, Group, Paragraph, Source
from care_ray.report.figures import RC
from care_ray.report.format import finite, integer, plural
from care_ray.report.load import (
    ANALYSIS_KIND,
    EVALUATION_KIND,
    Findings,
    ReportError,
    load_findings,
)
from care_ray.report.sections import agreement_section, analysis_sections, scale_section
from care_ray.report.sections.agreement import truth_name

DEFAULT_TITLE = "care-ray report"


@cache
def environment() -> Environment:
    """The templates, with every value autoescaped and an unknown name an error (not blank)."""
    return Environment(
        loader=PackageLoader("care_ray.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_blocks(blocks: Sequence[Block]) -> Markup:
    """Blocks as HTML, through the same macros as the page (blocks.html.j2)."""
    macros = environment().get_template("blocks.html.j2").module
    html: Markup = macros.render(blocks)  # type: ignore[attr-defined]  # a macro of the template
    return html


def _provenance(meta: dict) -> list[tuple[str, str]]:
    labels = {
        "mode": "outcomes from",
        "truth": "compared with",
        "model": "model",
        "adapter": "adapter",
        "rubric_id": "rubric",
        "rubric": "rubric file",
        "scores": "scores folder",
        "sessions": "corpus folder",
        "corpus_redaction": "corpus",
        "outcomes": "outcomes",
        "by": "grouped by",
        "alpha": "alpha",
        "created_at": "created",
    }
    out = []
    for key, label in labels.items():
        value = meta.get(key)
        if key == "truth" and value:
            out.append((label, truth_name(meta)))
        elif key == "mode" and value == "features":
            out.append((label, "none (features only)"))
        elif isinstance(value, list) and value:
            out.append((label, ", ".join(str(v) for v in value)))
        elif isinstance(value, str | int | float) and not isinstance(value, bool) and str(value):
            out.append((label, str(value)))
    return out


def _written_at(findings: Findings) -> str:
    name = "metrics.json" if findings.kind == EVALUATION_KIND else "manifest.json"
    path = findings.path / name
    if not path.exists():
        return "unknown"
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _source(findings: Findings, heading: str) -> Source:
    items = [
        ("folder", str(findings.path)),
        ("written", _written_at(findings)),
        ("sessions", integer(findings.meta.get("n_sessions"))),
        *_provenance(findings.meta),
        ("tables", ", ".join(sorted(findings.tables)) or "none"),
    ]
    return Source(heading, items)


def _notes(an: Findings) -> list[Block]:
    notes = [str(n) for n in an.meta.get("notes") or []]
    if not notes:
        return []
    summary = "Notes from the analysis (what was skipped and why)"
    return [Details(summary, [Bullets(notes)], open=True, css_class="notes")]


def _evaluation_group(evaluation: Findings, gid: str, heading: str) -> Group:
    section = agreement_section(evaluation, f"{gid}-agreement")
    scale = scale_section(evaluation, f"{gid}-scale")
    intro: list[Block] = [
        Paragraph(
            f"{integer(evaluation.meta.get('n_sessions'))} sessions; scores against "
            f"{truth_name(evaluation.meta)}."
        )
    ]
    if section is None:
        intro.append(Paragraph("The evaluation folder holds no agreement tables."))
    sections = [s for s in (section, scale) if s is not None]
    return Group(gid, heading, intro, sections)


def _numbered(kind: str, folders: Sequence[Findings]) -> list[str]:
    """'Evaluation: NAME', or 'Evaluation 2: NAME' where a page has several."""
    return [
        f"{kind}: {f.label}" if len(folders) == 1 else f"{kind} {i}: {f.label}"
        for i, f in enumerate(folders, start=1)
    ]


def _analysis_group(an: Findings, index: int, heading: str) -> Group:
    sections = analysis_sections(an, index)
    scored_from = {"scores": "model scores", "labels": "labels"}.get(
        str(an.meta.get("mode")), "an unknown source"
    )
    if an.meta.get("mode") == "scores":
        scored_from += {
            "expected": ": expected scores, Σ s·p(s) over the probabilities of the score token",
            "greedy": ": decoded (greedy) scores",
        }.get(str(an.meta.get("score_kind")), "")
    outcomes = ", ".join(map(str, an.meta.get("outcomes") or [])) or "not listed"
    n = integer(an.meta.get("n_sessions"))
    opening = (
        f"{n} sessions with no outcome (neither scores nor numeric labels): their interaction "
        "features, transitions and group contrasts of the features."
        if an.meta.get("mode") == "features"
        else f"{n} sessions; outcomes {outcomes} (from {scored_from})."
    )
    intro: list[Block] = [Paragraph(opening), *_notes(an)]
    if not sections:
        intro.append(Paragraph("This analysis holds none of the tables the report knows."))
    return Group(f"a{index}", heading, intro, sections)


def build_report(
    evaluation: Findings | Sequence[Findings] | None,
    analyses: Sequence[Findings],
    title: str = DEFAULT_TITLE,
    generated_at: datetime | None = None,
    links: Sequence[tuple[str, str]] = (),
) -> str:
    """The whole page as one HTML string (no scripts, no external resources). `evaluation`: one
    evaluate folder or several (e.g. a model against a baseline on a sample, and the baseline on
    every rated session). `links`: (label, relative href) pairs to pages written beside it, such
    as the counselor cards' index."""
    generated_at = generated_at or datetime.now(UTC)
    evaluations = (
        []
        if evaluation is None
        else [evaluation]
        if isinstance(evaluation, Findings)
        else list(evaluation)
    )
    ev_headings = _numbered("Evaluation", evaluations)
    an_headings = _numbered("Analysis", analyses)
    with rc_context(RC):
        groups = [
            _evaluation_group(ev, "evaluation" if k == 1 else f"e{k}", heading)
            for k, (ev, heading) in enumerate(zip(evaluations, ev_headings, strict=True), start=1)
        ]
        for i, (an, heading) in enumerate(zip(analyses, an_headings, strict=True), start=1):
            groups.append(_analysis_group(an, i, heading))
    sources = [
        _source(f, heading)
        for f, heading in zip([*evaluations, *analyses], [*ev_headings, *an_headings], strict=True)
    ]
    n_sessions = [int(finite(f.meta.get("n_sessions")) or 0) for f in [*evaluations, *analyses]]
    summary = (
        f"Built {generated_at.strftime('%Y-%m-%d %H:%M UTC')} from "
        f"{plural(len(n_sessions), 'output folder')} covering up to "
        f"{max(n_sessions, default=0):,} sessions."
    )
    return (
        environment()
        .get_template("page.html.j2")
        .render(title=title, summary=summary, sources=sources, groups=groups, links=list(links))
    )


def write_report(
    out: Path,
    evaluation: Path | Sequence[Path] | None = None,
    analyses: Sequence[Path] = (),
    title: str | None = None,
    links: Sequence[tuple[str, Path]] = (),
) -> Path:
    """Load the folders, build the page, write OUT/report.html; returns its path. `links`:
    (label, file) pairs the page links to, by paths relative to OUT."""
    evaluations = (
        []
        if evaluation is None
        else [evaluation]
        if isinstance(evaluation, str | Path)
        else list(evaluation)
    )
    if not evaluations and not analyses:
        raise ReportError("nothing to report: give --evaluation DIR and/or --analysis DIR")
    evs = [load_findings(Path(p), EVALUATION_KIND) for p in evaluations]
    ans = [load_findings(p, ANALYSIS_KIND) for p in analyses]
    out = Path(out)
    hrefs = [
        (label, Path(os.path.relpath(Path(target).resolve(), out.resolve())).as_posix())
        for label, target in links
    ]
    page = build_report(evs, ans, title=title or DEFAULT_TITLE, links=hrefs)
    if out.exists() and not out.is_dir():
        raise ReportError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
