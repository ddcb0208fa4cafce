"""Web search in Chromium (issue 15): the toggle, the tool status while the answer streams,
the citation chips after the answer and after reload, hostile URLs kept out of links."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply
from tests.live import live_app
from tests.test_search import CITATIONS, QUERY, cited_stream, recorded_events

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("search")
    with live_app(tmp, fake_upstream_server.base_url, XAI_API_STYLE="responses") as url:
        yield url


def search_in_steps() -> Reply:
    """The recorded web search answer, paced: its start at once, then on each next_piece()
    the search call's start, its end, and the answer with its citations."""
    events = recorded_events()
    start, added, done, rest = events[:2], events[2], events[3], events[4:]
    return Reply(pieces=[b"".join(start), added, done, b"".join(rest)], paced=True)


def test_web_search_shows_its_status_while_streaming_and_its_sources_after(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(search_in_steps())
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    web, x = page.locator("#web-search-toggle"), page.locator("#x-search-toggle")
    expect(web).to_be_enabled()
    expect(web).not_to_be_checked()
    expect(x).not_to_be_checked()
    web.check()
    page.fill("#prompt", "What is xAI?")
    page.keyboard.press("Enter")

    answer = page.locator("#messages article.message[data-role=assistant]").last
    status = answer.locator(".tool-calls li")
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(status).to_have_count(0)
    fake_upstream_server.next_piece()
    expect(status).to_have_text(f"Searching the web… {QUERY}")
    expect(status).to_have_attribute("data-state", "in_progress")
    fake_upstream_server.next_piece()
    expect(status).to_have_text(f"Searched the web {QUERY}")
    expect(status).to_have_attribute("data-state", "completed")
    expect(answer).to_have_attribute("data-state", "streaming")
    expect(answer.locator(".sources")).to_be_hidden()
    fake_upstream_server.next_piece()

    expect(answer).to_have_attribute("data-state", "complete")
    expect(answer.locator(".tool-calls")).to_be_hidden()
    labels = ["1 en.wikipedia.org", "2 x.ai", "3 ibm.com", "4 owkin.com", "5 x.ai"]
    chips = answer.locator(".sources a.source")
    expect(chips).to_have_text(labels)
    assert [chips.nth(i).get_attribute("href") for i in range(5)] == CITATIONS
    for i in range(5):
        expect(chips.nth(i)).to_have_attribute("rel", "noopener noreferrer")
        expect(chips.nth(i)).to_have_attribute("target", "_blank")
    [request] = fake_upstream_server.stream_requests()
    assert request.json()["tools"] == [{"type": "web_search"}]

    page.reload()
    wait_ready(page)
    expect(web).to_be_checked()  # kept for the tab's life, not per message
    expect(x).not_to_be_checked()
    chips = page.locator("#messages article.message[data-role=assistant] .sources a.source")
    expect(chips).to_have_text(labels)
    assert [chips.nth(i).get_attribute("href") for i in range(5)] == CITATIONS


def test_hostile_citation_urls_are_shown_as_text_not_links(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    hostile = ["javascript:alert(document.domain)", "data:text/html,<b>x</b>"]
    fake_upstream_server.queue(cited_stream([*hostile, "https://docs.x.ai/tools"]))
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.locator("#web-search-toggle").check()
    page.fill("#prompt", "Sources?")
    page.keyboard.press("Enter")

    answer = page.locator("#messages article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete")
    sources = answer.locator(".sources .source")
    expect(sources).to_have_text(["1 " + hostile[0], "2 " + hostile[1], "3 docs.x.ai"])
    assert [sources.nth(i).evaluate("e => e.tagName") for i in range(3)] == ["SPAN", "SPAN", "A"]
    expect(answer.locator(".sources a.source")).to_have_attribute("title", "Title 2")
    expect(page.locator("a[href^='javascript'], a[href^='data']")).to_have_count(0)
