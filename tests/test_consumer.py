from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer

from chat.models import Conversation, Message, Usage
from chat.streams import RUNNING
from tests.fake_upstream import Reply, chunk, json_reply, slow_stream, sse, transcript
from tests.live import answer_text

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def _message(message_id: int) -> Message:
    return Message.objects.get(id=message_id)


@database_sync_to_async
def _usage_rows(message_id: int) -> list[Usage]:
    return list(Usage.objects.filter(message_id=message_id))


async def _wait_finished(message_id: int, timeout: float = 60) -> Message:
    for _ in range(int(timeout / 0.05)):
        message = await _message(message_id)
        if message.state != Message.State.STREAMING:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError("the answer never finished")


async def test_it_streams_an_answer_and_saves_it(upstream, alice, socket_for):
    upstream.queue(Reply(body=transcript("fantasy-xai-grok-code-fast-1.sse"), pieces="random"))
    socket = await socket_for(alice)
    await socket.send(type="send", content="Say hi in Portuguese", conversation_id=None, model=None)
    end, frames = await socket.until("message.end")

    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["conversation", "message.start"]
    deltas = [f for f in frames if f["type"] == "delta"]
    text = "".join(f["content"] for f in deltas)
    reasoning = "".join(f["reasoning"] for f in deltas)
    assert text.startswith('Oi! (That\'s "hi" in Portuguese')
    assert reasoning.startswith('First, the user asked: "Say hi in Portuguese."')
    assert end["state"] == "complete"
    assert end["model"] == "grok-code-fast-1"
    assert end["usage"] == {
        "prompt_tokens": 213,
        "cached_prompt_tokens": 192,
        "completion_tokens": 27,
        "reasoning_tokens": 133,
        "total_tokens": 373,
        "tool_calls": 0,
        "web_search_calls": 0,
        "x_search_calls": 0,
        "source": "reported",
        "cost_usd": None,
        "cost_source": "unpriced",
    }

    message = await _message(end["message_id"])
    assert message.content == text and message.reasoning == reasoning
    assert message.state == "complete" and message.finish_reason == "stop"
    assert message.ttft_ms is not None and message.duration_ms is not None
    [usage] = await _usage_rows(message.id)
    assert (
        usage.source == "reported" and usage.total_tokens == 373 and usage.reasoning_tokens == 133
    )
    assert usage.response_id == "da8e02b5-c40e-2b4b-33ec-f867d1ba3d3e_us-east-1"
    assert usage.system_fingerprint == "fp_10f00c862d"

    [request] = upstream.stream_requests()
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer xai-test-key-0123456789abcdef"
    body = request.json()
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Say hi in Portuguese"}]


async def test_it_sends_the_conversation_history(upstream, alice, socket_for):
    socket = await socket_for(alice)
    await socket.send(type="send", content="first", conversation_id=None, model="grok-3-mini")
    first, _ = await socket.until("message.end")
    await socket.send(type="send", content="second", conversation_id=first["conversation_id"])
    await socket.until("message.end")
    body = upstream.stream_requests()[1].json()
    assert body["model"] == "grok-3-mini"
    assert body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Olá!"},
        {"role": "user", "content": "second"},
    ]


async def test_stop_keeps_the_partial_answer(upstream, alice, socket_for):
    upstream.queue(slow_stream(count=400, delay=0.02))
    socket = await socket_for(alice)
    await socket.send(type="send", content="x" * 400, conversation_id=None, model=None)
    start, _ = await socket.until("message.start")
    await socket.until("delta")
    await socket.send(type="stop", message_id=start["message"]["id"])
    end, _ = await socket.until("message.end", timeout=2)
    assert end["state"] == "stopped" and end["usage"]["source"] == "estimated"
    message = await _message(start["message"]["id"])
    assert message.state == "stopped" and message.content.startswith("tick ")
    assert len(message.content) < 400 * 5
    [usage] = await _usage_rows(message.id)
    # The documented estimate: 4 characters a token, of the prompt and the partial answer.
    assert usage.source == Usage.Source.ESTIMATED and usage.outcome == "stopped"
    assert usage.prompt_tokens == 100
    assert usage.completion_tokens == (len(message.content) + 3) // 4 > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    for _ in range(1200):  # polls until closed: a guard against a hang, not a deadline
        if upstream.open_streams == 0:
            break
        await asyncio.sleep(0.025)
    assert upstream.open_streams == 0


