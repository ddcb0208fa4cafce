"""A burst of logins and other users' answers (issue 13, item 7).

Password checks are held at the start of their hashing by a hasher registered through
PASSWORD_HASHERS: the site's own hasher with a `digest` that waits for the test, so what
is seen is where and how the site runs the hash.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth.hashers import get_hasher
from django.core.asgi import get_asgi_application
from django.db import connection

from tests.fake_upstream import Reply, chunk, sse

pytestmark = pytest.mark.django_db(transaction=True)


class Gate:
    """While closed, every password hash waits at its start; records the threads."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.threads: list[tuple[str, int, int]] = []  # (name, native id, nice value)

    def digest(self):
        tid = threading.get_native_id()
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            nice = os.getpriority(os.PRIO_PROCESS, tid) if sys.platform == "linux" else 0
            self.threads.append((threading.current_thread().name, tid, nice))
        self.entered.set()
        try:
            if not self.opened.wait(60):  # hang guard
                raise TimeoutError("the test never opened the gate")
        finally:
            with self.lock:
                self.running -= 1
        return hashlib.sha256()


GATE = Gate()


class HeldHasher(type(get_hasher())):  # the site's default hasher, whatever settings name
    """Its digest (PBKDF2's documented hook, SHA-256 as before) waits at GATE."""

    digest = staticmethod(lambda: GATE.digest())


@pytest.fixture
def fast_password_hashing() -> None:
    """(conftest's, undone: this module measures the site's own hashing.)"""


@pytest.fixture
def gate(settings) -> Iterator[Gate]:
    global GATE
    GATE = Gate()
    settings.PASSWORD_HASHERS = [f"{__name__}.HeldHasher"]
    yield GATE
    GATE.opened.set()


async def log_in(username: str, password: str) -> httpx.Response:
    """Through Django's ASGI handler, as Daphne serves it: each request runs in a
    ThreadSensitiveContext of its own. (Django's AsyncClient runs every request's sync code
    on asgiref's one shared thread, where the sockets' database work runs too.)"""
    transport = httpx.ASGITransport(app=get_asgi_application())
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        await client.get("/accounts/login/")
        return await client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )


async def entered(gate: Gate) -> None:
    async with asyncio.timeout(60):  # hang guard
        await asyncio.to_thread(gate.entered.wait)


async def test_logins_are_hashed_in_turn_at_low_priority_while_another_users_answer_starts(
    upstream, alice, bob, socket_for, gate
):
    socket = await socket_for(alice)
    logins = [asyncio.ensure_future(log_in("bob", "bob-password-1")) for _ in range(3)]
    await entered(gate)

    # bob's password checks are held; alice's answer starts and ends meanwhile.
    upstream.queue(Reply(body=sse(chunk("Hello"), chunk(finish="stop"))))
    await socket.send(type="send", content="Hi", conversation_id=None, model=None)
    await socket.until("message.start")
    end, _ = await socket.until("message.end")
    assert end["state"] == "complete"
    assert not gate.opened.is_set()

    gate.opened.set()
    responses = await asyncio.gather(*logins)
    assert [r.status_code for r in responses] == [302, 302, 302]
    # One hash at a time, on the process's hashing thread, which yields the CPU to the rest.
    assert len(gate.threads) == 3 and gate.most == 1
    assert {name.split("_")[0] for name, _, _ in gate.threads} == {"password-hashing"}
    assert len({tid for _, tid, _ in gate.threads}) == 1
    if sys.platform == "linux":
        ours = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert all(nice > ours for _, _, nice in gate.threads)


def lent_out() -> int:
    stats = connection.pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the connection pool is PostgreSQL's")
async def test_a_login_holds_no_pooled_connection_while_its_password_is_hashed(bob, gate):
    before = await asyncio.to_thread(lent_out)
    login = asyncio.ensure_future(log_in("bob", "wrong-password"))
    await entered(gate)
    during = await asyncio.to_thread(lent_out)
    gate.opened.set()
    assert (await login).status_code == 200
    assert during <= before  # on main: one more, held by the login through its hash
