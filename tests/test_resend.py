"""A `send` retried with its client_id (a tab that reconnected before it heard
message.start) gets the answer the first try started: one upstream request, one answer."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.utils import timezone

from chat.models import Budget, Conversation, Message, Usage
from chat.services import start_answer
from tests.fake_upstream import Reply, chunk, usage_chunk
from tests.live import answer_text

pytestmark = pytest.mark.django_db(transaction=True)

TICKS = 30


def paced_answer() -> Reply:
    """`TICKS` words, the first at once and each next one when the test says."""
    pieces = [f"data: {json.dumps(chunk('tick '))}\n\n".encode() for _ in range(TICKS)]
    pieces.append(f"data: {json.dumps(chunk(finish='stop'))}\n\n".encode())
    pieces.append(f"data: {json.dumps(usage_chunk(10, TICKS))}\n\ndata: [DONE]\n\n".encode())
    return Reply(pieces=pieces, paced=True)


@database_sync_to_async
def saved() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), Usage.objects.count()


async def test_a_send_retried_while_its_answer_streams_follows_that_answer(
    upstream, alice, socket_for
):
    upstream.queue(paced_answer())
    client_id = str(uuid.uuid4())
    first = await socket_for(alice)
    await first.send(type="send", content="count", conversation_id=None, client_id=client_id)
    start, _ = await first.until("message.start")
    await first.until("delta")
    await first.close()  # the tab lost its socket before it heard message.start

    retry = await socket_for(alice)
    await retry.send(type="send", content="count", conversation_id=None, client_id=client_id)
    conversation, _ = await retry.until("conversation")
    assert conversation["conversation"]["id"] == start["conversation_id"]
    again, _ = await retry.until("message.start")
    assert again["message"] == start["message"] and again["user_message"] == start["user_message"]
    snapshot, _ = await retry.until("snapshot")
    assert snapshot["message_id"] == start["message"]["id"]
    for _ in range(TICKS + 2):
        upstream.next_piece()
    end, frames = await retry.until("message.end")
    assert end["message_id"] == start["message"]["id"] and end["state"] == "complete"
    assert answer_text([snapshot, *frames]) == "tick " * TICKS

    assert len(upstream.stream_requests()) == 1
    assert await saved() == (1, 2, 1)
    assert start["client_id"] == again["client_id"] == client_id


async def test_a_send_retried_after_its_answer_ended_gets_that_answer_whole(
    upstream, alice, socket_for
):
    first = await socket_for(alice)
    await first.send(type="send", content="hello", conversation_id=None, client_id="tab-1_a")
    first_end, _ = await first.until("message.end")
    await first.close()

    retry = await socket_for(alice)
    await retry.send(type="send", content="hello", conversation_id=None, client_id="tab-1_a")
    end, frames = await retry.until("message.end")
    assert [f["type"] for f in frames] == [
        "conversation",
        "message.start",
        "snapshot",
        "message.end",
    ]
    assert frames[2]["content"] == "Olá!"
    assert end == first_end
    assert len(upstream.stream_requests()) == 1
    assert await saved() == (1, 2, 1)


async def test_a_retry_in_an_existing_conversation_is_not_announced_as_a_new_one(
    upstream, alice, socket_for
):
    socket = await socket_for(alice)
    await socket.send(type="send", content="first", conversation_id=None)
    first, _ = await socket.until("message.end")
    conversation_id = first["conversation_id"]
    for _ in range(2):
        await socket.send(
            type="send", content="second", conversation_id=conversation_id, client_id="x"
        )
        end, frames = await socket.until("message.end")
        assert frames[0]["type"] == "message.start"
    assert len(upstream.stream_requests()) == 2
    assert await saved() == (1, 4, 2)


async def test_a_client_id_is_refused_when_malformed_or_reused_for_other_words(
    upstream, alice, bob, socket_for
):
    socket = await socket_for(alice)
    for bad in ("", "x" * 65, "a b", "é", 7, ["x"]):
        await socket.send(type="send", content="hello", conversation_id=None, client_id=bad)
        error = await socket.receive()
        assert error["code"] == "bad_frame" and "client_id" in error["message"]
    assert await saved() == (0, 0, 0)

    await socket.send(type="send", content="hello", conversation_id=None, client_id="k")
    await socket.until("message.end")
    await socket.send(type="send", content="other words", conversation_id=None, client_id="k")
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == "bad_frame"
    # Another user's id is theirs alone.
    other = await socket_for(bob)
    await other.send(type="send", content="hello", conversation_id=None, client_id="k")
    end, _ = await other.until("message.end")
    assert end["state"] == "complete"
    assert len(upstream.stream_requests()) == 2
    assert await saved() == (2, 4, 2)


def test_a_retry_is_not_refused_by_the_limits_the_first_send_used_up(alice):
    Budget.objects.create(user=alice, max_messages_per_minute=1, max_concurrent_streams=1)
    first = start_answer(alice, None, None, "hello", None, "once")
    again = start_answer(alice, None, None, "hello", None, "once")
    assert again.answer == first.answer and again.user_message == first.user_message
    assert Message.objects.count() == 2


def test_a_client_id_older_than_a_day_starts_a_new_answer(alice):
    from chat.models import SendKey

    first = start_answer(alice, None, None, "hello", None, "old")
    SendKey.objects.update(created_at=timezone.now() - dt.timedelta(hours=24, seconds=1))
    second = start_answer(alice, None, None, "hello", None, "old")
    assert second.answer != first.answer
    assert SendKey.objects.get().answer == second.answer  # the expired key went


def test_a_retry_after_its_conversation_was_deleted_starts_nothing(alice):
    from chat.services import Refused

    first = start_answer(alice, None, None, "hello", None, "gone")
    Message.objects.filter(id=first.answer.id).update(state="complete")
    first.conversation.delete()
    with pytest.raises(Refused) as refusal:
        start_answer(alice, None, None, "hello", None, "gone")
    assert refusal.value.code == "not_found"
    assert Message.objects.count() == 0


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="SQLite runs one write transaction at a time: two sends cannot interleave",
)
def test_two_sends_of_one_client_id_racing_in_two_threads_start_one_answer(alice, monkeypatch):
    # The first send holds its transaction open, its answer saved, until the second is
    # waiting for the user's row: then the second finds the first's key once it commits.
    first_saved, release = threading.Event(), threading.Event()
    save = Conversation.start_answer

    def start_and_hold(self, *args, **kwargs):
        saved = save(self, *args, **kwargs)
        if not first_saved.is_set():
            first_saved.set()
            release.wait(60)
        return saved

    monkeypatch.setattr(Conversation, "start_answer", start_and_hold)
    results: list = []

    def send() -> None:
        try:
            results.append(start_answer(alice, None, None, "hello", None, "raced"))
        except Exception as exc:  # the assertion below shows it
            results.append(exc)
        finally:
            connection.close()

    first, second = threading.Thread(target=send), threading.Thread(target=send)
    first.start()
    assert first_saved.wait(60)
    second.start()
    with connection.cursor() as cursor:
        for _ in range(6000):  # a hang guard of a minute, not a deadline
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the second send never waited for the first")
    release.set()
    first.join(60)
    second.join(60)
    assert sorted(type(r).__name__ for r in results) == ["ResentAnswer", "StartedAnswer"], results
    assert results[0].answer.id == results[1].answer.id
    assert Conversation.objects.count() == 1 and Message.objects.count() == 2
