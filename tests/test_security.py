"""Security: production settings, headers, ownership of every view, login throttling."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from axes.handlers.proxy import AxesProxyHandler
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.core.cache import cache, caches
from django.test import Client, override_settings

from chat.models import Conversation, Message
from tests.clock_cache import ClockCache
from tests.fake_upstream import slow_stream
from tests.live import ROOT

pytestmark = pytest.mark.django_db

# -- settings, in a fresh process as the app starts -------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the app's own variables, plus `extra`."""
    prefixes = ("DJANGO_", "XAI_", "UPSTREAM_", "LOGIN_", "CHAT_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(prefixes) and k not in ("REDIS_URL", "DATABASE_URL")
    }
    env.update(extra)
    return env


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "DJANGO_SECURE_PROXY_SSL_HEADER": "true",
        "SQLITE_PATH": str(tmp_path / "db.sqlite3"),
    }
    return clean_env(**{**settings, **extra})


def run_manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_wildcard_allowed_host_stops_the_app_at_start_when_debug_is_off(tmp_path: Path):
    result = run_manage(
        production_env(tmp_path, DJANGO_ALLOWED_HOSTS="chat.example.com,*"), "check"
    )
    assert result.returncode != 0
    assert "DJANGO_ALLOWED_HOSTS contains '*'" in result.stderr
    # The same settings with named hosts start.
    assert run_manage(production_env(tmp_path), "check").returncode == 0


