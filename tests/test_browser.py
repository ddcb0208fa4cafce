"""The chat as a person uses it, in headless Chromium against Daphne."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser import log_in, needs_chromium, wait_ready, wait_until
from tests.fake_upstream import FakeUpstream, Reply, slow_stream, transcript
from tests.live import app_env, daphne, live_app, prepare_database

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live")
    with live_app(tmp, fake_upstream_server.base_url, staff=True) as url:
        yield url


def ask_and_wait(page: Page, live: str, prompt: str) -> Locator:
    """Log alice in, send `prompt` with Enter, and return the answer once complete."""
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", prompt)
    page.keyboard.press("Enter")
    assistant = page.locator("article.message[data-role=assistant]").last
    expect(assistant).to_have_attribute("data-state", "complete", timeout=10_000)
    return assistant


def test_a_user_chats_reloads_and_an_admin_sees_the_tokens(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.queue(slow_stream(count=40, delay=0.05, text="grow "))
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)

    page.fill("#prompt", "Please count for me")
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant] .content").last
    expect(answer).to_contain_text("grow")
    first_length = len(answer.inner_text())
    expect(page.locator("#stop-button")).to_be_visible()
    wait_until(
        page,
        "document.querySelector('article.message[data-role=assistant]:last-of-type .content')"
        f".innerText.length > {first_length}",
    )
    assistant = page.locator("article.message[data-role=assistant]").last
    expect(assistant).to_have_attribute("data-state", "complete", timeout=10_000)
    expect(answer).to_have_text(re.compile(r"^(grow ?){40}$"))

    page.reload()
    expect(page.locator("#conversation-list li").first).to_contain_text("Please count for me")
    expect(page.locator("article.message[data-role=user] .content").last).to_have_text(
        "Please count for me"
    )
    expect(page.locator("article.message[data-role=assistant] .content").last).to_have_text(
        re.compile(r"^(grow ?){40}$")
    )

    page.click("text=Log out")
    log_in(page, live, "staff", "staff-password-1")
    page.goto(live + "/admin/")
    page.click("text=Usage report")
    row = page.locator("#usage-users tr[data-username=alice]")
    expect(row).to_be_visible()
    # slow_stream reports usage: 10 prompt + 40 completion tokens.
    expect(row.locator("td.total_tokens")).to_have_text("50")


def skeleton(article: Locator) -> list[str]:
    """The article's elements (tag, classes, hidden), outside the rendered markdown."""
    return article.evaluate(
        """article => [article, ...article.querySelectorAll("*")]
            .filter(e => !e.parentElement.closest(".content"))
            .map(e => `${e.tagName}.${e.className}${e.hidden ? " hidden" : ""}`)"""
    )


def test_markdown_renders_the_same_live_and_after_reload(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    body = transcript("fantasy-xai-grok-code-fast-1.sse")
    fake_upstream_server.queue(Reply(body=body, pieces="random", delay=0.001))
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "Say hi in Portuguese")
    page.click("#send-button")
    assistant = page.locator("article.message[data-role=assistant]").last
    expect(assistant).to_have_attribute("data-state", "complete", timeout=10_000)
    live_html = assistant.locator(".content").inner_html()
    expect(assistant.locator("details.reasoning")).to_have_count(1)
    assert not assistant.locator("details.reasoning").evaluate("d => d.open")
    question = page.locator("article.message[data-role=user]").last
    live_markup = [skeleton(question), skeleton(assistant)]
    page.reload()
    reloaded = page.locator("article.message[data-role=assistant]").last
    assert reloaded.locator(".content").inner_html() == live_html
    # One markup for a message, live or rendered by the server (templates/chat/_message.html).
    reloaded_question = page.locator("article.message[data-role=user]").last
    assert [skeleton(reloaded_question), skeleton(reloaded)] == live_markup
    expect(reloaded.locator(".meta")).to_contain_text("grok-code-fast-1")


HOSTILE_MARKDOWN = """Here is a table:

| name | value |
|------|------:|
| a    | 1     |

```python
print("hi")
```

<script>window.__pwned = 1</script>
<img src=x onerror="window.__pwned = 2">
<svg onload="window.__pwned = 3"></svg>
[click me](javascript:window.__pwned=4) and [data](data:text/html,<script>window.__pwned=5</script>)
&lt;img src=x onerror="window.__pwned = 6"&gt;
"""


def test_markdown_tables_and_code_render_and_hostile_output_stays_inert(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    from tests.fake_upstream import chunk, sse

    pieces = [HOSTILE_MARKDOWN[i : i + 7] for i in range(0, len(HOSTILE_MARKDOWN), 7)]
    body = sse(*[chunk(p) for p in pieces], chunk(finish="stop"))
    fake_upstream_server.queue(Reply(body=body, pieces="random", delay=0.001))
    ask_and_wait(page, live, "Show me a table")

    def check() -> None:
        content = page.locator("article.message[data-role=assistant] .content").last
        expect(content.locator("table th")).to_have_count(2)
        expect(content.locator("table td")).to_have_count(2)
        expect(content.locator("pre code")).to_contain_text('print("hi")')
        expect(content.locator(".code-block .copy-button")).to_have_count(1)
        assert content.locator("script, svg, img[onerror], [onload]").count() == 0
        for href in content.locator("a").evaluate_all("links => links.map(a => a.href)"):
            assert not href.startswith(("javascript:", "data:")), href
        # markdown-it refuses to make links of javascript: and data: URLs: plain text remains.
        expect(content).to_contain_text("click me")
        assert page.evaluate("window.__pwned") is None

    check()
    page.reload()
    check()


STYLES = {
    "chat_completions": ("fantasy-xai-grok-4-fast-2.sse", "/v1/chat/completions", "Olá!"),
    "responses": (None, "/v1/responses", "Olá!"),
    "anthropic_messages": (
        "fantasy-anthropic-claude-sonnet-4-1.sse",
        "/v1/messages",
        'Olá! (That\'s "hi" in Portuguese)',
    ),
}


@pytest.mark.parametrize("style", list(STYLES))
def test_each_api_style_streams_into_the_browser(
    style: str, browser: Browser, fake_upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    from tests.test_upstream import responses_stream

    name, path, expected = STYLES[style]
    fake_upstream_server.reset()
    body = transcript(name) if name else responses_stream()
    fake_upstream_server.queue(Reply(body=body, pieces="random"))
    env = app_env(tmp_path, fake_upstream_server.base_url, XAI_API_STYLE=style)
    prepare_database(env)
    with daphne(env, tmp_path / "daphne.log") as url:
        page = browser.new_page()
        try:
            assistant = ask_and_wait(page, url, "Say hi in Portuguese")
            expect(assistant.locator(".content")).to_contain_text(expected)
        finally:
            page.close()
    [request] = fake_upstream_server.stream_requests()
    assert request.path == path
