"""Keyboard and screen readers in headless Chromium against Daphne: the shortcuts and
their help (`?`), Up to edit, the polite #answer-status, and where the focus goes.

The chords are Alt+Shift+letter here (Linux; Control+Shift+letter on a Mac: chat.js,
"keyboard")."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser import log_in, needs_chromium, send_and_wait, wait_ready, wait_until
from tests.fake_upstream import FakeUpstream, Reply, chunk, paced_stream, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium

ESC = ("Esc", "Stop the answer that is streaming")
NEW_CHAT = ("Alt+Shift+O", "New chat")
MESSAGE_BOX = ("Alt+Shift+M", "Go to the message box")
SEARCH = ("Alt+Shift+K", "Search conversations")
COPY = ("Alt+Shift+C", "Copy the last answer (as Markdown)")
UP = ("↑", "Edit your last message (in the empty message box)")
HELP = ("?", "Show these shortcuts (outside a text field)")

# Counts the changes of #answer-status (text set, nodes added or removed) from now on.
OBSERVE_STATUS = """() => {
  window.statusChanges = [];
  const status = document.getElementById('answer-status');
  new MutationObserver((records) => {
    for (const record of records) window.statusChanges.push(status.textContent);
  }).observe(status, {childList: true, characterData: true, subtree: true});
}"""


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-keyboard")
    with live_app(tmp, fake_upstream_server.base_url) as url:
        yield url


def answer_of(text: str) -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish="stop"), usage_chunk(10, 5)))


def last_answer(page: Page) -> Locator:
    return page.locator("#messages article.message[data-role=assistant]").last


def help_rows(page: Page) -> list[tuple[str, str]]:
    """The help dialog's rows, (keys, action), as shown."""
    rows = page.locator("#shortcuts-list tr")
    return [
        (row.locator("td").first.inner_text(), row.locator("td").last.inner_text())
        for row in rows.all()
    ]


def start(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)