async def test_an_answer_completes_after_the_browser_goes_away(upstream, alice, socket_for):
    upstream.queue(slow_stream(count=20, delay=0.02))
    socket = await socket_for(alice)
    await socket.send(type="send", content="count", conversation_id=None, model=None)
    start, _ = await socket.until("message.start")
    await socket.close()
    message = await _wait_finished(start["message"]["id"])
    assert message.state == "complete"
    assert message.content == "tick " * 20
    [usage] = await _usage_rows(message.id)
    assert usage.source == "reported" and usage.outcome == "complete"
    assert (usage.prompt_tokens, usage.completion_tokens) == (10, 20)


async def test_an_upstream_error_before_the_stream_reaches_the_user(upstream, alice, socket_for):
    upstream.queue(
        json_reply(
            400,
            {
                "code": "Client specified an invalid argument",
                "error": "Incorrect API key provided: xa***ef. You can obtain an API key from https://console.x.ai.",
            },
        )
    )
    socket = await socket_for(alice)
    await socket.send(type="send", content="hello there", conversation_id=None, model=None)
    end, _ = await socket.until("message.end")
    assert end["state"] == "error"
    assert "Incorrect API key provided" in end["error"]
    conversation = await database_sync_to_async(Conversation.objects.get)(id=end["conversation_id"])
    rows = await database_sync_to_async(
        lambda: list(conversation.messages.values_list("role", "content", "state"))
    )()
    assert rows == [("user", "hello there", "complete"), ("assistant", "", "error")]
    # Refused upstream: one ledger row, with nothing billed.
    [usage] = await _usage_rows(end["message_id"])
    assert usage.outcome == "error" and usage.source == Usage.Source.NONE
    assert usage.total_tokens == 0 and usage.cost_in_usd_ticks is None


async def test_an_error_inside_the_stream_keeps_the_partial_answer(upstream, alice, socket_for):
    body = sse(
        chunk("Partial "),
        chunk("answer"),
        {
            "code": "The service is currently unavailable",
            "error": "Timed out waiting for first token",
        },
        done=False,
    )
    upstream.queue(Reply(body=body, pieces="random"))
    socket = await socket_for(alice)
    await socket.send(type="send", content="hello", conversation_id=None, model=None)
    end, _ = await socket.until("message.end")
    assert end["state"] == "error"
    assert "Timed out waiting for first token" in end["error"]
    message = await _message(end["message_id"])
    assert message.content == "Partial answer" and message.state == "error"
    [usage] = await _usage_rows(message.id)  # no usage report came: estimated
    assert usage.outcome == "error" and usage.source == Usage.Source.ESTIMATED
    assert (usage.prompt_tokens, usage.completion_tokens) == (2, 4)


async def test_a_dropped_connection_keeps_the_partial_answer(upstream, alice, socket_for):
    upstream.queue(Reply(body=sse(chunk("Half an "), chunk("answer"), done=False), end="drop"))
    socket = await socket_for(alice)
    await socket.send(type="send", content="hello", conversation_id=None, model=None)
    end, _ = await socket.until("message.end")
    assert end["state"] == "error" and "broke" in end["error"]
    message = await _message(end["message_id"])
    assert message.content == "Half an answer"
    [usage] = await _usage_rows(message.id)
    assert usage.outcome == "error" and usage.source == Usage.Source.ESTIMATED
    assert usage.completion_tokens == 4


async def test_it_refuses_another_users_conversation(upstream, alice, bob, socket_for):
    socket = await socket_for(alice)
    await socket.send(type="send", content="mine", conversation_id=None, model=None)
    end, _ = await socket.until("message.end")
    requests_before = len(upstream.stream_requests())

    intruder = await socket_for(bob)
    await intruder.send(type="send", content="yours?", conversation_id=end["conversation_id"])
    error = await intruder.receive()
    assert error["type"] == "error" and error["code"] == "not_found"
    await intruder.send(type="watch", conversation_id=end["conversation_id"])
    assert (await intruder.receive())["code"] == "not_found"
    await intruder.send(type="stop", message_id=end["message_id"])
    assert (await intruder.receive())["code"] == "not_found"
    assert len(upstream.stream_requests()) == requests_before
    count = await database_sync_to_async(
        Message.objects.filter(conversation_id=end["conversation_id"]).count
    )()
    assert count == 2


