from __future__ import annotations

import asyncio
import json
import logging
import math
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib import messages as django_messages
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import REDIRECT_FIELD_NAME, get_user_model, login
from django.contrib.auth import models as auth_models
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm, UserCreationForm
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseBase,
    JsonResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import reverse, reverse_lazy
from django.views.decorators.http import require_POST

from chat import search, titles
from chat.attachments import images_by_model
from chat.capabilities import api_style, efforts_by_model
from chat.catalog import default_among, is_offered, models_listed
from chat.forms import ConversationSettingsForm, ImportForm, UserSettingsForm
from chat.models import Conversation, Message, SiteSettings, UserSettings
from chat.prompts import conversation_settings
from chat.sidebar_views import sidebar_context
from chat.streams import channel_layer, stop_answers

logger = logging.getLogger(__name__)
MESSAGES_PER_PAGE = 200
# Said next to the disabled Send button when XAI_API_KEY is empty, and nowhere else.
NO_KEY_REASON = "No xAI API key is configured: set XAI_API_KEY and restart the app to send."


def _get_conversation_for_user(request: HttpRequest, conversation_id: int) -> Conversation:
    return get_object_or_404(Conversation.objects.for_user(request.user), id=conversation_id)


class BadPage(ValueError):
    pass


def _messages_context(request: HttpRequest, conversation: Conversation | None) -> dict[str, Any]:
    """The active path's newest messages (or those before ?before=<id>), with what their
    `‹ 2 / 3 ›` controls need: two queries whatever the size of the tree. A long
    conversation's page stays quick, and older turns are a link away."""
    if conversation is None:
        return {"conversation": None, "messages": [], "earlier": False, "later": False}
    tree = conversation.tree()
    path = tree.path()
    later = False
    before = request.GET.get("before", "")
    if before:
        # isdigit() alone passes "²" (int() refuses it) and "١٢" (int() reads 12).
        if not (before.isascii() and before.isdigit()):
            raise BadPage(before)
        try:
            before_id = int(before)
        except ValueError:  # more digits than int() reads
            raise BadPage(before) from None
        # An id not on the active path (any more): the newest page.
        position = path.index(before_id) if before_id in path else len(path)
        path, later = path[:position], True
    shown = path[-MESSAGES_PER_PAGE:]
    rows = (
        conversation.messages.filter(id__in=shown)
        .select_related("usage")
        .defer("output_items")  # what the model gets back, never the page
        .prefetch_related("attachments")
        .order_by()
    )
    by_id = {message.id: message for message in rows}
    messages = [by_id[message_id] for message_id in shown]
    for message in messages:
        siblings = tree.siblings(message.id)
        message.siblings_json = json.dumps(siblings) if len(siblings) > 1 else ""
    return {
        "conversation": conversation,
        "messages": messages,
        "earlier": len(path) > len(shown),
        "later": later,
    }


def _chat_page(request: HttpRequest, conversation: Conversation | None) -> HttpResponse:
    try:
        shown = _messages_context(request, conversation)
    except BadPage:
        return _bad_before()
    picker = _model_picker(conversation)
    style = api_style()
    context = {
        **shown,
        **sidebar_context(request),  # the first page of the sidebar (chat.sidebar)
        **picker,
        "api_key_configured": bool(settings.XAI_API_KEY),
        "no_key_reason": NO_KEY_REASON,
        # Web and X search and the encrypted reasoning sent back need the Responses API.
        "api_style": style,
        "responses_api": style == "responses",
        "max_message_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        **_settings_panel(conversation, picker["models"]),
        **_attach_button(conversation, picker["models"]),
        "search_toggles": _search_toggles(),
    }
    return render(request, "chat/chat.html", context)


def _search_toggles() -> list[dict[str, Any]]:
    """The composer's web and X search toggles: each usable, or why not (chat.search)."""
    site = SiteSettings.current()
    reason = search.unavailable_reason()
    toggles = []
    for key, label, enabled in (
        ("web", "Web search", site.web_search_enabled),
        ("x", "X search", site.x_search_enabled),
    ):
        why = reason or ("" if enabled else f"{label} is turned off on this site by an admin.")
        toggles.append({"key": key, "label": label, "reason": why})
    return toggles


