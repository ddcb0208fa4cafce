"""The upstream client against a real loopback HTTP server (tests/fake_upstream.py).

Expected values for the recorded transcripts are copied from
tests/fixtures/upstream/SOURCES.md, never computed with the code under test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from chat.transport import AsyncioTransport
from chat.upstream import Answer, Delta, Timeouts, Upstream, UpstreamError
from tests.fake_upstream import FakeUpstream, Reply, chunk, json_reply, sse, transcript

API_KEY = "xai-test-key-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hi in Portuguese"}]


# ---------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def server(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture
async def client(sockets: str) -> AsyncIterator[httpx.AsyncClient]:
    # Like the app's shared client: our own deadlines replace httpx's read timeout.
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(timeout=timeout, transport=make_transport(sockets)) as client:
        yield client


@pytest.fixture(params=["asyncio", "anyio"])
def sockets(request: pytest.FixtureRequest) -> str:
    """Every test runs on the app's sockets (chat/transport.py) and on httpx's own."""
    return request.param


def make_transport(sockets: str, limits: httpx.Limits | None = None) -> httpx.AsyncHTTPTransport:
    limits = limits or httpx.Limits()
    if sockets == "asyncio":
        return AsyncioTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


class Sleeps:
    """A fake `sleep=` for Upstream: records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def make(
    server: FakeUpstream,
    client: httpx.AsyncClient,
    style: str = "chat_completions",
    **kwargs: Any,
) -> Upstream:
    kwargs.setdefault("max_retries", 0)
    return Upstream(server.base_url, API_KEY, style, client=client, **kwargs)


async def consume(upstream: Upstream, answer: Answer | None = None) -> tuple[Answer, list[Delta]]:
    answer = answer if answer is not None else Answer()
    deltas = [d async for d in upstream.stream(answer, "grok-test", MESSAGES)]
    return answer, deltas


async def failure(upstream: Upstream, answer: Answer | None = None) -> UpstreamError:
    with pytest.raises(UpstreamError) as caught:
        await consume(upstream, answer)
    return caught.value


def sha16(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def posts(server: FakeUpstream) -> int:
    return len(server.stream_requests())


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
            "completion_tokens": 167,
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
}


def test_it_has_an_expectation_for_every_recorded_transcript() -> None:
    from tests.fake_upstream import TRANSCRIPTS as folder

    assert sorted(p.name for p in folder.glob("*.sse")) == sorted(TRANSCRIPTS)


def check_string(actual: str, expected: str | dict[str, Any]) -> None:
    if isinstance(expected, str):
        assert actual == expected
        return
    assert sha16(actual) == expected["sha"], actual
    assert len(actual) == expected["len"]
    assert actual.startswith(expected.get("start", ""))
    assert actual.endswith(expected.get("end", ""))


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", sorted(TRANSCRIPTS))
async def test_it_reads_every_recorded_transcript_in_random_pieces(
    server: FakeUpstream, client: httpx.AsyncClient, name: str, crlf: bool
) -> None:
    expected = TRANSCRIPTS[name]
    server.queue(Reply(body=transcript(name), pieces="random", crlf=crlf))
    upstream = make(server, client, expected.get("style", "chat_completions"))

    answer, deltas = await consume(upstream)

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
    assert posts(server) == 1


