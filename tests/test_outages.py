"""Redis restarting, PostgreSQL ending its connections: the site works again by itself.

Each test runs Daphne in its own process against a redis-server of its own (which it stops
and starts again on the same port) or a PostgreSQL database of its own (whose backends it
terminates), never touching the shared services' data.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import psycopg
import pytest
import websockets

from tests.fake_upstream import FakeUpstream, paced_stream
from tests.live import (
    RedisServer,
    answer_text,
    app_env,
    daphne_process,
    postgres_url,
    prepare_database,
    session_cookie,
)
from tests.test_processes import _connect, _frames_until
from tests.test_shutdown import _answers

CLOSE_UNAVAILABLE = 4503  # chat.consumers: the page reconnects


async def _close_code(ws, timeout: float = 60) -> int | None:
    """The code the server closed the socket with, reading (and dropping) frames until then."""
    async with asyncio.timeout(timeout):  # a hang guard
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            pass
    return ws.close_code


async def _handshake(url: str, cookie: str):
    """A new socket that answers a ping."""
    ws = await _connect(url, cookie)
    await ws.send(json.dumps({"type": "ping"}))
    await _frames_until(ws, "pong")
    return ws


async def _until_healthy(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client, asyncio.timeout(60):
        while (await client.get("/healthz")).status_code != 200:
            await asyncio.sleep(0.1)


async def test_a_redis_restart_closes_sockets_for_the_page_to_reconnect_and_then_nothing_fails(
    fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    fake_upstream_server.reset()
    pieces = ["Before ", "the ", "restart, ", "and ", "after ", "it."]
    fake_upstream_server.queue(paced_stream(pieces))
    with RedisServer(tmp_path) as redis:
        # Fifty sockets of one user: past the default cap of ten, which is not what this tests.
        env = app_env(
            tmp_path,
            fake_upstream_server.base_url,
            REDIS_URL=redis.url,
            CHAT_MAX_SOCKETS_PER_USER="0",
        )
        prepare_database(env)
        with daphne_process(env, tmp_path / "daphne.log") as (url, _process):
            cookie = session_cookie(url, "alice", "alice-password-1")
            # Twenty tabs opening at once leave twenty connections in the layer's pool.
            tabs = await asyncio.gather(*(_handshake(url, cookie) for _ in range(20)))
            asker = tabs[0]
            await asker.send(json.dumps({"type": "send", "content": "Go", "conversation_id": None}))
            start, _ = await _frames_until(asker, "message.start")
            await _frames_until(asker, "delta")

            redis.stop()
            # Every tab is told to come back (the page reconnects on any code but 4401).
            codes = await asyncio.gather(*(_close_code(tab) for tab in tabs))
            assert codes == [CLOSE_UNAVAILABLE] * len(tabs)

            redis.start()
            await _until_healthy(url)
            # The pool's connections died with the old Redis: none of them fails a handshake.
            sockets = await asyncio.gather(
                *(_handshake(url, cookie) for _ in range(30)), return_exceptions=True
            )
            refused = [repr(s) for s in sockets if isinstance(s, BaseException)]
            assert refused == []

            # The answer streamed on through the restart; a returning tab follows it to the
            # end. Its snapshot comes whether the answer's control channel joined its group
            # in the new Redis before the tab asked, or after (then it sends one itself).
            tab = sockets[0]
            message_id = start["message"]["id"]
            await tab.send(
                json.dumps({"type": "watch", "conversation_id": start["conversation_id"]})
            )
            snapshot, _ = await _frames_until(tab, "snapshot")
            assert snapshot["message_id"] == message_id and snapshot["content"] == pieces[0]
            for _ in pieces[1:] + ["end"]:
                fake_upstream_server.next_piece()
            end, seen = await _frames_until(tab, "message.end")
            assert end["message_id"] == message_id and end["state"] == "complete"
            assert answer_text([snapshot, *seen]) == "".join(pieces)
            async with httpx.AsyncClient(base_url=url, headers={"Cookie": cookie}) as client:
                assert (await client.get(f"/c/{start['conversation_id']}/")).status_code == 200
            for ws in sockets:
                await ws.close()
    [answer] = _answers(env)
    assert answer["state"] == "complete" and answer["content"] == "".join(pieces)
    assert answer["usage"]["source"] == "reported"
    assert len(fake_upstream_server.stream_requests()) == 1


async def test_a_send_whose_channel_layer_work_fails_still_streams_and_saves_its_answer(
    fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    fake_upstream_server.reset()
    with RedisServer(tmp_path) as redis:
        env = app_env(tmp_path, fake_upstream_server.base_url, REDIS_URL=redis.url)
        prepare_database(env)
        with daphne_process(env, tmp_path / "daphne.log") as (url, _process):
            cookie = session_cookie(url, "alice", "alice-password-1")
            ws = await _handshake(url, cookie)
            # Redis refuses to add to a group (ZADD) from now on; it still answers reads.
            redis.command("ACL", "SETUSER", "default", "-zadd")
            await ws.send(json.dumps({"type": "send", "content": "Hi", "conversation_id": None}))
            assert await _close_code(ws) == CLOSE_UNAVAILABLE
            redis.command("ACL", "SETUSER", "default", "+zadd")
            async with asyncio.timeout(60):  # until the answer has ended, however slow
                while (answers := await asyncio.to_thread(_answers, env))[0]["state"] == (
                    "streaming"
                ):
                    await asyncio.sleep(0.1)
    [answer] = answers
    assert answer["state"] == "complete" and answer["content"]
    assert answer["usage"]["outcome"] == "complete" and answer["usage"]["source"] == "reported"
    assert len(fake_upstream_server.stream_requests()) == 1


def _end_backends(database_url: str) -> int:
    """pg_terminate_backend for every connection to the app's database; waits until each
    has ended. How many there were."""
    base, _, name = database_url.rpartition("/")
    admin = base.replace("postgres://", "postgresql://", 1) + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid, 60000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    assert all(ended for (ended,) in rows)
    return len(rows)


async def test_after_postgresql_ends_its_connections_no_page_or_socket_fails(
    fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    database = postgres_url()
    if database is None:
        pytest.skip("POSTGRESQL NOT RUNNING on 127.0.0.1:5432")
    fake_upstream_server.reset()
    env = app_env(tmp_path, fake_upstream_server.base_url, DATABASE_URL=database)
    prepare_database(env)
    with daphne_process(env, tmp_path / "daphne.log") as (url, _process):
        cookie = session_cookie(url, "alice", "alice-password-1")
        async with httpx.AsyncClient(base_url=url, headers={"Cookie": cookie}, timeout=60) as web:
            # Ten pages at once fill the pool (DATABASE_POOL_SIZE is 10).
            pages = await asyncio.gather(*(web.get("/") for _ in range(10)))
            assert [page.status_code for page in pages] == [200] * 10
            async with _connect(url, cookie) as ws:
                assert _end_backends(env["DATABASE_URL"]) >= 2
                # The socket's database work: the message and its answer are saved.
                await ws.send(
                    json.dumps({"type": "send", "content": "Hi", "conversation_id": None})
                )
                end, _ = await _frames_until(ws, "message.end")
                assert end["state"] == "complete"

            assert _end_backends(env["DATABASE_URL"]) >= 2
            pages = [await web.get("/") for _ in range(12)]
            assert [page.status_code for page in pages] == [200] * 12
            assert (await web.get("/healthz")).status_code == 200
