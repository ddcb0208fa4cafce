"""The upstream client against a real loopback HTTP server (tests/fake_upstream.py).

Deadlines are tested without racing the wall clock: where one must fire, the server stays
silent until the test ends; where the clock must move past one, the test runs on an event
loop whose clock moves only when the test moves it (`SteppedClock`). The recorded
transcripts are read in tests/test_sse.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from chat.upstream import (
    Answer,
    ChatCompletions,
    Delta,
    Responses,
    Timeouts,
    Upstream,
    UpstreamError,
)
from tests.fake_upstream import FakeUpstream, Reply, chunk, json_reply, sse, transcript

API_KEY = "xai-test-key-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Say hi in Portuguese"}]


# ---------------------------------------------------------------------------
# Fixtures and helpers


def app_like_client() -> httpx.AsyncClient:
    # Like the app's shared client: our own deadlines replace httpx's read timeout.
    return httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None))


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_like_client() as client:
        yield client


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


def posts(server: FakeUpstream) -> int:
    return len(server.stream_requests())


T = TypeVar("T")


class SteppedClock(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only when the test moves it: a deadline fires when
    the test says its time has come, however slow or busy the machine is."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def on_stepped_clock(main: Callable[[SteppedClock], Awaitable[T]]) -> T:
    async def run() -> T:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, SteppedClock)
        return await main(loop)

    with asyncio.Runner(loop_factory=SteppedClock) as runner:
        return runner.run(run())


async def settle() -> None:
    """Let every callback that is due run, a timer past its time included."""
    for _ in range(5):
        await asyncio.sleep(0)


# ---------------------------------------------------------------------------
# Responses API, built from the documented event names (tests/test_sse.py reads the
# recorded Responses streams)


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
    # One event, then silence until the test ends: the idle deadline must fire.
    server.queue(Reply(body=sse(chunk("Some text"), done=False), end="stall"))
    answer = Answer()
    error = await failure(make(server, client, timeouts=Timeouts(idle=0.3)), answer)

    assert "silent for more than 0.3 s" in error.message
    assert answer.content == "Some text"


async def test_it_gives_up_when_the_first_token_is_too_slow(
    server: FakeUpstream, client: httpx.AsyncClient
) -> None:
    server.queue(Reply(body=b"", end="stall"))  # the head, then silence until the test ends
    answer = Answer()
    error = await failure(
        make(server, client, timeouts=Timeouts(first_token=0.3), max_retries=2), answer
    )

    assert "No answer from the upstream within 0.3 s" in error.message
    assert answer.content == ""
    assert posts(server) == 1  # not retried


def silent_between_pieces(
    server: FakeUpstream, dialect: type[ChatCompletions] | type[Responses], pieces: list[bytes]
) -> tuple[Answer, float]:
    """Stream `pieces` (a paced reply) with 6 s of upstream silence before each piece after
    the first, on a stepped clock, under deadlines of 10 s for the first token and 1 s of
    idle: the answer and the clock's time at its end."""
    fed = asyncio.Event()

    class Recording(dialect):  # type: ignore[misc]  # (a class chosen at run time)
        def feed(self, event: Any, answer: Answer) -> Delta | None:
            fed.set()
            return super().feed(event, answer)

    server.queue(Reply(pieces=pieces, paced=True))

    async def main(loop: SteppedClock) -> tuple[Answer, float]:
        async with app_like_client() as client:
            upstream = make(server, client, timeouts=Timeouts(first_token=10, idle=1))
            upstream.dialect = Recording()
            reader = asyncio.create_task(consume(upstream))
            for _ in range(len(pieces) - 1):
                waiting = asyncio.create_task(fed.wait())
                await asyncio.wait([reader, waiting], return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
                if reader.done():
                    break  # it failed: its exception comes out below
                fed.clear()
                # The reader now waits for the next piece, its deadline armed.
                loop.advance(6)
                await settle()  # a deadline past its time fires here
                server.next_piece()
            answer, _ = await reader
        return answer, loop.time()

    return on_stepped_clock(main)


def test_it_counts_keepalives_as_life_but_not_as_a_first_token(server: FakeUpstream) -> None:
    # 20 keepalives (empty deltas), 6 s of upstream silence before each: 120 s in all,
    # twelve times first_token, but never 10 s of silence. Were a keepalive taken for a
    # first token, the 1 s idle deadline would fire.
    empty = sse(*[chunk() for _ in range(20)], done=False)
    pieces = [p + b"\n\n" for p in empty.split(b"\n\n") if p]
    pieces.append(sse(chunk("Olá!", finish="stop")))
    answer, elapsed = silent_between_pieces(server, ChatCompletions, pieces)
    assert answer.content == "Olá!" and elapsed == 120


def test_a_tool_status_is_not_a_first_token(server: FakeUpstream) -> None:
    # A search starts, then the model thinks in silence: 6 s before each of the next
    # events, never 10 s (first_token) but past the 1 s idle deadline, which a tool status
    # taken for a first token would arm.
    call = {"id": "ws_1", "type": "web_search_call", "status": "in_progress"}
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": call},
        {"type": "response.web_search_call.in_progress", "output_index": 0, "item_id": "ws_1"},
        {"type": "response.output_text.delta", "output_index": 1, "delta": "xAI is"},
        {"type": "response.completed", "response": {"id": "r", "output": []}},
    ]
    # The text and the end come together, as the last piece.
    pieces = [sse(event, done=False) for event in events[:2]] + [sse(*events[2:], done=False)]
    answer, _ = silent_between_pieces(server, Responses, pieces)
    assert answer.content == "xAI is"
    assert [status.state for status in answer.tool_calls_seen.values()] == ["in_progress"]