def test_the_deploy_check_passes_with_production_settings(tmp_path: Path):
    result = run_manage(production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    # And it does fail on a weakened setting, so the pass above means something.
    weak = production_env(tmp_path, DJANGO_SESSION_COOKIE_SECURE="false")
    result = run_manage(weak, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode != 0 and "security.W012" in result.stderr


def show_settings(env: dict[str, str]) -> str:
    result = run_manage(env, "shell", "-c", SHOW_SETTINGS)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


SHOW_SETTINGS = (
    "from django.conf import settings as s;"
    "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT,"
    " s.SECURE_HSTS_SECONDS, getattr(s, 'SECURE_PROXY_SSL_HEADER', None), s.CSRF_TRUSTED_ORIGINS)"
)


def test_production_defaults_are_secure_and_work_behind_a_tls_proxy(tmp_path: Path):
    # A proxy that says X-Forwarded-Proto: everything on.
    out = show_settings(production_env(tmp_path))
    assert out == (
        "True True True 31536000 ('HTTP_X_FORWARDED_PROTO', 'https') ['https://chat.example.com']"
    )
    # A proxy that does not: no redirect (it would loop), but cookies stay secure and
    # forms posted from https://chat.example.com pass the CSRF origin check.
    env = production_env(tmp_path)
    del env["DJANGO_SECURE_PROXY_SSL_HEADER"]
    out = show_settings(env)
    assert out == "True True False 31536000 None ['https://chat.example.com']"


def test_local_defaults_keep_plain_http_on_loopback_working(tmp_path: Path):
    # What `make run` and the live tests use: DEBUG off, hosts 127.0.0.1 and localhost.
    env = clean_env(SQLITE_PATH=str(tmp_path / "db.sqlite3"), DJANGO_SECRET_KEY="k" * 60)
    out = show_settings(env)
    assert out == "False False False 0 None []"


def test_daphne_is_at_least_4_2_2():
    from packaging.version import Version

    assert Version(version("daphne")) >= Version("4.2.2")


# -- ownership of every view ------------------------------------------------------------


def _conversation(user: User, title: str = "Chat") -> Conversation:
    conversation = Conversation.objects.create(user=user, title=title)
    conversation.append(role="user", content="hello")
    conversation.append(role="assistant", content="hi")
    return conversation


def test_another_users_conversation_is_404_on_every_view_and_is_logged(
    client: Client, alice: User, bob: User, caplog: pytest.LogCaptureFixture
):
    cache.clear()
    theirs = _conversation(bob, "bob's plans")
    missing = Conversation.objects.order_by("-id").first().id + 1000
    client.force_login(alice)
    caplog.set_level(logging.WARNING, logger="chat.middleware")

    def responses(conversation_id: int) -> list[tuple[int, bytes]]:
        results = []
        for method, url, data in [
            ("get", f"/c/{conversation_id}/", None),
            ("post", f"/c/{conversation_id}/rename/", {"title": "mine now"}),
            ("get", f"/c/{conversation_id}/delete/", None),
            ("post", f"/c/{conversation_id}/delete/", None),
        ]:
            response = getattr(client, method)(url, data)
            results.append((response.status_code, response.content))
        return results

    foreign = responses(theirs.id)
    assert [status for status, _ in foreign] == [404, 404, 404, 404]
    # Someone else's id looks exactly like an id that does not exist.
    assert foreign == responses(missing)
    theirs.refresh_from_db()
    assert theirs.title == "bob's plans" and theirs.messages.count() == 2
    refusals = [r.getMessage() for r in caplog.records if r.name == "chat.middleware"]
    assert f"user {alice.pk} was refused GET '/c/{theirs.id}/' (404)" in refusals
    assert f"user {alice.pk} was refused POST '/c/{theirs.id}/rename/' (404)" in refusals
    assert f"user {alice.pk} was refused POST '/c/{theirs.id}/delete/' (404)" in refusals
    # Bob still sees his conversation.
    client.force_login(bob)
    assert client.get(f"/c/{theirs.id}/").status_code == 200


ADMIN_URLS = [
    "/admin/",
    "/admin/usage/",
    "/admin/usage/?format=csv",
    "/admin/auth/user/",
    "/admin/chat/conversation/",
    "/admin/chat/message/",
    "/admin/chat/usage/",
]


def test_admin_pages_and_the_usage_report_require_staff(
    client: Client, alice: User, bob: User, staff: User
):
    theirs = _conversation(bob)
    urls = [
        *ADMIN_URLS,
        f"/admin/chat/conversation/{theirs.id}/change/",
        f"/admin/usage/user/{bob.id}/",
    ]
    for who in (None, alice):
        client.logout()
        if who is not None:
            client.force_login(who)
        for url in urls:
            response = client.get(url)
            assert response.status_code == 302, (who, url)
            assert response["Location"].startswith("/admin/login/"), (who, url)
    # Not staff: the admin's own login refuses alice too.
    client.logout()
    response = client.post(
        "/admin/login/?next=/admin/", {"username": "alice", "password": "alice-password-1"}
    )
    assert response.status_code == 200 and client.get("/admin/").status_code == 302
    client.force_login(staff)
    for url in urls:
        assert client.get(url).status_code == 200, url


def test_pages_need_a_login(client: Client, alice: User):
    theirs = _conversation(alice)
    for url in ["/", f"/c/{theirs.id}/", f"/c/{theirs.id}/delete/", "/usage/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    for url in [f"/c/{theirs.id}/rename/", f"/c/{theirs.id}/delete/"]:
        response = client.post(url, {"title": "x"})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    assert Conversation.objects.filter(id=theirs.id, title="Chat").exists()


def test_the_setup_page_sends_the_security_headers(client: Client):
    # Only a fresh install shows it (the live tests' database has users).
    response = client.get("/setup/")
    assert response.status_code == 200 and b"Create the first admin" in response.content
    csp = response["Content-Security-Policy"]
    # django-csp writes the directives in no fixed order.
    directives = {name: values for name, *values in (part.split() for part in csp.split(";"))}
    assert directives["script-src"] == ["'self'"] and "unsafe-inline" not in csp
    assert directives["frame-ancestors"] == ["'none'"]
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"
    assert response["Referrer-Policy"] == "same-origin"


# -- login throttling -------------------------------------------------------------------


@pytest.fixture
def fast_users(settings, django_user_model) -> dict[str, User]:
    """alice, bob and a staff user, with a quick password hash so many failures stay fast."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    cache.clear()
    users = {
        "alice": django_user_model.objects.create_user("alice", password="alice-password-1"),
        "bob": django_user_model.objects.create_user("bob", password="bob-password-1"),
        "root": django_user_model.objects.create_superuser("root", password="root-password-1"),
    }
    yield users
    cache.clear()


def log_in(client: Client, username: str, password: str, address: str = "10.0.0.1", url=None):
    return client.post(
        url or "/accounts/login/",
        {"username": username, "password": password},
        REMOTE_ADDR=address,
    )


def logged_in(client: Client) -> bool:
    return client.get("/").status_code == 200


def test_five_failures_lock_the_username_even_with_the_right_password(
    client: Client, fast_users: dict[str, User], caplog: pytest.LogCaptureFixture
):
    for attempt in range(4):
        response = log_in(client, "alice", f"wrong-{attempt}", address=f"10.0.0.{attempt + 1}")
        assert response.status_code == 200
        assert b"Please enter a correct username and password" in response.content
    # The fifth failure locks, and says so at once.
    response = log_in(client, "alice", "wrong-5", address="10.0.0.5")
    assert response.status_code == 429
    assert b"Too many failed attempts. Try again in 15 minutes." in response.content
    assert any("Locking out" in r.getMessage() for r in caplog.records)

    response = log_in(client, "alice", "alice-password-1", address="10.0.0.6")
    assert response.status_code == 429
    assert b"Too many failed attempts. Try again in 15 minutes." in response.content
    # The login form again, with what was typed: the refusal is the page, not a dead end.
    assert b'name="password"' in response.content and b'value="alice"' in response.content
    assert not logged_in(client)
    # Case variants of the name are the same account as far as the lock goes.
    assert log_in(client, "ALICE", "alice-password-1", address="10.0.0.7").status_code == 429
    # Other people are not locked out.
    response = log_in(client, "bob", "bob-password-1", address="10.0.0.6")
    assert response.status_code == 302 and logged_in(client)


def test_five_failures_from_one_address_lock_that_address(
    client: Client, fast_users: dict[str, User]
):
    for name in ["admin", "root", "test", "guest", "user"]:
        log_in(client, name, "password", address="192.0.2.9")
    response = log_in(client, "bob", "bob-password-1", address="192.0.2.9")
    assert response.status_code == 429 and b"Too many failed attempts" in response.content
    assert not logged_in(client)
    # The address counted is REMOTE_ADDR (Daphne sets it from the proxy's header): one the
    # client claims in a header of its own does not get it out.
    response = client.post(
        "/accounts/login/",
        {"username": "bob", "password": "bob-password-1"},
        REMOTE_ADDR="192.0.2.9",
        HTTP_X_FORWARDED_FOR="198.51.100.7",
        HTTP_X_REAL_IP="198.51.100.7",
    )
    assert response.status_code == 429 and not logged_in(client)
    response = log_in(client, "bob", "bob-password-1", address="192.0.2.10")
    assert response.status_code == 302 and logged_in(client)


def test_a_successful_login_resets_the_count(client: Client, fast_users: dict[str, User]):
    for _ in range(4):
        log_in(client, "alice", "wrong")
    assert log_in(client, "alice", "alice-password-1").status_code == 302
    client.logout()
    for _ in range(4):
        assert log_in(client, "alice", "wrong").status_code == 200
    assert log_in(client, "alice", "alice-password-1").status_code == 302
    assert logged_in(client)


@pytest.fixture
def clock_cache() -> Iterator[ClockCache]:
    """The throttle's counters in a cache whose clock the test moves."""
    with override_settings(CACHES={"default": {"BACKEND": "tests.clock_cache.ClockCache"}}):
        # axes' handler keeps the cache it was made with: make it again, here and after.
        AxesProxyHandler.get_implementation(force=True)
        yield caches["default"]
    AxesProxyHandler.get_implementation(force=True)


def test_login_works_again_once_the_lockout_is_over(
    client: Client, fast_users: dict[str, User], clock_cache: ClockCache
):
    for _ in range(5):
        log_in(client, "alice", "wrong")
    clock_cache.advance(899)
    response = log_in(client, "alice", "alice-password-1")
    assert response.status_code == 429
    assert b"Try again in 15 minutes." in response.content
    # Trying while locked out does not make the lockout longer.
    clock_cache.advance(1)
    assert log_in(client, "alice", "alice-password-1").status_code == 302
    assert logged_in(client)


def test_the_message_counts_minutes_of_the_lockout(
    client: Client, fast_users: dict[str, User], settings
):
    settings.AXES_COOLOFF_TIME = timedelta(seconds=60)
    for _ in range(5):
        log_in(client, "alice", "wrong")
    response = log_in(client, "alice", "alice-password-1")
    assert response.status_code == 429
    assert b"Try again in 1 minute." in response.content


def test_the_admin_login_is_throttled_too(client: Client, fast_users: dict[str, User]):
    for _ in range(5):
        log_in(client, "root", "wrong", url="/admin/login/?next=/admin/")
    response = log_in(client, "root", "root-password-1", url="/admin/login/?next=/admin/")
    # The admin's own login form, refused with the message.
    assert response.status_code == 429
    assert b"Too many failed attempts. Try again in 15 minutes." in response.content
    assert b'id="login-form"' in response.content
    assert client.get("/admin/").status_code == 302
    assert log_in(client, "root", "root-password-1").status_code == 429


def test_the_throttle_can_be_turned_off(tmp_path: Path, client: Client, fast_users, settings):
    # LOGIN_MAX_FAILURES=0 switches axes off, as the app starts...
    script = "from django.conf import settings; print(settings.AXES_ENABLED)"
    for failures, enabled in [("0", "False"), ("5", "True")]:
        env = clean_env(LOGIN_MAX_FAILURES=failures, SQLITE_PATH=str(tmp_path / "db.sqlite3"))
        result = run_manage(env, "shell", "-c", script)
        assert result.returncode == 0, result.stderr
        assert result.stdout.split()[-1] == enabled
    # ...and so switched off, no number of failures locks.
    settings.AXES_ENABLED = False
    for _ in range(8):
        assert log_in(client, "alice", "wrong").status_code == 200
    assert log_in(client, "alice", "alice-password-1").status_code == 302


# -- the websocket consumer itself ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_app_answers_a_frame_of_several_megabytes_with_an_error(
    upstream, alice: User, socket_for
):
    # Daphne cuts such frames off before the app (tests/test_live_security.py); behind any
    # other server the consumer still refuses them and the socket stays usable.
    socket = await socket_for(alice)
    big = json.dumps({"type": "send", "content": "x" * 5_000_000, "conversation_id": None})
    await socket.comm.send_to(text_data=big)
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == "too_long"
    await socket.comm.send_to(text_data="x" * 5_000_000)
    assert (await socket.receive())["code"] == "bad_json"
    await socket.send(type="ping")
    assert await socket.receive() == {"type": "pong"}
    assert await database_sync_to_async(Message.objects.count)() == 0
    assert await database_sync_to_async(Conversation.objects.count)() == 0
    assert upstream.stream_requests() == []


@pytest.mark.django_db(transaction=True)
async def test_another_user_cannot_stop_or_watch_an_answer_while_it_streams(
    upstream, alice: User, bob: User, socket_for
):
    upstream.queue(slow_stream(count=30, delay=0.02))
    socket = await socket_for(alice)
    await socket.send(type="send", content="count", conversation_id=None)
    start, _ = await socket.until("message.start")
    await socket.until("delta")

    intruder = await socket_for(bob)
    await intruder.send(type="stop", message_id=start["message"]["id"])
    assert (await intruder.receive())["code"] == "not_found"
    await intruder.send(type="watch", conversation_id=start["conversation_id"])
    assert (await intruder.receive())["code"] == "not_found"
    await intruder.send(type="send", content="me too", conversation_id=start["conversation_id"])
    assert (await intruder.receive())["code"] == "not_found"

    end, _ = await socket.until("message.end")
    assert end["state"] == "complete"
    # Nothing of alice's answer reached bob's socket.
    with pytest.raises(asyncio.TimeoutError):
        await intruder.receive(timeout=0.3)
    assert len(upstream.stream_requests()) == 1
