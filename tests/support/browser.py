"""Debian's Chromium for the page tests (Playwright drives it headless)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from playwright.sync_api import Locator

CHROMIUM: Final = Path("/usr/bin/chromium")
HAVE_CHROMIUM: Final = CHROMIUM.exists()
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def wait_until_loaded(image: Locator, timeout_s: float = 10.0) -> None:
    """Until the image has loaded, polled from here: Playwright's `wait_for_function`
    evaluates a string, which the desk's CSP (no 'unsafe-eval') refuses whenever it has
    to poll."""
    deadline = time.monotonic() + timeout_s
    while not image.evaluate("i => i.complete && i.naturalWidth > 0"):
        assert time.monotonic() < deadline, "the image never loaded"
        time.sleep(0.05)
