"""Downloads of conversations (Markdown, JSON, all as one JSON) and the import of a file
of them (chat.exports, docs/export-format.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages as django_messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.http import content_disposition_header
from django.utils.text import slugify
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from chat import exports
from chat.forms import ImportForm, UserSettingsForm
from chat.models import Conversation, UserSettings
from chat.views import _get_conversation_for_user


def _filename(conversation: Conversation, extension: str) -> str:
    """A name any file system takes: the id and the title's first words in ASCII."""
    words = slugify(conversation.title)[:60].strip("-") or "conversation"
    return f"grokchat-{conversation.id}-{words}.{extension}"


def _attachment(response: HttpResponse | StreamingHttpResponse, filename: str) -> None:
    response.headers["Content-Disposition"] = content_disposition_header(True, filename) or ""
    response.headers["Cache-Control"] = "private, no-store"


@login_required
def export_markdown(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation_for_user(request, conversation_id)
    response = HttpResponse(
        exports.conversation_markdown(conversation), content_type="text/markdown; charset=utf-8"
    )
    _attachment(response, _filename(conversation, "md"))
    return response


@login_required
def export_json(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation_for_user(request, conversation_id)
    response = HttpResponse(
        exports.conversation_json(conversation), content_type="application/json; charset=utf-8"
    )
    _attachment(response, _filename(conversation, "json"))
    return response


async def _each(pieces: Iterator[str]) -> AsyncIterator[str]:
    # Django's ASGI handler would read a sync iterator whole into memory before sending
    # it; an async one is sent piece by piece (a batch of conversations at a time).
    step = sync_to_async(_next_of, thread_sensitive=True)
    while (piece := await step(pieces)) is not None:
        yield piece


def _next_of(pieces: Iterator[str]) -> str | None:
    return next(pieces, None)


@login_required
def export_all(request: HttpRequest) -> StreamingHttpResponse:
    """All of the user's conversations as one JSON document, streamed in batches."""
    user = request.user
    response = StreamingHttpResponse(
        _each(exports.all_conversations_json(user)),
        content_type="application/json; charset=utf-8",
    )
    name = slugify(user.get_username())[:40] or "user"
    _attachment(response, f"grokchat-{name}-{timezone.localdate():%Y-%m-%d}.json")
    return response


@csrf_exempt  # checked by import_conversations, once the size is known to be allowed
@login_required
@require_POST
def import_view(request: HttpRequest) -> HttpResponse:
    """POST /import/: a body larger than the import limit (and a form's worth) is refused
    from its Content-Length, before the CSRF check or anything else reads it."""
    length = request.META.get("CONTENT_LENGTH") or ""
    if length.isascii() and length.isdigit() and int(length) > _largest_body():
        response = HttpResponse(
            f"Not imported: the file is too large; the most this site imports is "
            f"{settings.CHAT_IMPORT_MAX_BYTES:,} bytes.",
            status=413,
            content_type="text/plain; charset=utf-8",
        )
        response.headers["Connection"] = "close"
        return response
    return import_conversations(request)


def _largest_body() -> int:
    return settings.CHAT_IMPORT_MAX_BYTES + 64 * 1024  # the form's other fields and framing


@csrf_protect
def import_conversations(request: HttpRequest) -> HttpResponse:
    form = ImportForm(request.POST, request.FILES)
    if form.is_valid():
        try:
            imported = exports.import_file(request.user, form.cleaned_data["file"].read())
        except exports.BadImport as exc:
            form.add_error("file", f"Not imported: {exc} Nothing was changed.")
        else:
            if len(imported) == 1:
                return redirect("conversation", imported[0].id)
            source = exports.SOURCE_NAMES[imported[0].imported_from]
            django_messages.success(
                request,
                f"Imported {len(imported):,} conversations from {source}. They are in the "
                "sidebar, by the dates they had, marked as imported.",
            )
            return redirect("settings")
    user = request.user
    assert user.is_authenticated  # import_view's login_required
    instance = UserSettings.objects.filter(user=user).first() or UserSettings(user=user)
    context = {"form": UserSettingsForm(instance=instance), "import_form": form}
    return render(request, "chat/settings.html", context, status=400)
