"""Hostile model output, replayed through the loopback upstream into headless Chromium.

One Daphne, one browser, one logged-in context; each case is a new conversation. A trap,
window.__pwned, is set by every payload that runs; it must stay unset while the answer
streams and after a reload, and the rendered answer may hold only the markup Markdown makes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply, chunk, json_reply
from tests.live import live_app

pytestmark = needs_chromium

END = "END-OF-ANSWER"

CORPUS: dict[str, str] = {
    "script tags": """<script>window.__pwned = "script"</script>
<SCRIPT SRC=/static/js/chat.js></SCRIPT>
<script>alert(1)</script>""",
    "img onerror": """<img src=x onerror="window.__pwned = 'img'">
<IMG SRC=x OnErRoR=window.__pwned='img2'>""",
    "svg onload": """<svg onload="window.__pwned = 'svg'"></svg>
<svg><script>window.__pwned = 'svg-script'</script></svg>
<svg><animate onbegin="window.__pwned='animate'" attributeName=x dur=1s>""",
    "javascript and data links": """[click me](javascript:window.__pwned='js-link')
[data](data:text/html,<script>window.__pwned='data-link'</script>)
[data64](data:text/html;base64,PHNjcmlwdD53aW5kb3cuX19wd25lZD0xPC9zY3JpcHQ+)
<a href="javascript:window.__pwned='raw-a'">raw anchor</a>""",
    "raw html inside code fences": """```html
<script>window.__pwned = 'fenced'</script>
<img src=x onerror="window.__pwned = 'fenced-img'">
```

~~~
<iframe src="javascript:parent.__pwned='tilde-fence'"></iframe>
~~~

    <script>window.__pwned = 'indented'</script>

Inline: `<img src=x onerror="window.__pwned='inline-code'">`""",
    "raw html outside code": """<div onclick="window.__pwned='div'"><b onmouseover="window.__pwned='b'">bold?</b></div>
<p>paragraph</p><span style="x">span</span>
<marquee onstart="window.__pwned='marquee'">old</marquee>
<details open ontoggle="window.__pwned='toggle'"><summary>s</summary></details>
<input autofocus onfocus="window.__pwned='focus'">""",
    "entities that decode to tags": """&lt;img src=x onerror="window.__pwned='entity'"&gt;
&#60;script&#62;window.__pwned='decimal'&#60;/script&#62;
&#x3C;img src=x onerror=window.__pwned='hex'&#x3E;
&amp;lt;script&amp;gt;window.__pwned='double'&amp;lt;/script&amp;gt;""",
    "markdown images with script sources": """![x](javascript:window.__pwned='img-js')
![svg](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)
![png](data:image/png;base64,iVBORw0KGgo=)
![quote](x" onerror="window.__pwned='img-attr')
![ref][evil]

[evil]: javascript:window.__pwned='img-ref'""",
    "autolinks": """<javascript:window.__pwned='autolink'>
<JAVASCRIPT:alert(1)>
<vbscript:msgbox(1)>
<data:text/html,<script>alert(1)</script>>
<http://127.0.0.1:9/fine>
bare javascript:window.__pwned='linkify' and mailto:someone@example.invalid""",
    "nested and unclosed tags": """<<script>script>window.__pwned='nested'<</script>/script>
<scr<script>ipt>window.__pwned='split'</scr</script>ipt>
<svg><p><style><img src=x onerror="window.__pwned='mxss-svg'">
<math><mtext><table><mglyph><style><img src=x onerror="window.__pwned='mxss-math'">
<noscript><p title="</noscript><img src=x onerror=window.__pwned='noscript'>">
<img src="x" onerror="window.__pwned='unclosed'" """,
    "iframes and embeds": """<iframe src="javascript:parent.__pwned='iframe'"></iframe>
<iframe srcdoc="<script>parent.__pwned='srcdoc'</script>"></iframe>
<object data="javascript:parent.__pwned='object'"></object>
<embed src="javascript:parent.__pwned='embed'">
<frameset onload="window.__pwned='frameset'">""",
    "vbscript links": """<a href="vbscript:msgbox(1)">vb</a>
[vb](vbscript:msgbox(1))
[VB](VbScRiPt:msgbox(1))""",
    "style attributes and tags": """<p style="background:url(javascript:window.__pwned='style')">styled</p>
<style>@import 'http://127.0.0.1:9/x.css'; body { display: none }</style>
<link rel=stylesheet href="http://127.0.0.1:9/x.css">
| a | b |
|:--|--:|
| <b style="color:red">c</b> | d |""",
    "mixed case and obfuscated schemes": """[mixed](JaVaScRiPt:window.__pwned='mixed')