def _bad_before() -> HttpResponse:
    return HttpResponseBadRequest(
        "?before= must be a message id, in the digits 0-9.",
        content_type="text/plain; charset=utf-8",
    )


def _model_picker(conversation: Conversation | None) -> dict[str, Any]:
    """The model picker's context: the models offered, the one preselected (the
    conversation's while it is offered, else the default), and `gone_model`, the
    conversation's model when the upstream's list no longer names it (shown disabled)."""
    listed = models_listed()
    current = conversation.model if conversation else ""
    if current and not is_offered(current, listed):
        offered = listed or []
        return {"models": offered, "selected_model": default_among(listed), "gone_model": current}
    models = listed or [settings.CHAT_DEFAULT_MODEL]
    selected = current or default_among(listed)
    if selected not in models:  # no list was obtained: the conversation's model, as it is
        models = [selected, *models]
    return {"models": models, "selected_model": selected, "gone_model": ""}


def _settings_panel(conversation: Conversation | None, models: list[str]) -> dict[str, Any]:
    """The settings panel's context: its form, its summary, and the efforts each model
    offered accepts (the panel offers effort only for a model that takes one)."""
    values = conversation_settings(conversation) if conversation else None
    return {
        "settings_form": ConversationSettingsForm(initial=values),
        "settings_summary": values["summary"] if values else "Default settings",
        "model_efforts": efforts_by_model(models),
    }


def _attach_button(conversation: Conversation | None, models: list[str]) -> dict[str, Any]:
    """The attach button's context: which models take images, and the limits."""
    offered = [*models, conversation.model] if conversation and conversation.model else models
    return {
        "model_images": images_by_model(offered),
        "max_images": settings.CHAT_MAX_IMAGES,
        "max_image_bytes": settings.CHAT_MAX_IMAGE_BYTES,
    }


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return _chat_page(request, None)


@login_required
def conversation(request: HttpRequest, conversation_id: int) -> HttpResponse:
    return _chat_page(request, _get_conversation_for_user(request, conversation_id))


@login_required
def conversation_messages(request: HttpRequest, conversation_id: int) -> HttpResponse:
    """The messages of the page alone: what a tab shows again after a branch switch."""
    conversation = _get_conversation_for_user(request, conversation_id)
    try:
        context = _messages_context(request, conversation)
    except BadPage:
        return _bad_before()
    return render(request, "chat/_messages.html", context)


class RenameForm(forms.Form):
    # CharField refuses NUL characters, which PostgreSQL cannot store.
    title = forms.CharField(required=False)

    def clean_title(self) -> str:
        return " ".join(self.cleaned_data["title"].split())[:200]


