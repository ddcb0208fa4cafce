"""The sidebar with many conversations, in headless Chromium against Daphne at 1280x800:
every one reachable by scrolling, in date groups, and search over titles and messages."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.axe import violations
from tests.browser import log_in, needs_chromium, send_and_wait, wait_ready, wait_until
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium

CONVERSATIONS = 250
# alice's 250 conversations, one every 13 hours back from now (about 135 days: every kind
# of group), made in the database before the page loads; one answer holds a rare word.
SETUP = f"""
from datetime import timedelta
from django.contrib.auth.models import User
from django.utils import timezone
from chat.models import Conversation
alice = User.objects.get(username='alice')
now = timezone.now()
Conversation.objects.bulk_create(
    Conversation(user=alice, title=f'Chat number {{i}}', updated_at=now - timedelta(hours=13 * i))
    for i in range({CONVERSATIONS})
)
old = Conversation.objects.get(title='Chat number 200')
old.append(role='user', content='Which bird is sacred in Aztec lore?')
old.append(role='assistant', content='The <b>resplendent</b> quetzal, whose feathers were prized.')
"""
FIXED_GROUPS = ["Today", "Yesterday", "Previous 7 days", "Previous 30 days"]


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("sidebar")
    with live_app(tmp, fake_upstream_server.base_url, setup=SETUP) as url:
        yield url


@pytest.fixture
def page(browser: Browser, fake_upstream_server: FakeUpstream) -> Iterator[Page]:
    """A laptop's window, in the server's time zone (UTC) unless a test says otherwise."""
    fake_upstream_server.reset()
    context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="UTC")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], errors


def _scroll_sidebar_to_the_end(page: Page) -> None:
    """Scroll the conversation list down as a reader would until no page is left to load."""
    items = page.locator("#conversation-list li")
    for _ in range(CONVERSATIONS):
        before = items.count()
        page.locator("#conversation-list").evaluate("list => list.scrollTo(0, list.scrollHeight)")
        if page.locator("#conversation-list button.load-more").count() == 0:
            return
        wait_until(
            page,
            f"document.querySelectorAll('#conversation-list li').length > {before}"
            " || !document.querySelector('#conversation-list button.load-more')",
        )
    raise AssertionError("the list never ended")


def _month_order(label: str) -> datetime:
    return datetime.strptime(label, "%B %Y")


def test_all_250_conversations_are_reachable_by_scrolling_in_date_groups(page: Page, live: str):
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    items = page.locator("#conversation-list li")
    expect(items).to_have_count(50)  # the first page; the rest as the list scrolls
    _scroll_sidebar_to_the_end(page)
    expect(items).to_have_count(CONVERSATIONS)
    ids = [int(i) for i in items.evaluate_all("lis => lis.map(li => li.dataset.conversationId)")]
    assert len(set(ids)) == CONVERSATIONS
    titles = items.all_text_contents()
    assert titles == [f"Chat number {i}" for i in range(CONVERSATIONS)]  # newest first

    headings = page.locator("#conversation-list .conversation-group-heading").all_text_contents()
    assert headings[:4] == FIXED_GROUPS
    months = headings[4:]
    assert len(months) >= 4 and all(re.fullmatch(r"[A-Z][a-z]+ \d{4}", m) for m in months)
    assert [_month_order(m) for m in months] == sorted(map(_month_order, months), reverse=True)
    assert len(set(headings)) == len(headings)  # a group split over two pages shows once
    assert violations(page) == []  # axe-core: nothing serious or critical in the groups

    # An old conversation that gets a new message moves to the top, under Today.
    page.click("#conversation-list li >> text='Chat number 249'")
    wait_ready(page)
    send_and_wait(page, "Back to this one")
    first = page.locator("#conversation-list .conversation-group").first
    expect(first.locator(".conversation-group-heading")).to_have_text("Today")
    expect(first.locator("li").first).to_have_text("Chat number 249")
    expect(first.locator("li").first.locator("a")).to_have_attribute("aria-current", "page")


def test_the_load_more_button_works_from_the_keyboard(page: Page, live: str):
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    items = page.locator("#conversation-list li")
    expect(items).to_have_count(50)
    page.locator("#conversation-list button.load-more").focus()
    page.keyboard.press("Enter")
    expect(items).to_have_count(100)


def test_search_finds_a_word_inside_one_answer_and_opens_that_conversation(page: Page, live: str):
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("quetzal")
    results = page.locator("#search-results li")
    expect(results).to_have_count(1)
    expect(page.locator("#conversation-list")).to_be_hidden()
    expect(results.locator(".search-hit-title")).to_have_text("Chat number 200")
    expect(results.locator("mark")).to_have_text("quetzal")
    # The answer's own "<b>" is text in the snippet, not markup.
    expect(results.locator(".search-hit-snippet")).to_contain_text("The <b>resplendent</b> quetzal")
    expect(results.locator("b")).to_have_count(0)
    assert violations(page) == []  # axe-core: nothing serious or critical, results shown

    search.press("Escape")
    expect(page.locator("#search-results")).to_be_hidden()
    expect(page.locator("#conversation-list")).to_be_visible()
    expect(search).to_have_value("")

    search.fill("no such word anywhere")
    expect(page.locator("#search-results")).to_contain_text("No conversation matches.")
    search.fill("quetzal")
    expect(results).to_have_count(1)
    results.locator("a").click()
    page.wait_for_url(re.compile(r"/c/\d+/#message-\d+$"))
    wait_ready(page)
    linked = page.locator("article.message.linked-message")
    expect(linked).to_have_count(1)
    expect(linked).to_contain_text("quetzal, whose feathers were prized")


def test_the_groups_follow_the_browsers_own_time_zone(browser: Browser, live: str):
    context = browser.new_context(timezone_id="Pacific/Kiritimati")  # UTC+14
    page = context.new_page()
    try:
        log_in(page, live, "alice", "alice-password-1")
        listing = page.locator("#conversation-list")
        expect(listing).to_have_attribute("data-timezone", "Pacific/Kiritimati")
        expect(page.locator("#conversation-list li")).to_have_count(50)
        page.reload()  # the cookie says it from now on: the server groups in it at once
        expect(listing).to_have_attribute("data-timezone", "Pacific/Kiritimati")
    finally:
        context.close()
