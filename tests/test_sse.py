"""Event-stream decoding (chat/sse.py), checked against the SSE spec
(html.spec.whatwg.org, "Interpreting an event stream") with hypothesis: LF, CR and CRLF line
ends, CR and LF split across reads, multi-byte characters split across reads,
U+2028/U+2029/U+0085/U+000B/U+000C kept inside data (not line ends), comments, one leading
space stripped, multi-line data joined with LF, a byte order mark dropped, events without
data not dispatched, an incomplete last event discarded at EOF. Then the dialects on top of
it, through a real httpx response from the loopback server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.sse import EventDecoder
from chat.upstream import Answer, Upstream
from tests.fake_upstream import FakeUpstream, Reply, chunk


def decode(chunks: list[bytes]) -> list[tuple[str, str]]:
    decoder = EventDecoder()
    events = [e for piece in chunks for e in decoder.feed(piece)] + decoder.end()
    return [(e.event, e.data) for e in events]


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


def test_it_does_not_dispatch_an_event_without_data() -> None:
    assert decode([b"event: ping\n\n"]) == []
    assert decode([b"id: 1\ndata: a\n\n\ndata: b\n\n"]) == [("message", "a"), ("message", "b")]
    # The event type of a dataless event does not leak into the next one.
    assert decode([b"event: ping\n\ndata: x\n\n"]) == [("message", "x")]


def test_it_keeps_the_last_event_id_and_retry() -> None:
    decoder = EventDecoder()
    first, second = decoder.feed(b"id: 7\nretry: 1500\ndata: a\n\nretry: x\ndata: b\n\n")
    assert (first.id, first.retry, second.id, second.retry) == ("7", 1500, "7", 1500)
    assert decoder.feed(b"id: a\x00b\ndata: c\n\n")[0].id == "7"  # an id with NUL is ignored


def test_it_drops_one_byte_order_mark_even_split_across_reads() -> None:
    body = "\ufeffdata: first\n\ndata: second\n\n".encode()
    assert decode([body]) == [("message", "first"), ("message", "second")]
    assert decode([body[:1], body[1:2], body[2:]]) == [("message", "first"), ("message", "second")]
    # Only one: a second is part of the field name, and that line is ignored.
    assert decode(["\ufeff\ufeffdata: x\n\ndata: y\n\n".encode()]) == [("message", "y")]


def test_it_takes_a_field_without_a_colon_as_empty() -> None:
    assert decode([b"data\ndata\n\n"]) == [("message", "\n")]


def test_it_keeps_undecodable_bytes_as_replacement_characters() -> None:
    assert decode([b"data: \xff\xfe ok\n\n"]) == [("message", "\ufffd\ufffd ok")]


# ---------------------------------------------------------------------------
# The chat dialect on top of it, against the loopback server


@pytest.fixture
def server(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


async def chat(server: FakeUpstream, body: bytes, style: str = "chat_completions") -> Answer:
    answer, _, failure = await collect(server, Reply(body=body, pieces="random"), style)
    if failure is not None:
        raise failure
    return answer


async def collect(
    server: FakeUpstream, reply: Reply, style: str = "chat_completions"
) -> tuple[Answer, list[str], Exception | None]:
    """Stream `reply` through Upstream: the answer, each delta's text, and the failure."""
    server.queue(reply)
    answer, deltas, failure = Answer(), [], None
    async with httpx.AsyncClient() as client:
        upstream = Upstream(server.base_url, "key", style, client=client, max_retries=0)
        try:
            async for delta in upstream.stream(
                answer, "grok-test", [{"role": "user", "content": "hi"}]
            ):
                deltas.append(delta.content)
        except Exception as exc:
            failure = exc
    return answer, deltas, failure


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


async def test_it_relays_the_events_of_one_read_as_one_delta_in_order(server: FakeUpstream) -> None:
    words = [f"w{i} " for i in range(500)]
    body = b"".join(data_line(chunk(w)) for w in words) + b"data: [DONE]\n\n"
    answer, deltas, failure = await collect(server, Reply(body=body, pieces=[body]))
    assert failure is None
    assert "".join(deltas) == answer.content == "".join(words)
    assert len(deltas) < len(words)  # joined, since they came in far fewer reads


async def test_it_keeps_the_text_before_an_error_event_in_the_same_read(
    server: FakeUpstream,
) -> None:
    body = (
        data_line(chunk("Half an "))
        + data_line(chunk("answer"))
        + data_line({"code": "Internal error", "error": "the model crashed"})
        + data_line(chunk(" never shown"))
    )
    answer, deltas, failure = await collect(server, Reply(body=body, pieces=[body]))
    assert deltas == ["Half an answer"]
    assert answer.content == "Half an answer"
    assert "the model crashed" in str(failure)


async def test_it_reads_json_that_orjson_refuses_as_pythons_json_does(
    server: FakeUpstream,
) -> None:
    # A lone surrogate escape and NaN: orjson raises, Python's json accepts; the text stays.
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud83d"}}],"x":NaN}\n\n'
        + data_line(chunk("b", finish="stop"))
        + b"data: [DONE]\n\n"
    )
    answer = await chat(server, body)
    assert answer.content == "a\ud83db"
    assert answer.finish_reason == "stop"


async def test_it_asks_for_an_uncompressed_stream_and_still_reads_a_compressed_one(
    server: FakeUpstream,
) -> None:
    import zlib

    body = data_line(chunk("Olá")) + data_line(chunk("!", finish="stop")) + b"data: [DONE]\n\n"
    packer = zlib.compressobj(wbits=31)  # gzip
    packed = packer.compress(body) + packer.flush()
    pieces = [packed[i : i + 7] for i in range(0, len(packed), 7)]
    reply = Reply(pieces=pieces, headers={"Content-Encoding": "gzip"})
    answer, deltas, failure = await collect(server, reply)
    assert failure is None
    assert answer.content == "".join(deltas) == "Olá!"
    assert server.stream_requests()[0].headers["accept-encoding"] == "identity"
