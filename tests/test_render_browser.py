"""Long answers stay fast (issue 16): while an answer streams, the page renders its finished
Markdown blocks once and re-renders only the open block, and what it shows is the full
render of the text so far, in headless Chromium against Daphne and the loopback upstream.

The page's test hook: an init script sets `window.__renderStats = {check}` before chat.js
runs; chat.js then records each frame's characters handed to markdown-it (`frames`), and
with `check` compares the answer's DOM after every streaming frame with a full render of
the same text (`checked`, `mismatches`, `lastText`). `fullRender(text)` is the function an
ended answer is rendered with (sanitised, highlighted, code blocks with their Copy button);
`streamInto(element, text)` is the streaming render a frame does.

What is promised, and asserted exactly: after every frame, the answer's innerHTML equals
the full render of the text received so far (no allowed difference: the open block is
rendered from the same tokens a full parse makes); at the end, and after a reload, it
equals the full render of the whole answer.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium

ANSWER = "article.message[data-role=assistant]"

# Markdown's non-local constructs, each where streaming could get it wrong.
TRICKY = """# Streaming answer

A paragraph with a [late link][later], a [spaced one][ LATER ] and *emphasis*.

This line becomes a setext heading
---

And this one too
===

- item one
- item two
  continued
lazily continued
- item three

  with a second paragraph (the list turns loose)

1. first
2. second

3. third, after a blank line

> quote line one
lazy line of the quote
> > nested quote
> back in the first

| left | centre | right |
|:-----|:------:|------:|
| a | **b** | `c` |
| d | e | [f][1] |

```python
def double(x):
    return x * 2


# blank lines inside the fence do not end it
print(double(3))
```

~~~
a tilde fence with ``` inside
~~~

    indented code

    still indented code

Right after the code.
# A heading with no blank line before
Text under it.
***
After a rule, see [1] and [2], and https://example.com/bare.

A hard break  
here.

[later]: https://example.com/later "Later title"
[1]: https://example.com/one
[2]: <https://example.com/two>
"""

LONG_CODE = (
    "```js\n" + "".join(f"const v{i} = {i} * 2; // line {i}\n" for i in range(120)) + "```\n"
)


