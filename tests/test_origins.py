"""Which pages may open a websocket: the site's own origin (scheme, host and port as the
request came, the host one of ALLOWED_HOSTS) and those of CSRF_TRUSTED_ORIGINS, nothing
else. (Through a real Daphne: tests/test_live_security.py.)"""

from __future__ import annotations

import pytest
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.testing import WebsocketCommunicator

from chat.middleware import SiteOriginValidator

# Consumers (the denier's too) close stale database connections at each event.
pytestmark = pytest.mark.django_db


class Accept(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()


async def opens(origin: str | None, host: str, scheme: str | None = None, **headers: str) -> bool:
    """Whether a socket asked for on `host` from a page at `origin` is let in."""
    sent = [(b"host", host.encode())]
    if origin is not None:
        sent.append((b"origin", origin.encode("latin-1")))
    sent += [(name.encode(), value.encode()) for name, value in headers.items()]
    comm = WebsocketCommunicator(SiteOriginValidator(Accept.as_asgi()), "/ws/chat/", sent)
    if scheme is not None:
        comm.scope["scheme"] = scheme
    connected, _ = await comm.connect(timeout=5)
    await comm.disconnect()
    return connected


@pytest.fixture
def local(settings):
    settings.ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.SECURE_PROXY_SSL_HEADER = None


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:1",
        "http://localhost:9999",
        "https://127.0.0.1",
        "https://127.0.0.1:8000",
        "http://127.0.0.1",
        "http://localhost:8000",  # the same server by another name is another origin
        "ws://127.0.0.1:8000",
        "http://127.0.0.1:8000/",
        "http://user@127.0.0.1:8000",
        "http://127.0.0.1:99999",
        "http://127.0.0.1:x",
        "http://127.0.0.1.evil.example:8000",
        "null",
        "",
        None,
    ],
)
async def test_only_the_sites_own_scheme_host_and_port_open_a_socket(local, origin):
    assert await opens("http://127.0.0.1:8000", "127.0.0.1:8000")
    assert not await opens(origin, "127.0.0.1:8000")


async def test_ipv6_and_default_ports_compare_as_origins_do(local):
    assert await opens("http://[::1]:8000", "[::1]:8000")
    assert not await opens("http://[::1]:8001", "[::1]:8000")
    assert await opens("http://localhost", "localhost:80")
    assert await opens("http://LOCALHOST:8000", "localhost:8000")


async def test_a_host_not_in_allowed_hosts_is_never_the_sites_own(local):
    # DNS rebinding: evil.example resolves to this server; its page and the socket agree.
    assert not await opens("http://evil.example:8000", "evil.example:8000")
    assert not await opens("http://127.0.0.1:8000", "")


async def test_behind_a_tls_proxy_the_forwarded_scheme_counts_once_trusted(local, settings):
    proxied = {"x-forwarded-proto": "https"}
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    # Not trusted yet: a client's own X-Forwarded-Proto changes nothing.
    assert not await opens("https://chat.example.com", "chat.example.com", **proxied)
    assert await opens("http://chat.example.com", "chat.example.com", **proxied)
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert await opens("https://chat.example.com", "chat.example.com", **proxied)
    assert not await opens("http://chat.example.com", "chat.example.com", **proxied)
    assert not await opens("https://chat.example.com:8443", "chat.example.com", **proxied)
    # Without the header the request's own scheme counts, as for Django's pages.
    assert await opens("http://chat.example.com", "chat.example.com")
    assert await opens("https://chat.example.com", "chat.example.com", scheme="wss")


async def test_trusted_origins_are_taken_from_csrf_trusted_origins(local, settings):
    settings.ALLOWED_HOSTS = ["chat.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://chat.example.com", "https://*.example.net:8443"]
    host = "chat.example.com"
    # A proxy that does not say the request came over https: the trusted origin lets it in.
    assert await opens("https://chat.example.com", host)
    assert await opens("https://a.example.net:8443", host)
    assert await opens("https://b.a.example.net:8443", host)
    assert not await opens("https://a.example.net", host)
    assert not await opens("http://a.example.net:8443", host)
    assert not await opens("https://example.net.evil.example:8443", host)
    assert not await opens("https://chat.example.com:444", host)
