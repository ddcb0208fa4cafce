"""What a user sees of usage and budgets in the chat, in headless Chromium against Daphne."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, slow_stream
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-usage")
    # carol may spend 1 token a day: her first answer starts, the next is refused.
    script = (
        "from django.contrib.auth.models import User; from chat.models import Budget;"
        "carol = User.objects.create_user('carol', password='carol-password-1');"
        "Budget.objects.create(user=carol, period='day', max_tokens=1)"
    )
    with live_app(tmp, fake_upstream_server.base_url, setup=script) as url:
        yield url


def test_a_stopped_answer_says_its_usage_is_estimated_and_the_budget_refuses_the_next(
    page: Page,
    live: str,
    fake_upstream_server: FakeUpstream,
) -> None:
    fake_upstream_server.queue(slow_stream(count=400, delay=0.02, text="word "))
    log_in(page, live, "carol", "carol-password-1")
    wait_ready(page)
    page.fill("#prompt", "Count slowly")
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer.locator(".content")).to_contain_text("word")
    page.click("#stop-button")
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".meta")).to_contain_text("estimated")

    page.reload()
    wait_ready(page)
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer.locator(".meta")).to_contain_text("estimated")

    requests = len(fake_upstream_server.stream_requests())
    page.fill("#prompt", "Something I typed with care")
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_contain_text("You have used your budget for today")
    expect(page.locator("#prompt")).to_have_value("Something I typed with care")
    assert len(fake_upstream_server.stream_requests()) == requests
    expect(page.locator("article.message[data-role=user]")).to_have_count(1)


def test_a_complete_answer_shows_its_reported_cost(
    page: Page,
    live: str,
    fake_upstream_server: FakeUpstream,
) -> None:
    # The default reply is fantasy-xai-grok-4-fast-2.sse: xAI billed 739000 ticks.
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "Say hi in Portuguese")
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete")
    expect(answer.locator(".meta")).to_contain_text("296 total")
    expect(answer.locator(".meta")).to_contain_text("$0.0000739")
    expect(answer.locator(".meta")).not_to_contain_text("estimated")
    page.reload()
    wait_ready(page)
    expect(page.locator("article.message[data-role=assistant] .meta").last).to_contain_text(
        "$0.0000739"
    )