def by_lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def by_size(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def by_random_sizes(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(text):
        size = rng.randint(1, 40)
        pieces.append(text[at : at + size])
        at += size
    return pieces


def at_markers(text: str) -> list[str]:
    """Cut inside each marker that changes what came before: fences, setext and table
    lines, link brackets, blank lines."""
    cuts = {0, len(text)}
    for marker in ("```", "~~~", "---", "===", "***", "|", "[", "]:", "\n\n", "\n>", "\n-"):
        at = text.find(marker)
        while at != -1:
            cuts.update((at + 1, at + len(marker)))
            at = text.find(marker, at + 1)
    ordered = sorted(c for c in cuts if 0 <= c <= len(text))
    return [text[a:b] for a, b in zip(ordered, ordered[1:], strict=False) if b > a]


CHUNKINGS = {
    "line by line": lambda: by_lines(TRICKY),
    "13 characters at a time": lambda: by_size(TRICKY, 13),
    "random sizes": lambda: by_random_sizes(TRICKY, seed=16),
    "cut inside every marker": lambda: at_markers(TRICKY),
    "long code in 97-character pieces": lambda: by_size(TRICKY[:400] + LONG_CODE + TRICKY, 97),
}


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live-render")
    # No limit on answers at once: a failed case's answer, still waiting for its pieces,
    # does not block the next case's.
    with live_app(tmp, fake_upstream_server.base_url, CHAT_MAX_CONCURRENT_ANSWERS="0") as url:
        yield url


def paced_answer(pieces: list[str]) -> Reply:
    """Each piece on a next_piece() of the test (the first at once), then the end."""
    events = [sse(chunk(piece), done=False) for piece in pieces]
    events.append(sse(chunk(finish="stop"), usage_chunk(12, len(pieces))))
    return Reply(pieces=events, paced=True)


def open_chat(page: Page, live: str, check: bool) -> None:
    page.add_init_script(f"window.__renderStats = {{ check: {'true' if check else 'false'} }};")
    log_in(page, live, "alice", "alice-password-1")
    wait_ready(page)


def ask(page: Page, text: str) -> None:
    page.fill("#prompt", text)
    page.keyboard.press("Enter")
    expect(page.locator(ANSWER)).to_have_count(1)


def until_rendered(page: Page, text: str, timeout: float = 20) -> None:
    """Until a streaming frame has rendered exactly `text` (polled, no deadline race)."""
    deadline = time.monotonic() + timeout
    while page.evaluate("() => window.__renderStats.lastText?.length ?? -1") != len(text):
        assert time.monotonic() < deadline, f"no frame rendered the first {len(text)} characters"
        time.sleep(0.01)
    assert page.evaluate("() => window.__renderStats.lastText") == text


def shown_and_full(page: Page, text: str) -> tuple[str, str]:
    return page.evaluate(
        """(text) => [document.querySelector("article.message[data-role=assistant] .content").innerHTML,
                      window.__renderStats.fullRender(text)]""",
        text,
    )


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
def test_a_streaming_answer_shows_the_full_render_of_its_text_so_far_after_every_frame(
    page: Page, live: str, fake_upstream_server: FakeUpstream, chunking: str
) -> None:
    pieces = CHUNKINGS[chunking]()
    text = "".join(pieces)
    fake_upstream_server.queue(paced_answer(pieces))
    open_chat(page, live, check=True)
    ask(page, f"Some tricky Markdown, {chunking}")

    so_far = ""
    for piece in pieces:
        so_far += piece
        until_rendered(page, so_far)
        shown, full = shown_and_full(page, so_far)
        assert shown == full, f"after {len(so_far)} characters"
        fake_upstream_server.next_piece()  # the next piece, or after the last one the end

    answer = page.locator(ANSWER)
    expect(answer).to_have_attribute("data-state", "complete")
    stats = page.evaluate(
        "() => ({checked: window.__renderStats.checked, mismatches: window.__renderStats.mismatches})"
    )
    assert stats["mismatches"] == []
    assert stats["checked"] >= len(pieces)  # every piece had a frame, each one compared
    shown, full = shown_and_full(page, text)
    assert shown == full
    assert 'class="code-block"' in shown and '<a href="https://example.com/later"' in shown
    assert "<h2>This line becomes a setext heading</h2>" in shown

    page.reload()  # the stored answer: one full render of the text the server kept
    wait_ready(page)
    shown, full = shown_and_full(page, text)
    assert shown == full


def blocks_answer(length: int) -> str:
    """Realistic mixed Markdown of about `length` characters: paragraphs, lists, code."""
    blocks = [
        "A paragraph about step {n}, with **bold** words, `inline code` and a "
        "[link](https://example.com/{n}) to read more about what it does and why.",
        "- the first point of {n}\n- the second point, a bit longer than the first\n- a third",
        "```python\ndef step_{n}(x):\n    total = x * {n}\n    return total + 1\n```",
        "## Part {n}",
        "1. one thing\n2. another thing\n3. the last thing of part {n}",
        "> A quoted remark about part {n}, which goes on for a while to fill the line.",
    ]
    out: list[str] = []
    n = 0
    while sum(len(b) + 2 for b in out) < length:
        out.append(blocks[n % len(blocks)].format(n=n))
        n += 1
    return "\n\n".join(out) + "\n"


PIECE = 150


def parsed_per_frame(page: Page, live: str, fake: FakeUpstream, text: str) -> list[int]:
    """Stream `text` in PIECE-character pieces, one frame each; each frame's characters
    handed to markdown-it."""
    pieces = by_size(text, PIECE)
    fake.queue(paced_answer(pieces))
    page.goto(live + "/")
    wait_ready(page)
    ask(page, f"An answer of {len(text)} characters")
    so_far = ""
    for piece in pieces:
        so_far += piece
        until_rendered(page, so_far)  # one frame per piece
        fake.next_piece()
    expect(page.locator(ANSWER)).to_have_attribute("data-state", "complete")
    shown_html, full = shown_and_full(page, text)
    assert shown_html == full
    frames = page.evaluate("() => window.__renderStats.frames.map((frame) => frame.chars)")
    assert len(frames) >= len(pieces) // 2, frames  # the counter counted real frames
    return frames


def test_each_frame_parses_about_the_same_number_of_characters_however_long_the_answer(
    page: Page, live: str, fake_upstream_server: FakeUpstream
) -> None:
    open_chat(page, live, check=False)
    short = parsed_per_frame(page, live, fake_upstream_server, blocks_answer(2_000))
    long = parsed_per_frame(page, live, fake_upstream_server, blocks_answer(20_000))
    # The open block (the longest here is 141 characters) with the piece that arrived since
    # the last frame, and once the finished blocks parsed again for their link definitions
    # (590 and 632 characters at most, as markdown-it is deterministic).
    bound = 4 * (141 + PIECE)
    assert max(short) <= bound and max(long) <= bound, (max(short), max(long))
    # A full re-render would hand each frame the whole text so far: 20,000 characters.
    assert max(long) <= 1.5 * max(short), (max(short), max(long))
    assert sum(long) <= 4 * 20_000, sum(long)


# Random documents from these lines, each streamed into a detached element a few characters
# at a time by the page's own streaming render, and compared with the full render after
# every step: in the page, so that thousands of steps take seconds.
FUZZ = r"""([seed, documents]) => {
  const lines = ["# H1", "Para *em* [x][r1] and [r2][]", "Setext", "---", "===", "- a", "- b",
    "  - nested", "1. one", "2. two", "10) ten", "> q", "> > qq", "lazy", "| a | b |", "|---|:-:|",
    "| c | d |", "```js", "```", "~~~", "const x = `s`; // c", "    indented", "[r1]: https://e.com/1",
    "[r2]: /u2 'T'", "[R1]: /dup", "[x]", "***", "* star", "+ plus", "  cont", "\t tab", "", "", "",
    "[r3]:\n/u3", "<http://a.b>", "www.example.com", "[js](javascript:alert(1))", "2. continuing",
    "  > quoted in list", "Term  ", "\\- esc", "    ", "[r1]: /u1 \"t", "\r", "a\rb", "<b>no html</b>"];
  let state = seed;
  const random = () => { state = (state * 1103515245 + 12345) % 2147483648; return state / 2147483648; };
  const stats = window.__renderStats;
  const failures = [];
  let steps = 0;
  for (let d = 0; d < documents; d++) {
    let text = "";
    const count = 3 + Math.floor(random() * 25);
    for (let i = 0; i < count; i++) {
      if (i) text += random() < 0.3 ? "\n\n" : random() < 0.05 ? "\r\n" : "\n";
      text += lines[Math.floor(random() * lines.length)];
    }
    const box = document.createElement("div");
    for (let at = 0; at < text.length;) {
      at = Math.min(text.length, at + 1 + Math.floor(random() * 5));
      stats.streamInto(box, text.slice(0, at));
      steps += 1;
      if (box.innerHTML !== stats.fullRender(text.slice(0, at))) {
        failures.push(text.slice(0, at));
        break;
      }
    }
  }
  return { failures, steps };
}"""


def test_random_documents_streamed_a_few_characters_at_a_time_equal_their_full_render_at_each_step(
    page: Page, live: str
) -> None:
    open_chat(page, live, check=False)
    result = page.evaluate(FUZZ, [16, 150])
    assert result["failures"] == []
    assert result["steps"] > 5_000  # 150 documents of 3 to 27 lines, 1 to 5 characters a step
