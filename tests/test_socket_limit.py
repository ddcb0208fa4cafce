"""The per-user socket limit as a client meets it: Daphne refuses the handshake with HTTP
403, in every process, and a killed process's sockets stop counting."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from playwright.sync_api import Page, expect
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream
from tests.live import app_env, daphne, daphne_process, manage, prepare_database, session_cookie


def _open(url: str, cookie: str) -> ClientConnection:
    return connect(
        url.replace("http://", "ws://") + "/ws/chat/",
        additional_headers={"Cookie": cookie, "Origin": url},
        open_timeout=60,
    )


def _refused_status(url: str, cookie: str) -> int:
    """The HTTP status of a handshake the server refuses (fails if it is accepted)."""
    try:
        with _open(url, cookie):
            pass
    except InvalidStatus as exc:
        return exc.response.status_code
    raise AssertionError("the handshake was accepted")


def _open_when_free(sockets: ExitStack, url: str, cookie: str) -> ClientConnection:
    """A socket, once the server has counted a closed one out (it learns of the close a
    moment after the client): polls with a hang guard, not a deadline."""
    for _ in range(600):
        try:
            return sockets.enter_context(_open(url, cookie))
        except InvalidStatus:
            time.sleep(0.1)
    raise AssertionError("the closed socket still counts")


@pytest.fixture
def live(fake_upstream_server: FakeUpstream, tmp_path) -> Iterator[str]:
    fake_upstream_server.reset()
    env = app_env(tmp_path, fake_upstream_server.base_url)  # the default limits
    prepare_database(env)
    manage(
        env,
        "shell",
        "-c",
        "from django.contrib.auth.models import User;"
        "User.objects.create_user('bob', password='bob-password-1')",
    )
    with daphne(env, tmp_path / "daphne.log") as url:
        yield url


@needs_chromium
def test_the_eleventh_socket_of_alice_is_refused_at_the_handshake_while_bob_chats(
    live: str, page: Page
) -> None:
    cookie = session_cookie(live, "alice", "alice-password-1")
    alices = ExitStack()
    tabs = [alices.enter_context(_open(live, cookie)) for _ in range(10)]
    assert _refused_status(live, cookie) == 403

    # Bob's page loads, connects and chats.
    log_in(page, live, "bob", "bob-password-1")
    wait_ready(page)
    page.fill("#prompt", "Hello")
    page.keyboard.press("Enter")
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete", timeout=60_000)

    # Alice closes a tab: another may open, and no more.
    with alices:
        tabs[0].close()
        _open_when_free(alices, live, cookie)
        assert _refused_status(live, cookie) == 403


def test_the_socket_limit_holds_across_processes_and_a_killed_ones_sockets_stop_counting(
    fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    env = app_env(tmp_path, fake_upstream_server.base_url)
    prepare_database(env)
    with (
        daphne_process(env, tmp_path / "a.log") as (a, process_a),
        daphne(env, tmp_path / "b.log") as b,
        ExitStack() as sockets,
    ):
        cookie = session_cookie(a, "alice", "alice-password-1")
        for url in (a, b):
            for _ in range(5):
                sockets.enter_context(_open(url, cookie))
        assert _refused_status(a, cookie) == 403
        assert _refused_status(b, cookie) == 403

        process_a.kill()  # SIGKILL: its sockets are never closed, their rows stay
        process_a.wait()
        # Its five rows stop counting at once: their process is gone from this host.
        for _ in range(5):
            sockets.enter_context(_open(b, cookie))
        assert _refused_status(b, cookie) == 403