[tab](jav&#x09;ascript:window.__pwned='tab')
[entity](&#106;avascript:window.__pwned='entity-link')
[space]( javascript:window.__pwned='space')
[newline](java
script:window.__pwned='newline')
[ref link][1]

[1]: JAVASCRIPT:window.__pwned='ref'""",
    "page-level tags": """<meta http-equiv="refresh" content="0;url=javascript:window.__pwned='meta'">
<base href="javascript:/">
<form action="javascript:window.__pwned='form'"><button>go</button></form>
<body onload="window.__pwned='body'">
<template><script>window.__pwned='template'</script></template>""",
}

ALLOWED_TAGS = {
    "p", "em", "strong", "s", "del", "code", "pre", "a", "img", "ul", "ol", "li", "blockquote",
    "hr", "br", "h1", "h2", "h3", "h4", "h5", "h6", "table", "thead", "tbody", "tr", "th", "td",
    "span", "div", "button",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"href", "src", "alt", "title", "class", "target", "rel", "start", "type"}

# Every finding about the page, as a list of strings; empty when all is well.
INSPECT = """(args) => {
  const [allowedTags, allowedAttributes] = args;
  const found = [];
  const protocol = (value) => { try { return new URL(value, location.href).protocol; } catch { return "bad"; } };
  for (const content of document.querySelectorAll("article.message[data-role=assistant] .content")) {
    for (const el of content.querySelectorAll("*")) {
      const tag = el.tagName.toLowerCase();
      if (!allowedTags.includes(tag)) found.push(`answer has <${tag}>`);
      for (const attr of el.attributes) {
        if (!allowedAttributes.includes(attr.name)) found.push(`answer has ${tag}[${attr.name}]`);
      }
      if (tag === "div" && el.className !== "code-block") found.push(`answer has div.${el.className}`);
      if (tag === "button" && el.className !== "copy-button") found.push("answer has a button");
      // highlight.js's scopes: hljs-keyword, language-javascript, language_ ...
      if (tag === "span" && ![...el.classList].every((c) => /^(hljs-[\\w-]+|language-[\\w-]+|\\w+_)$/.test(c)))
        found.push(`answer has span.${el.className}`);
      if (tag === "a" && el.hasAttribute("href") && !["http:", "https:", "mailto:"].includes(protocol(el.getAttribute("href"))))
        found.push(`link to ${el.getAttribute("href")}`);
      if (tag === "img" && el.hasAttribute("src") && !["http:", "https:"].includes(protocol(el.getAttribute("src"))))
        found.push(`image from ${el.getAttribute("src")}`);
    }
  }
  const textOnly = "article.message .reasoning-text, article.message .error, article.message .meta, " +
    "article.message[data-role=user] .content, #conversation-list a, #notice .notice-text";
  for (const el of document.querySelectorAll(textOnly)) {
    if (el.children.length) found.push(`markup inside ${el.className || el.tagName}`);
  }
  for (const el of document.querySelectorAll("*")) {
    for (const attr of el.attributes) {
      if (attr.name.toLowerCase().startsWith("on")) found.push(`${el.tagName}[${attr.name}]`);
    }
  }
  for (const el of document.querySelectorAll("iframe, frame, object, embed, base, meta[http-equiv], style, link[href^=http]")) {
    found.push(`page has <${el.tagName.toLowerCase()}>`);
  }
  for (const el of document.querySelectorAll("[href], [src], [action], [formaction]")) {
    for (const name of ["href", "src", "action", "formaction"]) {
      const value = el.getAttribute(name);
      if (value !== null && ["javascript:", "vbscript:", "data:"].includes(protocol(value)) && el.tagName !== "IMG")
        found.push(`${el.tagName}[${name}=${value}]`);
    }
  }
  for (const script of document.scripts) {
    // The page's own data (#token-counters, #model-efforts, #model-images) is JSON, which a browser never runs.
    if (script.type === "application/json" && ["token-counters", "model-efforts", "model-images"].includes(script.id)) continue;
    if (!script.src.startsWith(location.origin + "/static/")) found.push(`script ${script.src || "inline"}`);
  }
  return found;
}"""


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-hostile")
    with live_app(tmp, fake_upstream_server.base_url) as url:
        yield url


class Watch:
    """What the page did that it should not have: dialogs, errors, CSP reports, requests
    to anywhere but the app (those are aborted, so nothing leaves the machine)."""

    def __init__(self) -> None:
        self.events: list[str] = []


@pytest.fixture(scope="module")
def watch() -> Watch:
    return Watch()


@pytest.fixture(scope="module")
def context(browser: Browser, live: str, watch: Watch) -> Iterator[BrowserContext]:
    fake_context = browser.new_context()

    def route(route) -> None:
        if route.request.url.startswith(live + "/"):
            route.continue_()
        else:
            watch.events.append(f"request to {route.request.url}")
            route.abort()

    fake_context.route("**/*", route)
    page = fake_context.new_page()
    log_in(page, live, "alice", "alice-password-1")
    page.close()
    yield fake_context
    fake_context.close()


@pytest.fixture
def page(
    context: BrowserContext, watch: Watch, fake_upstream_server: FakeUpstream
) -> Iterator[Page]:
    fake_upstream_server.reset()
    watch.events.clear()
    page = context.new_page()
    page.on(
        "dialog", lambda dialog: (watch.events.append(f"dialog {dialog.message}"), dialog.dismiss())
    )
    page.on("pageerror", lambda exc: watch.events.append(f"page error {exc}"))
    page.on(
        "console",
        lambda msg: (
            watch.events.append(f"console {msg.text}")
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )
    yield page
    page.close()


def stream_of(text: str, size: int = 9, **chunk_fields) -> Reply:
    """The text as xAI streams it, a few characters per event, a little apart."""
    events = [chunk(text[i : i + size], **chunk_fields) for i in range(0, len(text), size)]
    events += [chunk(finish="stop", **chunk_fields)]
    pieces = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
    # At least a second of streaming, so that short cases are checked mid-stream too.
    return Reply(pieces=pieces, delay=max(0.01, 1.0 / len(pieces)))


def inspect(page: Page) -> list[str]:
    return page.evaluate(INSPECT, [sorted(ALLOWED_TAGS), sorted(ALLOWED_ATTRIBUTES)])


def assert_inert(page: Page, watch: Watch, live: str) -> None:
    assert page.evaluate("window.__pwned") is None
    assert inspect(page) == []
    assert watch.events == []
    assert page.url.startswith(live + "/c/")


def ask(page: Page, live: str, watch: Watch, prompt: str) -> int:
    """Send the prompt in a new chat and check the page all the while the answer streams;
    returns how many checks ran during streaming."""
    page.goto(live + "/")
    wait_ready(page)
    page.fill("#prompt", prompt)
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_be_attached()
    checks = 0
    deadline = time.monotonic() + 15
    while answer.get_attribute("data-state") == "streaming":
        assert time.monotonic() < deadline, "the answer never ended"
        assert_inert(page, watch, live)
        checks += 1
        time.sleep(0.03)
    return checks


HOSTILE_PROMPT = "<img src=x onerror=\"window.__pwned='prompt'\"> <script>alert('title')</script>"


@pytest.mark.parametrize("case", list(CORPUS))
def test_hostile_markdown_stays_inert_while_streaming_and_after_reload(
    page: Page, live: str, watch: Watch, fake_upstream_server: FakeUpstream, case: str
) -> None:
    text = CORPUS[case] + f"\n\n{END}"
    fake_upstream_server.queue(stream_of(text))
    checks = ask(page, live, watch, f"{HOSTILE_PROMPT} {case}")
    assert checks >= 2  # the page was checked mid-stream, not only at the end

    content = page.locator("article.message[data-role=assistant] .content").last
    expect(content).to_contain_text(END)
    assert (
        page.locator("article.message[data-role=assistant]").last.get_attribute("data-state")
        == "complete"
    )
    assert_inert(page, watch, live)
    rendered = content.inner_html()

    page.reload()
    content = page.locator("article.message[data-role=assistant] .content").last
    expect(content).to_contain_text(END)
    assert_inert(page, watch, live)
    assert content.inner_html() == rendered
    # The hostile prompt is the title and the question: shown, as text.
    expect(page.locator("article.message[data-role=user] .content").last).to_contain_text("onerror")
    expect(page.locator("#conversation-list li").first).to_contain_text("<img src=x")


def test_hostile_reasoning_model_name_and_error_text_stay_inert(
    page: Page, live: str, watch: Watch, fake_upstream_server: FakeUpstream
) -> None:
    payload = "<img src=x onerror=\"window.__pwned='other'\"><script>window.__pwned=1</script>"
    # Reasoning and the model's name come from the upstream too.
    fake_upstream_server.queue(
        stream_of(f"fine {END}", reasoning=payload, model=f"grok{payload}"),
        json_reply(400, {"code": "bad", "error": f"rejected {payload}"}),
    )
    ask(page, live, watch, "reason")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer.locator(".reasoning-text")).to_contain_text("onerror")
    expect(answer.locator(".meta")).to_contain_text("grok<img")
    assert_inert(page, watch, live)

    page.fill("#prompt", "fail please")
    page.keyboard.press("Enter")
    failed = page.locator("article.message[data-role=assistant]").nth(1)
    expect(failed).to_have_attribute("data-state", "error")
    expect(failed.locator(".error")).to_contain_text("rejected <img")
    assert_inert(page, watch, live)

    page.reload()
    expect(page.locator("article.message[data-role=assistant] .error").last).to_contain_text(
        "rejected <img"
    )
    expect(page.locator("article.message[data-role=assistant] .meta").first).to_contain_text(
        "grok<img"
    )
    assert_inert(page, watch, live)
