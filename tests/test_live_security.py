"""Security of the running app (Daphne in its own process): headers, websocket origins and
logins, and frames a hostile client might send."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.fake_upstream import FakeUpstream
from tests.live import ROOT, app_env, daphne, manage, prepare_database, session_cookie

MAX_CHARS = 32000  # the default CHAT_MAX_MESSAGE_CHARS, which the live app runs with


@dataclass
class Live:
    url: str
    env: dict[str, str]
    db: Path
    alice: str  # Cookie header of a logged-in alice
    staff: str
    conversation_id: int
    alice_id: int


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live-security")
    env = app_env(tmp, fake_upstream_server.base_url)
    prepare_database(env, staff=True)
    script = (
        "from django.contrib.auth.models import User; from chat.models import Conversation;"
        "c = Conversation.objects.create(user=User.objects.get(username='alice'), title='t');"
        "c.messages.create(role='user', content='hello');"
        "print('ids', c.id, c.user_id)"
    )
    conversation_id, alice_id = map(int, manage(env, "shell", "-c", script).split()[-2:])
    with daphne(env, tmp / "daphne.log") as url:
        yield Live(
            url=url,
            env=env,
            db=tmp / "db.sqlite3",
            alice=session_cookie(url, "alice", "alice-password-1"),
            staff=session_cookie(url, "staff", "staff-password-1"),
            conversation_id=conversation_id,
            alice_id=alice_id,
        )


# -- headers ----------------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def assert_security_headers(response: httpx.Response, page: bool) -> None:
    where = f"{response.request.url.path} ({response.status_code})"
    csp = csp_directives(response.headers["content-security-policy"])
    assert csp["script-src"] == ["'self'"], where
    assert csp["default-src"] == ["'self'"], where
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"], where
    assert csp["frame-ancestors"] == ["'none'"], where
    for name, values in csp.items():
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*"} & set(values), (where, name)
    assert response.headers["x-content-type-options"] == "nosniff", where
    assert response.headers["referrer-policy"] == "same-origin", where
    if page:
        assert response.headers["x-frame-options"] == "DENY", where


def static_files() -> list[str]:
    root = ROOT / "static"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_every_kind_of_page_and_every_static_file_sends_the_security_headers(live: Live):
    pages = {
        None: ["/accounts/login/", "/setup/", "/healthz", "/no-such-page/"],
        live.alice: [
            "/",
            f"/c/{live.conversation_id}/",
            f"/c/{live.conversation_id}/delete/",
            "/usage/",
        ],
        live.staff: [
            "/admin/",
            "/admin/login/",
            "/admin/usage/",
            "/admin/usage/?format=csv",
            f"/admin/usage/user/{live.alice_id}/",
            "/admin/chat/conversation/",
            f"/admin/chat/conversation/{live.conversation_id}/change/",
            "/admin/chat/message/",
            "/admin/chat/usage/",
            "/admin/auth/user/",
            "/c/999999/",
        ],
    }
    seen_statuses = set()
    with httpx.Client(base_url=live.url) as client:
        for cookie, urls in pages.items():
            headers = {"Cookie": cookie} if cookie else {}
            for url in urls:
                response = client.get(url, headers=headers)
                seen_statuses.add(response.status_code)
                assert_security_headers(response, page=True)
        files = static_files()
        assert "js/chat.js" in files and len(files) >= 8
        for name in files:
            response = client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert_security_headers(response, page=False)
    assert {200, 302, 404} <= seen_statuses


# -- the login throttle, behind Daphne ---------------------------------------------------


def test_failed_logins_lock_the_address_daphne_saw_whatever_a_header_claims(
    fake_upstream_server: FakeUpstream, tmp_path: Path
) -> None:
    # Its own app: locking 127.0.0.1 out would stop the other tests' logins.
    env = app_env(tmp_path, fake_upstream_server.base_url)
    prepare_database(env)
    with daphne(env, tmp_path / "daphne.log") as url, httpx.Client(base_url=url) as client:
        client.get("/accounts/login/")

        def log_in(username: str, password: str, claimed_address: str) -> httpx.Response:
            return client.post(
                "/accounts/login/",
                data={
                    "username": username,
                    "password": password,
                    "csrfmiddlewaretoken": client.cookies["csrftoken"],
                },
                headers={"X-Forwarded-For": claimed_address, "X-Real-IP": claimed_address},
            )

        # Five names, five claimed addresses: only the address Daphne saw is the same.
        for attempt in range(4):
            response = log_in(f"guess-{attempt}", "wrong", f"198.51.100.{attempt}")
            assert response.status_code == 200
        assert log_in("guess-4", "wrong", "198.51.100.4").status_code == 429
        response = log_in("alice", "alice-password-1", "203.0.113.1")
        assert response.status_code == 429
        assert "Too many failed attempts. Try again in 15 minutes." in response.text
        assert "sessionid" not in client.cookies
        assert_security_headers(response, page=True)


# -- websocket: origin and login --------------------------------------------------------


def ws_url(live: Live) -> str:
    return live.url.replace("http://", "ws://") + "/ws/chat/"


def connect(live: Live, cookie: str | None, origin: str | None):
    headers = {}
    if cookie:
        headers["Cookie"] = cookie
    if origin is not None:
        headers["Origin"] = origin
    return websockets.connect(ws_url(live), additional_headers=headers, open_timeout=5)


async def ping(ws) -> None:
    await ws.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(5):
        assert json.loads(await ws.recv()) == {"type": "pong"}


@pytest.mark.parametrize(
    "origin",
    [
        None,
        "null",
        "http://evil.example",
        "https://evil.example",
        "http://127.0.0.1.evil.example",
        "http://localhost.evil.example:8000",
        "file://",
    ],
)
async def test_a_socket_from_a_missing_null_or_foreign_origin_is_refused(
    live: Live, origin: str | None
):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(live, live.alice, origin):
            pass
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",
        "http://localhost:9999",
        "https://127.0.0.1",
        "https://127.0.0.1:{port}",
        "http://127.0.0.1",
        "http://localhost:{port}",  # the same server by another name is another origin
    ],
)
async def test_a_socket_from_another_port_scheme_or_name_of_the_same_host_is_refused(
    live: Live, origin: str
):
    port = live.url.rsplit(":", 1)[1]
    with pytest.raises(InvalidStatus) as refused:
        async with connect(live, live.alice, origin.format(port=port)):
            pass
    assert refused.value.response.status_code == 403


async def test_a_socket_from_the_sites_own_origin_with_a_login_is_accepted(live: Live):
    async with connect(live, live.alice, live.url) as ws:
        await ping(ws)
    # By the other allowed name, asked for by that name.
    by_name = live.url.replace("127.0.0.1", "localhost")
    url = by_name.replace("http://", "ws://") + "/ws/chat/"
    headers = {"Cookie": live.alice, "Origin": by_name}
    async with websockets.connect(url, additional_headers=headers, open_timeout=5) as ws:
        await ping(ws)


@pytest.mark.parametrize("cookie", [None, "sessionid=not-a-session", "sessionid="])
async def test_an_anonymous_socket_is_closed_at_connect(live: Live, cookie: str | None):
    with pytest.raises(InvalidStatus) as refused:
        async with connect(live, cookie, live.url):
            pass
    assert refused.value.response.status_code == 403


# -- bad frames -------------------------------------------------------------------------


def counts(live: Live) -> dict[str, int]:
    """Rows the live app has saved, read straight from its database (SQLite or PostgreSQL)."""
    tables = ("chat_conversation", "chat_message", "chat_usage")
    url = live.env.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        import psycopg

        with psycopg.connect(url) as conn:
            return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}
    assert live.db.exists()
    with sqlite3.connect(live.db) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def frame(**fields: Any) -> str:
    return json.dumps(fields)


BAD_FRAMES: dict[str, tuple[str | bytes, str]] = {
    "not json": ("not json", "bad_json"),
    "truncated json": ('{"type": "send", "content": "hi"', "bad_json"),
    "a binary frame": (b'{"type": "ping"}', "bad_frame"),
    "a list": ('[{"type": "ping"}]', "bad_frame"),
    "a number": ("42", "bad_frame"),
    "a string": ('"ping"', "bad_frame"),
    "null": ("null", "bad_frame"),
    "no type": (frame(content="hi"), "unknown_type"),
    "an unknown type": (frame(type="dance"), "unknown_type"),
    "a type that is not a string": (frame(type=["send"]), "unknown_type"),
    "send without content": (frame(type="send", conversation_id=None), "bad_frame"),
    "content as a number": (frame(type="send", content=5, conversation_id=None), "bad_frame"),
    "content as a list": (frame(type="send", content=["hi"], conversation_id=None), "bad_frame"),
    "content as null": (frame(type="send", content=None), "bad_frame"),
    "content blank": (frame(type="send", content=" \n\t ", conversation_id=None), "empty"),
    "conversation_id as a string": (
        frame(type="send", content="hi", conversation_id="1"),
        "bad_frame",
    ),
    "conversation_id as a bool": (
        frame(type="send", content="hi", conversation_id=True),
        "bad_frame",
    ),
    "conversation_id negative": (frame(type="send", content="hi", conversation_id=-1), "bad_frame"),
    "conversation_id zero": (frame(type="send", content="hi", conversation_id=0), "bad_frame"),
    "conversation_id as a float": (
        frame(type="send", content="hi", conversation_id=1.0),
        "bad_frame",
    ),
    "conversation_id NaN": (
        '{"type": "send", "content": "hi", "conversation_id": NaN}',
        "bad_frame",
    ),
    "conversation_id huge": (frame(type="send", content="hi", conversation_id=10**30), "not_found"),
    "model as a number": (
        frame(type="send", content="hi", conversation_id=None, model=4),
        "bad_frame",
    ),
    "model too long": (
        frame(type="send", content="hi", conversation_id=None, model="m" * 101),
        "bad_frame",
    ),
    "content with a NUL": (frame(type="send", content="a\x00b", conversation_id=None), "bad_frame"),
    "content with a lone surrogate": (
        frame(type="send", content="half an emoji: \ud83d", conversation_id=None),
        "bad_frame",
    ),
    "model with a NUL": (
        frame(type="send", content="hi", conversation_id=None, model="grok\x00"),
        "bad_frame",
    ),
    "model with a lone surrogate": (
        frame(type="send", content="hi", conversation_id=None, model="grok\udfff"),
        "bad_frame",
    ),
    "watch without conversation_id": (frame(type="watch"), "bad_frame"),
    "watch with a string id": (frame(type="watch", conversation_id="7"), "bad_frame"),
    "watch with a bool id": (frame(type="watch", conversation_id=False), "bad_frame"),
    "watch with a huge id": (frame(type="watch", conversation_id=2**63), "not_found"),
    "stop without message_id": (frame(type="stop"), "bad_frame"),
    "stop with a float id": (frame(type="stop", message_id=2.5), "bad_frame"),
    "stop with a negative id": (frame(type="stop", message_id=-3), "bad_frame"),
    "one character over the limit": (
        frame(type="send", content="x" * (MAX_CHARS + 1), conversation_id=None),
        "too_long",
    ),
    "over the limit in four-byte characters": (
        frame(type="send", content="😀" * (MAX_CHARS + 1), conversation_id=None),
        "too_long",
    ),
}
# json.loads raises RecursionError, not ValueError, on deep nesting.
BAD_FRAMES["deeply nested json"] = ("[" * 100_000 + "]" * 100_000, "bad_json")


@pytest.mark.parametrize("name", list(BAD_FRAMES))
async def test_a_bad_frame_gets_an_error_saves_nothing_and_the_socket_stays_usable(
    live: Live, fake_upstream_server: FakeUpstream, name: str
):
    data, code = BAD_FRAMES[name]
    fake_upstream_server.reset()
    before = counts(live)
    async with connect(live, live.alice, live.url) as ws:
        await ws.send(data)
        async with asyncio.timeout(5):
            reply = json.loads(await ws.recv())
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert reply["message"]
        await ping(ws)
    assert counts(live) == before
    assert fake_upstream_server.stream_requests() == []


async def test_a_frame_of_several_megabytes_is_cut_off_by_daphne_and_nothing_is_saved(
    live: Live, fake_upstream_server: FakeUpstream
):
    # Daphne (>= 4.2.2) refuses messages over 1 MiB by failing the connection before the
    # app reads them; the page reconnects. In-process tests check that the
    # app itself answers such a frame with an error (tests/test_security.py).
    fake_upstream_server.reset()
    before = counts(live)
    async with connect(live, live.alice, live.url) as ws:
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(10):
                # Daphne drops the connection while the frame is still arriving.
                await ws.send(frame(type="send", content="x" * 5_000_000, conversation_id=None))
                await ws.recv()
    async with connect(live, live.alice, live.url) as ws:
        await ping(ws)
    assert counts(live) == before
    assert fake_upstream_server.stream_requests() == []


async def test_logging_out_closes_the_sessions_open_socket(live: Live) -> None:
    cookie = session_cookie(live.url, "alice", "alice-password-1")
    other = session_cookie(live.url, "alice", "alice-password-1")  # another browser
    async with connect(live, cookie, live.url) as ws, connect(live, other, live.url) as elsewhere:
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv())["type"] == "pong"
        await asyncio.to_thread(_log_out, live.url, cookie)
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["code"] == "logged_out"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 4401
        # The other session stays logged in and usable.
        await elsewhere.send(json.dumps({"type": "ping"}))
        assert json.loads(await asyncio.wait_for(elsewhere.recv(), 5))["type"] == "pong"


def _log_out(url: str, cookie: str) -> None:
    with httpx.Client(base_url=url) as client:
        client.cookies.set("sessionid", cookie.removeprefix("sessionid="))
        page = client.get("/").text
        token = page.split('name="csrfmiddlewaretoken" value="')[1].split('"')[0]
        response = client.post("/accounts/logout/", data={"csrfmiddlewaretoken": token})
        assert response.status_code == 302, response.text[:500]


async def test_a_socket_whose_session_ended_elsewhere_can_no_longer_send(
    live: Live, fake_upstream_server: FakeUpstream
) -> None:
    # The session is deleted without a logout signal (it expired, or was cleared in another
    # process whose group message was lost): the next request on the socket is refused.
    cookie = session_cookie(live.url, "alice", "alice-password-1")
    key = cookie.removeprefix("sessionid=")
    fake_upstream_server.reset()
    async with connect(live, cookie, live.url) as ws:
        script = f"from django.contrib.sessions.models import Session; Session.objects.filter(session_key='{key}').delete()"
        await asyncio.to_thread(manage, live.env, "shell", "-c", script)
        await ws.send(json.dumps({"type": "send", "content": "hello", "conversation_id": None}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["code"] == "logged_out"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert fake_upstream_server.stream_requests() == []
