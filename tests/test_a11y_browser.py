"""axe-core over the app's pages in headless Chromium against Daphne: no serious or
critical violations (tests/axe.py) on the login, chat (empty, with code, a table and
versions, and while an answer streams), settings and usage pages, and the admin's report."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.axe import violations
from tests.browser import log_in, needs_chromium, wait_ready, wait_until
from tests.fake_upstream import FakeUpstream, Reply, chunk, paced_stream, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium

CODE_AND_TABLE = (
    "Here is code:\n\n```python\nprint('hi')\n```\n\n"
    "| name | tokens |\n|:-----|-------:|\n| alice | 12 |\n| bob | 7 |\n"
)

# A ledger row for alice, so that her usage page and the admin's report have something to show.
SEED = """
from django.contrib.auth.models import User
from chat.models import Conversation
alice = User.objects.get(username='alice')
conversation = Conversation.objects.create(user=alice, title='seeded')
answer = conversation.messages.create(role='assistant', state='streaming', model='grok-4')
answer.finish(user_id=alice.id, state='complete', usage=dict(
    source='reported', requested_model='grok-4', prompt_tokens=1200, completion_tokens=300,
    reasoning_tokens=45, total_tokens=1545, reported_cost_ticks=7_350_000))
"""


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-a11y")
    with live_app(tmp, fake_upstream_server.base_url, staff=True, setup=SEED) as url:
        yield url


def answer_of(text: str) -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish="stop"), usage_chunk(10, 5)))


def assert_clean(page: Page, what: str) -> None:
    found = violations(page)
    assert found == [], f"{what}: {found}"


def test_the_login_page_has_no_serious_violations(page: Page, live: str) -> None:
    page.goto(live + "/accounts/login/")
    expect(page.locator("#id_username")).to_be_visible()
    assert_clean(page, "login")


def test_the_chat_page_has_none_empty_with_code_tables_versions_and_while_streaming(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    assert_clean(page, "empty chat")

    fake_upstream_server.queue(answer_of(CODE_AND_TABLE), answer_of("Again: `code`."))
    page.fill("#prompt", "Show me code and a table")
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete")
    expect(answer.locator("table")).to_be_visible()
    expect(answer.locator(".code-block pre")).to_be_visible()
    answer.locator("button.regenerate").click()
    expect(answer.locator(".branch-count")).to_have_text("2 / 2")
    expect(answer).to_have_attribute("data-state", "complete")
    answer.locator("button.branch-prev").click()
    expect(answer.locator(".branch-count")).to_have_text("1 / 2")
    expect(answer.locator("table")).to_be_visible()
    assert_clean(page, "chat with code, a table and versions")

    page.reload()
    wait_ready(page)
    page.locator("#settings-panel > summary").click()
    assert_clean(page, "chat reloaded, settings panel open")

    fake_upstream_server.queue(paced_stream(["Thinking ", "more ", "and done."]))
    page.fill("#prompt", "Take your time")
    page.keyboard.press("Enter")
    streaming = page.locator("article.message[data-role=assistant]").last
    expect(streaming.locator(".content")).to_have_text("Thinking")
    expect(streaming).to_have_attribute("data-state", "streaming")
    expect(page.locator("#stop-button")).to_be_visible()
    assert_clean(page, "chat while an answer streams")
    for _ in range(3):
        fake_upstream_server.next_piece()
    expect(streaming).to_have_attribute("data-state", "complete")


def test_the_shortcuts_help_has_none(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.locator("#shortcuts-button").click()
    expect(page.locator("#shortcuts-dialog")).to_be_visible()
    wait_until(page, "document.getElementById('shortcuts-list').rows.length > 0")
    assert_clean(page, "shortcuts help")


def test_the_settings_and_usage_pages_have_none(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    page.goto(live + "/settings/")
    assert_clean(page, "settings")
    page.goto(live + "/settings/password/")
    assert_clean(page, "password change")
    page.goto(live + "/usage/")
    expect(page.locator("body")).to_contain_text("Prompt tokens")
    assert_clean(page, "usage")


def test_the_admins_usage_report_has_none_for_a_staff_user(page: Page, live: str) -> None:
    log_in(page, live, "staff", "staff-password-1")
    page.goto(live + "/admin/usage/")
    expect(page.locator("body")).to_contain_text("alice")
    assert_clean(page, "admin usage report")
    page.goto(live + "/admin/usage/user/1/")
    expect(page.locator("body")).to_contain_text("seeded")
    assert_clean(page, "admin usage of alice")
