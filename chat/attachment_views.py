"""The attachments' HTTP side: upload, and the files served to their owner only
(docs/protocol.md, "Attachments"). Never through whitenoise or a MEDIA_URL: every file
goes through a view that checks who asks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.files.storage import default_storage
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_POST

from chat import attachments
from chat.models import Attachment

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)
# A multipart body's own bytes around the file (boundaries, headers, the CSRF field).
MULTIPART_SLACK = 64 * 1024


async def _user(request: HttpRequest) -> User:
    user = await request.auser()
    assert user.is_authenticated  # login_required
    return user


def _refused(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


@login_required
@require_POST
async def upload(request: HttpRequest) -> HttpResponse:
    """`POST /attachments/` (multipart, field `file`): the new pending attachment as JSON
    {id, url, thumbnail_url, width, height}, or 400 {"error": text}, storing nothing."""
    user = await _user(request)
    limit = settings.CHAT_MAX_IMAGE_BYTES
    too_big = f"That file is too large: the most is {limit / 1048576:g} MiB."
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        return _refused(too_big)  # without parsing the body
    upload = request.FILES.get("file")
    if upload is None:
        return _refused("Choose an image file to upload (the form field 'file').")
    if upload.size is None or upload.size > limit:
        return _refused(too_big)
    data = upload.read()
    try:
        # Decoding is CPU work of up to a second: off the event loop, and off the one
        # thread the database calls share.
        checked = await sync_to_async(attachments.check_image, thread_sensitive=False)(data)
        attachment = await sync_to_async(attachments.store)(user, data, checked)
    except attachments.AttachmentError as exc:
        logger.info("user %s: an upload refused: %s", user.pk, exc.message)
        return _refused(exc.message)
    return JsonResponse(attachments.describe(attachment), status=201)


async def _own(request: HttpRequest, attachment_id: int) -> Attachment:
    """The asker's attachment; 404 for anyone else's, as for one that does not exist."""
    user = await _user(request)
    found = await Attachment.objects.filter(pk=attachment_id, user_id=user.pk).afirst()
    if found is None:
        raise Http404("No such image.")
    return found


async def _file_response(name: str, content_type: str) -> HttpResponse:
    try:
        data = await sync_to_async(_read, thread_sensitive=False)(name)
    except OSError:
        logger.warning("the file of an attachment is gone: %s", name)
        raise Http404("No such image.") from None
    response = HttpResponse(data, content_type=content_type)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Disposition"] = "inline"
    # One id, one content forever; only this user's browser may keep it.
    response["Cache-Control"] = "private, max-age=86400"
    return response


def _read(name: str) -> bytes:
    with default_storage.open(name, "rb") as stored:
        return stored.read()


@login_required
@require_GET
async def image(request: HttpRequest, attachment_id: int) -> HttpResponse:
    """`GET /attachments/<id>/`: the image as uploaded, to its owner only."""
    attachment = await _own(request, attachment_id)
    return await _file_response(attachment.file.name, attachment.content_type)


@login_required
@require_GET
async def thumbnail(request: HttpRequest, attachment_id: int) -> HttpResponse:
    """`GET /attachments/<id>/thumb/`: its thumbnail, to its owner only."""
    attachment = await _own(request, attachment_id)
    return await _file_response(attachment.thumbnail.name, attachment.thumbnail_type)


@login_required
@require_POST
async def remove(request: HttpRequest, attachment_id: int) -> HttpResponse:
    """`POST /attachments/<id>/delete/`: drop a pending upload (the composer's remove
    button); 204. One that a message took stays with it: 404 here."""
    user = await _user(request)
    # One statement: a send taking it at the same moment either wins or finds it gone.
    pending = Attachment.objects.filter(pk=attachment_id, user_id=user.pk, message__isnull=True)
    deleted, _ = await pending.adelete()
    if not deleted:
        raise Http404("No such image waiting to be sent.")
    return HttpResponse(status=204)
