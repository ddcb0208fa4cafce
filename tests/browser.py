"""Helpers for the browser tests: Debian's Chromium driven by Playwright's sync API.

The `browser` fixture (one Chromium per test module) and the `page` fixture (a fresh
context, failing the test on any uncaught error in the page) are in conftest.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make chromium)"
)


def wait_until(page: Page, expression: str, timeout: float = 10) -> None:
    """Poll a page expression from here: page.wait_for_function evaluates strings with
    eval inside the page, which our Content-Security-Policy (rightly) forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.05)


def wait_ready(page: Page, timeout: float = 30) -> None:
    """Until the page says it is connected, as its user sees it in the composer bar. The
    default is generous: with both cores busy a fresh Daphne's first socket took over 10 s."""
    status = page.locator("#connection-status")
    expect(status).to_have_attribute("data-state", "connected", timeout=timeout * 1000)
    expect(status).to_have_text("Connected")


def log_in(page: Page, live: str, username: str, password: str) -> None:
    page.goto(live + "/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    with page.expect_navigation():
        page.click("form.stacked-form button[type=submit]")
    assert "/accounts/login/" not in page.url, page.content()[:2000]


def send_and_wait(page: Page, text: str) -> None:
    """Send `text` from the composer and wait until its answer is complete."""
    answers = page.locator("article.message[data-role=assistant]")
    before = answers.count()
    page.fill("#prompt", text)
    page.keyboard.press("Enter")
    expect(answers).to_have_count(before + 1)
    expect(answers.last).to_have_attribute("data-state", "complete", timeout=10_000)
