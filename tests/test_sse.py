"""Event-stream decoding as the upstream client uses it: httpx_sse's EventSource.aiter_sse()
(SSELineDecoder + SSEDecoder) over a real httpx response, checked against the SSE spec
(html.spec.whatwg.org, "Interpreting an event stream") with hypothesis.

What httpx-sse 0.4.3 does differently from the spec (found here; none of it reaches the
chat text, so chat/upstream.py needs no own code for it):
- It dispatches an event for a blank line that follows only an `event:`, `id:` or `retry:`
  field, and, because the last event id is kept, for EVERY blank line after the first
  `id:` field (an extra empty line between events then yields an event with data "").
  The spec dispatches nothing when the data buffer is empty. The dialects ignore events
  whose data is empty (tested below), so this is harmless.
- It does not strip a leading U+FEFF byte order mark: a stream starting with a BOM loses
  its first field line (the field name becomes "\\ufeffdata"). No API we talk to sends one;
  tested below as a known limitation.
Everything else held: LF, CR and CRLF line ends, CR and LF split across reads, multi-byte
characters split across reads, U+2028/U+2029/U+0085/U+000B/U+000C kept inside data (not
treated as line ends), comments, one leading space stripped, multi-line data joined with
LF, an incomplete last event discarded at EOF.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from httpx_sse import EventSource
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.upstream import Answer, Upstream
from tests.fake_upstream import FakeUpstream, Reply, chunk

# ---------------------------------------------------------------------------
# Driving EventSource through a real httpx response


class ChunkStream(httpx.AsyncByteStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.chunks:
            yield piece


async def adecode(chunks: list[bytes], content_type: str) -> list[tuple[str, str]]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": content_type}, stream=ChunkStream(chunks)
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        async with client.stream("GET", "http://upstream.test/events") as response:
            return [(e.event, e.data) async for e in EventSource(response).aiter_sse()]


def decode(chunks: list[bytes], content_type: str = "text/event-stream") -> list[tuple[str, str]]:
    return asyncio.run(adecode(chunks, content_type))


# ---------------------------------------------------------------------------
# Strategies

# Characters a naive splitlines() would take for line ends, and multi-byte ones.
SPECIAL = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
SPECIAL += ["á", "°", "€", "😀", "\ufeff", "\x00", ":", " ", "\t", "data: x", "[DONE]"]

value_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n")
values = st.lists(
    st.one_of(st.text(value_chars, max_size=12), st.sampled_from(SPECIAL)), max_size=6
).map("".join)
names = values.filter(lambda v: v != "")


@dataclass
class Event:
    name: str  # "" means no event field (the event type is then "message")
    data: list[str]  # one `data:` line each, at least one
    comments: list[str]
    spaced: list[bool]  # per data line: "data: v" (True) or "data:v" (False)

    def lines(self) -> list[str]:
        out = [":" + c for c in self.comments]
        if self.name:
            out.append("event: " + self.name)
        for value, spaced in zip(self.data, self.spaced, strict=True):
            # Without the space, a value that starts with a space would lose it.
            out.append(("data: " if spaced or value.startswith(" ") else "data:") + value)
        return out

    def expected(self) -> tuple[str, str]:
        return (self.name or "message", "\n".join(self.data))


@st.composite
def events(draw: st.DrawFn) -> Event:
    data = draw(st.lists(values, min_size=1, max_size=4))
    return Event(
        name=draw(st.one_of(st.just(""), names)),
        data=data,
        comments=draw(st.lists(values, max_size=2)),
        spaced=draw(st.lists(st.booleans(), min_size=len(data), max_size=len(data))),
    )


def encode(stream: list[Event], eol: str, leading_comment: str | None) -> bytes:
    text = ""
    if leading_comment is not None:
        text += ":" + leading_comment + eol
    for event in stream:
        text += "".join(line + eol for line in event.lines()) + eol
    return text.encode("utf-8")


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(body)})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


# ---------------------------------------------------------------------------
# Properties


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(events(), max_size=6),
    eol=st.sampled_from(["\n", "\r", "\r\n"]),
    leading_comment=st.one_of(st.none(), values),
    data=st.data(),
)
def test_it_decodes_any_events_in_any_chunking_with_any_line_end(
    stream: list[Event], eol: str, leading_comment: str | None, data: st.DataObject
) -> None:
    body = encode(stream, eol, leading_comment)
    cuts = data.draw(st.lists(st.integers(0, max(len(body), 1)), max_size=40), label="cuts")
    assert decode(split(body, cuts)) == [e.expected() for e in stream]


@settings(max_examples=200, deadline=None)
@given(stream=st.lists(events(), min_size=1, max_size=4), data=st.data())
def test_it_splits_crlf_and_multibyte_characters_across_reads(
    stream: list[Event], data: st.DataObject
) -> None:
    body = encode(stream, "\r\n", None)
    # Cut between every CR and LF and inside every multi-byte character, plus a few more.
    cuts = [i + 1 for i, byte in enumerate(body) if byte == 0x0D or byte >= 0x80]
    cuts += data.draw(st.lists(st.integers(0, len(body)), max_size=10), label="extra")
    assert decode(split(body, cuts)) == [e.expected() for e in stream]


@settings(max_examples=200, deadline=None)
@given(stream=st.lists(events(), min_size=1, max_size=4), eol=st.sampled_from(["\n", "\r", "\r\n"]))
def test_it_decodes_one_byte_at_a_time(stream: list[Event], eol: str) -> None:
    body = encode(stream, eol, None)
    assert decode([body[i : i + 1] for i in range(len(body))]) == [e.expected() for e in stream]


@settings(max_examples=100, deadline=None)
@given(
    stream=st.lists(events(), min_size=1, max_size=4),
    tail=values,
    eol=st.sampled_from(["\n", "\r", "\r\n"]),
)
def test_it_discards_an_incomplete_last_event_at_eof(
    stream: list[Event], tail: str, eol: str
) -> None:
    body = encode(stream, eol, None) + ("data: " + tail + eol).encode()
    assert decode([body]) == [e.expected() for e in stream]


def test_it_accepts_a_charset_in_the_content_type() -> None:
    body = "data: Olá\n\n".encode()
    assert decode([body], "text/event-stream; charset=utf-8") == [("message", "Olá")]


def test_it_dispatches_an_event_without_data_which_the_spec_would_not() -> None:
    # httpx-sse deviation (see the module docstring), pinned so an upgrade that fixes it
    # shows up here.
    assert decode([b"event: ping\n\n"]) == [("ping", "")]
    assert decode([b"id: 1\ndata: a\n\n\ndata: b\n\n"]) == [
        ("message", "a"),
        ("message", ""),
        ("message", "b"),
    ]


def test_it_loses_the_first_line_after_a_byte_order_mark() -> None:
    # The spec strips one leading U+FEFF; httpx-sse does not (see the module docstring).
    body = "\ufeffdata: first\n\ndata: second\n\n".encode()
    assert decode([body]) == [("message", "second")]


# ---------------------------------------------------------------------------
# The chat dialect on top of it, against the loopback server


@pytest.fixture
def server(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


async def chat(server: FakeUpstream, body: bytes, style: str = "chat_completions") -> Answer:
    server.queue(Reply(body=body, pieces="random"))
    answer = Answer()
    async with httpx.AsyncClient() as client:
        upstream = Upstream(server.base_url, "key", style, client=client, max_retries=0)
        async for _ in upstream.stream(answer, "grok-test", [{"role": "user", "content": "hi"}]):
            pass
    return answer


def data_line(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


@pytest.mark.parametrize("style", ["chat_completions", "responses", "anthropic_messages"])
async def test_it_skips_empty_data_and_dataless_events_in_every_dialect(
    server: FakeUpstream, style: str
) -> None:
    quirks = b"data:\n\ndata: \n\nevent: ping\n\nid: 7\n\n\n\n: comment\n\nretry: 10\n\n"
    if style == "chat_completions":
        body = quirks + data_line(chunk("Olá!", finish="stop")) + b"data: [DONE]\n\n"
    elif style == "responses":
        body = quirks + data_line({"type": "response.output_text.delta", "delta": "Olá!"})
    else:
        body = quirks + data_line(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Olá!"},
            }
        )
    answer = await chat(server, body, style)
    assert answer.content == "Olá!"


async def test_it_stops_reading_at_done(server: FakeUpstream) -> None:
    body = (
        data_line(chunk("Olá!", finish="stop"))
        + b"data: [DONE]\n\n"
        + data_line(chunk(" never shown"))
        + b"data: not json at all\n\n"
    )
    answer = await chat(server, body)
    assert answer.content == "Olá!"
    assert answer.finish_reason == "stop"


@pytest.mark.parametrize("ending", [b"", b"\n", b": bye\n\n"], ids=["bare", "eol", "comment"])
async def test_it_ends_cleanly_at_eof_without_done(server: FakeUpstream, ending: bytes) -> None:
    body = data_line(chunk("Olá")) + data_line(chunk("!", finish="stop")) + ending
    answer = await chat(server, body)
    assert answer.content == "Olá!"
    assert answer.finish_reason == "stop"


async def test_it_keeps_line_separators_inside_json_strings(server: FakeUpstream) -> None:
    text = "a\u2028b\u2029c\u0085d\x0be\x0cf\r\ng"
    body = "data: " + json.dumps(chunk(text), ensure_ascii=False) + "\n\ndata: [DONE]\n\n"
    answer = await chat(server, body.encode())
    assert answer.content == text
