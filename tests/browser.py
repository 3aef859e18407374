"""One headless chromium page for the browser tests (report, demo, cards): Debian's chromium via
playwright, with what the page did recorded so a test can assert that it ran no script, logged no
error and fetched nothing from the network. Without chromium the test fails rather than skips."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class PageLog:
    """What the page did: console messages (type, text), uncaught errors, every URL it requested
    and the messages of dialogs a script opened (each dismissed)."""

    console: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@contextmanager
def chromium_page(tmp_path: Path) -> Iterator[tuple[Any, PageLog]]:
    """A 1280×900 page in a fresh profile under tmp_path, and its PageLog."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium; "
            ".ci/setup does it)"
        )
    try:
        from playwright import sync_api
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")

    log = PageLog()
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            page = context.new_page()
            page.on("console", lambda msg: log.console.append((msg.type, msg.text)))
            page.on("pageerror", lambda err: log.errors.append(str(err)))
            page.on("request", lambda req: log.requests.append(req.url))
            page.on("dialog", lambda d: (log.dialogs.append(d.message), d.dismiss()))
            yield page, log
        finally:
            context.close()
