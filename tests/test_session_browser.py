"""What the chat page does around sending, in headless Chromium against Daphne: no key
configured, logged out elsewhere, and sending from a page of earlier messages."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Page, expect

from chat.views import MESSAGES_PER_PAGE
from tests.browser import log_in, needs_chromium, wait_ready, wait_until
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium

NO_KEY = "No xAI API key is configured: set XAI_API_KEY and restart the app to send."

# One conversation of alice's with more messages than a page shows: question i, answer i.
LONG_CONVERSATION = MESSAGES_PER_PAGE + 10
SETUP = f"""
import datetime as dt
from django.contrib.auth.models import User
from django.utils import timezone
from chat.models import Conversation
alice = User.objects.get(username='alice')
conversation = Conversation.objects.create(user=alice, title='A long one')
for i in range({LONG_CONVERSATION} // 2):
    conversation.append(role='user', content=f'question {{i}}')
    conversation.append(role='assistant', content=f'answer {{i}}', model='grok-4')
# Written an hour ago: not messages of the last minute, which the rate limit counts.
conversation.messages.update(created_at=timezone.now() - dt.timedelta(hours=1))
"""


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("session")
    with live_app(tmp, fake_upstream_server.base_url, setup=SETUP) as url:
        yield url


@pytest.fixture(scope="module")
def live_without_key(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("no-key")
    with live_app(tmp, fake_upstream_server.base_url, XAI_API_KEY="") as url:
        yield url


def test_without_a_key_send_is_disabled_and_says_why_once(
    page: Page, live_without_key: str, fake_upstream_server: FakeUpstream
) -> None:
    log_in(page, live_without_key, "alice", "alice-password-1")
    wait_ready(page)
    send = page.locator("#send-button")
    page.fill("#prompt", "Hello?")
    expect(send).to_be_disabled()
    expect(send).to_have_attribute("title", NO_KEY)
    expect(send).to_have_attribute("aria-description", NO_KEY)
    expect(page.locator("#no-key-note")).to_have_text(NO_KEY)
    expect(page.locator("#no-key-note")).to_be_visible()

    # Enter does not send either: nothing reaches the server, and no second notice comes.
    page.locator("#prompt").press("Enter")
    page.locator("#send-button").click(force=True)
    wait_ready(page)
    expect(page.locator("article.message")).to_have_count(0)
    expect(page.locator("#notice")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value("Hello?")
    assert fake_upstream_server.stream_requests() == []
    # The page says it once: the note by the button, no banner.
    assert page.get_by_text("No xAI API key is configured").count() == 1
    assert page.locator("#no-key-banner").count() == 0


def test_logged_out_in_another_tab_the_page_says_so_and_nothing_else(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    page.click("#conversation-list a")
    wait_ready(page)
    page.fill("#prompt", "a draft I want to keep")
    conversation_path = urlsplit(page.url).path

    other = page.context.new_page()  # the same browser, the same session
    other.goto(live + "/")
    with other.expect_navigation():
        other.click(".logout-form button")
    other.close()

    message = page.locator("#logged-out")
    expect(message).to_be_visible()
    expect(message).to_have_text("You were logged out. Log in again")
    link = message.get_by_role("link", name="Log in again")
    href = urlsplit(link.get_attribute("href") or "")
    assert href.path == "/accounts/login/"
    assert parse_qs(href.query) == {"next": [conversation_path]}
    # Nothing else shows, nothing else can be used, and the page does not reconnect.
    for selector in ("#prompt", "#send-button", "#sidebar", ".site-header", "#messages"):
        expect(page.locator(selector)).to_be_hidden()
    assert page.evaluate("document.querySelector('.layout').inert") is True
    expect(link).to_be_focused()
    # The close (4401) that showed it scheduled no reconnect: that would say "reconnecting".
    state = page.evaluate("document.getElementById('connection-status').dataset.state")
    assert state != "reconnecting"

    # Logging in again comes back to the conversation, with the draft in the composer.
    link.click()
    page.fill("#id_username", "alice")
    page.fill("#id_password", "alice-password-1")
    with page.expect_navigation():
        page.click("form.stacked-form button[type=submit]")
    assert urlsplit(page.url).path == conversation_path
    expect(page.locator("#prompt")).to_have_value("a draft I want to keep")


def test_a_fetch_that_the_login_page_answers_says_logged_out_too(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    page.click("#conversation-list a")
    wait_ready(page)
    # The session's cookie goes; the open socket, logged in at its start, does not hear of
    # it. Saving the settings is answered by the login page (login_required).
    page.context.clear_cookies(name="sessionid")
    page.click("#settings-panel > summary")
    page.fill("#settings-temperature", "0.5")
    page.click("#settings-save")
    expect(page.locator("#logged-out")).to_be_visible()
    expect(page.locator("#settings-panel")).to_be_hidden()


def test_loading_the_newest_messages_logged_out_says_so_and_sends_nothing(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    log_in(page, live, "alice", "alice-password-1")
    page.click("#conversation-list a")
    with page.expect_navigation():
        page.click("#earlier-messages")
    wait_ready(page)
    page.context.clear_cookies(name="sessionid")
    page.fill("#prompt", "Sent after the logout")
    page.keyboard.press("Enter")  # the page loads the newest messages first: the login page
    expect(page.locator("#logged-out")).to_be_visible()
    expect(page.locator("#messages")).to_be_hidden()
    assert page.locator("#messages #id_username").count() == 0  # not the login form inside
    assert fake_upstream_server.stream_requests() == []


def test_sending_from_an_older_page_shows_the_newest_messages_then_the_new_one(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    log_in(page, live, "alice", "alice-password-1")
    page.click("#conversation-list a")
    wait_ready(page)
    newest = f"answer {LONG_CONVERSATION // 2 - 1}"
    expect(page.locator("article.message").last).to_contain_text(newest)
    with page.expect_navigation():
        page.click("#earlier-messages")
    wait_ready(page)
    assert "before=" in page.url
    expect(page.locator("#latest-messages")).to_be_visible()
    expect(page.locator("article.message").last).not_to_contain_text(newest)

    page.fill("#prompt", "A new question")
    page.keyboard.press("Enter")

    articles = page.locator("article.message")
    expect(articles.nth(-2)).to_contain_text("A new question", timeout=10_000)
    expect(articles.last).to_have_attribute("data-role", "assistant")
    expect(articles.last).to_have_attribute("data-state", "complete", timeout=10_000)
    expect(articles.nth(-3)).to_contain_text(newest)
    expect(page.locator("#latest-messages")).to_have_count(0)
    assert "before=" not in page.url
    # The model got the newest messages as the history of the new one.
    sent = fake_upstream_server.stream_requests()[-1].json()
    history = sent.get("messages") or sent.get("input")
    assert newest in str(history[-2])
    # And reloading the page shows the same: the new message after the newest ones.
    page.reload()
    wait_ready(page)
    expect(page.locator("article.message").nth(-2)).to_contain_text("A new question")
    wait_until(page, "!document.getElementById('latest-messages')")
