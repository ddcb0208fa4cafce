"""The limits every user has on a fresh install: answers at once, messages a minute and
open sockets (docs/usage.md, "Budgets and limits"). Settings change the defaults; a
budget overrides them. (Daphne refusing the handshake: tests/test_socket_limit.py.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User
from django.utils import timezone

from chat.consumers import ChatConsumer
from chat.limits import limits_for, open_socket, refusal_for
from chat.models import Budget, Conversation, Message, OpenSocket, Usage
from tests.fake_upstream import Reply, chunk, sse, usage_chunk
from tests.test_security import clean_env, run_manage

pytestmark = pytest.mark.django_db(transaction=True)


def paced_answer() -> Reply:
    """An answer that says "a", then waits for the test's next_piece() to end."""
    return Reply(
        pieces=[sse(chunk("a"), done=False), sse(chunk(finish="stop"), usage_chunk(10, 1))],
        paced=True,
    )


@database_sync_to_async
def _count(model, **filters) -> int:
    return model.objects.filter(**filters).count()


async def _until(check, expected=True) -> None:
    """Poll until check() (awaited if need be) gives `expected`: a hang guard, no deadline."""
    for _ in range(1200):
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {value!r}, not {expected!r}")


async def _handshake(user: User) -> tuple[bool, WebsocketCommunicator]:
    comm = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
    comm.scope["user"] = user
    connected, _ = await comm.connect()
    return connected, comm


# -- answers at once ---------------------------------------------------------------------


async def test_one_socket_cannot_start_more_than_three_answers_at_once(upstream, alice, socket_for):
    upstream.default = paced_answer()  # every answer streams until the test lets it end
    socket = await socket_for(alice)
    for i in range(5):
        await socket.send(type="send", content=f"question {i}", conversation_id=None)
    starts, errors = [], []
    while len(starts) + len(errors) < 5:
        frame = await socket.receive()
        if frame["type"] == "message.start":
            starts.append(frame)
        elif frame["type"] == "error":
            errors.append(frame)
    assert len(starts) == 3
    assert [e["code"] for e in errors] == ["too_many_streams"] * 2
    assert "You already have 3 answers streaming; the limit is 3." in errors[0]["message"]
    assert await _count(Message, role="user") == 3 and await _count(Conversation) == 3
    await _until(lambda: len(upstream.stream_requests()) >= 3)
    assert len(upstream.stream_requests()) == 3  # none for the two refused

    for _ in range(3):
        upstream.next_piece()
    await _until(lambda: _count(Usage), 3)
    assert len(upstream.stream_requests()) == 3
    assert await _count(Message, role="assistant", state="complete") == 3
    # Free again once they ended.
    await socket.send(type="send", content="one more", conversation_id=None)
    upstream.next_piece()
    end, _ = await socket.until("message.end")
    assert end["state"] == "complete"


# -- messages a minute -------------------------------------------------------------------


def _asked(user: User, times: list[dt.datetime]) -> None:
    """Messages of `user` sent at `times`, their answers ended."""
    conversation = Conversation.objects.create(user=user)
    for when in times:
        conversation.append(role="user", content="q", created_at=when)
        conversation.append(role="assistant", content="a", created_at=when)


def test_the_21st_message_in_a_minute_is_refused_until_the_first_leaves_the_minute(alice):
    now = timezone.now()
    # Twenty messages, one a second, the first 59 s before now.
    _asked(alice, [now - dt.timedelta(seconds=59 - i) for i in range(20)])
    limits = limits_for(alice)
    assert limits.messages_per_minute == 20

    refusal = refusal_for(alice, limits, now=now)
    assert refusal is not None and refusal.code == "rate_limited"
    assert refusal.message == "You can send 20 messages a minute. Try again in 2 s."
    assert refusal.retry_after == 2
    # Before the 20th message there were 19 in the minute: the 20th was allowed.
    assert refusal_for(alice, limits, now=now - dt.timedelta(seconds=40.5)) is None
    # Still 20 half a second later; 1.5 s later the first has left the minute.
    assert refusal_for(alice, limits, now=now + dt.timedelta(seconds=0.5)).retry_after == 1
    assert refusal_for(alice, limits, now=now + dt.timedelta(seconds=1.5)) is None


