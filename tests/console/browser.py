"""Headless Debian Chromium driven by Playwright (no downloaded browser builds)."""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

import pytest

from tests._require import in_ci, require_module

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]


def chromium_path() -> str:
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if found:
        return found
    message = "Debian chromium is not installed (.ci/install-console.sh installs it)"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    path = chromium_path()
    require_module("playwright")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """Collects what must never happen on a console page: script errors, CSP violations,
    requests to any other origin."""

    def __init__(self, page, origin: str):
        self.errors: list[str] = []
        self.foreign: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", lambda msg: self.errors.append(f"console: {msg.text}")
                if msg.type == "error" and not _expected_http_error(msg.text) else None)
        page.on("request", lambda req: None if req.url.startswith(origin)
                or req.url.startswith("data:") else self.foreign.append(req.url))

    def assert_clean(self) -> None:
        assert not self.errors, self.errors
        assert not self.foreign, self.foreign


def _expected_http_error(text: str) -> bool:
    # Chromium logs every 4xx answer as a console error; the console shows those to the user.
    return "Failed to load resource: the server responded with a status of 4" in text
