"""Reading event streams: the upstream client against the loopback server
(tests/fake_upstream.py). The decoding is httpx-sse's; these check what users get from it:
every recorded transcript in any chunking with LF, CR or CRLF line ends, characters split
across reads, U+2028 and other non-SSE line breaks kept inside data, and each dialect's
quirks.

Expected values for the recorded transcripts are copied from
tests/fixtures/upstream/SOURCES.md, never computed with the code under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import zlib
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.upstream import Answer, Delta, Upstream
from tests.fake_upstream import TRANSCRIPTS as FOLDER
from tests.fake_upstream import FakeUpstream, Reply, chunk, transcript

MESSAGES = [{"role": "user", "content": "hi"}]


async def collect(
    server: FakeUpstream, reply: Reply, style: str = "chat_completions"
) -> tuple[Answer, list[Delta], Exception | None]:
    """Stream `reply` through Upstream: the answer, the deltas relayed, and the failure."""
    server.queue(reply)
    answer, deltas, failure = Answer(), [], None
    async with httpx.AsyncClient() as client:
        upstream = Upstream(server.base_url, "key", style, client=client, max_retries=0)
        try:
            async for delta in upstream.stream(answer, "grok-test", MESSAGES):
                deltas.append(delta)
        except Exception as exc:
            failure = exc
    return answer, deltas, failure


async def chat(server: FakeUpstream, body: bytes, style: str = "chat_completions") -> Answer:
    answer, _, failure = await collect(server, Reply(body=body, pieces="random"), style)
    if failure is not None:
        raise failure
    return answer


def data_line(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 < c < len(body)})
    return [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Every recorded transcript, as SOURCES.md describes it

CODE_FAST_REASONING = (
    'First, the user asked: "Say hi in Portuguese."\n\n\n## Handling the Request  \n'
    "- The user asked for a greeting in Portuguese."
)
CODE_FAST_TEXT = (
    'Oi! (That\'s "hi" in Portuguese, informal and common in Brazil.) '
    'If you want something more formal, it\'s "Olá."'
)
GPT4O_TEXT = (
    "Coca-Cola is a globally recognized beverage company best known for its flagship "
    "product, Coca-Cola, a carbonated soft drink"
)
SONNET_TEXT = (
    'Olá! (That\'s "hi" in Portuguese)\n\n'
    'You could also say "Oi!" which is a more casual way to say hi in Portuguese.'
)

# text / reasoning: either the full string, or a dict with sha (first 16 hex), len,
# start and end as far as SOURCES.md gives them. Reasoning that SOURCES.md does not list is
# expected empty. usage: only the fields SOURCES.md gives; None means "no usage anywhere".
TRANSCRIPTS: dict[str, dict[str, Any]] = {
    "mlai-grok-beta-1.sse": {
        "text": {
            "sha": "90352a2135b08e1d",
            "len": 363,
            "start": "Ah, the ultimate question! According to Douglas Adams'",
            "end": "the quest for understanding the question continues!",
        },
        "finish": "stop",
        "usage": {"prompt_tokens": 41, "completion_tokens": 80, "total_tokens": 121},
    },
    "mlai-grok-beta-2.sse": {
        "text": {
            "sha": "ad53247cb2d64cb1",
            "len": 889,
            "start": "Coca-Cola is a carbonated soft drink invented in 1886",
            "end": "Vanilla Coke, and many others tailored",
        },
        "finish": "length",
        "usage": {"prompt_tokens": 38, "completion_tokens": 200, "total_tokens": 238},
    },
    "fantasy-xai-grok-4-fast-1.sse": {
        "text": "Olá!",
        "finish": "stop",
        "usage": {
            "prompt_tokens": 126,
            "cached_prompt_tokens": 125,
            "completion_tokens": 2,
            "reasoning_tokens": 122,
            "total_tokens": 250,
        },
    },
    "fantasy-xai-grok-4-fast-2.sse": {
        "text": "Olá!",
        "finish": "stop",
        "usage": {
            "prompt_tokens": 165,
            "cached_prompt_tokens": 164,
            "completion_tokens": 2,
            "reasoning_tokens": 129,
            "total_tokens": 296,
            "cost_in_usd_ticks": 739000,
        },
        "raw": {"num_sources_used": 0},
    },
    "fantasy-xai-grok-code-fast-1.sse": {
        "reasoning": CODE_FAST_REASONING,
        "reasoning_sha": {"sha": "9319524169948175", "len": 121},
        "text": CODE_FAST_TEXT,
        "text_len": 110,
        "finish": "stop",
        "usage": {
            "prompt_tokens": 213,
            "cached_prompt_tokens": 192,
            "completion_tokens": 27,
            "reasoning_tokens": 133,
            "total_tokens": 373,
        },
    },
    "fantasy-xai-grok-3-mini-1.sse": {
        "reasoning": {
            "sha": "47c4b37c396d6489",
            "len": 1316,
            "start": 'First, the user asked: "What\'s the weather in Florence, Italy?"',
        },
        "text": "The weather in Florence, Italy is 40°C.",
        "finish": "stop",
        "usage": {
            "prompt_tokens": 331,
            "cached_prompt_tokens": 330,
            "completion_tokens": 11,
            "reasoning_tokens": 271,
            "total_tokens": 613,
            "cost_in_usd_ticks": 1660500,
        },
    },
    "fantasy-xai-grok-4-fast-tool-1.sse": {
        "text": "",
        "tool_calls": {
            0: {"id": "call_55070233", "name": "add", "arguments": '{"a":2,"b":3}'},
            1: {"id": "call_12016531", "name": "multiply", "arguments": '{"a":2,"b":3}'},
        },
        "finish": "tool_calls",
        "usage": {
            "prompt_tokens": 432,
            "cached_prompt_tokens": 153,
            "completion_tokens": 68,
            "reasoning_tokens": 136,
            "total_tokens": 636,
            "cost_in_usd_ticks": 1654500,
        },
    },
    "fantasy-openrouter-grok-1.sse": {
        "reasoning": {"sha": "25e7f48412248030", "len": 203},
        "text": "Oi!",
        "finish": "stop",
        "usage": {
            "prompt_tokens": 165,
            "completion_tokens": 167 - 165,  # (its 167 hold the reasoning: out of them)
            "reasoning_tokens": 165,
            "total_tokens": 332,
        },
        "raw": {"cost": 0.0000919},
    },
    "fantasy-openai-gpt-4o-mini-1.sse": {
        "text": "Olá!",
        "finish": "stop",
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22},
    },
    "fantasy-openai-gpt-4o-tool-1.sse": {
        "text": "",
        "tool_calls": {
            0: {
                "id": "call_7kE4IjtnwXcGbX6hDM7xFu8T",
                "name": "weather",
                "arguments": '{"location":"Florence, Italy"}',
            },
        },
        "finish": "tool_calls",
        "usage": {"prompt_tokens": 61, "completion_tokens": 16, "total_tokens": 77},
    },
    "mlai-openai-gpt-4o-1.sse": {
        "text": GPT4O_TEXT,
        "text_len": 123,
        "finish": "stop",
        "usage": None,
    },
    "fantasy-anthropic-claude-sonnet-4-1.sse": {
        "style": "anthropic_messages",
        "text": SONNET_TEXT,
        "text_len": 110,
        "finish": "end_turn",
        "usage": {"prompt_tokens": 16, "completion_tokens": 38, "cached_prompt_tokens": 0},
    },
    "fantasy-anthropic-claude-sonnet-4-thinking-1.sse": {
        "style": "anthropic_messages",
        "reasoning": {
            "sha": "b15bb961098f5123",
            "len": 301,
            "start": "The user is asking for weather information for Florence, Italy.",
        },
        "text": "",
        # SOURCES.md: content block index 1 is the tool_use block.
        "tool_calls": {
            1: {
                "id": "toolu_01Js4AMfx5qpTLhwTusnvT68",
                "name": "weather",
                "arguments": '{"location": "Florence, Italy"}',
            },
        },
        "finish": "tool_use",
        "usage": {"prompt_tokens": 424, "completion_tokens": 119},
    },
    "mlai-anthropic-claude-3-5-sonnet-1.sse": {
        "style": "anthropic_messages",
        "text": {
            "sha": "f82c23df7d947450",
            "len": 1007,
            "start": "Coca-Cola is one of the world's most famous and popular beverage brands",
            "end": "making it one of the most recognized brands in the world.",
        },
        "finish": "end_turn",
        # input 36 from message_start; message_delta carried only output_tokens 265.
        "usage": {"prompt_tokens": 36, "completion_tokens": 265},
    },
    "vercel-xai-responses-reasoning-1.sse": {
        "style": "responses",
        "reasoning": {
            "sha": "88bee32a92a85ee3",
            "len": 766,
            "start": 'First, the question is: "What is specifi',
        },
        "text": {
            "sha": "2a7a28eb233e9174",
            "len": 2849,
            "start": "### Overview of Sonoran Cuisine",
            "end": "ke food trucks in Tucson or markets in Hermosillo.",
        },
        "finish": "stop",
        "usage": {
            "prompt_tokens": 216,
            "cached_prompt_tokens": 192,
            "completion_tokens": 923 - 323,  # output 923 holds the reasoning 323
            "reasoning_tokens": 323,
            "total_tokens": 1139,
        },
        "raw": {"num_sources_used": 0, "num_server_side_tools_used": 0},
    },
    "vercel-xai-responses-reasoning-encrypted-1.sse": {
        "style": "responses",
        "reasoning": {"sha": "9a3bf7461267a1f1", "len": 754},
        "text": {
            "sha": "5d8c257390c6c871",
            "len": 2786,
            "end": "desert's bounty for authentic, approachable meals.",
        },
        "finish": "stop",
        "usage": {
            "prompt_tokens": 216,
            "cached_prompt_tokens": 192,
            "completion_tokens": 831 - 253,
            "reasoning_tokens": 253,
            "total_tokens": 1047,
        },
    },
    "vercel-xai-responses-web-search-1.sse": {
        "style": "responses",
        "text": {
            "sha": "aaedcde3798be165",
            "len": 1228,
            "start": "xAI is an American artificial intelligence company",
            "end": " more details! For the latest updates, check x.ai.",
        },
        "finish": "stop",
        "usage": {
            "prompt_tokens": 1875,
            "cached_prompt_tokens": 1578,
            "completion_tokens": 695 - 397,
            "reasoning_tokens": 397,
            "total_tokens": 2570,
        },
        "raw": {"num_server_side_tools_used": 1},
    },
}


def test_it_has_an_expectation_for_every_recorded_transcript() -> None:
    assert sorted(p.name for p in FOLDER.glob("*.sse")) == sorted(TRANSCRIPTS)


def check_string(actual: str, expected: str | dict[str, Any]) -> None:
    if isinstance(expected, str):
        assert actual == expected
        return
    assert sha16(actual) == expected["sha"], actual
    assert len(actual) == expected["len"]
    assert actual.startswith(expected.get("start", ""))
    assert actual.endswith(expected.get("end", ""))


def check_transcript(answer: Answer, deltas: list[Delta], expected: dict[str, Any]) -> None:
    check_string(answer.content, expected["text"])
    check_string(answer.reasoning, expected.get("reasoning", ""))
    if "text_len" in expected:
        assert len(answer.content) == expected["text_len"]
    if "reasoning_sha" in expected:
        check_string(answer.reasoning, expected["reasoning_sha"])
    # What was relayed is exactly what the Answer holds.
    assert "".join(d.content for d in deltas) == answer.content
    assert "".join(d.reasoning for d in deltas) == answer.reasoning
    assert answer.finish_reason == expected["finish"]
    assert answer.tool_calls == expected.get("tool_calls", {})
    if expected["usage"] is None:
        assert answer.usage is None
    else:
        assert answer.usage is not None
        for key, value in expected["usage"].items():
            assert getattr(answer.usage, key) == value, key
        for key, value in expected.get("raw", {}).items():
            assert answer.usage.raw[key] == value, key


@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(eol=st.sampled_from(["\n", "\r", "\r\n"]), data=st.data())
def test_it_reads_every_recorded_transcript_in_any_pieces_with_any_line_end(
    server: FakeUpstream, name: str, eol: str, data: st.DataObject
) -> None:
    expected = TRANSCRIPTS[name]
    body = transcript(name).replace(b"\n", eol.encode())
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=80), label="cuts")
    reply = Reply(pieces=split(body, cuts))
    answer, deltas, failure = asyncio.run(
        collect(server, reply, expected.get("style", "chat_completions"))
    )
    assert failure is None, failure
    check_transcript(answer, deltas, expected)


# ---------------------------------------------------------------------------
# Characters across reads and inside data

# Line breaks to Python's splitlines() but not to SSE, and multi-byte characters.
SPECIAL = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
SPECIAL += ["á", "°", "€", "😀", "\ufeff", ":", " ", "data: x", "[DONE]"]
texts = st.lists(
    st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=8), st.sampled_from(SPECIAL)
    ),
    min_size=1,
    max_size=6,
).map("".join)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(words=st.lists(texts, min_size=1, max_size=4), data=st.data())
def test_it_splits_crlf_and_multibyte_characters_across_reads(
    server: FakeUpstream, words: list[str], data: st.DataObject
) -> None:
    events = [json.dumps(chunk(w), ensure_ascii=False) for w in words]
    body = "".join(f"data: {e}\r\n\r\n" for e in events).encode() + b"data: [DONE]\r\n\r\n"
    # Cut between every CR and LF and inside every multi-byte character, plus a few more.
    cuts = [i + 1 for i, byte in enumerate(body) if byte == 0x0D or byte >= 0x80]
    cuts += data.draw(st.lists(st.integers(0, len(body)), max_size=10), label="extra")
    answer, deltas, failure = asyncio.run(collect(server, Reply(pieces=split(body, cuts))))
    assert failure is None, failure
    # (NUL, which no database saves, reads as U+FFFD.)
    expected = "".join(words).replace("\x00", "\ufffd")
    assert answer.content == "".join(d.content for d in deltas) == expected


async def test_it_reads_a_stream_one_byte_at_a_time(server: FakeUpstream) -> None:
    body = data_line(chunk("Olá, 😀 € °")) + data_line(chunk("!", finish="stop"))
    body += b"data: [DONE]\n\n"
    answer, _, failure = await collect(server, Reply(pieces=split(body, list(range(len(body))))))
    assert failure is None
    assert answer.content == "Olá, 😀 € °!"


async def test_it_keeps_line_separators_inside_json_strings(server: FakeUpstream) -> None:
    text = "a\u2028b\u2029c\u0085d\x0be\x0cf\r\ng"
    body = "data: " + json.dumps(chunk(text), ensure_ascii=False) + "\n\ndata: [DONE]\n\n"
    assert "\u2028" in body and "\u0085" in body  # raw in the stream, not escaped
    answer = await chat(server, body.encode())
    assert answer.content == text


async def test_it_keeps_undecodable_bytes_as_replacement_characters(server: FakeUpstream) -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"\xff\xfe ok"}}]}\n\n'
    answer = await chat(server, body + b"data: [DONE]\n\n")
    assert answer.content == "\ufffd\ufffd ok"


# ---------------------------------------------------------------------------
# The dialects' quirks


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


# An unfinished last event (no blank line after it) is dropped, as the SSE standard says.
@pytest.mark.parametrize(
    "ending",
    [b"", b"\n", b": bye\n\n", b'data: {"choices":[{"index":0,"delta":{"content":" lost"}}]}\n'],
    ids=["bare", "eol", "comment", "unfinished"],
)
async def test_it_ends_cleanly_at_eof_without_done(server: FakeUpstream, ending: bytes) -> None:
    body = data_line(chunk("Olá")) + data_line(chunk("!", finish="stop")) + ending
    answer = await chat(server, body)
    assert answer.content == "Olá!"
    assert answer.finish_reason == "stop"


async def test_it_relays_the_events_of_one_read_in_order(server: FakeUpstream) -> None:
    words = [f"w{i} " for i in range(500)]
    body = b"".join(data_line(chunk(w)) for w in words) + b"data: [DONE]\n\n"
    answer, deltas, failure = await collect(server, Reply(body=body, pieces=[body]))
    assert failure is None
    assert [d.content for d in deltas] == words
    assert answer.content == "".join(words)


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
    assert [d.content for d in deltas] == ["Half an ", "answer"]
    assert answer.content == "Half an answer"
    assert "the model crashed" in str(failure)


async def test_it_reads_json_that_orjson_refuses_as_pythons_json_does(
    server: FakeUpstream,
) -> None:
    # A lone surrogate escape and NaN: orjson raises, Python's json accepts; the text stays,
    # with the half of a character (which no database can save) replaced.
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud83d"}}],"x":NaN}\n\n'
        + data_line(chunk("b", finish="stop"))
        + b"data: [DONE]\n\n"
    )
    answer = await chat(server, body)
    assert answer.content == "a\ufffdb"
    assert answer.finish_reason == "stop"


async def test_it_asks_for_an_uncompressed_stream_and_still_reads_a_compressed_one(
    server: FakeUpstream,
) -> None:
    body = data_line(chunk("Olá")) + data_line(chunk("!", finish="stop")) + b"data: [DONE]\n\n"
    packer = zlib.compressobj(wbits=31)  # gzip
    packed = packer.compress(body) + packer.flush()
    pieces = [packed[i : i + 7] for i in range(0, len(packed), 7)]
    reply = Reply(pieces=pieces, headers={"Content-Encoding": "gzip"})
    answer, deltas, failure = await collect(server, reply)
    assert failure is None
    assert answer.content == "".join(d.content for d in deltas) == "Olá!"
    assert server.stream_requests()[0].headers["accept-encoding"] == "identity"
