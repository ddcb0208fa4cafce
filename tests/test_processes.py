"""Several Daphne processes sharing one database and Redis, as in production."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.fake_upstream import FakeUpstream, Reply, chunk, slow_stream, sse, usage_chunk
from tests.live import (
    answer_text,
    app_env,
    daphne,
    manage,
    postgres_url,
    prepare_database,
    session_cookie,
)

REDIS = ("127.0.0.1", 6379)


def _redis_answers() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    not _redis_answers(), reason="REDIS NOT RUNNING on 127.0.0.1:6379: cross-process tests skipped"
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def app(
    request, fake_upstream_server: FakeUpstream, tmp_path_factory
) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Two processes of one app: its environment, and their URLs."""
    tmp = tmp_path_factory.mktemp("procs")
    extra = {"REDIS_URL": "redis://127.0.0.1:6379/15"}
    if request.param == "postgresql":
        url = postgres_url()
        if url is None:
            pytest.skip("POSTGRESQL NOT RUNNING on 127.0.0.1:5432: its cross-process run skipped")
        extra["DATABASE_URL"] = url
    env = app_env(tmp, fake_upstream_server.base_url, **extra)
    prepare_database(env, staff=True)
    # carol's account is the one a test deactivates.
    script = "from django.contrib.auth.models import User;"
    script += "User.objects.create_user('carol', password='carol-password-1')"
    manage(env, "shell", "-c", script)
    with daphne(env, tmp / "a.log") as a, daphne(env, tmp / "b.log") as b:
        yield env, [a, b]


@pytest.fixture(scope="module")
def two_processes(app: tuple[dict[str, str], list[str]]) -> list[str]:
    return app[1]


async def _frames_until(ws, kind: str, timeout: float = 60) -> tuple[dict, list[dict]]:
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            seen.append(frame)
            if frame["type"] == kind:
                return frame, seen


def _connect(url: str, cookie: str):
    ws_url = url.replace("http://", "ws://") + "/ws/chat/"
    return websockets.connect(ws_url, additional_headers={"Cookie": cookie, "Origin": url})


