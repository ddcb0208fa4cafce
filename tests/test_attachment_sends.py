"""Images in, over the socket: a `send` takes the user's uploads to the upstream, as the
API style's own parts, on that turn and every later one; others' uploads and models that
take no images are refused with nothing saved."""

from __future__ import annotations

import base64
import io

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache
from PIL import Image

from chat import attachments
from chat.billing import IMAGE_TOKENS
from chat.models import Attachment, Conversation, Message, Usage
from tests.fake_upstream import Reply, slow_stream, transcript

pytestmark = pytest.mark.django_db(transaction=True)


def png(color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, "PNG")
    return out.getvalue()


@database_sync_to_async
def uploaded(user, data: bytes) -> int:
    return attachments.store(user, data, attachments.check_image(data)).pk


@database_sync_to_async
def counts() -> tuple[int, int, int]:
    pending = Attachment.objects.filter(message__isnull=True).count()
    return Conversation.objects.count(), Message.objects.count(), pending


@pytest.fixture(autouse=True)
def images(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.CHAT_IMAGE_MODELS = ["grok-4"]
    cache.clear()  # no model list from another test: the setting decides


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


async def test_a_sent_image_goes_upstream_as_an_image_url_part_on_every_turn(
    upstream, alice, socket_for
):
    data = png()
    image_id = await uploaded(alice, data)
    socket = await socket_for(alice)
    await socket.send(
        type="send", content="What is this?", conversation_id=None, attachments=[image_id]
    )
    start, _ = await socket.until("message.start")
    assert start["user_message"]["attachments"] == [
        {
            "id": image_id,
            "url": f"/attachments/{image_id}/",
            "thumbnail_url": f"/attachments/{image_id}/thumb/",
            "width": 32,
            "height": 24,
        }
    ]
    first, _ = await socket.until("message.end")
    image_turn = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(data)}},
            {"type": "text", "text": "What is this?"},
        ],
    }
    assert upstream.stream_requests()[0].json()["messages"] == [image_turn]

    await socket.send(
        type="send", content="And its colour?", conversation_id=first["conversation_id"]
    )
    second, _ = await socket.until("message.start")
    assert second["user_message"]["attachments"] == []
    await socket.until("message.end")
    messages = upstream.stream_requests()[1].json()["messages"]
    assert messages[0] == image_turn  # the earlier turn keeps its image
    assert messages[2] == {"role": "user", "content": "And its colour?"}

    # The page renders it again after a reload: the thumbnail of the stored message.
    message = await database_sync_to_async(Message.objects.get)(pk=start["user_message"]["id"])
    linked = await database_sync_to_async(list)(message.attachments.values_list("id", flat=True))
    assert linked == [image_id]


async def test_with_the_responses_api_an_image_is_an_input_image_part(
    upstream, alice, socket_for, settings
):
    settings.XAI_API_STYLE = "responses"
    upstream.queue(
        Reply(body=transcript("vercel-xai-responses-reasoning-1.sse")),
        Reply(body=transcript("vercel-xai-responses-reasoning-1.sse")),
    )
    data = png("blue")
    image_id = await uploaded(alice, data)
    socket = await socket_for(alice)
    await socket.send(
        type="send", content="Describe it", conversation_id=None, attachments=[image_id]
    )
    first, _ = await socket.until("message.end")
    assert first["state"] == "complete"
    image_turn = {
        "role": "user",
        "content": [
            {"type": "input_image", "image_url": data_url(data), "detail": "auto"},
            {"type": "input_text", "text": "Describe it"},
        ],
    }
    body = upstream.stream_requests()[0].json()
    assert upstream.stream_requests()[0].path == "/v1/responses"
    assert body["input"] == [image_turn]

    await socket.send(type="send", content="More", conversation_id=first["conversation_id"])
    await socket.until("message.end")
    later = upstream.stream_requests()[1].json()["input"]
    assert later[0] == image_turn and later[-1] == {"role": "user", "content": "More"}


async def test_another_users_upload_is_refused_and_nothing_is_saved(
    upstream, alice, bob, socket_for
):
    theirs = await uploaded(bob, png())
    socket = await socket_for(alice)
    await socket.send(type="send", content="Look", conversation_id=None, attachments=[theirs])
    error = await socket.receive()
    assert error == {
        "type": "error",
        "code": "bad_attachment",
        "message": f"No such image: {theirs}.",
    }
    assert await counts() == (0, 0, 1)
    assert upstream.stream_requests() == []
    # Bob's upload is still his, waiting.
    assert await database_sync_to_async(
        Attachment.objects.filter(pk=theirs, user=bob, message__isnull=True).exists
    )()


