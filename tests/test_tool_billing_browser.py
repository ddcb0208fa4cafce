"""The message meta line counts an answer's server-side tool calls ("2 web searches"), live
and after a reload, in headless Chromium against Daphne speaking the Responses API."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply
from tests.live import live_app
from tests.test_tool_billing import stream, with_details

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-tool-billing")
    with live_app(tmp, fake_upstream_server.base_url, XAI_API_STYLE="responses") as url:
        yield url


def ask(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete")


def test_the_meta_line_counts_web_and_x_searches_and_the_calls_of_no_named_kind(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(
        Reply(body=stream(with_details(web_search_calls=2, x_search_calls=1))),
        Reply(body=stream()),  # the recording: one call, of no kind it names
    )
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    ask(page, "What is xAI?")
    meta = page.locator("article.message[data-role=assistant] .meta")
    expect(meta.last).to_contain_text("2 web searches · 1 X search ·")
    expect(meta.last).not_to_contain_text("tool call")
    ask(page, "And its news?")
    expect(meta.last).to_contain_text("2570 total · 1 tool call ·")

    page.reload()
    wait_ready(page)
    expect(meta.first).to_contain_text("2 web searches · 1 X search ·")
    expect(meta.last).to_contain_text("1 tool call")
