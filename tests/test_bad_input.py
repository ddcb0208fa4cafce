"""Text no database can store (NUL: PostgreSQL refuses it; a lone surrogate: it is not
UTF-8) and numbers `int()` reads otherwise than we do get a clear refusal at the edge:
an error frame on a socket that stays usable, or a 400, with nothing saved."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import Conversation, Message, Usage
from tests.fake_upstream import FakeUpstream


def counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in (Conversation, Message, Usage)}


BAD_SENDS = {
    "a NUL in the content": {"content": "hello\x00world"},
    "only a NUL as content": {"content": "\x00"},
    "a lone high surrogate in the content": {"content": "an emoji cut in half: \ud83d"},
    "a lone low surrogate in the content": {"content": "\ude00 and the rest"},
    "a NUL in the model": {"content": "hello", "model": "grok-4\x00"},
    "a lone surrogate in the model": {"content": "hello", "model": "grok-\ud800"},
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("to", ["a new conversation", "an existing conversation"])
@pytest.mark.parametrize("name", list(BAD_SENDS))
async def test_a_send_with_a_nul_or_a_lone_surrogate_gets_an_error_and_saves_nothing(
    upstream: FakeUpstream, alice, socket_for, name: str, to: str
):
    conversation_id = None
    if to == "an existing conversation":
        conversation = await database_sync_to_async(Conversation.objects.create)(
            user=alice, title="Earlier"
        )
        conversation_id = conversation.id
    before = await database_sync_to_async(counts)()
    socket = await socket_for(alice)
    # json.dumps writes a lone surrogate as the escape \ud800, as a browser's JSON.stringify does.
    frame = {"type": "send", "conversation_id": conversation_id, **BAD_SENDS[name]}
    await socket.comm.send_to(text_data=json.dumps(frame))
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == "bad_frame", error
    assert "NUL" in error["message"] or "surrogate" in error["message"], error
    # The socket stays usable: a good message on it is answered.
    await socket.send(type="ping")
    assert await socket.receive() == {"type": "pong"}
    assert await database_sync_to_async(counts)() == before
    assert upstream.stream_requests() == []
    await socket.send(type="send", content="hello", conversation_id=conversation_id)
    end, _ = await socket.until("message.end")
    assert end["state"] == "complete"


@pytest.mark.django_db
def test_a_rename_with_a_nul_gets_a_400_and_keeps_the_title(alice):
    conversation = Conversation.objects.create(user=alice, title="Old title")
    client = Client()
    client.force_login(alice)
    url = f"/c/{conversation.id}/rename/"
    response = client.post(url, {"title": "new\x00title"})
    assert response.status_code == 400
    assert "Null characters are not allowed" in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.title == "Old title"
    # A good title still renames it, spaces folded and cut at 200 characters as before.
    response = client.post(url, {"title": "  a  new\n title " + "x" * 300})
    assert response.status_code == 302
    conversation.refresh_from_db()
    assert conversation.title == ("a new title " + "x" * 300)[:200]
    # A blank one changes nothing.
    assert client.post(url, {"title": "  "}).status_code == 302
    conversation.refresh_from_db()
    assert conversation.title.startswith("a new title")


@pytest.mark.django_db
@pytest.mark.parametrize(
    "before",
    [
        "²",  # isdigit() says yes, int() says no
        "١٢",  # Arabic-Indic digits: int() reads 12
        "１２",  # fullwidth digits: int() reads 12 too
        "𝟏",  # mathematical bold one
        "1²",
        "-1",
        "1.5",
        " 7",
        "abc",
        "9" * 5000,  # more digits than int() reads at all
    ],
)
def test_a_page_before_a_bad_message_id_is_a_400(alice, before: str):
    conversation = Conversation.objects.create(user=alice, title="t")
    conversation.append(role="user", content="hello")
    client = Client()
    client.force_login(alice)
    response = client.get(f"/c/{conversation.id}/?before={quote(before)}")
    assert response.status_code == 400
    assert "before" in response.content.decode()


@pytest.mark.django_db
def test_a_page_before_a_message_id_still_pages(alice):
    conversation = Conversation.objects.create(user=alice, title="t")
    first = conversation.append(role="user", content="first message")
    second = conversation.append(role="user", content="second message")
    client = Client()
    client.force_login(alice)
    page = client.get(f"/c/{conversation.id}/?before={second.id}").content.decode()
    assert "first message" in page and "second message" not in page
    for before in ("", str(10**30)):  # none given; beyond any id (PostgreSQL's bigint too)
        response = client.get(f"/c/{conversation.id}/?before={before}")
        assert response.status_code == 200
        assert "second message" in response.content.decode()
    assert first.id < second.id