async def test_a_model_that_takes_no_images_is_refused_them(upstream, alice, socket_for, settings):
    image_id = await uploaded(alice, png())
    socket = await socket_for(alice)
    await socket.send(
        type="send",
        content="Look",
        conversation_id=None,
        model="grok-3-mini",
        attachments=[image_id],
    )
    error = await socket.receive()
    assert error["code"] == "images_not_accepted"
    assert error["message"] == (
        "The model grok-3-mini does not take images. Choose a model that does, or remove the images."
    )
    # The upstream's list wins over the setting: it says grok-4 takes text only.
    upstream.language_models = {"models": [{"id": "grok-4", "input_modalities": ["text"]}]}
    from chat.catalog import models_offered

    await database_sync_to_async(models_offered)()
    await socket.send(type="send", content="Look", conversation_id=None, attachments=[image_id])
    assert (await socket.receive())["code"] == "images_not_accepted"
    assert await counts() == (0, 0, 1)
    assert upstream.stream_requests() == []


async def test_an_image_goes_with_one_message_only_and_at_most_so_many(
    upstream, alice, socket_for, settings
):
    settings.CHAT_MAX_IMAGES = 2
    ids = [await uploaded(alice, png()) for _ in range(3)]
    socket = await socket_for(alice)
    await socket.send(type="send", content="Look", conversation_id=None, attachments=ids)
    error = await socket.receive()
    assert (error["code"], error["message"]) == (
        "bad_attachment",
        "A message may have at most 2 images; this one has 3.",
    )
    await socket.send(type="send", content="Look", conversation_id=None, attachments=ids[:1])
    first, _ = await socket.until("message.end")
    await socket.send(
        type="send", content="Again", conversation_id=first["conversation_id"], attachments=ids[:1]
    )
    error = await socket.receive()
    assert error["message"] == f"Image {ids[0]} was sent already; upload it again."
    for bad in ("1", [0], [True], ["x"], {"id": 1}):
        await socket.send(type="send", content="Look", conversation_id=None, attachments=bad)
        assert (await socket.receive())["code"] == "bad_frame"
    assert len(upstream.stream_requests()) == 1


async def test_an_edit_keeps_the_edited_messages_images_and_takes_new_ones(
    upstream, alice, socket_for
):
    first_image, second_image = png("red"), png("green")
    first_id = await uploaded(alice, first_image)
    socket = await socket_for(alice)
    await socket.send(type="send", content="Look", conversation_id=None, attachments=[first_id])
    start, _ = await socket.until("message.start")
    await socket.until("message.end")
    second_id = await uploaded(alice, second_image)
    await socket.send(
        type="edit",
        conversation_id=start["conversation_id"],
        message_id=start["user_message"]["id"],
        content="Look at both",
        attachments=[second_id],
    )
    edited, _ = await socket.until("message.start")
    await socket.until("message.end")
    # The edited message's image (a copy of its row) first: in upload order.
    shown = edited["user_message"]["attachments"]
    assert [a["id"] for a in shown][1:] == [second_id] and shown[0]["id"] != first_id
    parts = upstream.stream_requests()[1].json()["messages"][0]["content"]
    assert [p.get("image_url", {}).get("url") for p in parts[:2]] == [
        data_url(first_image),
        data_url(second_image),
    ]


async def test_a_stopped_answers_estimate_counts_the_images_sent(upstream, alice, socket_for):
    upstream.queue(slow_stream(count=400, delay=0.02))
    image_id = await uploaded(alice, png())
    socket = await socket_for(alice)
    await socket.send(type="send", content="x" * 400, conversation_id=None, attachments=[image_id])
    start, _ = await socket.until("message.start")
    await socket.until("delta")
    await socket.send(type="stop", message_id=start["message"]["id"])
    end, _ = await socket.until("message.end")
    assert end["usage"]["source"] == "estimated"
    assert end["usage"]["prompt_tokens"] == 100 + IMAGE_TOKENS
    row = await database_sync_to_async(Usage.objects.get)(message_id=start["message"]["id"])
    assert row.prompt_tokens == 100 + IMAGE_TOKENS


async def test_a_model_that_takes_no_images_gets_the_history_without_them(
    upstream, alice, socket_for
):
    image_id = await uploaded(alice, png())
    socket = await socket_for(alice)
    await socket.send(type="send", content="Look", conversation_id=None, attachments=[image_id])
    first, _ = await socket.until("message.end")
    await socket.send(
        type="send", content="Go on", conversation_id=first["conversation_id"], model="grok-3-mini"
    )
    await socket.until("message.end")
    assert upstream.stream_requests()[1].json()["messages"][0] == {
        "role": "user",
        "content": "Look",
    }
    # They stay stored, and go again to a model that takes them.
    await socket.send(
        type="send", content="Again", conversation_id=first["conversation_id"], model="grok-4"
    )
    await socket.until("message.end")
    again = upstream.stream_requests()[2].json()["messages"][0]["content"]
    assert again[0]["type"] == "image_url" and again[1] == {"type": "text", "text": "Look"}