async def test_a_second_tab_sees_the_answer_and_can_stop_it(upstream, alice, socket_for):
    upstream.queue(slow_stream(count=400, delay=0.02))
    first = await socket_for(alice)
    await first.send(type="send", content="count", conversation_id=None, model=None)
    start, _ = await first.until("message.start")
    second = await socket_for(alice)
    await second.send(type="watch", conversation_id=start["conversation_id"])
    await second.until("watching")
    snapshot, _ = await second.until("snapshot")
    assert snapshot["message_id"] == start["message"]["id"]
    delta, _ = await second.until("delta")
    assert delta["content"].startswith("tick")
    await second.send(type="stop", message_id=start["message"]["id"])
    end, _ = await second.until("message.end", timeout=2)
    assert end["state"] == "stopped"
    first_end, _ = await first.until("message.end", timeout=2)
    assert first_end["state"] == "stopped"
    assert not RUNNING


async def test_bad_frames_get_an_error_and_the_socket_stays_usable(upstream, alice, socket_for):
    socket = await socket_for(alice)
    await socket.comm.send_to(text_data="not json")
    assert (await socket.receive())["code"] == "bad_json"
    await socket.send(type="dance")
    assert (await socket.receive())["code"] == "unknown_type"
    await socket.send(type="send")
    assert (await socket.receive())["code"] == "bad_frame"
    await socket.send(type="send", content="   ", conversation_id=None)
    assert (await socket.receive())["code"] == "empty"
    await socket.send(type="stop", message_id="x")
    assert (await socket.receive())["code"] == "bad_frame"
    await socket.send(type="ping")
    assert (await socket.receive())["type"] == "pong"
    assert await database_sync_to_async(Message.objects.count)() == 0


