"""The chat page's settings panel, in headless Chromium against Daphne."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, send_and_wait, wait_ready
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live")
    with live_app(tmp, fake_upstream_server.base_url) as url:
        yield url


def test_a_system_prompt_set_in_the_panel_is_sent_shown_and_kept(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    summary = page.locator("#settings-summary")
    expect(summary).to_have_text("Default settings")

    # A new chat: the panel keeps what is set, and the first message takes it along.
    page.click("#settings-panel > summary")
    page.fill("#settings-system_prompt", "Answer like a pirate.")
    page.fill("#settings-temperature", "0.7")
    expect(summary).to_have_text("System prompt · temp 0.7")
    send_and_wait(page, "Hello there")
    body = fake_upstream_server.stream_requests()[-1].json()
    assert body["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert body["temperature"] == 0.7

    page.reload()
    expect(page.locator("#settings-summary")).to_have_text("System prompt · temp 0.7")
    page.click("#settings-panel > summary")
    expect(page.locator("#settings-system_prompt")).to_have_value("Answer like a pirate.")

    # The conversation exists now: Save stores its settings at once.
    page.fill("#settings-max_output_tokens", "1000")
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_have_text(
        "Saved: applied from the next message on."
    )
    expect(page.locator("#settings-summary")).to_have_text(
        "System prompt · temp 0.7 · max 1,000 tokens"
    )
    send_and_wait(page, "And again")
    body = fake_upstream_server.stream_requests()[-1].json()
    assert body["messages"][0] == {"role": "system", "content": "Answer like a pirate."}
    assert body["max_tokens"] == 1000 and len(body["messages"]) == 4

    page.fill("#settings-temperature", "3")
    page.click("#settings-save")
    expect(page.locator("#settings-status")).to_contain_text("Not saved: temperature:")
    page.reload()
    expect(page.locator("#settings-summary")).to_have_text(
        "System prompt · temp 0.7 · max 1,000 tokens"
    )


def test_the_effort_setting_shows_only_for_a_model_that_takes_one(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.click("#settings-panel > summary")
    effort = page.locator("#settings-effort-field")
    page.select_option("#model-picker", "grok-4")
    expect(effort).to_be_hidden()
    page.select_option("#model-picker", "grok-3-mini")
    expect(effort).to_be_visible()
    assert page.locator("#settings-reasoning_effort option[value=medium]").is_disabled()
    assert page.locator("#settings-reasoning_effort option[value=high]").is_enabled()
