"""Debian's Chromium, driven by Playwright, for the tests that load real pages.

Playwright comes with the dev extras; the browser is Debian's (`apt-get install chromium`),
because Playwright's own browser download is not used. Without either, those tests skip with
the reason, except under CI=true, where they fail: CI must run them.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Playwright

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and nothing the browser would fetch for itself: only what the page asks for.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def in_ci() -> bool:
    # As tests/storage/pgserver.py reads it.
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@functools.cache
def unavailable() -> str | None:
    """Why no page can be loaded here, or None when one can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no browser at {CHROMIUM} (apt-get install chromium)"
    return None


def require() -> None:
    """Skip (fail under CI=true) when Chromium or Playwright is missing."""
    reason = unavailable()
    if reason is None:
        return
    if in_ci():
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}.")
    pytest.skip(
        f"{reason}: the browser tests need Playwright and {CHROMIUM} (under CI=true, a failure)."
    )


def launch(playwright: Playwright, profile: Path) -> BrowserContext:
    """A browser on a fresh profile directory `profile` (created here)."""
    profile.mkdir(parents=True)
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True
    )
