"""Images in, in headless Chromium against Daphne: attach, see the thumbnail, send, and
find the image in the upstream request and again after a reload."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live")
    with live_app(tmp, fake_upstream_server.base_url, MEDIA_ROOT=str(tmp / "media")) as url:
        yield url


def loaded(page: Page, selector: str) -> bool:
    """Whether the image arrived and decoded: the CSP let it in, the server served it."""
    return page.eval_on_selector(selector, "img => img.complete && img.naturalWidth > 0")


def test_an_attached_png_is_shown_sent_upstream_and_shown_again_after_a_reload(
    page: Page, live: str, fake_upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    # xAI's list says which models take images; the page offers the button for those only.
    fake_upstream_server.language_models = {
        "models": [
            {"id": "grok-4", "input_modalities": ["text", "image"]},
            {"id": "grok-3-mini", "input_modalities": ["text"]},
        ]
    }
    out = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(out, "PNG")
    data = out.getvalue()
    picture = tmp_path / "picture.png"
    picture.write_bytes(data)

    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    button = page.locator("#attach-button")
    page.select_option("#model-picker", "grok-3-mini")
    expect(button).to_be_disabled()
    expect(button).to_have_attribute(
        "title", "grok-3-mini does not take images: choose a model that does to attach some."
    )
    page.select_option("#model-picker", "grok-4")
    expect(button).to_be_enabled()

    page.set_input_files("#attach-input", str(picture))
    chip = page.locator("#pending-attachments .attachment-chip")
    expect(chip).to_have_attribute("data-state", "ready")
    expect(chip.locator("img")).to_be_visible()
    assert loaded(page, "#pending-attachments img")

    page.fill("#prompt", "What colour is this?")
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]")
    expect(answer).to_have_attribute("data-state", "complete", timeout=10_000)
    expect(page.locator("#pending-attachments")).to_be_hidden()
    [request] = fake_upstream_server.stream_requests()
    assert request.json()["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {
                        "url": "data:image/png;base64," + base64.b64encode(data).decode()
                    },
                },
                {"type": "text", "text": "What colour is this?"},
            ],
        }
    ]
    sent = page.locator("article.message.user .attachments img")
    expect(sent).to_be_visible()
    assert loaded(page, "article.message.user .attachments img")

    page.reload()
    wait_ready(page)
    link = page.locator("article.message.user a.attachment")
    expect(link.locator("img")).to_be_visible()
    assert loaded(page, "article.message.user .attachments img")
    with page.context.expect_page() as opened:
        link.click()
    full = opened.value
    full.wait_for_load_state()
    assert full.url == live + link.get_attribute("href")
    assert full.evaluate("document.contentType") == "image/png"