async def test_it_refuses_a_message_over_the_size_limit(upstream, alice, socket_for, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    socket = await socket_for(alice)
    await socket.send(type="send", content="x" * 101, conversation_id=None)
    error = await socket.receive()
    assert error["code"] == "too_long"
    assert upstream.stream_requests() == []
    assert await database_sync_to_async(Message.objects.count)() == 0


async def test_it_says_plainly_when_no_key_is_configured(upstream, alice, socket_for, settings):
    settings.XAI_API_KEY = ""
    socket = await socket_for(alice)
    await socket.send(type="send", content="hello", conversation_id=None)
    error = await socket.receive()
    assert error["code"] == "no_api_key" and "XAI_API_KEY" in error["message"]
    assert upstream.stream_requests() == []


async def test_an_anonymous_socket_is_closed(upstream):
    from channels.testing import WebsocketCommunicator
    from django.contrib.auth.models import AnonymousUser

    from chat.consumers import ChatConsumer

    comm = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    comm.scope["user"] = AnonymousUser()
    connected, _ = await comm.connect()
    assert not connected


async def test_a_returning_tab_learns_how_answers_ended(upstream, alice, socket_for):
    socket = await socket_for(alice)
    await socket.send(type="send", content="hello", conversation_id=None)
    end, _ = await socket.until("message.end")
    await socket.close()

    returning = await socket_for(alice)
    await returning.send(type="watch", conversation_id=end["conversation_id"])
    watching, _ = await returning.until("watching")
    [recent] = watching["recent"]
    assert recent["message_id"] == end["message_id"]
    assert recent["state"] == "complete" and recent["content"] == "Olá!"
    assert recent["usage"]["total_tokens"] == 296


@pytest.fixture
def count_queries(monkeypatch):
    """Counts SQL statements on every connection and thread (answers run in several)."""
    from django.db.backends.utils import CursorWrapper

    statements: list[str] = []
    original = CursorWrapper.execute

    def execute(self, sql, params=None):
        statements.append(sql)
        return original(self, sql, params)

    monkeypatch.setattr(CursorWrapper, "execute", execute)
    return statements


async def test_an_answer_costs_the_same_queries_whatever_its_length(
    upstream, alice, socket_for, count_queries
):
    async def queries_for(chunks: int) -> int:
        body = sse(*[chunk("word ") for _ in range(chunks)], chunk(finish="stop"))
        upstream.queue(Reply(body=body, pieces="random"))
        socket = await socket_for(alice)
        count_queries.clear()
        await socket.send(type="send", content="talk", conversation_id=None)
        end, frames = await socket.until("message.end")
        assert "".join(f["content"] for f in frames if f["type"] == "delta") == "word " * chunks
        return len(count_queries)

    await queries_for(1)  # the first answer of the day also creates the day's totals
    short, long = await queries_for(5), await queries_for(1000)
    assert short == long
    assert 0 < short < 21  # (one of them reads the system prompt's site and user parts)


async def test_deltas_read_together_go_out_together_and_nothing_is_lost(
    upstream, alice, socket_for
):
    words = [f"{i} " for i in range(1000)]
    upstream.queue(Reply(body=sse(*(chunk(w) for w in words), chunk(finish="stop"))))
    socket = await socket_for(alice)
    await socket.send(type="send", content="count", conversation_id=None)
    end, frames = await socket.until("message.end")
    deltas = [f for f in frames if f["type"] == "delta"]
    assert answer_text(frames) == "".join(words)
    assert len(deltas) < len(words)  # the body arrived at once: far fewer frames than chunks


async def test_a_tab_already_watching_gets_every_chunk_of_a_new_answer(upstream, alice, socket_for):
    asking, watching = await socket_for(alice), await socket_for(alice)
    await asking.send(type="send", content="hi", conversation_id=None)
    first, _ = await asking.until("message.end")
    conversation_id = first["conversation_id"]
    await watching.send(type="watch", conversation_id=conversation_id)
    await watching.until("watching")

    words = [f"{i} " for i in range(300)]
    events = [sse(chunk(w), done=False) for w in words] + [sse(chunk(finish="stop"))]
    upstream.queue(Reply(pieces=events, delay=0.002))
    await asking.send(type="send", content="count", conversation_id=conversation_id)
    await asking.until("message.end")
    end, frames = await watching.until("message.end")
    assert end["state"] == "complete"
    assert frames[0]["type"] == "message.start"
    assert answer_text(frames) == "".join(words)


class LateControlLayer(InMemoryChannelLayer):
    """The in-memory layer, where an answer's control channel joins its group late: once a
    tab has asked the answer for a snapshot, or after a second (as Redis can be slower to
    add than another tab is to ask)."""

    asked: asyncio.Event
    joined: asyncio.Event

    async def group_add(self, group: str, channel: str) -> None:
        if group.startswith("ctl_"):
            try:
                await asyncio.wait_for(self.asked.wait(), 1.0)
            except TimeoutError:
                pass
        await super().group_add(group, channel)
        if group.startswith("ctl_"):
            self.joined.set()

    async def group_send(self, group: str, message: dict) -> None:
        await super().group_send(group, message)
        if group.startswith("ctl_") and message.get("message_id"):  # asked about the answer
            self.asked.set()


async def test_a_watching_tab_is_told_of_a_new_answer_only_once_the_answer_hears_its_requests(
    upstream, alice, socket_for, settings
):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "tests.test_consumer.LateControlLayer"}}
    LateControlLayer.asked, LateControlLayer.joined = asyncio.Event(), asyncio.Event()
    conversation = await database_sync_to_async(Conversation.objects.create)(user=alice)
    asking, watching = await socket_for(alice), await socket_for(alice)
    await watching.send(type="watch", conversation_id=conversation.id)
    await watching.until("watching")

    words = [f"{i} " for i in range(10)]
    upstream.queue(Reply(pieces=[sse(chunk(w), done=False) for w in words] + [sse()], paced=True))
    await asking.send(type="send", content="count", conversation_id=conversation.id)
    await asking.until("message.start")
    await LateControlLayer.joined.wait()
    for _ in words:
        upstream.next_piece()
    await asking.until("message.end")
    end, frames = await watching.until("message.end")
    # Its request for a snapshot reached the answer: it has the text from the start.
    assert end["state"] == "complete"
    assert answer_text(frames) == "".join(words)


async def test_a_watcher_that_misses_text_asks_for_the_whole_answer_again(
    upstream, alice, socket_for
):
    from channels.layers import get_channel_layer

    upstream.queue(slow_stream(count=200, delay=0.02, text="tick "))
    asking, watching = await socket_for(alice), await socket_for(alice)
    await asking.send(type="send", content="count", conversation_id=None)
    start, _ = await asking.until("message.start")
    message_id, conversation_id = start["message"]["id"], start["conversation_id"]
    await watching.send(type="watch", conversation_id=conversation_id)
    first, _ = await watching.until("snapshot")
    if not first["content"]:
        await watching.until("delta")  # the answer has text before the gap, however slow
    # A group delta from further on than the watcher has: the text between went missing.
    await get_channel_layer().group_send(
        f"conv_{conversation_id}",
        {
            "type": "chat.delta",
            "message_id": message_id,
            "content": "later text ",
            "reasoning": "",
            "content_offset": len(first["content"]) + 10_000,
            "reasoning_offset": 0,
            "origin": None,
        },
    )
    again, frames = await watching.until("snapshot")
    assert again["message_id"] == message_id and again["content"].startswith("tick")
    assert not any("later text" in f.get("content", "") for f in frames)
    end, frames = await watching.until("message.end")
    assert answer_text([again, *frames]) == "tick " * 200