def test_it_does_not_count_the_consumers_own_time_as_upstream_silence(
    server: FakeUpstream,
) -> None:
    # The upstream sends everything at once; the consumer is slow (a slow socket, a busy
    # process): 100 s pass at each delta. A deadline armed while the generator is parked at
    # `yield` would fire in settle() and cancel the consumer's own task.
    server.queue(Reply(body=sse(chunk("a"), chunk("b"), chunk("c", finish="stop"))))

    async def main(loop: SteppedClock) -> Answer:
        async with app_like_client() as client:
            upstream = make(server, client, timeouts=Timeouts(idle=1, first_token=1))
            answer = Answer()
            async for _ in upstream.stream(answer, "grok-test", MESSAGES):
                loop.advance(100)
                await settle()
        return answer

    assert on_stepped_clock(main).content == "abc"


def test_a_stop_at_the_very_moment_of_the_deadline_stays_a_stop(server: FakeUpstream) -> None:
    # The deadline cancels the task to interrupt a read; a cancel that is not its own (Stop,
    # shutdown) must come out as CancelledError, not as a timeout, even when both are due
    # in the same turn of the loop.
    server.queue(Reply(body=sse(chunk("Some "), done=False), end="stall"))

    async def main(loop: SteppedClock) -> Answer:
        async with app_like_client() as client:
            upstream = make(server, client, timeouts=Timeouts(idle=1, first_token=1))
            answer = Answer()
            first = asyncio.Event()

            async def consume_all() -> None:
                async for _ in upstream.stream(answer, "grok-test", MESSAGES):
                    first.set()

            task = asyncio.create_task(consume_all())
            await first.wait()
            await settle()  # the consumer is back in a read, its deadline armed
            loop.advance(60)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return answer

    assert on_stepped_clock(main).content == "Some "


def test_it_does_not_cancel_the_consumer_after_it_walks_away(server: FakeUpstream) -> None:
    # A consumer that keeps a reference to the generator and breaks out of the loop (and
    # never closes it) must not be cancelled later by a deadline armed inside it.
    server.queue(Reply(body=sse(chunk("a"), done=False), end="stall"))
    answer = Answer()
    finished: list[str] = []

    async def main(loop: SteppedClock) -> None:
        async with app_like_client() as client:
            upstream = make(server, client, timeouts=Timeouts(idle=1, first_token=1))
            stream = upstream.stream(answer, "grok-test", MESSAGES)
            async for _ in stream:
                break
            loop.advance(60)
            await settle()  # a deadline left armed would cancel this task here
            await stream.aclose()
        finished.append("finished")

    on_stepped_clock(main)
    assert finished == ["finished"], "a deadline of the stream cancelled its consumer"
    assert answer.content == "a"


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
    server: FakeUpstream,
) -> None:
    # Before the fix, a consumer that held the generator in a variable and was cancelled
    # after its first delta left the stream in a reference cycle (asyncio.timeout keeps
    # the consumer's task): its connection stayed taken until a full GC, and the third
    # iteration already waited forever for the pool.
    server.default = first_then_stall()
    limits = httpx.Limits(max_connections=5, max_keepalive_connections=5)
    timeout = httpx.Timeout(10.0, read=None, pool=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as pool_client:
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
                    await asyncio.wait_for(started.acquire(), 30)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        server.reset()  # releases the stalled replies on the server side
        server.queue(Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse"), pieces="random"))
        answer = Answer()

        async def normal() -> None:
            async for _ in upstream.stream(answer, "grok-test", MESSAGES):
                pass

        await asyncio.wait_for(normal(), 30)
        assert answer.content == "Olá!"


def test_it_cuts_off_an_answer_at_the_overall_limit(server: FakeUpstream) -> None:
    # The overall limit counts the consumer's time too: past it, the next read gives up.
    server.queue(Reply(body=sse(chunk("tick "), chunk("tick "), done=False), end="stall"))

    async def main(loop: SteppedClock) -> tuple[Answer, UpstreamError]:
        async with app_like_client() as client:
            answer = Answer()
            upstream = make(server, client, timeouts=Timeouts(total=10))
            with pytest.raises(UpstreamError) as caught:
                async for _ in upstream.stream(answer, "grok-test", MESSAGES):
                    if answer.content == "tick tick ":
                        loop.advance(11)
        return answer, caught.value

    answer, error = on_stepped_clock(main)
    assert "overall limit of 10 s" in error.message
    assert answer.content == "tick tick "


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
