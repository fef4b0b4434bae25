"""Debian's Chromium, headless, driven by Playwright: for the dashboard's browser test
and the benchmark that keeps the dashboard open while the agent ticks.

No browser is downloaded (``playwright install`` needs the internet): Playwright drives
the system's ``/usr/bin/chromium`` (``make deps`` installs Debian's ``chromium``). The
flags keep Chromium from reaching out on its own (component updates, sync, background
networking), so the only requests it makes are the page's.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM_FLAGS = (
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--no-first-run",
    "--disable-quic",
)


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise FileNotFoundError("chromium is missing: `make deps` installs Debian's chromium")
    return found


@contextmanager
def headless_chromium() -> Iterator[Browser]:
    """A headless Chromium, closed however the caller ends."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_for_polls(page: Page, polls: int, timeout_s: float = 30.0) -> None:
    """Wait until the dashboard has completed ``polls`` polls (``data-polls``).

    Polled from here with ``evaluate``: Playwright's ``wait_for_function`` evaluates a
    string inside the page, which the dashboard's Content-Security-Policy refuses (no
    eval), as it should."""
    deadline = time.monotonic() + timeout_s
    while int(page.evaluate("Number(document.body.dataset.polls || 0)")) < polls:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the dashboard did not complete {polls} polls in {timeout_s:g}s")
        time.sleep(0.1)
