"""Images in: upload, checks, owner-only serving, files on disk, and each dialect's parts."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client
from PIL import Image

from chat import attachments
from chat.billing import IMAGE_TOKENS, estimate_usage, fit_history
from chat.models import Attachment, Conversation
from chat.upstream import AnthropicMessages, ChatCompletions, Responses

pytestmark = pytest.mark.django_db


def png(width: int = 40, height: int = 30, color: str = "red", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, "PNG")
    return out.getvalue()


def encoded(image_format: str, mode: str = "RGB", **options) -> bytes:
    out = io.BytesIO()
    Image.new(mode, (50, 20), "blue").save(out, image_format, **options)
    return out.getvalue()


def _file(data: bytes, name: str):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, data, content_type="image/png")


def post_file(client: Client, data: bytes, name: str = "photo.png"):
    return client.post("/attachments/", {"file": _file(data, name)})


def stored_files(media: Path) -> list[str]:
    return sorted(str(p.relative_to(media)) for p in media.rglob("*") if p.is_file())


@pytest.fixture(autouse=True)
def media(settings, tmp_path) -> Path:
    settings.MEDIA_ROOT = tmp_path / "media"
    cache.clear()  # no model list from another test
    return settings.MEDIA_ROOT


def test_an_uploaded_png_is_stored_and_served_to_its_owner(client, alice, media):
    client.force_login(alice)
    data = png(40, 30)
    response = post_file(client, data)
    assert response.status_code == 201, response.content
    body = response.json()
    attachment = Attachment.objects.get()
    assert body == {
        "id": attachment.pk,
        "url": f"/attachments/{attachment.pk}/",
        "thumbnail_url": f"/attachments/{attachment.pk}/thumb/",
        "width": 40,
        "height": 30,
    }
    assert attachment.user == alice and attachment.message is None
    assert (attachment.content_type, attachment.size) == ("image/png", len(data))
    # Stored under a name of its own, never the uploader's.
    assert "photo" not in attachment.file.name and attachment.file.name.endswith(".png")

    image = client.get(body["url"])
    assert image.status_code == 200 and image.content == data
    assert image["Content-Type"] == "image/png"
    assert image["X-Content-Type-Options"] == "nosniff"
    assert image["Content-Disposition"] == "inline"
    thumb = client.get(body["thumbnail_url"])
    assert thumb.status_code == 200 and thumb["Content-Type"] == "image/jpeg"
    assert thumb["X-Content-Type-Options"] == "nosniff"
    assert Image.open(io.BytesIO(thumb.content)).size == (40, 30)  # never enlarged


def test_a_file_that_is_no_image_is_refused_and_nothing_is_stored(client, alice, media):
    client.force_login(alice)
    for data, name in [
        (b"%PDF-1.7\n1 0 obj << >> endobj\n", "paper.png"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "x.svg"),
        (encoded("BMP"), "picture.png"),
        (encoded("TIFF"), "scan.png"),
    ]:
        response = post_file(client, data, name)
        assert response.status_code == 400, name
        assert response.json() == {"error": "That is not a PNG, JPEG, WebP or GIF image."}
    assert not Attachment.objects.exists() and stored_files(media) == []


def test_a_png_header_with_garbage_after_it_is_refused(client, alice, media):
    client.force_login(alice)
    real = png(200, 200, "green")
    garbage = real[:60] + bytes(range(256)) * 8
    truncated = real[: len(real) // 2]
    for data in (garbage, truncated):
        response = post_file(client, data)
        assert response.status_code == 400
        assert response.json() == {
            "error": "The image could not be read: it is damaged or not what it claims to be."
        }
    assert not Attachment.objects.exists() and stored_files(media) == []


def test_too_big_a_file_and_too_many_pixels_are_refused(client, alice, media, settings):
    client.force_login(alice)
    settings.CHAT_MAX_IMAGE_BYTES = 1000
    response = post_file(client, png(400, 400, "white") + b"\0" * 2000)
    assert response.status_code == 400
    assert response.json() == {"error": "That file is too large: the most is 0.000953674 MiB."}
    settings.CHAT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
    # A decompression bomb: a few kilobytes that decode to 50 million pixels.
    bomb = png(10_000, 5_000, mode="1", color=0)
    assert len(bomb) < 100_000
    response = post_file(client, bomb)
    assert response.status_code == 400
    assert response.json() == {
        "error": "That image has too many pixels (10000 x 5000); the most is 40,000,000."
    }
    assert not Attachment.objects.exists() and stored_files(media) == []


def test_a_user_may_keep_only_so_many_uploads_waiting(
    client, alice, bob, settings, media, django_capture_on_commit_callbacks
):
    settings.CHAT_MAX_PENDING_IMAGES = 2
    client.force_login(alice)
    assert post_file(client, png()).status_code == 201
    assert post_file(client, png()).status_code == 201
    third = post_file(client, png())
    assert third.status_code == 400
    assert "2 images waiting to be sent" in third.json()["error"]
    # Removing one makes room; another user's count is their own.
    first = Attachment.objects.filter(user=alice).first()
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/attachments/{first.pk}/delete/").status_code == 204
    assert post_file(client, png()).status_code == 201
    client.force_login(bob)
    assert post_file(client, png()).status_code == 201
    assert Attachment.objects.filter(user=alice).count() == 2
    assert len(stored_files(media)) == 3 * 2  # each image and its thumbnail


def test_bob_gets_404_for_alices_image_its_thumbnail_and_its_removal(client, alice, bob):
    client.force_login(alice)
    mine = post_file(client, png()).json()
    missing = mine["id"] + 1000
    client.force_login(bob)
    for url in (mine["url"], mine["thumbnail_url"], f"/attachments/{missing}/"):
        assert client.get(url).status_code == 404, url
    assert client.post(f"/attachments/{mine['id']}/delete/").status_code == 404
    assert Attachment.objects.filter(pk=mine["id"]).exists()
    client.logout()
    assert client.get(mine["url"]).status_code == 302  # to the login page
    assert client.post("/attachments/", {}).status_code == 302


def test_an_upload_needs_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert post_file(client, png()).status_code == 403
    assert not Attachment.objects.exists()
    page = client.get("/")
    token = page.cookies["csrftoken"].value
    response = client.post(
        "/attachments/", {"file": _file(png(), "a.png")}, headers={"X-CSRFToken": token}
    )
    assert response.status_code == 201


def test_webp_and_gif_are_kept_as_sent_and_go_upstream_as_png(client, alice):
    client.force_login(alice)
    for data, kind in [
        (encoded("WEBP", lossless=True), "image/webp"),
        (encoded("GIF", mode="P"), "image/gif"),
        (encoded("JPEG"), "image/jpeg"),
    ]:
        body = post_file(client, data, "a.png").json()
        attachment = Attachment.objects.get(pk=body["id"])
        assert attachment.content_type == kind
        assert client.get(body["url"])["Content-Type"] == kind
        if kind == "image/jpeg":
            assert not attachment.converted and attachment.upstream_type == "image/jpeg"
            continue
        assert attachment.upstream_type == "image/png"
        converted = Image.open(attachment.converted.open("rb"))
        assert (converted.format, converted.size) == ("PNG", (50, 20))


def test_a_transparent_image_keeps_its_transparency_in_the_thumbnail(client, alice):
    client.force_login(alice)
    body = post_file(client, png(mode="RGBA", color=(0, 0, 0, 0))).json()
    thumb = client.get(body["thumbnail_url"])
    assert thumb["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).mode == "RGBA"


def test_a_photo_turned_by_its_exif_orientation_is_measured_as_shown(client, alice):
    client.force_login(alice)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated a quarter turn
    out = io.BytesIO()
    Image.new("RGB", (60, 20), "white").save(out, "JPEG", exif=exif.tobytes())
    body = post_file(client, out.getvalue()).json()
    assert (body["width"], body["height"]) == (20, 60)
    thumb = client.get(body["thumbnail_url"]).content
    assert Image.open(io.BytesIO(thumb)).size == (20, 60)
    # The file itself is kept byte for byte, its orientation tag included.
    assert client.get(body["url"]).content == out.getvalue()


def test_deleting_a_conversation_deletes_its_images_files(
    client, alice, media, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    body = post_file(client, png()).json()
    conversation = Conversation.objects.create(user=alice)
    message = conversation.append(role="user", content="look")
    Attachment.objects.filter(pk=body["id"]).update(message=message)
    # An edit's copy shares the files: they stay while one row names them.
    copy_message = conversation.messages.create(role="user", content="look again", parent=None)
    attachments.link([], message.pk, copy_message)
    assert len(stored_files(media)) == 2
    with django_capture_on_commit_callbacks(execute=True):
        message.delete()
    assert len(stored_files(media)) == 2 and Attachment.objects.count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        conversation.delete()
    assert stored_files(media) == [] and not Attachment.objects.exists()


def test_the_chat_page_shows_a_messages_thumbnails_and_offers_the_button_by_model(
    client, alice, settings, upstream
):
    settings.CHAT_IMAGE_MODELS = ["grok-4"]
    client.force_login(alice)
    body = post_file(client, png()).json()
    conversation = Conversation.objects.create(user=alice, model="grok-4")
    message = conversation.append(role="user", content="look")
    Attachment.objects.filter(pk=body["id"]).update(message=message)
    html = client.get(f"/c/{conversation.id}/").content.decode()
    assert (
        f'<a class="attachment" href="{body["url"]}" target="_blank" rel="noopener" '
        f'data-attachment-id="{body["id"]}"><img src="{body["thumbnail_url"]}"'
    ) in html
    start = html.index('id="model-images"')
    found = json.loads(html[html.index(">", start) + 1 : html.index("</script>", start)])
    assert found == {"grok-4": True, "grok-3-mini": False}


def test_the_model_list_says_which_models_take_images_before_the_setting(settings, upstream):
    from chat.catalog import models_offered

    upstream.language_models = {
        "models": [
            {"id": "grok-4", "input_modalities": ["text", "image"], "aliases": ["grok-4-latest"]},
            {"id": "grok-3-mini", "input_modalities": ["text"]},
            {"id": "grok-x"},
        ]
    }
    settings.CHAT_IMAGE_MODELS = ["grok-3", "grok-x"]
    models_offered()
    assert attachments.images_by_model(["grok-4-latest", "grok-3-mini", "grok-x", "other"]) == {
        "grok-4-latest": True,
        "grok-3-mini": False,  # the list says no, whatever the setting
        "grok-x": True,  # the list says nothing: the setting's prefix
        "other": False,
    }


IMAGE = {"type": "image/png", "data": base64.b64encode(b"\x89PNG fake").decode()}
TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is this?", "images": [IMAGE]},
    {"role": "assistant", "content": "A cat."},
    {"role": "user", "content": "And now?"},
]
DATA_URL = "data:image/png;base64," + IMAGE["data"]


def test_each_dialect_sends_images_as_its_own_content_parts():
    chat = ChatCompletions().body("grok-4", TURNS)["messages"]
    assert chat[1] == {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": DATA_URL}},
            {"type": "text", "text": "What is this?"},
        ],
    }
    assert chat[3] == {"role": "user", "content": "And now?"}  # no images: plain text
    responses = Responses().body("grok-4", TURNS)["input"]
    assert responses[0] == {
        "role": "user",
        "content": [
            {"type": "input_image", "image_url": DATA_URL, "detail": "auto"},
            {"type": "input_text", "text": "What is this?"},
        ],
    }
    anthropic = AnthropicMessages().body("claude", TURNS)["messages"]
    assert anthropic[0] == {
        "role": "user",
        "content": [
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": IMAGE["data"]},
            },
            {"type": "text", "text": "What is this?"},
        ],
    }
    assert TURNS[1]["images"] == [IMAGE]  # the history itself is left as it was


def test_images_count_in_the_estimate_and_in_what_fits_the_context():
    estimate = estimate_usage(["abcd"], "", "", images=2)
    assert estimate["prompt_tokens"] == 1 + 2 * IMAGE_TOKENS
    turns = [
        {"role": "user", "content": "old", "images": [IMAGE, IMAGE]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "new"},
    ]
    kept, dropped = fit_history(turns, 2 * IMAGE_TOKENS)
    assert kept == turns[2:] and dropped == 2
    kept, dropped = fit_history(turns, 3 * IMAGE_TOKENS)
    assert kept == turns and dropped == 0
