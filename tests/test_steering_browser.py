"""Issue 14 end to end in Chromium: a system prompt set in the panel, a generated title in
the sidebar, regenerate, versions, an edit that branches, and reload on the same path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("steering")
    with live_app(tmp, fake_upstream_server.base_url, CHAT_TITLES="true") as url:
        yield url


def answer_of(text: str) -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish="stop"), usage_chunk(10, 5)))


def test_a_system_prompt_a_title_regenerate_versions_edit_and_reload(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(
        answer_of("Paris."),
        answer_of("The French capital"),  # the title request
        answer_of("It is Paris."),
        answer_of("Berlin."),
    )
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.click("#settings-panel > summary")
    page.fill("#settings-system_prompt", "Answer in one short sentence.")
    page.fill("#prompt", "What is the capital of France?")
    page.keyboard.press("Enter")
    texts = page.locator("#messages article.message .content")
    answer = page.locator("#messages article.message[data-role=assistant]").last
    expect(texts).to_have_text(["What is the capital of France?", "Paris."])
    expect(answer).to_have_attribute("data-state", "complete")
    expect(page.locator("#conversation-list li").first).to_have_text("The French capital")
    expect(page.locator("#settings-summary")).to_have_text("System prompt")

    answer.locator("button.regenerate").click()
    expect(texts).to_have_text(["What is the capital of France?", "It is Paris."])
    expect(answer).to_have_attribute("data-state", "complete")
    expect(answer.locator(".branch-count")).to_have_text("2 / 2")
    answer.locator("button.branch-prev").click()
    expect(texts).to_have_text(["What is the capital of France?", "Paris."])
    expect(answer.locator(".branch-count")).to_have_text("1 / 2")

    question = page.locator("#messages article.message").first
    question.locator("button.edit-message").click()
    question.locator("textarea.edit-box").fill("What is the capital of Germany?")
    question.locator("button.edit-save").click()
    expect(texts).to_have_text(["What is the capital of Germany?", "Berlin."])
    expect(answer).to_have_attribute("data-state", "complete")
    expect(question.locator(".branch-count")).to_have_text("2 / 2")

    page.reload()
    wait_ready(page)
    expect(texts).to_have_text(["What is the capital of Germany?", "Berlin."])
    expect(page.locator("#conversation-list li").first).to_have_text("The French capital")

    answers = [r.json() for r in fake_upstream_server.stream_requests()]
    system = {"role": "system", "content": "Answer in one short sentence."}
    first = {"role": "user", "content": "What is the capital of France?"}
    assert answers[0]["messages"] == [system, first]
    assert answers[2]["messages"] == answers[0]["messages"]  # regenerated: the same question
    assert answers[3]["messages"] == [
        system,
        {"role": "user", "content": "What is the capital of Germany?"},
    ]