async def test_the_21st_message_of_the_minute_is_refused_with_no_upstream_request(
    upstream, alice, socket_for
):
    # (Saved just now: they count for the next 60 s, far longer than this test runs.)
    await database_sync_to_async(_asked)(alice, [timezone.now()] * 20)
    socket = await socket_for(alice)
    await socket.send(type="send", content="the 21st", conversation_id=None)
    frame = await socket.receive()
    assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
    assert "20 messages a minute" in frame["message"] and 1 <= frame["retry_after"] <= 61
    assert upstream.stream_requests() == []
    assert await _count(Message) == 40 and await _count(Conversation) == 1


# -- open sockets ------------------------------------------------------------------------


async def test_the_eleventh_socket_of_a_user_is_refused_while_others_connect(alice, bob):
    alices = []
    for _ in range(10):
        connected, comm = await _handshake(alice)
        assert connected
        alices.append(comm)
    connected, refused = await _handshake(alice)
    assert not connected
    assert await _count(OpenSocket, user=alice) == 10
    connected, bobs = await _handshake(bob)
    assert connected

    # Closing one frees its place.
    await alices.pop().disconnect()
    connected, again = await _handshake(alice)
    assert connected
    for comm in [*alices, again, bobs]:
        await comm.disconnect()
    assert await _count(OpenSocket) == 0


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_socket_of_a_killed_process_stops_counting(alice, settings):
    settings.CHAT_MAX_SOCKETS_PER_USER = 2
    now = timezone.now()
    lease = dt.timedelta(seconds=settings.SOCKET_LEASE_SECONDS)
    # A process on another host, renewing its socket's row; and one of this host, gone.
    OpenSocket.objects.create(user=alice, worker="elsewhere:1234", expires_at=now + lease)
    gone = f"{socket.gethostname()}:{_dead_pid()}"
    OpenSocket.objects.create(user=alice, worker=gone, expires_at=now + lease)

    # The dead process of this host is seen at once; the other counts until its lease ends.
    assert open_socket(alice, now=now) is not None
    assert open_socket(alice, now=now) is None
    assert not OpenSocket.objects.filter(worker=gone).exists()
    later = now + lease + dt.timedelta(seconds=1)
    assert open_socket(alice, now=later) is not None  # elsewhere:1234 stopped renewing
    assert not OpenSocket.objects.filter(worker="elsewhere:1234").exists()


async def test_the_rows_of_open_sockets_are_renewed_while_they_are_open(alice, settings):
    settings.SOCKET_LEASE_SECONDS = 0.3  # renewed every 0.1 s
    connected, comm = await _handshake(alice)
    assert connected
    row = await database_sync_to_async(OpenSocket.objects.get)(user=alice)
    await _until(lambda: _count(OpenSocket, pk=row.pk, expires_at__gt=row.expires_at), 1)
    await comm.disconnect()
    assert await _count(OpenSocket) == 0


# -- changing the defaults ---------------------------------------------------------------


async def test_the_defaults_changed_in_settings_take_effect(upstream, alice, bob, settings):
    settings.CHAT_MAX_CONCURRENT_ANSWERS = 1
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 2
    settings.CHAT_MAX_SOCKETS_PER_USER = 1
    upstream.default = paced_answer()

    connected, first = await _handshake(alice)
    assert connected
    assert not (await _handshake(alice))[0]  # a second socket
    connected, bobs = await _handshake(bob)
    assert connected

    async def until(kind: str) -> dict:
        while (frame := await first.receive_json_from(timeout=10))["type"] != kind:
            pass
        return frame

    await first.send_json_to({"type": "send", "content": "one", "conversation_id": None})
    await first.send_json_to({"type": "send", "content": "two", "conversation_id": None})
    refusal = await until("error")
    assert refusal["code"] == "too_many_streams" and "the limit is 1" in refusal["message"]
    upstream.next_piece()
    await until("message.end")

    await first.send_json_to({"type": "send", "content": "three", "conversation_id": None})
    upstream.next_piece()
    await until("message.end")
    await first.send_json_to({"type": "send", "content": "four", "conversation_id": None})
    refusal = await until("error")
    assert refusal["code"] == "rate_limited" and "2 messages a minute" in refusal["message"]
    assert len(upstream.stream_requests()) == 2
    await first.disconnect()
    await bobs.disconnect()


