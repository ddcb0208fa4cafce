"""A client that never reads its socket: the server stops buffering for it at a cap
(CHAT_SOCKET_BUFFER_BYTES), closes it, and the answer still ends on the record."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from channels.db import database_sync_to_async
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.typing import Origin
from websockets.uri import parse_uri

from chat.consumers import SendWindow
from chat.models import Conversation, Message
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk
from tests.live import app_env, daphne_process, prepare_database, session_cookie

CAP = 1024 * 1024
PIECE_CHARS = 2048
PIECES = 12 * 1024  # 24 MiB of answer, twenty-four times the cap
COMPLETION_TOKENS = 6_291_456


@dataclass
class Live:
    url: str
    env: dict[str, str]
    db: Path
    process: psutil.Process
    cookie: str


@pytest.fixture
def live(fake_upstream_server: FakeUpstream, tmp_path) -> Iterator[Live]:
    fake_upstream_server.reset()
    env = app_env(
        tmp_path,
        fake_upstream_server.base_url,
        CHAT_SOCKET_BUFFER_BYTES=str(CAP),
        STREAM_CHECKPOINT_SECONDS="3600",  # no copies of the text but the answer's own
    )
    prepare_database(env)
    # Daphne drops a socket that leaves its pings unanswered for 20 + 30 s: not so here,
    # where only the cap may close it.
    options = ("--ping-interval", "600", "--ping-timeout", "600")
    with daphne_process(env, tmp_path / "daphne.log", options=options) as (url, process):
        yield Live(
            url=url,
            env=env,
            db=tmp_path / "db.sqlite3",
            process=psutil.Process(process.pid),
            cookie=session_cookie(url, "alice", "alice-password-1"),
        )


def answers(live: Live) -> list[dict[str, Any]]:
    """Each answer the live app saved, with its ledger row, from its own database."""
    query = (
        "SELECT m.state, m.content, u.source, u.completion_tokens, u.outcome"
        " FROM chat_message m LEFT JOIN chat_usage u ON u.message_id = m.id"
        " WHERE m.role = 'assistant' ORDER BY m.id"
    )
    url = live.env.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import psycopg

        with psycopg.connect(url) as conn:
            rows = conn.execute(query).fetchall()
    else:
        with sqlite3.connect(live.db) as conn:
            rows = conn.execute(query).fetchall()
    return [
        {
            "state": state,
            "length": len(content),
            "sha256": hashlib.sha256(content.encode()).hexdigest(),
            "usage": source and {"source": source, "completion": tokens, "outcome": outcome},
        }
        for state, content, source, tokens, outcome in rows
    ]


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    """A hang guard, not a deadline: on a busy machine all of this may take a while."""
    limit = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < limit, f"gave up waiting for {what}"
        time.sleep(0.1)


def open_without_reading(live: Live) -> socket.socket:
    """A websocket (websockets' sans-I/O protocol over a plain socket) that reads nothing
    once the handshake is done, and never acknowledges anything."""
    protocol = ClientProtocol(
        parse_uri(live.url.replace("http://", "ws://") + "/ws/chat/"), origin=Origin(live.url)
    )
    request = protocol.connect()
    request.headers["Cookie"] = live.cookie
    protocol.send_request(request)
    sock = socket.create_connection(("127.0.0.1", int(live.url.rsplit(":", 1)[1])))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"".join(protocol.data_to_send()))
    while protocol.state is not State.OPEN:
        data = sock.recv(1)  # byte by byte: not one byte past the handshake's response
        assert data, "the server closed the handshake"
        protocol.receive_data(data)
        assert protocol.handshake_exc is None, protocol.handshake_exc
    frame = {"type": "send", "content": "Write me a very long story", "conversation_id": None}
    protocol.send_text(json.dumps(frame).encode())
    sock.sendall(b"".join(protocol.data_to_send()))
    return sock


def connected(live: Live, sock: socket.socket) -> bool:
    """Whether the server still holds the TCP connection of `sock`."""
    port = sock.getsockname()[1]
    return any(c.raddr and c.raddr.port == port for c in live.process.net_connections("tcp"))


def test_a_client_that_never_reads_is_closed_at_the_cap_and_its_answer_is_saved_in_full(
    live: Live, fake_upstream_server: FakeUpstream
) -> None:
    # One ordinary answer first, so that what the process loads once is loaded.
    fake_upstream_server.queue(Reply(body=sse(chunk("Warm."), chunk(finish="stop"))))
    with connect(
        live.url.replace("http://", "ws://") + "/ws/chat/",
        additional_headers={"Cookie": live.cookie, "Origin": live.url},
    ) as ws:
        ws.send(json.dumps({"type": "send", "content": "hi", "conversation_id": None}))
        while json.loads(ws.recv(timeout=60))["type"] != "message.end":
            pass

    parts = [f"{i:07d} ".ljust(PIECE_CHARS, "abcdefghij"[i % 10]) for i in range(PIECES)]
    text = "".join(parts)
    pieces = [sse(chunk(part), done=False) for part in parts]
    pieces.append(sse(chunk(finish="stop"), usage_chunk(12, COMPLETION_TOKENS)))
    # Every piece flows but the last, which waits for the test: the answer is all there,
    # held by the process, and not yet saved.
    fake_upstream_server.queue(Reply(pieces=pieces, paced=True))
    for _ in pieces[1:-1]:
        fake_upstream_server.next_piece()
    rss_before = live.process.memory_info().rss

    sock = open_without_reading(live)
    try:
        # Until the process has read the whole answer but its end from the upstream.
        wait_for(fake_upstream_server.read_to_the_gate, "the process to read the answer")
        grown = live.process.memory_info().rss - rss_before
        print(
            f"the answer is {len(text) / 2**20:.0f} MiB; the process grew {grown / 2**20:.0f} MiB"
        )
        # Closed once the cap was passed (Daphne's pings would have taken 20 + 600 s).
        wait_for(lambda: not connected(live, sock), "the server to close the socket")
        # It holds the answer's text (it saves it at the end), not the frames of it.
        assert grown < len(text) * 1.5 + 4 * CAP

        fake_upstream_server.next_piece()
        wait_for(lambda: answers(live)[-1]["state"] != "streaming", "the answer to end")
    finally:
        sock.close()
    first, answer = answers(live)
    assert answer == {
        "state": "complete",
        "length": len(text),
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "usage": {"source": "reported", "completion": COMPLETION_TOKENS, "outcome": "complete"},
    }
    assert first["usage"] is not None
    assert len(fake_upstream_server.stream_requests()) == 2


# -- in process: the consumer and its acks ------------------------------------------------

SMALL_CAP = 256 * 1024


def long_answer(pieces: int = 64, size: int = 8192) -> tuple[str, list[bytes]]:
    """An answer of `pieces` chunks of `size` characters; its text and its events."""
    parts = [f"{i:05d} ".ljust(size, ".") for i in range(pieces)]
    events = [sse(chunk(part), done=False) for part in parts]
    events.append(sse(chunk(finish="stop"), usage_chunk(5, pieces * size // 4)))
    return "".join(parts), events


@database_sync_to_async
def saved(message_id: int) -> tuple[str, str, str | None]:
    message = Message.objects.select_related("usage").get(id=message_id)
    return message.state, message.content, getattr(message, "usage", None) and message.usage.source


async def wait_saved(message_id: int) -> tuple[str, str, str | None]:
    async with asyncio.timeout(60):  # a hang guard
        while (answer := await saved(message_id))[0] == "streaming":
            await asyncio.sleep(0.05)
    return answer


@pytest.mark.django_db(transaction=True)
async def test_a_socket_that_acknowledges_nothing_is_closed_with_4408_and_its_answer_is_saved(
    upstream, alice, socket_for, settings
) -> None:
    settings.CHAT_SOCKET_BUFFER_BYTES = SMALL_CAP
    text, events = long_answer()
    # One piece of the answer per frame: each delta is 8 KiB, whatever the machine's pace.
    upstream.queue(Reply(pieces=events, paced=True))
    socket = await socket_for(alice)
    await socket.send(type="send", content="A long one", conversation_id=None)
    sent, last, message_id, granted = 0, 0, None, 0
    async with asyncio.timeout(60):
        while (output := await socket.comm.receive_output(60))["type"] == "websocket.send":
            last = len(output["text"])
            sent += last
            frame = json.loads(output["text"])
            if frame["type"] == "message.start":
                message_id = frame["message"]["id"]
            elif frame["type"] == "delta":
                upstream.next_piece()
                granted += 1
            assert frame["type"] != "message.end", "the whole answer went out unacknowledged"
    assert output["type"] == "websocket.close" and output["code"] == 4408
    assert sent - last <= SMALL_CAP < sent  # the frame that passed the cap was the last
    for _ in events[granted + 1 :]:  # the rest of the answer, which goes on without it
        upstream.next_piece()
    assert message_id is not None
    assert await wait_saved(message_id) == ("complete", text, "reported")


@pytest.mark.django_db(transaction=True)
async def test_a_socket_that_acknowledges_as_the_page_does_gets_a_long_answer_whole(
    upstream, alice, socket_for, settings
) -> None:
    settings.CHAT_SOCKET_BUFFER_BYTES = SMALL_CAP
    text, events = long_answer()  # twice the cap
    # The upstream sends 64 KiB at a time, each once the server has taken the socket's
    # last ack (the pong after it says so: a socket's frames are handled in order).
    upstream.queue(Reply(pieces=events, paced=True))
    socket = await socket_for(alice)
    await socket.send(type="send", content="A long one", conversation_id=None)
    received = acked = 0
    shown = ""
    async with asyncio.timeout(60):
        while True:
            raw = await socket.comm.receive_from(60)
            received += len(raw)
            frame = json.loads(raw)
            assert frame["type"] != "error", frame
            if frame["type"] == "delta":
                shown += frame["content"]
            elif frame["type"] == "pong":
                for _ in range(8):
                    upstream.next_piece()
            elif frame["type"] == "message.end":
                break
            if received - acked >= 64 * 1024 or frame["type"] == "message.start":
                await socket.send(type="ack", received=received)
                await socket.send(type="ping")
                acked = received
    assert frame["state"] == "complete" and shown == text
    assert await wait_saved(frame["message_id"]) == ("complete", text, "reported")


@pytest.mark.django_db(transaction=True)
async def test_an_ack_must_fall_where_a_frame_ended(alice, socket_for) -> None:
    socket = await socket_for(alice)
    await socket.send(type="ping")
    pong = await socket.comm.receive_from()
    assert json.loads(pong) == {"type": "pong"}
    for wrong in (len(pong) - 1, len(pong) + 1, -1, "7", True):
        await socket.send(type="ack", received=wrong)
        refused = await socket.receive()
        assert refused["type"] == "error" and refused["code"] == "bad_frame", refused
    # Each refusal was a frame too: acknowledging up to the pong, then all, is fine.
    await socket.send(type="ack", received=len(pong))
    await socket.send(type="ping")
    assert await socket.receive() == {"type": "pong"}
    assert await socket.comm.receive_nothing()


def test_frames_sent_together_count_as_half_the_cap_until_acknowledged() -> None:
    window = SendWindow(cap=1000)
    window.begin()
    for _ in range(4):  # a long text in four parts
        window.add(300)
    assert window.backlog == 500 and not window.full()
    window.begin()
    window.add(400)  # a delta after it
    assert window.backlog == 900 and not window.full()
    window.begin()
    window.add(200)  # and another
    assert window.backlog == 1100 and window.full()
    assert not window.ack(450)  # not where a frame ended
    assert window.ack(900)  # three parts of the four: what is left of it counts in full
    assert window.backlog == 300 + 400 + 200
    assert window.ack(1200) and window.backlog == 600
    assert window.ack(1800) and window.backlog == 0
    assert window.ack(1800) and not window.ack(1900)


@database_sync_to_async
def long_ended_answers(user, sizes: list[int]) -> tuple[int, list[str]]:
    conversation = Conversation.objects.create(user=user, title="long")
    texts = []
    for i, size in enumerate(sizes):
        conversation.append(role="user", content=f"question {i}")
        texts.append(f"answer {i} ".ljust(size, "xyz"[i % 3]))
        conversation.append(role="assistant", content=texts[-1], state="complete")
    return conversation.id, texts


@pytest.mark.django_db(transaction=True)
async def test_a_returning_tab_gets_answers_longer_than_a_frame_in_parts(alice, socket_for) -> None:
    # Daphne sends no message over 1 MiB: no frame may hold more than 64 Ki characters
    # of text (12 bytes each at most in ASCII JSON), however long the answers.
    conversation_id, texts = await long_ended_answers(alice, [40_000, 300_000, 20_000, 30_000])
    socket = await socket_for(alice)
    await socket.send(type="watch", conversation_id=conversation_id)
    shown: dict[int, str] = {}
    ended: dict[int, str] = {}
    async with asyncio.timeout(60):
        while True:
            raw = await socket.comm.receive_from()
            frame = json.loads(raw)
            text = frame.get("content", "") + frame.get("reasoning", "")
            assert len(text) <= 65536, (frame["type"], len(text))
            if frame["type"] == "snapshot":
                shown[frame["message_id"]] = frame["content"]
            elif frame["type"] == "delta":
                shown[frame["message_id"]] += frame["content"]
            elif frame["type"] == "message.end":
                ended[frame["message_id"]] = frame["state"]
            elif frame["type"] == "watching":
                break
    recent = {answer["message_id"]: answer["content"] for answer in frame["recent"]}
    # The newest that fit in 64 Ki characters are in `watching`; the others came before it.
    assert sorted(recent.values(), key=len) == [texts[2], texts[3]]
    assert sorted(shown.values(), key=len) == [texts[0], texts[1]]
    assert set(ended) == set(shown) and set(ended.values()) == {"complete"}
