"""The README's first command, end to end: `care-ray demo` ends in a report.html that a real
browser renders (tiny model → ingest ESConv → score → baseline → evaluate → analyze → cards → report)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from browser import chromium_page

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, esconv_dir):
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "care_ray",
            "demo",
            "--out",
            str(out),
            "--sessions",
            "6",
            "--esconv",
            str(esconv_dir),
            "--model",
            "tiny",  # offline and fast; the README's run uses SmolLM2 (measured in README)
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return out, p


def test_demo_prints_progress_and_ends_with_the_report_path(demo_run):
    out, p = demo_run
    report = Path(p.stdout.strip().splitlines()[-1])
    assert report == out / "report" / "report.html" and report.is_file()
    steps = [line for line in p.stderr.splitlines() if line.startswith("[") and ": done in" in line]
    assert len(steps) == 9
    summary = json.loads((out / "demo-summary.json").read_text())
    assert summary["ingest"]["sessions_written"] == 1496
    assert summary["score"]["items_scored"] + summary["score"]["items_errors"] == 6 * 12
    timeline = summary["score"]["timeline"]  # each session at 3 cut points, one item per dimension
    assert timeline["cut_points"] == 6 * 3 and timeline["points"] == timeline["items_scored"] > 0
    assert summary["evaluate"]["n_sessions"] >= 1
    # the baseline: cross-fitted over every rated conversation, evaluated on all of them
    assert summary["evaluate_baseline"]["n_sessions"] > 1000
    assert all(r is not None and r > 0.1 for r in summary["evaluate_baseline"]["pearson"].values())
    side = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert {"model", "model_expected", "baseline"} <= set(side["by_rater"])
    assert json.loads((out / "analysis-scores" / "manifest.json").read_text())["score_kind"] == (
        "expected"
    )
    import duckdb

    rated = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{out}/corpus/sessions/**/*.parquet') WHERE labels['empathy'] IS NOT NULL"
    ).fetchall()[0][0]
    assert (
        summary["analyze_esconv"]["n_sessions"] == rated > 1000
    )  # every conversation with the seeker's ratings
    manifest = json.loads((out / "analysis-esconv" / "manifest.json").read_text())
    assert {"population", "contrasts", "drivers", "features"} <= set(manifest["tables"])
    # counselor cards on the synthetic corpus: one page per counselor, listed in the index
    assert summary["cards"]["cards"] == 40 and summary["cards"]["mode"] == "scores"
    assert len(list((out / "cards" / "cards").glob("*.html"))) == 40
    assert (out / "cards" / "index.html").is_file() and (out / "cards" / "cards.parquet").is_file()


def test_the_demo_report_renders_in_chromium(demo_run, tmp_path):
    out, p = demo_run
    with chromium_page(tmp_path) as (page, log):
        page.goto((out / "report" / "report.html").resolve().as_uri(), wait_until="load")
        plots = page.locator("figure svg.plot")
        assert plots.count() >= 4
        for i in range(plots.count()):
            box = plots.nth(i).bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 50
        for title in ("Agreement", "Population", "Group contrasts"):
            assert page.locator("h2, h3", has_text=title).first.is_visible(), title
        # the baseline's held-out agreement, labelled for what it is, and the side by side
        assert page.locator("h2", has_text="evaluation-baseline").first.is_visible()
        assert page.locator("text=baseline").count() >= 2
        assert page.locator("text=Scorers side by side").count() >= 1
        # the report says what the model's scores are
        assert page.get_by_text("the tiny random model (random weights").first.is_visible()
        # the model's expected scores (#30): evaluated beside the decoded ones, analysed, named
        assert page.get_by_text("model_expected: expected scores, Σ s·p(s)").first.is_visible()
        assert page.get_by_text("from model scores: expected scores").first.is_visible()
        # the timeline: FailedESConv's own ratings and the model's cut points
        assert page.get_by_text(
            "the client's own ratings during the session: 55 of 172"
        ).first.is_visible()
        assert page.get_by_text("the model's bond at cut points").first.is_visible()
        page.screenshot(path=str(tmp_path / "demo-report.png"), full_page=True)
        # the report links to the counselor cards, and the link lands on their index
        page.get_by_role("link", name="Counselor feedback cards").click()
        page.wait_for_load_state("load")
        assert page.url.endswith("/cards/index.html"), page.url
        assert page.locator("a[href^='cards/']").count() == 40
    assert [c for c in log.console if c[0] == "error"] == [] and log.errors == []
    assert all(u.startswith(("file:", "data:", "about:")) for u in log.requests)
