"""The model picker in headless Chromium against Daphne: filled from a list in OpenAI's
shape, and a conversation whose model the upstream stopped listing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, send_and_wait, wait_ready
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium

OPENAI_LIST = {
    "object": "list",
    "data": [
        {"id": "grok-3", "object": "model", "owned_by": "xai", "created": 1},
        {"id": "grok-4.3", "object": "model", "owned_by": "xai", "created": 1},
    ],
}


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live")
    # The list is read again on every page, so a test can change it between two pages.
    with live_app(
        tmp,
        fake_upstream_server.base_url,
        CHAT_DEFAULT_MODEL="grok-4.3",
        UPSTREAM_MODELS_CACHE_SECONDS="0",
    ) as url:
        yield url


def test_a_list_in_openais_shape_from_language_models_fills_the_picker(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.language_models = OPENAI_LIST  # 200, but not xAI's shape
    fake_upstream_server.models = OPENAI_LIST
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    options = page.locator("#model-picker option")
    expect(options).to_have_text(["grok-3", "grok-4.3"])
    expect(page.locator("#model-picker")).to_have_value("grok-4.3")


def test_a_conversation_whose_model_is_gone_goes_on_with_the_default(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.models = OPENAI_LIST
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.select_option("#model-picker", "grok-3")
    send_and_wait(page, "What is 2 + 2?")
    assert fake_upstream_server.stream_requests()[-1].json()["model"] == "grok-3"
    page.wait_for_url("**/c/*/")

    # The upstream retires grok-3: the conversation still shows, with a current model.
    fake_upstream_server.models = {"object": "list", "data": OPENAI_LIST["data"][1:]}
    page.reload()
    wait_ready(page)
    expect(page.locator("article.message")).to_have_count(2)
    picker = page.locator("#model-picker")
    expect(picker).to_have_value("grok-4.3")
    gone = picker.locator("option.model-gone")
    expect(gone).to_have_text("grok-3 (no longer offered)")
    expect(gone).to_be_disabled()

    send_and_wait(page, "And 3 + 3?")
    assert fake_upstream_server.stream_requests()[-1].json()["model"] == "grok-4.3"