@login_required
@require_POST
def rename(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation_for_user(request, conversation_id)
    form = RenameForm(request.POST)
    if not form.is_valid():
        errors = " ".join(map(str, form.errors["title"]))  # its one field
        return HttpResponseBadRequest(
            f"Not renamed: {errors}", content_type="text/plain; charset=utf-8"
        )
    if title := form.cleaned_data["title"]:
        # The user's title: no generated title replaces it (chat.titles.apply_title).
        conversation.title = title
        conversation.title_source = Conversation.TitleSource.USER
        conversation.save(update_fields=["title", "title_source"])
        # The other tabs follow; robust: the rename stands if the channel layer is down.
        transaction.on_commit(
            partial(titles.announce_from_sync, conversation.user_id, conversation.id, title),
            robust=True,
        )
    return redirect("conversation", conversation.id)


@login_required
@require_POST
def save_settings(request: HttpRequest, conversation_id: int) -> JsonResponse:
    """The settings panel's save: the conversation's settings as saved, with their summary,
    or 400 with each field's errors; applied from its next request on."""
    conversation = _get_conversation_for_user(request, conversation_id)
    form = ConversationSettingsForm(request.POST)
    if not form.is_valid():
        errors = {name: [str(error) for error in errors] for name, errors in form.errors.items()}
        return JsonResponse({"errors": errors}, status=400)
    for name, value in form.cleaned_data.items():
        setattr(conversation, name, value)
    conversation.save(update_fields=list(form.cleaned_data))
    return JsonResponse(conversation_settings(conversation))


@login_required
def user_settings(request: HttpRequest) -> HttpResponse:
    """The user's settings page: their custom instructions, and a link to change their
    password (Django's own view, PasswordChangeView)."""
    user = request.user
    assert user.is_authenticated  # login_required
    instance = UserSettings.objects.filter(user=user).first() or UserSettings(user=user)
    form = UserSettingsForm(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        form.save()
        django_messages.success(request, "Your custom instructions are saved.")
        return redirect("settings")
    return render(request, "chat/settings.html", {"form": form, "import_form": ImportForm()})


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's, which keeps this session logged in (update_session_auth_hash) while the
    user's other sessions, and their chat sockets, are logged out."""

    template_name = "chat/password_change.html"
    success_url = reverse_lazy("settings")

    def form_valid(self, form: Any) -> HttpResponse:
        django_messages.success(
            self.request, "Your password is changed. Your other sessions are logged out."
        )
        return super().form_valid(form)


@login_required
def delete(request: HttpRequest, conversation_id: int) -> HttpResponse:
    conversation = _get_conversation_for_user(request, conversation_id)
    if request.method == "POST":
        streaming = list(
            conversation.messages.filter(state=Message.State.STREAMING).values_list("id", flat=True)
        )
        if streaming:
            # Its answers stop first, wherever they run, and are recorded (and billed, and
            # counted by the limits) as stopped ones are; their ledger rows outlive it.
            async_to_sync(stop_answers)(conversation.id, streaming)
        conversation.delete()
        return redirect("index")
    return render(request, "chat/confirm_delete.html", {"conversation": conversation})


class LoginView(auth_views.LoginView):
    # Failed logins are throttled by django-axes (settings AXES_*, lockout_response below).

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not get_user_model().objects.exists():
            return redirect("setup")
        return super().dispatch(request, *args, **kwargs)


# -- the login throttle's hooks (django-axes calls them by the dotted names in settings) --


def client_address(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")


def login_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str | None:
    """The name failures are counted under: case variants of a name are one account."""
    field = get_user_model().USERNAME_FIELD
    name = credentials.get(field) if credentials else request.POST.get(field)
    return name.casefold() if isinstance(name, str) else None


def lockout_message() -> str:
    minutes = max(1, math.ceil(settings.AXES_COOLOFF_TIME.total_seconds() / 60))
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


class LockedOutForm(AuthenticationForm):
    """Refuses without checking the password: the login page's form while locked out."""

    def clean(self) -> dict[str, Any]:
        raise ValidationError(lockout_message(), code="locked")


class LockedOutAdminForm(AdminAuthenticationForm):
    def clean(self) -> dict[str, Any]:
        raise ValidationError(lockout_message(), code="locked")


def lockout_response(
    request: HttpRequest,
    original_response: HttpResponse | None = None,
    credentials: dict[str, Any] | None = None,
) -> HttpResponseBase:
    """The login form that was posted, refused with the lockout message (429)."""
    match = request.resolver_match
    if match is not None and match.namespace == admin.site.name:
        # As admin.site.login() renders its form, less the password check.
        context: dict[str, Any] = {
            **admin.site.each_context(request),
            "title": "Log in",
            "subtitle": None,
            "app_path": request.get_full_path(),
            "username": request.user.get_username(),
        }
        if REDIRECT_FIELD_NAME not in request.GET and REDIRECT_FIELD_NAME not in request.POST:
            context[REDIRECT_FIELD_NAME] = reverse("admin:index")
        view = auth_views.LoginView.as_view(
            authentication_form=LockedOutAdminForm,
            template_name="admin/login.html",
            extra_context=context,
        )
    else:
        view = auth_views.LoginView.as_view(authentication_form=LockedOutForm)
    response = view(request)
    # axes' middleware runs after the view's template would have been rendered.
    if isinstance(response, TemplateResponse):
        response.render()
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
        layer = channel_layer()
        channel = await layer.new_channel()
        async with asyncio.timeout(timeout):
            await layer.send(channel, {"type": "health.check"})
            return (await layer.receive(channel)).get("type") == "health.check"
    except Exception as exc:
        logger.warning("health check: the channel layer does not answer: %r", exc)
        return False
