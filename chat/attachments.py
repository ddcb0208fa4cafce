"""Images users attach to their messages (docs/protocol.md, "Attachments").

An upload is decoded in full before anything is stored: only PNG, JPEG, WebP and GIF, by
what the bytes are (never by a name or a declared type), within CHAT_MAX_IMAGE_BYTES and
MAX_PIXELS. It is kept as sent (nothing stripped: the model gets the very bytes), with a
small thumbnail, and for WebP and GIF, which xAI does not take (docs.x.ai, "Image
understanding": jpg/jpeg or png), a PNG copy that is sent instead. It stays pending until
a `send` or `edit` of its owner takes it (chat.services); then it goes upstream with that
message on every later turn (load_images(), chat.upstream's *_turn functions).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from PIL import Image, UnidentifiedImageError

from chat.catalog import accepts_images, listed_input_modalities
from chat.models import Attachment, Message

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

# Pillow's format names of what is accepted, and the type each is stored and served as.
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
# Decoding costs 4 bytes a pixel: 40 million pixels (8000 x 5000) is 160 MB at most. A
# small file that claims more (a decompression bomb) is refused before it is decoded.
MAX_PIXELS = 40_000_000
THUMBNAIL_SIZE = (320, 320)
# xAI's largest image; a PNG copy of a WebP or GIF past it goes as JPEG instead.
UPSTREAM_MAX_BYTES = 20 * 1024 * 1024
# Uploads that no message took within this long are deleted at the user's next upload.
PENDING_KEPT = dt.timedelta(hours=24)


class AttachmentError(Exception):
    """An upload or a send's attachments refused: `code` as in the `error` frame, and a
    message fit to show the user. Nothing was stored or linked."""

    def __init__(self, message: str, code: str = "bad_attachment") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class CheckedImage:
    content_type: str
    width: int  # as shown: after the EXIF orientation, as browsers apply it
    height: int
    thumbnail: bytes
    thumbnail_ext: str  # "png" (transparency) or "jpg"
    converted: bytes | None  # what goes upstream instead, for WebP and GIF
    converted_ext: str = ""


# ---------------------------------------------------------------- checking


def check_image(data: bytes) -> CheckedImage:
    """Decode `data` in full and make its thumbnail (and its PNG copy), or raise
    AttachmentError saying what is wrong. CPU-bound: call it off the event loop."""
    if not data:
        raise AttachmentError("The file is empty.")
    try:
        return _decoded(data)
    except AttachmentError:
        raise
    except UnidentifiedImageError:
        raise AttachmentError("That is not a PNG, JPEG, WebP or GIF image.") from None
    except Image.DecompressionBombError:  # Pillow's own limit, far above MAX_PIXELS
        raise AttachmentError(_too_many_pixels()) from None
    except Exception as exc:  # Pillow raises many kinds on damaged data
        logger.info("an upload failed to decode: %r", exc)
        raise AttachmentError(
            "The image could not be read: it is damaged or not what it claims to be."
        ) from None


def _decoded(data: bytes) -> CheckedImage:
    with Image.open(io.BytesIO(data), formats=list(FORMATS)) as probe:
        image_format = probe.format or ""
        if image_format not in FORMATS:
            raise AttachmentError("That is not a PNG, JPEG, WebP or GIF image.")
        if probe.width * probe.height > MAX_PIXELS:
            raise AttachmentError(_too_many_pixels(probe.width, probe.height))
        probe.verify()  # (checksums, where the format has them: PNG's)
    # verify() leaves the image unusable: open again and decode every pixel (of the first
    # frame), which a truncated or corrupt file fails.
    with Image.open(io.BytesIO(data), formats=[image_format]) as image:
        image.load()
        content_type = FORMATS[image_format]
        converted, converted_ext = None, ""
        if content_type in ("image/webp", "image/gif"):
            converted, converted_ext = _upstream_copy(image)
        thumbnail, thumbnail_ext, width, height = _thumbnail(image)
    return CheckedImage(
        content_type, width, height, thumbnail, thumbnail_ext, converted, converted_ext
    )


def _too_many_pixels(width: int | None = None, height: int | None = None) -> str:
    size = f" ({width} x {height})" if width else ""
    return f"That image has too many pixels{size}; the most is {MAX_PIXELS:,}."


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info


def _upstream_copy(image: Image.Image) -> tuple[bytes, str]:
    """A WebP or GIF (its first frame) as PNG, lossless; as JPEG if that PNG is larger
    than xAI takes and the image has no transparency."""
    frame = image.convert("RGBA" if _has_alpha(image) else "RGB")
    out = io.BytesIO()
    frame.save(out, "PNG", optimize=False)
    if out.tell() <= UPSTREAM_MAX_BYTES or frame.mode == "RGBA":
        return out.getvalue(), "png"
    out = io.BytesIO()
    frame.save(out, "JPEG", quality=95)
    return out.getvalue(), "jpg"


def _thumbnail(image: Image.Image) -> tuple[bytes, str, int, int]:
    """A small copy, turned as its EXIF orientation says; and the image's size as shown."""
    alpha = _has_alpha(image)
    small = image.convert("RGBA" if alpha else "RGB")
    small.thumbnail(THUMBNAIL_SIZE)
    orientation = image.getexif().get(0x0112, 1)  # EXIF "Orientation"
    small = _oriented(small, orientation)
    width, height = image.size
    if orientation in (5, 6, 7, 8):  # turned a quarter: width and height swap
        width, height = height, width
    out = io.BytesIO()
    if alpha:
        small.save(out, "PNG")
        return out.getvalue(), "png", width, height
    small.save(out, "JPEG", quality=85)
    return out.getvalue(), "jpg", width, height


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _oriented(image: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return image if method is None else image.transpose(method)


# ---------------------------------------------------------------- storing


def store(user: User, data: bytes, checked: CheckedImage) -> Attachment:
    """Save a checked upload as the user's pending attachment, or raise AttachmentError
    (their pending uploads are at CHAT_MAX_PENDING_IMAGES) having stored nothing."""
    names: list[str] = []
    try:
        with transaction.atomic():
            # The user's row locked, as chat.limits.lock_user() does for sends (which
            # imports chat.streams, which imports this): two uploads cannot both pass.
            get_user_model().objects.select_for_update().filter(pk=user.pk).first()
            pending = Attachment.objects.filter(user=user, message__isnull=True)
            for stale in pending.filter(created_at__lt=timezone.now() - PENDING_KEPT):
                stale.delete()  # (its files go once this commits)
            if pending.count() >= settings.CHAT_MAX_PENDING_IMAGES:
                raise AttachmentError(
                    f"You have {settings.CHAT_MAX_PENDING_IMAGES} images waiting to be sent, "
                    "the most there may be: send them or remove some first."
                )
            attachment = Attachment(
                user=user,
                content_type=checked.content_type,
                size=len(data),
                width=checked.width,
                height=checked.height,
                sha256=hashlib.sha256(data).hexdigest(),
            )
            stem = uuid.uuid4().hex
            ext = EXTENSIONS[checked.content_type]
            attachment.file.save(f"{stem}.{ext}", ContentFile(data), save=False)
            names.append(attachment.file.name)
            attachment.thumbnail.save(
                f"{stem}-thumb.{checked.thumbnail_ext}", ContentFile(checked.thumbnail), save=False
            )
            names.append(attachment.thumbnail.name)
            if checked.converted is not None:
                attachment.converted.save(
                    f"{stem}-sent.{checked.converted_ext}",
                    ContentFile(checked.converted),
                    save=False,
                )
                names.append(attachment.converted.name)
            attachment.save()
    except BaseException:
        for name in names:  # the row was not saved: neither are its files
            default_storage.delete(name)
        raise
    logger.info(
        "user %s uploaded attachment %s (%s, %d bytes)",
        user.pk,
        attachment.pk,
        attachment.content_type,
        attachment.size,
    )
    return attachment


def describe(attachment: Attachment) -> dict[str, Any]:
    """What the upload's answer and `message.start` say of an attachment."""
    return {
        "id": attachment.pk,
        "url": reverse("attachment", args=[attachment.pk]),
        "thumbnail_url": reverse("attachment_thumbnail", args=[attachment.pk]),
        "width": attachment.width,
        "height": attachment.height,
    }


def described_of(message: Message) -> list[dict[str, Any]]:
    return [describe(a) for a in Attachment.objects.filter(message=message)]


# ---------------------------------------------------------------- sending


def images_allowed(model: str, listed: dict[str, list[str]] | None = None) -> bool:
    """Whether `model` takes images: as the upstream's model list says (xAI's
    `input_modalities`), else if CHAT_IMAGE_MODELS names it or a prefix of it."""
    said = accepts_images(model, listed)
    if said is not None:
        return said
    return any(model.startswith(prefix) for prefix in settings.CHAT_IMAGE_MODELS)


def images_by_model(models: list[str]) -> dict[str, bool]:
    """For the chat page: which models the attach button is offered for (one cache read)."""
    listed = listed_input_modalities()
    return {model: images_allowed(model, listed) for model in models}


def claim(user: User, ids: list[int], model: str, carried: int = 0) -> list[Attachment]:
    """The user's pending attachments `ids`, locked, for a message to `model` that also
    keeps `carried` images of the message it edits; or AttachmentError. Within the send's
    transaction, so that one upload cannot go with two messages."""
    if not ids:
        return []
    if not images_allowed(model):
        raise AttachmentError(
            f"The model {model} does not take images. Choose a model that does, or remove "
            "the images.",
            code="images_not_accepted",
        )
    if len(ids) + carried > settings.CHAT_MAX_IMAGES:
        raise AttachmentError(
            f"A message may have at most {settings.CHAT_MAX_IMAGES} images; this one has "
            f"{len(ids) + carried}."
        )
    rows = {
        row.pk: row for row in Attachment.objects.select_for_update().filter(user=user, id__in=ids)
    }
    for attachment_id in ids:
        row = rows.get(attachment_id)
        if row is None:
            logger.warning("user %s sent attachment %s", user.pk, attachment_id)
            raise AttachmentError(f"No such image: {attachment_id}.")
        if row.message_id is not None:
            raise AttachmentError(f"Image {attachment_id} was sent already; upload it again.")
    return [rows[attachment_id] for attachment_id in ids]


def link(claimed: list[Attachment], edited: int | None, message: Message) -> list[Attachment]:
    """Make `claimed` (and copies of the images of the message `edited`, which share its
    files) `message`'s; all of them, in upload order, as a message's images always are."""
    copies: list[Attachment] = []
    if edited is not None:
        copies = list(Attachment.objects.filter(message_id=edited))
        for copy in copies:
            copy.pk = None
            copy.message = message
        copies = Attachment.objects.bulk_create(copies)
    if claimed:
        Attachment.objects.filter(pk__in=[a.pk for a in claimed]).update(message=message)
        for attachment in claimed:
            attachment.message = message
    return sorted([*copies, *claimed], key=lambda a: (a.created_at, a.pk))


def without_images(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`turns` less their images: for a model that takes none (an earlier message's
    images stay stored, and go again to a model that takes them)."""
    return [{k: v for k, v in turn.items() if k != "images"} for turn in turns]


def load_images(turns: list[dict[str, Any]]) -> None:
    """Read the images the history refers to (Conversation.history: {"type", "file"}) into
    {"type", "data"} (base64), in place. An image whose file is gone (its conversation was
    deleted meanwhile) is left out. File I/O: call it off the event loop."""
    for turn in turns:
        refs = turn.get("images")
        if not refs:
            continue
        loaded = []
        for ref in refs:
            if "data" in ref:
                loaded.append(ref)
                continue
            try:
                with default_storage.open(ref["file"], "rb") as stored:
                    data = stored.read()
            except OSError as exc:
                logger.warning("an image of the history is gone: %s", exc)
                continue
            loaded.append({"type": ref["type"], "data": base64.b64encode(data).decode("ascii")})
        turn["images"] = loaded
