from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth import models as auth_models
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.exceptions import NON_FIELD_ERRORS
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from chat.catalog import models_offered
from chat.login_throttle import ThrottledAuthenticationForm
from chat.models import Conversation, Message

logger = logging.getLogger(__name__)
SIDEBAR_LIMIT = 200
MESSAGES_PER_PAGE = 200


def _get_conversation_for_user(request: HttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(Conversation.objects.for_user(request.user), id=conversation_id)


def _chat_page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    conversations = Conversation.objects.for_user(request.user).order_by("-updated_at", "-id")
    messages: list[Message] = []
    earlier = later = False
    if conversation is not None:
        # The newest messages (or those before ?before=<id>): a long conversation's page stays
        # quick, and older turns are a link away.
        rows = conversation.messages.select_related("usage").order_by("-id")
        before = request.GET.get("before", "")
        if before.isdigit():
            rows = rows.filter(id__lt=int(before))
            later = True
        messages = list(rows[: MESSAGES_PER_PAGE + 1])
        earlier = len(messages) > MESSAGES_PER_PAGE
        messages = messages[:MESSAGES_PER_PAGE][::-1]
    context = {
        "conversations": conversations.only("id", "title", "updated_at")[:SIDEBAR_LIMIT],
        "conversation": conversation,
        "messages": messages,
        "earlier": earlier,
        "later": later,
        "models": models_offered(),
        "default_model": settings.CHAT_DEFAULT_MODEL,
        "api_key_configured": bool(settings.XAI_API_KEY),
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    return render(request, "chat/chat.html", context)


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return _chat_page(request, None)


@login_required
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    return _chat_page(request, _get_conversation_for_user(request, conversation_id))


@login_required
@require_POST
def rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation_for_user(request, conversation_id)
    title = " ".join(request.POST.get("title", "").split())[:200]
    if title:
        conversation.title = title
        conversation.save(update_fields=["title"])
    return redirect("conversation", conversation.id)


@login_required
def delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation_for_user(request, conversation_id)
    if request.method == "POST":
        conversation.delete()
        return redirect("index")
    return render(request, "chat/confirm_delete.html", {"conversation": conversation})


class LoginView(auth_views.LoginView):
    # Failed logins are throttled (chat.login_throttle); the form says when it is locked.
    form_class = ThrottledAuthenticationForm

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not get_user_model().objects.exists():
            return redirect("setup")
        return super().dispatch(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if form.has_error(NON_FIELD_ERRORS, "locked"):
            response.status_code = 429
        return response


def setup(request: HttpRequest) -> HttpResponse:
    """First run: create the first admin. Gone once any user exists."""
    User = get_user_model()
    if User.objects.exists():
        return redirect("login")
    # UserCreationForm's model is django.contrib.auth's User, whatever get_user_model() says.
    form: UserCreationForm[auth_models.User] = UserCreationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            if User.objects.select_for_update().exists():
                return redirect("login")
            user = form.save(commit=False)
            user.is_staff = user.is_superuser = True
            user.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect("index")
    return render(request, "chat/setup.html", {"form": form})


async def healthz(request: HttpRequest) -> HttpResponse:
    """200 only when the database and the channel layer both answer (for load balancers)."""
    checks = {
        "database": await sync_to_async(_database_answers)(),
        "channel_layer": await _channel_layer_answers(),
    }
    status = 200 if all(checks.values()) else 503
    return JsonResponse(
        {name: "ok" if ok else "down" for name, ok in checks.items()}, status=status
    )


def _database_answers() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except Exception as exc:
        logger.warning("health check: the database does not answer: %s", exc)
        return False


async def _channel_layer_answers(timeout: float = 2.0) -> bool:
    """A message sent to a fresh channel of the layer comes back."""
    try:
        layer = get_channel_layer()
        if layer is None:
            raise LookupError("no channel layer is configured")
        channel = await layer.new_channel()
        async with asyncio.timeout(timeout):
            await layer.send(channel, {"type": "health.check"})
            return (await layer.receive(channel)).get("type") == "health.check"
    except Exception as exc:
        logger.warning("health check: the channel layer does not answer: %r", exc)
        return False
