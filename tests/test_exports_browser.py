"""Export and import in headless Chromium against Daphne: a conversation downloaded as
JSON from the chat page, imported on the settings page, opens the same and marked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests import axe
from tests.browser import log_in, needs_chromium, send_and_wait, wait_ready
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-exports")
    with live_app(tmp, fake_upstream_server.base_url) as url:
        yield url


def answer_of(text: str) -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish="stop"), usage_chunk(10, 5)))


def texts(page: Page) -> list[str]:
    return page.locator("#messages article.message .content").all_text_contents()


def test_a_conversation_exported_as_json_imports_on_the_settings_page_as_a_marked_copy(
    page: Page, live: str, fake_upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    page.set_viewport_size({"width": 1280, "height": 800})
    fake_upstream_server.queue(answer_of("Paris."), answer_of("It is **Paris**."))
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "Capital of France?")
    page.keyboard.press("Enter")
    last = page.locator("#messages article.message[data-role=assistant]").last
    expect(last).to_have_attribute("data-state", "complete", timeout=10_000)
    last.locator("button.regenerate").click()
    expect(last.locator(".content")).to_have_text("It is Paris.")
    expect(last).to_have_attribute("data-state", "complete", timeout=10_000)
    original = texts(page)
    assert original == ["Capital of France?", "It is Paris."]

    # The links came with the new conversation (chat.js showConversationActions).
    json_link = page.locator("#export-json-link")
    expect(json_link).to_be_visible()
    with page.expect_download() as info:
        json_link.click()
    download = info.value
    assert download.suggested_filename.endswith("-capital-of-france.json")
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    document = json.loads(saved.read_text())
    assert document["format"] == "grokchat" and len(document["conversations"][0]["messages"]) == 3

    with page.expect_download() as info:
        page.locator("#export-md-link").click()
    markdown = Path(info.value.path()).read_text()
    assert markdown.startswith("# Capital of France?") and "It is **Paris**." in markdown

    page.click("#settings-link")
    expect(page.locator("#import-form")).to_be_visible()
    assert axe.violations(page) == []
    page.set_input_files("#id_file", str(saved))
    with page.expect_navigation():
        page.click("#import-button")
    assert "/c/" in page.url
    expect(page.locator("#imported-note")).to_contain_text("Imported from a Grok Chat export on")
    expect(page.locator("#messages article.message .content")).to_have_text(original)
    versions = page.locator("#messages article.message[data-role=assistant] .branch-count")
    expect(versions).to_have_text("2 / 2")
    sidebar = page.locator("#conversation-list li")
    expect(sidebar).to_have_count(2)

    # A bad file: a clear error on the settings page, and nothing more in the sidebar.
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "grokchat", "version": 7, "conversations": []}')
    page.goto(live + "/settings/")
    page.set_input_files("#id_file", str(bad))
    page.click("#import-button")
    expect(page.locator("#import-errors")).to_contain_text(
        "Not imported: The file: it is version 7 of the format; this app reads version 1."
    )
    assert axe.violations(page) == []
    page.goto(live + "/")
    expect(page.locator("#conversation-list li")).to_have_count(2)


def test_export_all_streams_one_json_document_from_daphne(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(answer_of("Madrid."))
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    send_and_wait(page, "Capital of Spain?")
    response = page.request.get(live + "/export/")
    assert response.status == 200
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="grokchat-alice-'
    )
    assert response.headers.get("transfer-encoding") == "chunked"
    document = json.loads(response.body())
    assert document["format"] == "grokchat" and document["user"] == "alice"
    spain = [c for c in document["conversations"] if c["title"] == "Capital of Spain?"]
    assert [m["content"] for m in spain[0]["messages"]] == ["Capital of Spain?", "Madrid."]
    assert spain[0]["messages"][1]["usage"]["total_tokens"] == 15
