"""Every answer ends on the record, whatever breaks (issue 13, items 1 and 2).

A deleted conversation or user never takes billing history with it; a database that fails
at the final save is waited for while the answer stays in memory; the browser always gets
its `message.end`; an answer no process streams never blocks its user.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import sqlite3
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.db import OperationalError, connection
from django.utils import timezone

from chat import streams
from chat.billing import estimate_tokens
from chat.models import Budget, Conversation, Message, Usage, UsageDay
from tests.fake_upstream import Reply, chunk, sse, usage_chunk

pytestmark = pytest.mark.django_db(transaction=True)


def paced(*texts: str, prompt: int = 12, completion: int = 7) -> Reply:
    """An answer the test lets through piece by piece (FakeUpstream.next_piece): the first
    text at once, then each of the rest, the end and the usage report on request."""
    pieces = [sse(chunk(text), done=False) for text in texts]
    pieces += [sse(chunk(finish="stop"), usage_chunk(prompt, completion))]
    return Reply(pieces=pieces, paced=True)


def release(upstream, count: int = 10) -> None:
    """Let the rest of a paced answer come (had it gone on, the upstream would bill it)."""
    for _ in range(count):
        upstream.next_piece()


@database_sync_to_async
def _ledger() -> list[Usage]:
    return list(Usage.objects.order_by("id"))


@database_sync_to_async
def _days() -> dict[str, int]:
    return UsageDay.objects.all().sums()


async def _start(socket, text: str = "hi", conversation_id: int | None = None) -> dict:
    await socket.send(type="send", content=text, conversation_id=conversation_id, model=None)
    start, _ = await socket.until("message.start")
    await socket.until("delta")
    return start


async def _delete(client, conversation_id: int) -> None:
    response = await sync_to_async(client.post)(f"/c/{conversation_id}/delete/")
    assert response.status_code == 302


# -- 1. Deleting a conversation, or a user, never deletes what it cost ----------------------


async def test_deleting_a_conversation_mid_answer_stops_it_and_keeps_what_it_cost(
    upstream, alice, socket_for, client
):
    upstream.queue(paced("Hello ", "world, ", "and more"))
    socket = await socket_for(alice)
    start = await _start(socket)
    await sync_to_async(client.force_login)(alice)

    await _delete(client, start["conversation_id"])
    release(upstream)
    end, _ = await socket.until("message.end")

    assert end["state"] == "stopped" and end["message_id"] == start["message"]["id"]
    assert end["usage"]["source"] == "estimated"
    [row] = await _ledger()
    assert (row.user_id, row.conversation_id, row.message_id) == (alice.id, None, None)
    assert row.answer_id == start["message"]["id"]
    assert (row.outcome, row.source) == ("stopped", Usage.Source.ESTIMATED)
    # The prompt as sent and what was said before the stop, 4 characters a token.
    assert (row.prompt_tokens, row.completion_tokens) == (estimate_tokens("hi"), 2)
    days = await _days()
    assert (days["requests"], days["total_tokens"]) == (1, row.total_tokens)
    assert not await database_sync_to_async(Conversation.objects.exists)()
    assert len(upstream.stream_requests()) == 1


async def test_answers_of_deleted_conversations_count_against_the_limits(
    upstream, alice, socket_for, client
):
    await database_sync_to_async(Budget.objects.create)(user=alice, max_messages_per_minute=2)
    await sync_to_async(client.force_login)(alice)
    socket = await socket_for(alice)
    for _ in range(2):
        upstream.queue(paced("Hello ", "world"))
        start = await _start(socket)
        await _delete(client, start["conversation_id"])
        end, _ = await socket.until("message.end")
        assert end["state"] == "stopped"

    await socket.send(type="send", content="a third", conversation_id=None, model=None)
    refused, _ = await socket.until("error")
    assert refused["code"] == "rate_limited"
    assert len(upstream.stream_requests()) == 2
    assert [row.outcome for row in await _ledger()] == ["stopped", "stopped"]


async def test_deleting_a_user_keeps_their_billing_history_in_the_report(
    upstream, alice, staff, socket_for, client
):
    socket = await socket_for(alice)
    await socket.send(type="send", content="hi", conversation_id=None, model=None)
    first, _ = await socket.until("message.end")
    upstream.queue(paced("Hello ", "world"))
    await _start(socket, conversation_id=first["conversation_id"])

    # Deleted by an admin while an answer of theirs streams.
    await database_sync_to_async(alice.delete)()
    release(upstream)
    end, _ = await socket.until("message.end")
    assert end["state"] == "complete"

    rows = await _ledger()
    assert [(row.user_id, row.conversation_id, row.source) for row in rows] == [
        (None, None, "reported"),
        (None, None, "reported"),
    ]
    assert rows[0].answer_id == first["message_id"] and rows[0].total_tokens == 296
    days = await _days()
    assert (days["requests"], days["total_tokens"]) == (2, 296 + 19)
    await sync_to_async(client.force_login)(staff)
    report = await sync_to_async(client.get)("/admin/usage/")
    assert report.status_code == 200
    assert "(deleted user)" in report.content.decode()
    csv = await sync_to_async(client.get)("/admin/usage/?format=csv")
    assert "(deleted user)" in csv.content.decode()


# -- 2. The final save: retried, and the browser always told ----------------------------


class FakeClock:
    """A streams.SavePolicy whose clock the test owns: each sleep moves it on at once and
    lets the test act at chosen times (the database "comes back")."""

    patience = 60.0
    first_delay = 0.1
    max_delay = 10.0

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.at: list[tuple[float, Any]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        while self.at and self.at[0][0] <= self.now:
            self.at.pop(0)[1]()
        await asyncio.sleep(0)


class Database:
    """The database thread's connection, made to fail as a locked or unreachable database
    does (Django's documented execute_wrapper hook), until the test says it answers."""

    def __init__(self) -> None:
        self.down = False
        self.refused = 0
        self._stack = contextlib.ExitStack()

    def _wrapper(self, execute, sql, params, many, context):
        if self.down:
            self.refused += 1
            raise OperationalError("database is locked")
        return execute(sql, params, many, context)

    async def __aenter__(self) -> Database:
        # database_sync_to_async runs every call in one thread: its connection is the one.
        await database_sync_to_async(
            lambda: self._stack.enter_context(connection.execute_wrapper(self._wrapper))
        )()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.down = False
        await database_sync_to_async(self._stack.close)()


@pytest.fixture
def clock(monkeypatch, settings) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(streams, "SAVE_POLICY", fake, raising=False)
    settings.STREAM_CHECKPOINT_SECONDS = 0  # only the final save writes the answer
    return fake


async def test_a_database_locked_for_25_s_at_the_final_save_is_waited_for(
    upstream, alice, socket_for, clock
):
    upstream.queue(paced("Hello ", "world"))
    socket = await socket_for(alice)
    async with Database() as database:
        start = await _start(socket)
        database.down = True
        clock.at.append((25.0, lambda: setattr(database, "down", False)))
        release(upstream)
        end, frames = await socket.until("message.end")

    assert [f["type"] for f in frames].count("message.end") == 1
    assert end["state"] == "complete" and end["error"] is None
    assert end["usage"]["source"] == "reported" and end["usage"]["total_tokens"] == 19
    assert database.refused >= 5 and 25 <= sum(clock.sleeps) < 40
    assert clock.sleeps[:3] == [0.1, 0.2, 0.4]  # backing off
    [row] = await _ledger()
    assert (row.answer_id, row.outcome, row.total_tokens) == (
        start["message"]["id"],
        "complete",
        19,
    )
    message = await database_sync_to_async(Message.objects.get)(pk=start["message"]["id"])
    assert (message.state, message.content) == ("complete", "Hello world")


async def test_an_answer_not_saved_within_a_minute_ends_honestly_and_is_saved_later(
    upstream, alice, socket_for, clock, caplog
):
    upstream.queue(paced("Hello ", "world"))
    socket = await socket_for(alice)
    async with Database() as database:
        start = await _start(socket)
        database.down = True
        clock.at.append((300.0, lambda: setattr(database, "down", False)))
        release(upstream)
        told, _ = await socket.until("message.end")
        assert clock.now >= 60
        # The text and what it cost, as known, with the truth: it is not saved yet.
        assert told["state"] == "error" and "could not be saved" in told["error"]
        assert told["usage"]["source"] == "reported" and told["usage"]["total_tokens"] == 19
        assert "ledger row not written yet" in caplog.text
        saved, _ = await socket.until("message.end")

    assert saved["state"] == "complete" and saved["error"] is None
    assert max(clock.sleeps) <= clock.max_delay
    assert streams.SavePolicy().patience >= 60  # what the app waits, before it tells
    [row] = await _ledger()
    assert (row.answer_id, row.outcome, row.total_tokens) == (
        start["message"]["id"],
        "complete",
        19,
    )


async def test_text_with_a_split_surrogate_pair_or_nul_is_saved_with_its_usage(
    upstream, alice, socket_for, caplog
):
    # An emoji's surrogate pair split across two chunks, as JSON escapes, and a NUL escape.
    body = sse(chunk("smile \ud83d"), chunk("\ude00 and \x00!", finish="stop"), usage_chunk(9, 4))
    assert b"\\ud83d" in body and b"\\u0000" in body
    upstream.queue(Reply(body=body))
    socket = await socket_for(alice)
    await socket.send(type="send", content="hi", conversation_id=None, model=None)
    end, frames = await socket.until("message.end")

    text = "smile \ufffd\ufffd and \ufffd!"
    assert end["state"] == "complete"
    assert "".join(f["content"] for f in frames if f["type"] == "delta") == text
    message = await database_sync_to_async(Message.objects.get)(pk=end["message_id"])
    assert message.content == text
    [row] = await _ledger()
    assert (row.source, row.total_tokens) == ("reported", 13)
    await asyncio.to_thread(gc.collect)
    assert "never retrieved" not in caplog.text


# -- a stuck "streaming" row blocks nobody ----------------------------------------------


@database_sync_to_async
def _stuck_answer(user, worker: str, age: float = 0) -> Message:
    """An answer left "streaming" by a run that is gone, with its checkpointed text."""
    conversation = Conversation.objects.create(user=user)
    _, answer = conversation.start_answer("an old question", "grok-4", worker)
    Message.objects.filter(pk=answer.pk).update(
        content="said before", created_at=timezone.now() - dt.timedelta(seconds=age)
    )
    return answer


async def test_an_answer_no_process_streams_does_not_count_against_the_concurrency_limit(
    upstream, alice, socket_for
):
    await database_sync_to_async(Budget.objects.create)(user=alice, max_concurrent_streams=1)
    # This process's own, but no run of it streams it (its task died).
    stuck = await _stuck_answer(alice, streams.worker_id(), age=40)
    socket = await socket_for(alice)
    await socket.send(type="send", content="hi", conversation_id=None, model=None)
    while (frame := await socket.receive())["type"] not in ("message.end", "error"):
        pass
    assert (frame["type"], frame.get("state")) == ("message.end", "complete"), frame
    ended = await database_sync_to_async(Message.objects.select_related("usage").get)(pk=stuck.pk)
    assert ended.state == "interrupted" and ended.usage.source == "estimated"
    assert ended.usage.completion_tokens == estimate_tokens("said before")


@pytest.mark.parametrize("worker", ["this process", "a process of another host"])
async def test_stop_ends_an_answer_no_process_streams(
    upstream, alice, socket_for, monkeypatch, worker
):
    # Another host's process does not answer the stop: after a wait it is ended here.
    monkeypatch.setattr(streams, "STOP_REPLY_SECONDS", 0.2, raising=False)
    name = streams.worker_id() if worker == "this process" else "elsewhere:4242"
    stuck = await _stuck_answer(alice, name)
    socket = await socket_for(alice)
    await socket.send(type="watch", conversation_id=stuck.conversation_id)
    await socket.until("watching")
    await socket.send(type="stop", message_id=stuck.pk)
    end, _ = await socket.until("message.end")
    assert (end["message_id"], end["state"]) == (stuck.pk, "stopped")
    assert end["usage"]["source"] == "estimated"
    [row] = await _ledger()
    assert (row.answer_id, row.outcome) == (stuck.pk, "stopped")
    message = await database_sync_to_async(Message.objects.get)(pk=stuck.pk)
    assert (message.state, message.content) == ("stopped", "said before")


async def test_a_run_that_finds_its_answer_ended_by_another_corrects_the_one_ledger_row(
    upstream, alice, socket_for, caplog
):
    # A stopper that heard nothing back ended it with an estimate; the run, alive after
    # all, saves the truth over it: still one row, with the day's totals moved along.
    upstream.queue(paced("Hello ", "world"))
    socket = await socket_for(alice)
    start = await _start(socket)
    message = await database_sync_to_async(Message.objects.get)(pk=start["message"]["id"])
    estimate = await database_sync_to_async(message.end_abandoned)("stopped")
    assert estimate is not None and estimate.source == "estimated"
    release(upstream)
    end, _ = await socket.until("message.end")
    assert end["state"] == "complete"
    [row] = await _ledger()
    assert (row.pk, row.source, row.total_tokens) == (estimate.pk, "reported", 19)
    days = await _days()
    assert (days["requests"], days["total_tokens"], days["estimated"]) == (1, 19, 0)


async def test_a_really_locked_sqlite_database_is_waited_for(upstream, alice, socket_for, clock):
    if connection.vendor != "sqlite":
        pytest.skip("SQLite's own lock (PostgreSQL waits for locks instead of failing)")
    upstream.queue(paced("Hello ", "world"))
    socket = await socket_for(alice)
    start = await _start(socket)
    # Another connection to the test database writes to the ledger's daily totals and keeps
    # its transaction open: SQLite refuses the answer's save with "table is locked".
    locker = sqlite3.connect(connection.settings_dict["NAME"], uri=True, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    locker.execute("UPDATE chat_usageday SET requests = requests")
    clock.at.append((25.0, lambda: locker.execute("ROLLBACK")))
    try:
        release(upstream)
        end, _ = await socket.until("message.end")
    finally:
        locker.close()
    assert end["state"] == "complete" and len(clock.sleeps) >= 5
    [row] = await _ledger()
    assert (row.answer_id, row.total_tokens) == (start["message"]["id"], 19)


def test_the_days_of_deleted_users_add_each_request_once(alice, bob, django_user_model):
    # Two deleted users leave two days without a user; a third one's late answer adds to
    # one of them, not to both.
    carol = django_user_model.objects.create_user("carol", password="carol-password-1")
    answers = {}
    for user in (alice, bob, carol):
        _, answers[user.pk] = Conversation.objects.create(user=user).start_answer("hi", "grok-4")
    for user in (alice, bob):
        answers[user.pk].finish(user_id=user.pk, usage={"total_tokens": 10}, state="complete")
    late, carol_id = answers[carol.pk], carol.pk
    for user in (alice, bob, carol):
        user.delete()
    late.finish(user_id=carol_id, usage={"total_tokens": 5}, state="complete")

    assert UsageDay.objects.filter(user=None).count() == 2
    sums = UsageDay.objects.all().sums()
    assert (sums["requests"], sums["total_tokens"]) == (3, 25)
    assert list(Usage.objects.values_list("user", "message", "total_tokens")) == [
        (None, None, 10),
        (None, None, 10),
        (None, None, 5),
    ]


@pytest.fixture
def content_index():
    """A btree index on the messages' text: a row over its limit (about 2.7 KB after
    compression) is refused for good, SQLSTATE 54000, which psycopg raises as an
    OperationalError like a database that is down."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE INDEX test_message_content ON chat_message (content)")
    yield
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX test_message_content")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a limit of PostgreSQL's")
async def test_an_answer_the_database_can_never_hold_ends_at_once_with_its_cost_recorded(
    upstream, alice, socket_for, clock, content_index
):
    import random

    text = "".join(random.Random(7).choices("abcdefghijklmnopqrstuvwxyz0123456789", k=20_000))
    upstream.queue(paced(text[:10], text[10:]))
    socket = await socket_for(alice)
    start = await _start(socket)
    release(upstream)
    end, _ = await socket.until("message.end")

    # Not retried as if the database were down (which would go on for ever).
    assert end["state"] == "error" and end["error"] == streams.NOT_SAVABLE
    assert clock.sleeps == []
    [row] = await _ledger()
    assert (row.answer_id, row.total_tokens) == (start["message"]["id"], 19)
    message = await database_sync_to_async(Message.objects.get)(pk=start["message"]["id"])
    assert (message.state, message.error) == ("error", streams.NOT_SAVABLE)