def test_esc_stops_a_streaming_answer_but_first_closes_the_editor_it_is_pressed_in(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    start(page, live)
    send_and_wait(page, "Hello")
    fake_upstream_server.queue(paced_stream(["One ", "two ", "three ", "four."]))
    page.fill("#prompt", "Count slowly")
    page.keyboard.press("Enter")
    expect(last_answer(page).locator(".content")).to_have_text("One")

    first = page.locator("#messages article.message[data-role=user]").first
    first.locator("button.edit-message").click()
    expect(first.locator("textarea.edit-box")).to_be_focused()
    page.keyboard.press("Escape")
    expect(first.locator("textarea.edit-box")).to_have_count(0)
    expect(first.locator("button.edit-message")).to_be_focused()
    fake_upstream_server.next_piece()
    expect(last_answer(page).locator(".content")).to_have_text("One two")
    expect(last_answer(page)).to_have_attribute("data-state", "streaming")

    page.keyboard.press("Escape")
    expect(last_answer(page)).to_have_attribute("data-state", "stopped")
    expect(last_answer(page).locator(".content")).to_have_text("One two")
    expect(page.locator("#stop-button")).to_be_hidden()


def test_the_chords_open_a_new_chat_focus_the_composer_search_and_copy_the_last_answer(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    markdown = "**Bold** and `code`:\n\n```python\nprint(1)\n```"
    fake_upstream_server.queue(answer_of(markdown))
    start(page, live)
    send_and_wait(page, "Some Markdown please")
    # Its start, as read: the code block's Copy button is not part of it.
    expect(page.locator("#answer-status")).to_have_text("Grok answered: Bold and code: print(1)")

    page.locator("#messages").focus()
    page.keyboard.press("Alt+Shift+KeyM")
    expect(page.locator("#prompt")).to_be_focused()
    # Screen readers are told of them on the controls they act for.
    expect(page.locator("#prompt")).to_have_attribute("aria-keyshortcuts", "Alt+Shift+M")
    expect(page.locator("#new-chat")).to_have_attribute("aria-keyshortcuts", "Alt+Shift+O")
    expect(page.locator("#stop-button")).to_have_attribute("aria-keyshortcuts", "Escape")

    page.keyboard.press("Alt+Shift+KeyC")
    expect(last_answer(page).locator("button.copy-answer")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == markdown
    expect(page.locator("#answer-status")).to_have_text("Copied the last answer.")

    page.keyboard.press("Alt+Shift+KeyK")
    expect(page.locator("#conversation-search")).to_be_focused()

    conversation_url = page.url
    with page.expect_navigation():
        page.keyboard.press("Alt+Shift+KeyO")
    assert page.url == live + "/", (page.url, conversation_url)
    expect(page.locator("#empty-state")).to_be_visible()


def test_question_mark_lists_exactly_the_shortcuts_that_work_on_the_page(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    start(page, live)
    # In a text field `?` is a character.
    page.keyboard.press("?")
    expect(page.locator("#prompt")).to_have_value("?")
    expect(page.locator("#shortcuts-dialog")).to_be_hidden()
    page.fill("#prompt", "")

    # An empty chat: nothing to copy or edit.
    page.locator("#messages").focus()
    page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    expect(dialog).to_be_visible()
    assert help_rows(page) == [ESC, NEW_CHAT, MESSAGE_BOX, SEARCH, HELP]
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(page.locator("#messages")).to_be_focused()

    # Without the sidebar's search box (a page that had none), its shortcut is not listed.
    page.evaluate("document.getElementById('conversation-search').remove()")
    page.keyboard.press("?")
    expect(dialog).to_be_visible()
    assert help_rows(page) == [ESC, NEW_CHAT, MESSAGE_BOX, HELP]
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()

    # With an answer and a message of one's own, and a search box again: those too.
    send_and_wait(page, "Hello")
    page.evaluate(
        """() => {
        const input = document.createElement('input');
        input.id = 'conversation-search';
        input.setAttribute('aria-label', 'Search conversations');
        document.getElementById('sidebar').prepend(input);
    }"""
    )
    button = page.locator("#shortcuts-button")
    button.click()
    expect(dialog).to_be_visible()
    assert help_rows(page) == [ESC, NEW_CHAT, MESSAGE_BOX, SEARCH, COPY, UP, HELP]
    page.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    expect(button).to_be_focused()


def test_up_in_the_empty_composer_edits_the_last_message_and_only_then(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(answer_of("First answer."), answer_of("Second answer."))
    start(page, live)
    send_and_wait(page, "First question")
    send_and_wait(page, "Second question")
    users = page.locator("#messages article.message[data-role=user]")

    page.fill("#prompt", "a draft")
    page.keyboard.press("ArrowUp")
    expect(page.locator("textarea.edit-box")).to_have_count(0)
    expect(page.locator("#prompt")).to_be_focused()

    page.fill("#prompt", "")
    page.keyboard.press("ArrowUp")
    box = users.last.locator("textarea.edit-box")
    expect(box).to_be_focused()
    expect(box).to_have_value("Second question")
    expect(users.first.locator("textarea.edit-box")).to_have_count(0)

    # Saved: the new version is sent, and the focus goes back to the composer.
    fake_upstream_server.queue(answer_of("Edited answer."))
    box.fill("Second question, edited")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # on "Save and send"
    expect(last_answer(page).locator(".content")).to_have_text("Edited answer.")
    expect(users.last.locator(".content")).to_have_text("Second question, edited")
    expect(page.locator("#prompt")).to_be_focused()


def test_the_live_region_announces_the_start_and_end_of_an_answer_not_each_delta(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    start(page, live)
    status = page.locator("#answer-status")
    expect(status).to_have_attribute("role", "status")
    assert page.locator("#messages").get_attribute("aria-live") is None
    assert page.locator("#messages [aria-live]").count() == 0
    page.evaluate(OBSERVE_STATUS)

    pieces = ["Paris ", "is ", "the ", "capital ", "of ", "France."]
    fake_upstream_server.queue(paced_stream(pieces))
    page.locator("#send-button").focus()
    page.fill("#prompt", "Capital of France?")
    page.locator("#send-button").click()
    expect(status).to_have_text("Grok is answering…")
    # After a send the focus is in the composer, emptied.
    expect(page.locator("#prompt")).to_be_focused()
    expect(page.locator("#prompt")).to_have_value("")

    shown = pieces[0]
    for piece in pieces[1:]:
        fake_upstream_server.next_piece()
        shown += piece
        expect(last_answer(page).locator(".content")).to_have_text(shown.strip())
    assert page.evaluate("window.statusChanges") == ["Grok is answering…"]

    fake_upstream_server.next_piece()  # the end
    expect(last_answer(page)).to_have_attribute("data-state", "complete")
    expect(status).to_have_text("Grok answered: Paris is the capital of France.")
    assert page.evaluate("window.statusChanges") == [
        "Grok is answering…",
        "Grok answered: Paris is the capital of France.",
    ]

    # A stopped answer says so.
    fake_upstream_server.queue(paced_stream(["Let me ", "think."]))
    page.fill("#prompt", "Something long")
    page.keyboard.press("Enter")
    expect(status).to_have_text("Grok is answering…")
    page.locator("#stop-button").click()
    expect(status).to_have_text("The answer was stopped.")
    assert page.evaluate("window.statusChanges.length") == 4


def test_after_a_branch_switch_the_focus_is_on_the_switched_messages_control(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(answer_of("Paris."), answer_of("It is Paris."))
    start(page, live)
    send_and_wait(page, "Capital of France?")
    last_answer(page).locator("button.regenerate").click()
    expect(last_answer(page).locator(".content")).to_have_text("It is Paris.")
    expect(last_answer(page)).to_have_attribute("data-state", "complete")
    second_id = last_answer(page).get_attribute("data-message-id")

    last_answer(page).locator("button.branch-prev").focus()
    page.keyboard.press("Enter")
    expect(last_answer(page).locator(".branch-count")).to_have_text("1 / 2")
    first_id = last_answer(page).get_attribute("data-message-id")
    assert first_id != second_id
    # "‹" is disabled at the first version: the focus is on "›" of the message shown now.
    wait_until(page, "document.activeElement.matches('.branch-next')")
    focused_id = page.evaluate(
        "document.activeElement.closest('article.message').dataset.messageId"
    )
    assert focused_id == first_id

    page.keyboard.press("Enter")
    expect(last_answer(page).locator(".content")).to_have_text("It is Paris.")
    wait_until(page, "document.activeElement.matches('.branch-prev')")
    focused_id = page.evaluate(
        "document.activeElement.closest('article.message').dataset.messageId"
    )
    assert focused_id == second_id
