"""A real headless Chromium (Debian's ``chromium``, driven by playwright; playwright's own browsers are never
downloaded), with the page's console errors and uncaught exceptions collected."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--use-fake-ui-for-media-stream",  # the microphone: allowed without asking, and a synthetic one
    "--use-fake-device-for-media-stream",
]
# Chrome logs every non-2xx fetch as a console error; the answers a test provokes on purpose are these.
HTTP_STATUS_LINE = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    return path


@contextmanager
def browser_page(profile: Path, width: int = 1280, height: int = 800) -> Iterator:
    """A page in a fresh persistent profile (``--user-data-dir``); ``page.problems`` lists console errors
    (other than 4xx status lines) and page errors as they happen."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path(),
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": width, "height": height},
        )
        try:
            page = context.new_page()
            page.problems = []
            page.on(
                "console",
                lambda m: m.type == "error" and not HTTP_STATUS_LINE.match(m.text) and page.problems.append(m.text),
            )
            page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
            yield page
        finally:
            context.close()
