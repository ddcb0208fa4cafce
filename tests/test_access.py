"""A user who loses access (deactivated, or their password changed) loses their open
sockets at once, and every request on a socket checks that they still have it."""

from __future__ import annotations

import time

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.test import AsyncClient

from chat.models import Conversation, Message, Usage
from tests.conftest import Socket
from tests.sessions import SessionStore, logged_in_session

pytestmark = pytest.mark.django_db(transaction=True)

HANG_GUARD = 60  # seconds: against a hang, not a deadline


async def _logged_in_socket(user: User) -> Socket:
    """A socket opened with a logged-in session, as a browser's (AuthMiddlewareStack puts
    the session in the scope)."""
    socket = Socket(user)
    socket.comm.scope["session"] = SessionStore(
        session_key=await database_sync_to_async(logged_in_session)(user)
    )
    return await socket.connect()


async def _ping(socket: Socket) -> None:
    await socket.send(type="ping")
    assert (await socket.receive(HANG_GUARD))["type"] == "pong"


async def _closed_as_logged_out(socket: Socket) -> float:
    """Waits for the `logged_out` error and the close with 4401; the seconds it took."""
    started = time.monotonic()
    frame = await socket.receive(HANG_GUARD)
    assert frame["type"] == "error" and frame["code"] == "logged_out", frame
    closed = await socket.comm.receive_output(HANG_GUARD)
    assert closed == {"type": "websocket.close", "code": 4401}
    return time.monotonic() - started


@database_sync_to_async
def _deactivate_by_save(user: User) -> None:
    user.is_active = False
    user.save()


@database_sync_to_async
def _change_password_by_save(user: User) -> None:
    user.set_password("a-new-password-2")
    user.save()


async def test_deactivating_a_user_closes_their_open_socket(alice, bob):
    socket = await _logged_in_socket(alice)
    plain = await Socket(alice).connect()  # a socket without a session closes too
    others = await _logged_in_socket(bob)
    await _ping(socket)

    await _deactivate_by_save(await database_sync_to_async(User.objects.get)(pk=alice.pk))

    took = await _closed_as_logged_out(socket)
    await _closed_as_logged_out(plain)
    print(f"closed {took * 1000:.0f} ms after the save")
    await _ping(others)  # bob is not concerned


async def test_an_admin_deactivating_a_user_in_the_change_form_closes_their_socket(alice, staff):
    socket = await _logged_in_socket(alice)
    await _ping(socket)
    admin = AsyncClient()
    await admin.aforce_login(staff)
    # The form as the admin submits it with "Active" unticked (an unticked box is not sent).
    response = await admin.post(
        f"/admin/auth/user/{alice.pk}/change/",
        {
            "username": "alice",
            "date_joined_0": "2025-01-01",
            "date_joined_1": "12:00:00",
            "_save": "Save",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    assert not (await database_sync_to_async(User.objects.get)(pk=alice.pk)).is_active

    await _closed_as_logged_out(socket)


async def test_changing_a_users_password_closes_their_open_socket(alice):
    socket = await _logged_in_socket(alice)
    await _ping(socket)

    await _change_password_by_save(alice)

    await _closed_as_logged_out(socket)


async def test_saving_a_user_without_taking_their_access_keeps_their_socket(alice):
    socket = await _logged_in_socket(alice)

    @database_sync_to_async
    def rename() -> None:
        alice.first_name = "Alice"
        alice.save()

    await rename()
    await _ping(socket)


@database_sync_to_async
def _saved() -> tuple[int, int, int]:
    return Conversation.objects.count(), Message.objects.count(), Usage.objects.count()


@pytest.mark.parametrize("field", ["is_active", "password"])
async def test_a_send_after_a_change_that_bypasses_save_is_refused_and_not_billed(
    upstream, alice, field
):
    socket = await _logged_in_socket(alice)
    await _ping(socket)
    before = await _saved()

    # update() sends no signal: only the check of each request can see it.
    change = {"is_active": False} if field == "is_active" else {field: make_password("other-3")}
    await database_sync_to_async(User.objects.filter(pk=alice.pk).update)(**change)
    await socket.send(type="send", content="hello", conversation_id=None, model=None)

    await _closed_as_logged_out(socket)
    assert await _saved() == before
    assert upstream.stream_requests() == []


async def test_changing_ones_own_password_closes_the_sockets_of_ones_other_sessions(staff):
    elsewhere = await _logged_in_socket(staff)  # another browser
    await _ping(elsewhere)
    here = AsyncClient()
    await here.aforce_login(staff)

    response = await here.post(
        "/admin/password_change/",
        {
            "old_password": "staff-password-1",
            "new_password1": "a-new-password-2",
            "new_password2": "a-new-password-2",
        },
    )
    assert response.status_code == 302, response.content[:2000]

    await _closed_as_logged_out(elsewhere)
    # The session that changed it stays logged in (update_session_auth_hash).
    assert (await here.get("/admin/")).status_code == 200