async def test_it_sends_the_request_each_dialect_expects(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")))
    server.queue(Reply(body=transcript("fantasy-anthropic-claude-sonnet-4-1.sse")))
    await consume(make(server, client))
    await consume(make(server, client, "anthropic_messages"))

    chat, messages = server.stream_requests()
    assert chat.path == "/v1/chat/completions"
    assert chat.headers["authorization"] == f"Bearer {API_KEY}"
    assert chat.json()["stream"] is True
    assert chat.json()["stream_options"] == {"include_usage": True}
    assert messages.path == "/v1/messages"
    assert messages.headers["x-api-key"] == API_KEY
    assert "anthropic-version" in messages.headers


# ---------------------------------------------------------------------------
# Responses API (no real transcript exists: built from the documented event names)


def responses_event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


RESPONSE = {"id": "resp_1", "object": "response", "model": "grok-4.3", "status": "in_progress"}


def responses_stream() -> bytes:
    usage = {
        "input_tokens": 50,
        "input_tokens_details": {"cached_tokens": 40},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 30},
        "total_tokens": 87,
    }
    return b"".join(
        [
            responses_event("response.created", response=RESPONSE, sequence_number=0),
            responses_event("response.in_progress", response=RESPONSE, sequence_number=1),
            responses_event(
                "response.reasoning_summary_text.delta",
                delta="Thinking about ",
                output_index=0,
                summary_index=0,
            ),
            responses_event(
                "response.reasoning_summary_text.delta",
                delta="Portuguese.",
                output_index=0,
                summary_index=0,
            ),
            responses_event(
                "response.output_item.added",
                output_index=1,
                item={"type": "message", "role": "assistant", "content": []},
            ),
            responses_event(
                "response.output_text.delta", delta="Ol", output_index=1, content_index=0
            ),
            responses_event(
                "response.output_text.delta", delta="á!", output_index=1, content_index=0
            ),
            responses_event(
                "response.output_text.done", text="Olá!", output_index=1, content_index=0
            ),
            responses_event(
                "response.completed", response={**RESPONSE, "status": "completed", "usage": usage}
            ),
        ]
    )


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
async def test_it_reads_a_responses_api_stream(
    server: FakeUpstream, client: httpx.AsyncClient, crlf: bool
) -> None:
    server.queue(Reply(body=responses_stream(), pieces="random", crlf=crlf))
    answer, _ = await consume(make(server, client, "responses"))

    assert answer.content == "Olá!"
    assert answer.reasoning == "Thinking about Portuguese."
    assert answer.finish_reason == "stop"
    assert answer.response_id == "resp_1"
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 50
    assert answer.usage.cached_prompt_tokens == 40
    assert answer.usage.completion_tokens == 7
    assert answer.usage.reasoning_tokens == 30
    assert answer.usage.total_tokens == 87
    request = server.stream_requests()[0]
    assert request.path == "/v1/responses"
    assert request.json()["input"] == MESSAGES


