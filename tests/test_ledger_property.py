"""The ledger invariant, over every way an answer can end.

For each scenario the loopback upstream's own record of what it answered is compared with
the ledger: one row per request it answered with a stream (a request refused before any
answer has a row of zero tokens, source "none", and one retried after a refusal is not
billed twice), and the rows' tokens are what the upstream reported, with source
"reported", or, where its stream carried no report, the estimate of what it was sent and
what it said, with source "estimated".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from chat.billing import TOKEN_FIELDS, estimate_tokens
from chat.models import Usage
from chat.streams import interrupt_all
from tests.fake_upstream import FakeUpstream, Reply, chunk, json_reply, sse, transcript, usage_chunk
from tests.test_answers_end import Database, FakeClock, paced, release

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Said:
    """What one streamed reply carried: its text and its last usage report."""

    content: str
    reasoning: str
    usage: dict[str, Any] | None


def said(sent: bytes) -> Said:
    content = reasoning = ""
    usage = None
    for line in sent.decode().splitlines():
        if not line.startswith("data: {"):
            continue
        event = json.loads(line[len("data: ") :])
        usage = event.get("usage") or usage
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            content += delta.get("content") or ""
            reasoning += delta.get("reasoning_content") or ""
    return Said(content, reasoning, usage)


def reported(usage: dict[str, Any]) -> tuple[int, ...]:
    """The ledger's counters (TOKEN_FIELDS) as an xAI usage object gives them."""
    return (
        usage["prompt_tokens"],
        usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
        usage["completion_tokens"],
        usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0),
        usage["total_tokens"],
    )


def estimated(prompt: list[dict[str, str]], text: Said) -> tuple[int, ...]:
    """docs/usage.md: the prompt as sent and the answer as said, 4 characters a token."""
    tokens = sum(estimate_tokens(turn["content"]) for turn in prompt)
    completion, reasoning = estimate_tokens(text.content), estimate_tokens(text.reasoning)
    return (tokens, 0, completion, reasoning, tokens + completion + reasoning)


def check_the_ledger(upstream: FakeUpstream, rows: list[Usage], answers: int) -> None:
    """The invariant: `answers` answers were asked for while `upstream` recorded what it
    answered, and `rows` is the whole ledger."""
    streamed = [request for request in upstream.stream_requests() if request.streamed]
    expected: Counter[tuple[Any, ...]] = Counter()
    for request in streamed:
        text = said(bytes(request.sent))
        if text.usage is not None:
            expected["reported", *reported(text.usage)] += 1
        else:
            expected["estimated", *estimated(request.json()["messages"], text)] += 1
    refused = answers - len(streamed)
    if refused:
        expected["none", *(0,) * len(TOKEN_FIELDS)] += refused
    found = Counter((row.source, *(getattr(row, f) for f in TOKEN_FIELDS)) for row in rows)
    assert found == expected
    assert len(rows) == answers


# -- the scenarios: each asks for answers and returns how many ------------------------------

Scenario = Callable[..., Awaitable[int]]


async def _ask(socket, text: str = "hello") -> dict:
    await socket.send(type="send", content=text, conversation_id=None, model=None)
    end, _ = await socket.until("message.end")
    return end


async def _started(socket, text: str = "hello") -> dict:
    await socket.send(type="send", content=text, conversation_id=None, model=None)
    start, _ = await socket.until("message.start")
    await socket.until("delta")
    return start


async def complete(upstream, socket, **_) -> int:
    for name in ("fantasy-xai-grok-4-fast-2.sse", "fantasy-xai-grok-3-mini-1.sse"):
        upstream.queue(Reply(body=transcript(name), pieces="random"))
        assert (await _ask(socket))["state"] == "complete"
    return 2


async def stopped(upstream, socket, **_) -> int:
    upstream.queue(paced("Hello ", "world"))
    start = await _started(socket)
    await socket.send(type="stop", message_id=start["message"]["id"])
    end, _ = await socket.until("message.end")
    assert end["state"] == "stopped"
    return 1


async def failed_mid_stream(upstream, socket, **_) -> int:
    # One error before the usage report, one after it.
    upstream.queue(
        Reply(body=sse(chunk("partial "), {"error": {"message": "overloaded"}})),
        Reply(body=sse(chunk("partial "), usage_chunk(30, 2), {"error": {"message": "gone"}})),
    )
    assert (await _ask(socket))["state"] == "error"
    assert (await _ask(socket))["state"] == "error"
    return 2


async def deleted_mid_stream(upstream, socket, client, alice, **_) -> int:
    upstream.queue(paced("Hello ", "world"))
    start = await _started(socket)
    await sync_to_async(client.force_login)(alice)
    response = await sync_to_async(client.post)(f"/c/{start['conversation_id']}/delete/")
    assert response.status_code == 302
    end, _ = await socket.until("message.end")
    assert end["state"] == "stopped"
    return 1


async def saved_after_failing(upstream, socket, monkeypatch, settings, **_) -> int:
    from chat import streams

    clock = FakeClock()
    monkeypatch.setattr(streams, "SAVE_POLICY", clock, raising=False)
    settings.STREAM_CHECKPOINT_SECONDS = 0
    upstream.queue(paced("Hello ", "world"))
    async with Database() as database:
        await _started(socket)
        database.down = True
        clock.at.append((30.0, lambda: setattr(database, "down", False)))
        release(upstream)
        end, _ = await socket.until("message.end")
    assert end["state"] == "complete" and database.refused > 0
    return 1


async def refused_before_any_answer(upstream, socket, settings, **_) -> int:
    upstream.queue(json_reply(401, {"error": "Incorrect API key"}))
    assert (await _ask(socket))["state"] == "error"
    # Refused, retried, answered: one request billed, one row.
    settings.UPSTREAM_MAX_RETRIES = 1
    upstream.queue(
        json_reply(503, {"error": "busy"}, **{"retry-after": "0"}),
        Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")),
    )
    assert (await _ask(socket))["state"] == "complete"
    assert len(upstream.stream_requests()) == 3
    return 2


async def interrupted_by_shutdown(upstream, socket, **_) -> int:
    upstream.queue(paced("Hello ", "world"))
    await _started(socket)
    assert await interrupt_all() == 1
    end, _ = await socket.until("message.end")
    assert end["state"] == "interrupted"
    return 1


SCENARIOS = [
    complete,
    stopped,
    failed_mid_stream,
    deleted_mid_stream,
    saved_after_failing,
    refused_before_any_answer,
    interrupted_by_shutdown,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
async def test_every_streamed_request_has_one_ledger_row_with_what_the_upstream_reported(
    scenario: Scenario, upstream, alice, socket_for, client, monkeypatch, settings
):
    socket = await socket_for(alice)
    answers = await scenario(
        upstream=upstream,
        socket=socket,
        client=client,
        alice=alice,
        monkeypatch=monkeypatch,
        settings=settings,
    )
    rows = await database_sync_to_async(lambda: list(Usage.objects.all()))()
    check_the_ledger(upstream, rows, answers)
