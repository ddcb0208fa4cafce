"""Generated titles in Chromium: the sidebar shows a new conversation's title live, and a
rename in one tab reaches the other."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply, paced_stream, transcript
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("titles")
    with live_app(tmp, fake_upstream_server.base_url, CHAT_TITLES="true") as url:
        yield url


def test_the_sidebar_shows_the_generated_title_live_and_follows_a_rename(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(
        Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")),
        paced_stream(['**"Roman carbonara."**']),  # ends on the test's next_piece()
    )
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "How do Romans make carbonara without cream?")
    page.keyboard.press("Enter")
    entry = page.locator("#conversation-list li").first
    # First the first words, then, with no reload, the title the model wrote, cleaned.
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete", timeout=10_000)
    expect(entry).to_have_text("How do Romans make carbonara without cream?")
    fake_upstream_server.next_piece()
    expect(entry).to_have_text("Roman carbonara", timeout=10_000)
    expect(page).to_have_title("Roman carbonara · Grok Chat")
    expect(page.locator("#rename-input")).to_have_value("Roman carbonara")
    assert len(fake_upstream_server.stream_requests()) == 2

    # A second tab on the conversation follows a rename made in the first.
    other = page.context.new_page()
    other.goto(page.url)
    wait_ready(other)
    expect(other.locator("#conversation-list li").first).to_have_text("Roman carbonara")
    page.fill("#rename-input", "My pasta notes")
    with page.expect_navigation():
        page.click("#rename-form button[type=submit]")
    expect(page.locator("#conversation-list li").first).to_have_text("My pasta notes")
    expect(other.locator("#conversation-list li").first).to_have_text("My pasta notes")
    expect(other).to_have_title(re.compile(r"^My pasta notes · "))
    expect(other.locator("#rename-input")).to_have_value("My pasta notes")