async def test_it_keeps_the_text_when_a_responses_stream_sends_an_error_event(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    body = b"".join(
        [
            responses_event("response.created", response=RESPONSE),
            responses_event("response.output_text.delta", delta="Half an ", output_index=0),
            responses_event("error", code="server_error", message="Upstream overloaded"),
        ]
    )
    server.queue(Reply(body=body))
    answer = Answer()
    error = await failure(make(server, client, "responses"), answer)
    assert "Upstream overloaded" in error.message
    assert answer.content == "Half an "


# ---------------------------------------------------------------------------
# HTTP error statuses (xAI's body shape: "error" is a string, "code" a gRPC status text)


def xai_error(code: str, text: str) -> dict[str, str]:
    return {"code": code, "error": text}


STATUS_CASES = [
    pytest.param(
        400,
        xai_error(
            "Client specified an invalid argument",
            "Incorrect API key provided: xa***ef. You can obtain an API key from "
            "https://console.x.ai.",
        ),
        "Incorrect API key provided",
        False,
        id="400-wrong-key",
    ),
    pytest.param(
        401,
        xai_error("Unauthenticated", "No authorization header or an invalid authorization token"),
        "invalid authorization token",
        False,
        id="401",
    ),
    pytest.param(
        403,
        xai_error("Permission denied", "Your team is blocked from using this model."),
        "team is blocked",
        False,
        id="403",
    ),
    pytest.param(
        404,
        xai_error(
            "Some requested entity was not found",
            "The model grok-beta does not exist or your team bdc397fa-0000 does not have "
            "access to it.",
        ),
        "The model grok-beta does not exist",
        False,
        id="404-unknown-model",
    ),
    pytest.param(
        415,
        xai_error("Client specified an invalid argument", "Unsupported media type"),
        "Unsupported media type",
        False,
        id="415",
    ),
    pytest.param(
        422,
        xai_error("Client specified an invalid argument", "Failed to deserialize the JSON body"),
        "Failed to deserialize the JSON body",
        False,
        id="422",
    ),
    pytest.param(
        429,
        xai_error(
            "Some resource has been exhausted",
            "Too many tokens for team 0000. Tokens per Minute (actual/limit): 65605/16000",
        ),
        "Tokens per Minute",
        True,
        id="429-rate-limit",
    ),
    pytest.param(
        429,
        xai_error(
            "Some resource has been exhausted",
            "Your team 0000 has either used all available credits or reached its monthly "
            "spending limit. To continue making API requests, please purchase more credits "
            "or raise your spending limit.",
        ),
        "has either used all available credits or reached its monthly spending limit",
        False,
        id="429-credits",
    ),
]


@pytest.mark.parametrize(("status", "body", "text", "retryable"), STATUS_CASES)
async def test_it_turns_each_xai_status_into_a_readable_error(
    server: FakeUpstream,
    client: httpx.AsyncClient,
    status: int,
    body: dict[str, str],
    text: str,
    retryable: bool,
) -> None:
    server.queue(json_reply(status, body))
    error = await failure(make(server, client))

    assert error.status == status
    assert text in error.message
    assert str(status) in error.message
    assert error.retryable is retryable
    assert str(error) == error.message
    assert "{" not in error.message  # readable, not a JSON dump


async def test_it_reads_openai_and_plain_text_error_bodies(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(json_reply(400, {"error": {"message": "Bad model name", "type": "invalid"}}))
    server.queue(Reply(status=502, body=b"Bad gateway from the proxy", content_type="text/plain"))
    first = await failure(make(server, client))
    second = await failure(make(server, client))
    assert "Bad model name" in first.message and first.status == 400
    assert "Bad gateway from the proxy" in second.message and second.status == 502


@pytest.mark.parametrize("style", ["chat_completions", "anthropic_messages", "responses"])
async def test_it_never_shows_the_api_key_the_upstream_echoes_back(
    server: FakeUpstream, client: httpx.AsyncClient, style: str
) -> None:
    echoed = f"Incorrect API key provided: {API_KEY}. You can obtain an API key elsewhere."
    server.queue(json_reply(400, xai_error("Client specified an invalid argument", echoed)))
    server.queue(Reply(status=401, body=f"bad key {API_KEY}".encode(), content_type="text/plain"))
    server.queue(json_reply(200, {"error": echoed}))  # 200 but not an event stream
    upstream = make(server, client, style)

    for _ in range(3):
        error = await failure(upstream)
        assert API_KEY not in error.message
        assert API_KEY not in str(error)
        assert "[redacted]" in error.message


# ---------------------------------------------------------------------------
# Failures during a 200 stream keep what arrived


@pytest.mark.parametrize(
    ("error_object", "text"),
    [
        pytest.param(
            {
                "code": "The service is currently unavailable",
                "error": "Timed out waiting for first token",
            },
            "Timed out waiting for first token",
            id="xai-shape",
        ),
        pytest.param(
            {"error": {"message": "The server had an error", "type": "server_error"}},
            "The server had an error",
            id="openai-shape",
        ),
    ],
)
async def test_it_keeps_the_partial_text_when_an_error_arrives_inside_a_200_stream(
    server: FakeUpstream, client: httpx.AsyncClient, error_object: dict, text: str
) -> None:
    server.queue(Reply(body=sse(chunk("Hel"), chunk("lo, "), error_object), pieces="random"))
    answer = Answer()
    error = await failure(make(server, client, max_retries=2), answer)

    assert text in error.message
    assert answer.content == "Hello, "
    assert posts(server) == 1


async def test_it_keeps_the_partial_text_when_anthropic_sends_an_error_event(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    body = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Ol\xc3\xa1"}}\n\n'
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        b'"message": "Overloaded"}}\n\n'
    )
    server.queue(Reply(body=body))
    answer = Answer()
    error = await failure(make(server, client, "anthropic_messages"), answer)
    assert "Overloaded" in error.message
    assert answer.content == "Olá"


async def test_it_reports_a_connection_dropped_mid_stream_and_keeps_the_text(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(Reply(body=sse(chunk("Half "), chunk("an answer"), done=False), end="drop"))
    answer = Answer()
    error = await failure(make(server, client, max_retries=2), answer)

    assert "broke" in error.message
    assert error.retryable is False
    assert answer.content == "Half an answer"
    assert posts(server) == 1  # nothing is retried once a delta was relayed


async def test_it_ends_cleanly_at_eof_without_done(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(Reply(body=sse(chunk("Olá"), chunk("!", finish="stop"), done=False)))
    answer, _ = await consume(make(server, client))
    assert answer.content == "Olá!"
    assert answer.finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "text"),
    [
        pytest.param(
            {"id": "x", "object": "chat.completion", "choices": []},
            "application/json",
            id="a-completion",
        ),
        pytest.param(
            {"code": "Client specified an invalid argument", "error": "Streaming is off"},
            "Streaming is off",
            id="an-error",
        ),
    ],
)
async def test_it_refuses_a_200_that_is_json_instead_of_an_event_stream(
    server: FakeUpstream, client: httpx.AsyncClient, body: dict, text: str
) -> None:
    server.queue(json_reply(200, body))
    error = await failure(make(server, client, max_retries=2))
    assert text in error.message
    assert posts(server) == 1


async def test_it_gives_up_when_the_upstream_stalls_after_some_text(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(Reply(body=sse(chunk("Some "), chunk("text"), done=False), end="stall"))
    answer = Answer()
    started = time.monotonic()
    error = await failure(make(server, client, timeouts=Timeouts(idle=0.3)), answer)

    assert time.monotonic() - started < 5
    assert "silent" in error.message
    assert answer.content == "Some text"


async def test_it_gives_up_when_the_first_token_is_too_slow(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse"), first_delay=1))
    answer = Answer()
    started = time.monotonic()
    error = await failure(
        make(server, client, timeouts=Timeouts(first_token=0.3), max_retries=2), answer
    )

    assert time.monotonic() - started < 0.95  # before the reply's first byte
    assert "0.3 s" in error.message
    assert answer.content == ""
    assert posts(server) == 1


async def test_it_counts_keepalives_as_life_but_not_as_a_first_token(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    # 20 empty deltas, 0.02 s apart: longer than first_token in total, but never silent
    # for long. The empty deltas restart the first-token clock, as the code documents.
    empty = sse(*[chunk() for _ in range(20)], done=False)
    pieces = [p + b"\n\n" for p in empty.split(b"\n\n") if p]
    pieces.append(sse(chunk("Olá!", finish="stop")))
    server.queue(Reply(pieces=pieces, delay=0.02))
    answer, _ = await consume(make(server, client, timeouts=Timeouts(first_token=0.3)))
    assert answer.content == "Olá!"


async def test_it_does_not_count_the_consumers_own_time_as_upstream_silence(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    # The upstream sends everything at once; the consumer is slow (a slow socket, a DB
    # write). Before the fix the idle deadline ran while the generator was parked at
    # `yield`, so the *consumer's* task got cancelled in the middle of its own await.
    server.queue(Reply(body=sse(chunk("a"), chunk("b"), chunk("c", finish="stop"))))
    upstream = make(server, client, timeouts=Timeouts(idle=0.2, first_token=0.2))
    answer = Answer()
    async for _ in upstream.stream(answer, "grok-test", MESSAGES):
        await asyncio.sleep(0.4)
    assert answer.content == "abc"


async def test_a_stop_during_a_read_stays_a_stop(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    # The read deadline cancels the task to interrupt a read; a cancel that is not its own
    # (Stop, shutdown) must come out as CancelledError, not as a timeout.
    server.queue(Reply(body=sse(chunk("Some "), done=False), end="stall"))
    upstream = make(server, client, timeouts=Timeouts(idle=0.3, first_token=0.3))
    answer = Answer()

    async def consume_all() -> None:
        async for _ in upstream.stream(answer, "grok-test", MESSAGES):
            pass

    task = asyncio.create_task(consume_all())
    await asyncio.sleep(0.1)  # the first delta is in; the next read waits
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert answer.content == "Some "
    await asyncio.sleep(0.5)  # past the deadline: no timer left behind fires


async def test_it_does_not_cancel_the_consumer_after_it_walks_away(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    # A consumer that keeps a reference to the generator and breaks out of the loop (and
    # never closes it) must not be cancelled later by a deadline armed inside it.
    server.queue(Reply(body=sse(chunk("a"), done=False), end="stall"))
    upstream = make(server, client, timeouts=Timeouts(idle=0.2, first_token=0.2))
    answer = Answer()

    async def walk_away() -> str:
        stream = upstream.stream(answer, "grok-test", MESSAGES)
        async for _ in stream:
            break
        await asyncio.sleep(0.5)  # past the idle deadline armed for the next read
        await stream.aclose()
        return "finished"

    consumer = asyncio.create_task(walk_away())
    await asyncio.wait([consumer])
    assert not consumer.cancelled(), "a deadline of the stream cancelled its consumer"
    assert consumer.result() == "finished" and answer.content == "a"


# ---------------------------------------------------------------------------
# Retries


async def test_it_retries_a_503_and_then_streams(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    sleeps = Sleeps()
    server.queue(json_reply(503, xai_error("The service is currently unavailable", "Busy")))
    server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse"), pieces="random"))
    answer, _ = await consume(make(server, client, max_retries=2, sleep=sleeps))

    assert answer.content == "Olá!"
    assert posts(server) == 2
    assert len(sleeps.waits) == 1 and 0 < sleeps.waits[0] <= 31


@pytest.mark.parametrize("status", [429, 503])
async def test_it_honours_retry_after(
    server: FakeUpstream, client: httpx.AsyncClient, status: int
) -> None:
    sleeps = Sleeps()
    body = xai_error("Some resource has been exhausted", "Too many requests, slow down")
    server.queue(json_reply(status, body, **{"Retry-After": "7"}))
    server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")))
    answer, _ = await consume(make(server, client, max_retries=2, sleep=sleeps))

    assert answer.content == "Olá!"
    assert posts(server) == 2
    assert len(sleeps.waits) == 1 and 7 <= sleeps.waits[0] < 8


async def test_it_retries_at_most_max_retries_times(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    sleeps = Sleeps()
    for _ in range(6):
        server.queue(json_reply(503, xai_error("The service is currently unavailable", "Busy")))
    error = await failure(make(server, client, max_retries=3, sleep=sleeps))

    assert error.status == 503 and "Busy" in error.message
    assert posts(server) == 4
    assert len(sleeps.waits) == 3


async def test_it_retries_a_drop_before_any_text(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    sleeps = Sleeps()
    server.queue(Reply(body=b": keepalive\n\n", end="drop"))
    server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")))
    answer, _ = await consume(make(server, client, max_retries=2, sleep=sleeps))
    assert answer.content == "Olá!"
    assert posts(server) == 2


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(
            json_reply(
                429,
                xai_error(
                    "Some resource has been exhausted",
                    "Your team 0000 has either used all available credits or reached its "
                    "monthly spending limit.",
                ),
                **{"Retry-After": "1"},
            ),
            id="429-credits",
        ),
        pytest.param(
            json_reply(400, xai_error("Client specified an invalid argument", "Bad request")),
            id="400",
        ),
        pytest.param(
            json_reply(404, xai_error("Some requested entity was not found", "No such model")),
            id="404",
        ),
    ],
)
async def test_it_does_not_retry_what_cannot_succeed(
    server: FakeUpstream, client: httpx.AsyncClient, reply: Reply
) -> None:
    sleeps = Sleeps()
    server.queue(reply, Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")))
    await failure(make(server, client, max_retries=3, sleep=sleeps))
    assert posts(server) == 1
    assert sleeps.waits == []


async def test_it_does_not_retry_once_a_delta_was_relayed(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    sleeps = Sleeps()
    server.queue(Reply(body=sse(chunk("One chunk"), done=False), end="drop"))
    server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")))
    answer = Answer()
    relayed: list[Delta] = []
    with pytest.raises(UpstreamError):
        async for delta in make(server, client, max_retries=3, sleep=sleeps).stream(
            answer, "grok-test", MESSAGES
        ):
            relayed.append(delta)

    assert [d.content for d in relayed] == ["One chunk"]
    assert answer.content == "One chunk"
    assert posts(server) == 1
    assert sleeps.waits == []


async def test_it_reports_an_unreachable_upstream(client: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    upstream = Upstream("http://127.0.0.1:9/v1", API_KEY, client=client, sleep=sleeps)
    error = await failure(upstream)
    assert "Could not connect" in error.message
    assert len(sleeps.waits) == 2  # connect failures are retried


# ---------------------------------------------------------------------------
# Connection pool: cancelled consumers must give their connection back


def first_then_stall() -> Reply:
    return Reply(body=sse(chunk("first "), done=False), end="stall")


async def test_it_does_not_leak_pool_connections_when_consumers_are_cancelled(
    server: FakeUpstream, sockets: str
) -> None:
    # Before the fix, a consumer that held the generator in a variable and was cancelled
    # after its first delta left the stream in a reference cycle (asyncio.timeout keeps
    # the consumer's task): its connection stayed taken until a full GC, and the third
    # iteration already waited forever for the pool.
    server.default = first_then_stall()
    limits = httpx.Limits(max_connections=5, max_keepalive_connections=5)
    timeout = httpx.Timeout(10.0, read=None, pool=10.0)
    transport = make_transport(sockets, limits)
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as pool_client:
        upstream = Upstream(server.base_url, API_KEY, client=pool_client, max_retries=0)

        async def consumer(started: asyncio.Semaphore, mode: int) -> None:
            if mode == 0:  # the generator only on the loop's stack
                async for _ in upstream.stream(Answer(), "grok-test", MESSAGES):
                    started.release()
                    await asyncio.sleep(60)  # cancelled while the stream is parked at `yield`
            stream = upstream.stream(Answer(), "grok-test", MESSAGES)
            async for _ in stream:
                started.release()
                if mode == 1:
                    break  # walk away without closing it
                await asyncio.sleep(60)
            await asyncio.sleep(60)

        for iteration in range(200):
            started = asyncio.Semaphore(0)
            # 7 consumers for 5 connections: 2 always wait in the pool and are cancelled
            # there; the others are cancelled after their first delta.
            tasks = [asyncio.create_task(consumer(started, i % 3)) for i in range(7)]
            if iteration % 4 == 3:
                await asyncio.sleep(0)  # cancel them before they even connect
            else:
                for _ in range(5):
                    await asyncio.wait_for(started.acquire(), 5)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        server.reset()  # releases the stalled replies on the server side
        server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse"), pieces="random"))
        answer = Answer()

        async def normal() -> None:
            async for _ in upstream.stream(answer, "grok-test", MESSAGES):
                pass

        await asyncio.wait_for(normal(), 5)
        assert answer.content == "Olá!"


async def test_it_cuts_off_an_answer_at_the_overall_limit(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    pieces = [b"data: " + json.dumps(chunk("tick ")).encode() + b"\n\n" for _ in range(100)]
    server.queue(Reply(pieces=pieces, delay=0.05))
    answer = Answer()
    started = time.monotonic()
    error = await failure(make(server, client, timeouts=Timeouts(total=0.5)), answer)

    assert time.monotonic() - started < 4
    assert "overall limit" in error.message
    assert answer.content.startswith("tick tick ")


async def test_it_logs_each_error_status_without_the_key(
    server: FakeUpstream, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    echoed = f"Incorrect API key provided: {API_KEY}. You can obtain an API key elsewhere."
    caplog.set_level(logging.INFO, logger="chat.upstream")
    for status, _body, _text, _retryable in [c.values for c in STATUS_CASES]:
        server.queue(
            json_reply(status, {"code": "Client specified an invalid argument", "error": echoed})
        )
        await failure(make(server, client))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == len(STATUS_CASES)
    for line, case in zip(lines, STATUS_CASES, strict=True):
        assert f"answered {case.values[0]}" in line
        assert "Incorrect API key provided: [redacted]" in line
    assert API_KEY not in caplog.text


async def test_it_reads_chunks_in_the_message_shape_of_xais_overview_page(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    def overview_chunk(content: str, finish: str) -> dict[str, Any]:
        return {
            "id": "x",
            "object": "chat.completion",
            "model": "grok-beta",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish,
                }
            ],
        }

    body = sse(overview_chunk("Hel", ""), overview_chunk("lo", "stop"))
    server.queue(Reply(body=body, pieces="random"))
    answer, _ = await consume(make(server, client))
    assert answer.content == "Hello"
    assert answer.finish_reason == "stop"
