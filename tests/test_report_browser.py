"""report.html in a real headless browser (Debian's chromium via playwright): it loads without console
errors or network requests, every plot renders at a non-zero size and is labelled by its caption,
each section heading is visible, and a planted <script> in a quote is shown as text, not run.
Saves a screenshot.

CI installs chromium (.ci/setup); without it this test fails rather than skips."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from browser import chromium_page
from test_report import PLANTED, SECTION_TITLES, write_analysis, write_evaluation
from typer.testing import CliRunner

from care_ray.cli import app

SCREENSHOT_COPY = Path("/tmp/care-ray-report.png")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-browser")
    evaluation = write_evaluation(root / "eval")
    analysis = write_analysis(root / "scores-analysis")
    labels = write_analysis(root / "esconv-analysis", full=False)
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--evaluation",
            str(evaluation),
            "--analysis",
            str(analysis),
            "--analysis",
            str(labels),
            "--out",
            str(root / "report"),
            "--title",
            "care-ray report (synthetic)",
        ],
    )
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    assert path.is_file()
    return path


def test_report_renders_in_chromium(report_html, tmp_path):
    with chromium_page(tmp_path) as (page, log):
        page.goto(report_html.resolve().as_uri(), wait_until="load")

        plots = page.locator("figure svg.plot")
        assert plots.count() >= 12
        for i in range(plots.count()):
            plot = plots.nth(i)
            caption = page.locator(f"figcaption#{plot.get_attribute('aria-labelledby')}")
            assert caption.count() == 1 and caption.inner_text().strip(), f"plot {i} unlabelled"
            box = plot.bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 50, (
                f"plot {i} ({caption.inner_text()}) renders at {box}"
            )
        images = page.locator("img")
        for i in range(images.count()):
            box = images.nth(i).bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0

        for title in SECTION_TITLES:
            heading = page.locator("h2, h3", has_text=title).first
            assert heading.is_visible(), title

        assert page.locator("script").count() == 0
        quote = page.locator("blockquote.quote", has_text=PLANTED)
        assert quote.count() == 1 and PLANTED in quote.inner_text()
        assert page.locator("text=counselor ids").count() >= 1  # notes of the labels analysis

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)

    assert not log.dialogs, f"a planted script ran: {log.dialogs}"
    assert not log.errors, log.errors
    assert not [m for m in log.console if m[0] == "error"], log.console
    external = [u for u in log.requests if not u.startswith(("file:", "data:"))]
    assert not external, f"the page fetched {external}"
    assert shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)