def test_a_budget_overrides_the_defaults_and_0_means_no_limit(alice, bob, settings):
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 20
    settings.CHAT_MAX_CONCURRENT_ANSWERS = 3
    settings.CHAT_MAX_SOCKETS_PER_USER = 10

    def limits(user: User) -> tuple[int | None, int | None, int | None]:
        found = limits_for(user)
        return found.messages_per_minute, found.concurrent_answers, found.sockets

    assert limits(alice) == (20, 3, 10)
    # The default budget's rate limits replace the settings' for everyone.
    Budget.objects.create(user=None, max_tokens=1000, max_messages_per_minute=5)
    assert limits(alice) == limits(bob) == (5, 3, 10)
    # A user's own budget: a blank field is the default, 0 is no limit.
    own = Budget.objects.create(user=alice, max_concurrent_streams=0, max_open_sockets=2)
    assert limits(alice) == (5, None, 2) and limits(bob) == (5, 3, 10)
    own.max_messages_per_minute = 0
    own.save()
    assert limits(alice) == (None, None, 2)
    # Tokens and money are as before: the user's own row replaces the default's.
    assert limits_for(alice).budget == own and limits_for(bob).budget.max_tokens == 1000
    settings.CHAT_MAX_CONCURRENT_ANSWERS = 0
    assert limits(bob) == (5, None, 10)


def test_the_default_limits_are_read_from_the_environment(tmp_path: Path):
    show = (
        "from django.conf import settings as s; print(s.CHAT_MAX_CONCURRENT_ANSWERS,"
        " s.CHAT_MAX_MESSAGES_PER_MINUTE, s.CHAT_MAX_SOCKETS_PER_USER)"
    )
    base = {"DJANGO_DEBUG": "true", "SQLITE_PATH": str(tmp_path / "db.sqlite3")}
    fresh = run_manage(clean_env(**base), "shell", "-c", show)
    assert fresh.stdout.splitlines()[-1].split() == ["3", "20", "10"], fresh.stderr
    env = clean_env(
        **base,
        CHAT_MAX_CONCURRENT_ANSWERS="1",
        CHAT_MAX_MESSAGES_PER_MINUTE="0",
        CHAT_MAX_SOCKETS_PER_USER="50",
    )
    changed = run_manage(env, "shell", "-c", show)
    assert changed.stdout.splitlines()[-1].split() == ["1", "0", "50"], changed.stderr
    wrong = run_manage(clean_env(**base, CHAT_MAX_SOCKETS_PER_USER="-1"), "check")
    assert wrong.returncode != 0
    assert "CHAT_MAX_SOCKETS_PER_USER must be 0 (no limit) or more, not -1" in wrong.stderr


def test_each_user_and_the_admin_see_the_limits_that_apply(client, alice, staff):
    Budget.objects.create(user=alice, max_open_sockets=0)
    client.force_login(alice)
    html = client.get("/usage/").content.decode()
    assert 'id="limit-rate">Messages per minute: 20.' in html
    assert 'id="limit-streams">Answers streaming at once: 3.' in html
    assert 'id="limit-sockets">Chat tabs open at once: no limit.' in html
    client.force_login(staff)
    html = client.get(f"/admin/usage/user/{alice.pk}/").content.decode()
    assert "Messages per minute: 20;" in html and "chat tabs open at once: no limit." in html
