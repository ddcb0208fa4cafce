"""The user's colour theme (system, light or dark): the header's toggle, its form and view,
and the context processor that renders <html data-theme="..."> so that a reload shows the
theme at once, before any script runs."""

from __future__ import annotations

from functools import cached_property
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import redirect
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from chat.models import UserSettings

Theme = UserSettings.Theme

# The media of the two code-highlighting stylesheets (highlight.js's github and
# github-dark) per theme: "not all" turns one off. static/js/theme.js has the same table.
CODE_STYLE_MEDIA: dict[str, tuple[str, str]] = {
    Theme.SYSTEM: ("not all and (prefers-color-scheme: dark)", "(prefers-color-scheme: dark)"),
    Theme.LIGHT: ("all", "not all"),
    Theme.DARK: ("not all", "all"),
}


class ThemeForm(forms.Form):
    theme = forms.ChoiceField(choices=Theme.choices, label="Theme")


class PageTheme:
    """What base.html needs of the theme, read from the database only when a page uses it
    (admin pages and JSON views never do)."""

    def __init__(self, request: HttpRequest) -> None:
        self.request = request

    @cached_property
    def value(self) -> str:
        user = getattr(self.request, "user", None)
        if user is None or not user.is_authenticated:
            return Theme.SYSTEM
        saved = UserSettings.objects.filter(user=user).values_list("theme", flat=True).first()
        return saved if saved in CODE_STYLE_MEDIA else Theme.SYSTEM

    @property
    def light_media(self) -> str:
        return CODE_STYLE_MEDIA[self.value][0]

    @property
    def dark_media(self) -> str:
        return CODE_STYLE_MEDIA[self.value][1]

    @property
    def form(self) -> ThemeForm:
        return ThemeForm(initial={"theme": self.value}, auto_id="%s-select")

    def __str__(self) -> str:
        return self.value


def theme(request: HttpRequest) -> dict[str, Any]:
    """Context processor (chatsite/settings.py): `theme`, a PageTheme."""
    return {"theme": PageTheme(request)}


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


@login_required
@require_POST
def save_theme(request: HttpRequest) -> HttpResponse:
    """POST /settings/theme/: the header's toggle. static/js/theme.js posts it with
    `Accept: application/json`; without script the form posts and comes back to `next`."""
    form = ThemeForm(request.POST)
    if not form.is_valid():
        error = "Choose a theme: system, light or dark."
        if _wants_json(request):
            return JsonResponse({"error": error}, status=400)
        return HttpResponseBadRequest(error, content_type="text/plain; charset=utf-8")
    value = form.cleaned_data["theme"]
    UserSettings.objects.update_or_create(user=request.user, defaults={"theme": value})
    if _wants_json(request):
        return JsonResponse({"theme": value})
    next_url = request.POST.get("next", "")
    safe = url_has_allowed_host_and_scheme(
        next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    )
    return redirect(next_url if safe else "index")
