"""Steering a conversation in Chromium: regenerate, versions, edit, retry, continue, copy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply, chunk, json_reply, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-branches")
    with live_app(tmp, fake_upstream_server.base_url) as url:
        yield url


def answer_of(text: str, finish: str = "stop") -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish=finish), usage_chunk(10, 5)))


def messages(page: Page) -> Locator:
    return page.locator("#messages article.message")


def expect_path(page: Page, texts: list[str]) -> None:
    expect(messages(page).locator(".content")).to_have_text(texts)


def last_answer(page: Page) -> Locator:
    return page.locator("#messages article.message[data-role=assistant]").last


def wait_ended(page: Page, state: str = "complete") -> None:
    expect(last_answer(page)).to_have_attribute("data-state", state, timeout=10_000)


def test_regenerate_switch_versions_edit_and_reload_keep_one_path(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(
        answer_of("Paris."), answer_of("It is Paris."), answer_of("Rome."), answer_of("Berlin.")
    )
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "Capital of France?")
    page.keyboard.press("Enter")
    wait_ended(page)

    last_answer(page).locator("button.regenerate").click()
    expect(last_answer(page).locator(".content")).to_have_text("It is Paris.")
    wait_ended(page)
    versions = last_answer(page).locator(".branches")
    expect(versions.locator(".branch-count")).to_have_text("2 / 2")
    expect_path(page, ["Capital of France?", "It is Paris."])

    versions.locator("button.branch-prev").click()
    expect(last_answer(page).locator(".branch-count")).to_have_text("1 / 2")
    expect_path(page, ["Capital of France?", "Paris."])

    # A second turn on this version, then an edit of the first message: a new branch.
    page.fill("#prompt", "And Italy?")
    page.keyboard.press("Enter")
    expect_path(page, ["Capital of France?", "Paris.", "And Italy?", "Rome."])
    wait_ended(page)
    first = messages(page).first
    first.locator("button.edit-message").click()
    first.locator("textarea.edit-box").fill("Capital of Germany?")
    first.locator("button.edit-save").click()
    expect_path(page, ["Capital of Germany?", "Berlin."])
    wait_ended(page)
    expect(messages(page).first.locator(".branch-count")).to_have_text("2 / 2")
    body = fake_upstream_server.stream_requests()[-1].json()
    assert body["messages"] == [{"role": "user", "content": "Capital of Germany?"}]

    page.reload()
    wait_ready(page)
    expect_path(page, ["Capital of Germany?", "Berlin."])
    # Back to the first version of the first message: its whole continuation returns.
    messages(page).first.locator("button.branch-prev").click()
    expect_path(page, ["Capital of France?", "Paris.", "And Italy?", "Rome."])
    page.reload()
    expect_path(page, ["Capital of France?", "Paris.", "And Italy?", "Rome."])


def test_a_failed_answer_has_retry_and_a_cut_one_continue(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(
        json_reply(500, {"error": "overloaded"}),
        answer_of("Once upon", finish="length"),
        answer_of(" a time."),
    )
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "Tell me a story")
    page.keyboard.press("Enter")
    wait_ended(page, "error")
    retry = last_answer(page).locator("button.regenerate")
    expect(retry).to_have_text("Retry")
    expect(last_answer(page).locator("button.continue")).to_be_hidden()
    retry.click()
    expect(last_answer(page).locator(".content")).to_have_text("Once upon")
    wait_ended(page)

    last_answer(page).locator("button.continue").click()
    expect(last_answer(page).locator(".content")).to_have_text("Once upon a time.")
    wait_ended(page)
    expect(last_answer(page).locator(".branch-count")).to_have_text("3 / 3")
    expect(last_answer(page).locator("button.continue")).to_be_hidden()

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    last_answer(page).locator("button.copy-answer").click()
    expect(last_answer(page).locator("button.copy-answer")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "Once upon a time."
