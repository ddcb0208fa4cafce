"""Our middleware of our own: no library logs which user was refused which page, and
channels' origin validators cannot compare an Origin with the request's own."""

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

logger = logging.getLogger(__name__)


class RefusalLogMiddleware:
    """Logs who was refused what: a logged-in user probing other people's ids shows up."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if response.status_code in (403, 404) and user is not None and user.is_authenticated:
            logger.warning(
                "user %s was refused %s %r (%d)",
                user.pk,
                request.method,
                request.path,
                response.status_code,
            )
        return response


# -- websocket origins -------------------------------------------------------------------

Origin = tuple[str, str, int]  # scheme, host name, port
DEFAULT_PORTS = {"http": 80, "https": 443}


class SiteOriginValidator:
    """Lets a websocket through only from the site's own origin (the scheme, host and port
    the request came to, the host one of ALLOWED_HOSTS) or one of CSRF_TRUSTED_ORIGINS, as
    Django's CSRF check does for forms. (Channels' OriginValidator checks a fixed list: it
    cannot know the request's own host and scheme; its AllowedHostsOriginValidator
    compares host names only, so another port or scheme of the same host got in.)"""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.denier = WebsocketDenier.as_asgi()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        headers = {name: value.decode("latin-1") for name, value in scope.get("headers", ())}
        origin = parse_origin(headers.get(b"origin", ""))
        if origin is not None and (origin == own_origin(scope, headers) or trusted(origin)):
            return await self.application(scope, receive, send)
        logger.warning(
            "websocket refused: origin %r for host %r",
            headers.get(b"origin"),
            headers.get(b"host"),
        )
        return await self.denier(scope, receive, send)


def parse_origin(text: str) -> Origin | None:
    """An http(s) origin as (scheme, host, port), default port filled in; None for
    anything else ("null", a path, a bad port...)."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:  # a port out of range or not a number
        return None
    if (
        parts.scheme not in DEFAULT_PORTS
        or not parts.hostname
        or "@" in parts.netloc
        or text.lower() != f"{parts.scheme}://{parts.netloc}".lower()
    ):
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def own_origin(scope: Any, headers: dict[bytes, str]) -> Origin | None:
    """The origin the socket was asked for at: its Host header, if ALLOWED_HOSTS has it,
    and https when the request came over TLS or, with SECURE_PROXY_SSL_HEADER, the proxy
    says it did (as Django's HttpRequest.scheme and get_host())."""
    host = headers.get(b"host", "")
    domain, _ = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    if not domain or not validate_host(domain, allowed):
        return None
    secure = scope.get("scheme") in ("wss", "https")
    if settings.SECURE_PROXY_SSL_HEADER:
        meta_name, secure_value = settings.SECURE_PROXY_SSL_HEADER
        name = meta_name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        if name in headers:
            secure = headers[name].split(",", 1)[0].strip() == secure_value
    return parse_origin(f"{'https' if secure else 'http'}://{host}")


def trusted(origin: Origin) -> bool:
    """Whether CSRF_TRUSTED_ORIGINS has `origin`; "https://*.example.com" stands for
    example.com and every subdomain, as in Django's CSRF check."""
    scheme, host, port = origin
    for pattern in settings.CSRF_TRUSTED_ORIGINS:
        wildcard = "://*" in pattern
        allowed = parse_origin(pattern.replace("://*", "://", 1))
        if allowed is None or allowed[0] != scheme or allowed[2] != port:
            continue
        if is_same_domain(host, allowed[1]) if wildcard else allowed[1] == host:
            return True
    return False
