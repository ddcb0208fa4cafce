"""Login throttling: too many failed logins lock a username, and a client address, for a while.

Counters live in Django's cache (per process in memory, shared when REDIS_URL is set).
The backend guards every login form (ours and the admin's); the form only words the
refusal. Settings: LOGIN_MAX_FAILURES and LOGIN_LOCKOUT_SECONDS.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from typing import Any

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest

logger = logging.getLogger(__name__)


def _keys(request: HttpRequest, username: str | None) -> list[str]:
    # Usernames are hashed: any text is a safe cache key, and case variants count together.
    name = hashlib.sha256((username or "").casefold().encode()).hexdigest()[:32]
    address = request.META.get("REMOTE_ADDR") or "unknown"
    return [f"login-failures:user:{name}", f"login-failures:ip:{address}"]


def _enabled() -> bool:
    return settings.LOGIN_MAX_FAILURES > 0 and settings.LOGIN_LOCKOUT_SECONDS > 0


def seconds_locked(request: HttpRequest, username: str | None) -> int:
    """How long logins for this username, or from this address, stay refused (0: not)."""
    if not _enabled():
        return 0
    now = time.time()
    locks = cache.get_many([key + ":locked" for key in _keys(request, username)])
    return max((math.ceil(until - now) for until in locks.values() if until > now), default=0)


def record_failure(request: HttpRequest, username: str | None) -> None:
    if not _enabled():
        return
    window = settings.LOGIN_LOCKOUT_SECONDS
    for key in _keys(request, username):
        cache.add(key, 0, window)
        try:
            failures = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, window)
            failures = 1
        if failures >= settings.LOGIN_MAX_FAILURES:
            cache.set(key + ":locked", time.time() + window, window)
            cache.delete(key)
            logger.warning(
                "login locked for %d s after %d failures: %s (user %r, address %s)",
                window,
                failures,
                key.split(":")[1],
                username,
                request.META.get("REMOTE_ADDR"),
            )


def reset(request: HttpRequest, username: str | None) -> None:
    cache.delete_many(_keys(request, username))


class LoginThrottleBackend(ModelBackend):
    """The model backend, refusing while locked out and counting what fails."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        if request is None:  # no client to throttle (scripts, the shell)
            return super().authenticate(request, username, password, **kwargs)
        if seconds_locked(request, username):
            raise PermissionDenied
        user = super().authenticate(request, username, password, **kwargs)
        if user is None:
            record_failure(request, username)
            # Stop here: the plain ModelBackend after this one would only check again.
            raise PermissionDenied
        reset(request, username)
        return user


def lockout_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"Too many failed attempts. Try again in {minutes} minute{'s' if minutes != 1 else ''}."


class ThrottledAuthenticationForm(AuthenticationForm):
    """Says so when a login was refused because of the lockout, not the password."""

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except ValidationError:
            if self.request is None:
                raise
            seconds = seconds_locked(self.request, self.cleaned_data.get("username"))
            if seconds:
                raise ValidationError(lockout_message(seconds), code="locked") from None
            raise