async def test_a_tab_on_another_process_sees_the_stream_and_stops_it(
    two_processes: list[str], fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.reset()
    fake_upstream_server.queue(slow_stream(count=400, delay=0.02))
    a, b = two_processes
    cookie = session_cookie(a, "alice", "alice-password-1")
    async with _connect(a, cookie) as first, _connect(b, cookie) as second:
        await first.send(json.dumps({"type": "send", "content": "count", "conversation_id": None}))
        start, _ = await _frames_until(first, "message.start")
        await _frames_until(first, "delta")

        await second.send(
            json.dumps({"type": "watch", "conversation_id": start["conversation_id"]})
        )
        snapshot, _ = await _frames_until(second, "snapshot")
        assert snapshot["message_id"] == start["message"]["id"]
        assert snapshot["content"].startswith("tick")
        delta, _ = await _frames_until(second, "delta")
        assert delta["content"].startswith("tick")

        await second.send(json.dumps({"type": "stop", "message_id": start["message"]["id"]}))
        loop = asyncio.get_running_loop()
        stop_sent = loop.time()
        end, _ = await _frames_until(first, "message.end", timeout=5)
        stopped_after = loop.time() - stop_sent
        assert end["state"] == "stopped"
        second_end, _ = await _frames_until(second, "message.end", timeout=5)
        assert second_end["state"] == "stopped"
        assert second_end["message_id"] == end["message_id"]
    print(f"stop across processes took {stopped_after * 1000:.0f} ms")


async def test_a_regenerated_answer_and_a_branch_switch_reach_a_tab_on_another_process(
    two_processes: list[str], fake_upstream_server: FakeUpstream
) -> None:
    fake_upstream_server.reset()
    a, b = two_processes
    cookie = session_cookie(a, "alice", "alice-password-1")
    async with _connect(a, cookie) as first, _connect(b, cookie) as second:
        await first.send(json.dumps({"type": "send", "content": "hi", "conversation_id": None}))
        start, _ = await _frames_until(first, "message.start")
        await _frames_until(first, "message.end")
        conversation_id = start["conversation_id"]
        await second.send(json.dumps({"type": "watch", "conversation_id": conversation_id}))
        await _frames_until(second, "watching")

        await first.send(json.dumps({"type": "regenerate", "message_id": start["message"]["id"]}))
        again, _ = await _frames_until(second, "message.start")
        assert again["message"]["siblings"] == [start["message"]["id"], again["message"]["id"]]
        await _frames_until(second, "message.end")

        await first.send(json.dumps({"type": "switch", "message_id": start["message"]["id"]}))
        branch, _ = await _frames_until(second, "branch")
        assert branch["path"] == [start["user_message"]["id"], start["message"]["id"]]


def _delete_conversation(url: str, cookie: str, conversation_id: int) -> int:
    """Delete a conversation as its page's form does; the response's status."""
    name, _, value = cookie.partition("=")
    with httpx.Client(base_url=url, cookies={name: value}) as client:
        page = client.get(f"/c/{conversation_id}/delete/")
        assert page.status_code == 200, page.status_code
        response = client.post(
            f"/c/{conversation_id}/delete/",
            data={"csrfmiddlewaretoken": client.cookies["csrftoken"]},
        )
        return response.status_code


LEDGER = """
import json
from chat.models import Conversation, Usage
print(json.dumps({
    "conversations": list(Conversation.objects.values_list("id", flat=True)),
    "rows": list(Usage.objects.values(
        "answer_id", "user__username", "conversation_id", "message_id", "outcome", "source",
        "completion_tokens")),
}))
"""


async def test_deleting_a_conversation_on_another_process_stops_its_answer_and_bills_it(
    app: tuple[dict[str, str], list[str]], fake_upstream_server: FakeUpstream
) -> None:
    env, (a, b) = app
    fake_upstream_server.reset()
    pieces = [sse(chunk(text), done=False) for text in ("Hello ", "world, ", "and more")]
    pieces.append(sse(chunk(finish="stop"), usage_chunk(12, 7)))
    fake_upstream_server.queue(Reply(pieces=pieces, paced=True))
    cookie = session_cookie(a, "alice", "alice-password-1")
    async with _connect(a, cookie) as first:
        await first.send(json.dumps({"type": "send", "content": "hi", "conversation_id": None}))
        start, _ = await _frames_until(first, "message.start")
        await _frames_until(first, "delta")

        # The page of another tab, served by the other process, deletes the conversation.
        status = await asyncio.to_thread(_delete_conversation, b, cookie, start["conversation_id"])
        assert status == 302
        for _ in range(3):  # had it gone on, the rest would come, and be billed
            fake_upstream_server.next_piece()
        end, _ = await _frames_until(first, "message.end")
    assert (end["state"], end["message_id"]) == ("stopped", start["message"]["id"])

    ledger = json.loads(manage(env, "shell", "-c", LEDGER).strip().splitlines()[-1])
    assert start["conversation_id"] not in ledger["conversations"]
    row = next(r for r in ledger["rows"] if r["answer_id"] == start["message"]["id"])
    assert row["user__username"] == "alice" and row["outcome"] == "stopped"
    assert (row["conversation_id"], row["message_id"], row["source"]) == (None, None, "estimated")
    assert row["completion_tokens"] == 2  # "Hello ", 4 characters a token


async def test_a_tab_on_another_process_gets_every_chunk_in_order(
    two_processes: list[str], fake_upstream_server: FakeUpstream
) -> None:
    # 2,000 numbered chunks, one every millisecond or so, relayed through Redis.
    fake_upstream_server.reset()
    expected = "".join(f"{i} " for i in range(2000))
    pieces = [f"{i} " for i in range(2000)]
    events = [sse(chunk(piece), done=False) for piece in pieces]
    events += [sse(chunk(finish="stop"))]
    a, b = two_processes
    cookie = session_cookie(a, "alice", "alice-password-1")
    async with _connect(a, cookie) as first, _connect(b, cookie) as second:
        # A first answer makes the conversation, so the second tab can watch the next one.
        await first.send(json.dumps({"type": "send", "content": "hi", "conversation_id": None}))
        start, _ = await _frames_until(first, "message.end")
        conversation_id = start["conversation_id"]
        await second.send(json.dumps({"type": "watch", "conversation_id": conversation_id}))
        await _frames_until(second, "watching")

        fake_upstream_server.queue(Reply(pieces=events, delay=0.001))
        await first.send(
            json.dumps({"type": "send", "content": "count", "conversation_id": conversation_id})
        )
        # (Generous guards against a hang, not deadlines: 2,000 chunks under a loaded CPU.)
        _, direct = await _frames_until(first, "message.end", timeout=90)
        _, relayed = await _frames_until(second, "message.end", timeout=90)

    assert answer_text(direct) == expected
    assert answer_text(relayed) == expected
    # Coalesced: the other process got far fewer frames than chunks, and none were lost.
    group_deltas = len([f for f in relayed if f["type"] == "delta"])
    assert 1 < group_deltas < 2000
    print(f"relayed {group_deltas} group deltas")


async def test_deactivating_a_user_in_one_process_closes_their_socket_in_the_other(
    two_processes: list[str],
) -> None:
    a, b = two_processes
    carol = session_cookie(a, "carol", "carol-password-1")
    staff = session_cookie(a, "staff", "staff-password-1")
    async with _connect(b, carol) as ws:
        await ws.send(json.dumps({"type": "ping"}))
        await _frames_until(ws, "pong")
        # The admin unticks "Active" in carol's change form, served by the other process.
        await asyncio.to_thread(_deactivate_in_the_admin, a, staff, "carol")
        frame, _ = await _frames_until(ws, "error")
        assert frame["code"] == "logged_out"
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(60):  # a guard against a hang, not a deadline
                await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


def _deactivate_in_the_admin(url: str, cookie: str, username: str) -> None:
    with httpx.Client(base_url=url) as client:
        client.cookies.set("sessionid", cookie.removeprefix("sessionid="))
        found = client.get("/admin/auth/user/", params={"q": username}).text
        [user_id] = set(re.findall(r"/admin/auth/user/(\d+)/change/", found))
        page = client.get(f"/admin/auth/user/{user_id}/change/").text
        token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
        form = {
            "csrfmiddlewaretoken": token,
            "username": username,
            "date_joined_0": "2025-01-01",
            "date_joined_1": "12:00:00",
            "_save": "Save",
        }  # "is_active" left out: an unticked box is not sent
        response = client.post(f"/admin/auth/user/{user_id}/change/", data=form)
        assert response.status_code == 302, response.text[:2000]


async def test_a_send_retried_on_another_process_follows_the_answer_streaming_on_the_first(
    two_processes: list[str], fake_upstream_server: FakeUpstream
) -> None:
    from tests.test_resend import TICKS, paced_answer

    fake_upstream_server.reset()
    fake_upstream_server.queue(paced_answer())
    a, b = two_processes
    cookie = session_cookie(a, "alice", "alice-password-1")
    send = {"type": "send", "content": "count", "conversation_id": None, "client_id": "tab-9"}
    async with _connect(a, cookie) as first:
        await first.send(json.dumps(send))
        await _frames_until(first, "delta")  # then the socket drops
    async with _connect(b, cookie) as retry:
        await retry.send(json.dumps(send))
        again, _ = await _frames_until(retry, "snapshot")
        for _ in range(TICKS + 2):
            fake_upstream_server.next_piece()
        end, frames = await _frames_until(retry, "message.end")
    assert again["content"].startswith("tick")
    assert end["state"] == "complete" and end["message_id"] == again["message_id"]
    assert answer_text([again, *frames]) == "tick " * TICKS
    assert len(fake_upstream_server.stream_requests()) == 1


LAYER_BURST = """
import asyncio, django
django.setup()
from channels.layers import get_channel_layer

async def main():
    layer = get_channel_layer()
    channels = [await layer.new_channel() for _ in range(100)]
    for n, channel in enumerate(channels):
        await layer.group_add(f"burst-{n}", channel)  # one conversation each
    for i in range(15):
        for n in range(len(channels)):
            await layer.group_send(f"burst-{n}", {"type": "chat.x", "i": i})

    async def drain(channel):
        return [(await layer.receive(channel))["i"] for _ in range(15)]

    try:
        # A hang guard (dropped messages never come), not a deadline: under load the
        # drain took over 10 s.
        got = await asyncio.wait_for(asyncio.gather(*(drain(c) for c in channels)), 100)
    except TimeoutError:
        got = []
    print(bool(got) and all(g == list(range(15)) for g in got))

asyncio.run(main())
"""


def test_a_burst_of_group_messages_to_one_process_is_not_dropped(tmp_path) -> None:
    # The channels of one process share one Redis queue: 100 sockets, each in a group of
    # its own, × 15 messages is 1,500 waiting there, past channels_redis's default
    # capacity of 1,000 per queue (as when 1,000 answers start at once).
    # (app_env gives the run a Redis prefix of its own.)
    env = app_env(tmp_path, "http://127.0.0.1:9/v1", REDIS_URL="redis://127.0.0.1:6379/15")
    env["DJANGO_SETTINGS_MODULE"] = "chatsite.settings"
    out = subprocess.run(
        [sys.executable, "-c", LAYER_BURST], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
