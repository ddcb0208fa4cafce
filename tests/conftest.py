from __future__ import annotations

from collections.abc import Iterator

import pytest
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.cache import cache
from playwright.sync_api import Browser, Page, sync_playwright

from chat.catalog import CACHE_KEY as MODEL_LIST_KEY
from chat.consumers import ChatConsumer
from tests import live
from tests.browser import CHROMIUM, CHROMIUM_ARGS
from tests.fake_upstream import FakeUpstream

# Tests serve static files from the source tree, whatever collectstatic left behind.
django_settings.STORAGES = {
    **django_settings.STORAGES,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

API_KEY = "xai-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def fresh_channel_layer() -> Iterator[None]:
    """Each test gets its own channel layer: a Redis layer holds locks and connections
    bound to the event loop of the test that made it, and each async test has its own."""
    channel_layers.backends = {}
    yield
    channel_layers.backends = {}


@pytest.fixture(autouse=True)
def no_cached_model_list() -> None:
    """Each test lists the upstream's models afresh: a list another test left in the cache
    would decide which models are offered and which one a send without a model uses."""
    cache.delete(MODEL_LIST_KEY)


@pytest.fixture(autouse=True)
def no_titles(settings) -> None:
    """Conversation titles are off unless a test turns them on (tests/test_titles.py): their
    request would take the replies that other tests queue for their answers."""
    settings.CHAT_TITLES = False


@pytest.fixture(autouse=True)
def fast_password_hashing(settings) -> None:
    """New passwords are hashed with one round of MD5, not a million of PBKDF2: no test
    here measures hashing (tests/test_logins.py sets its own hasher), and every user a test
    makes cost a fifth of a second of CPU. Hashes made otherwise still check."""
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.MD5PasswordHasher",
        *settings.PASSWORD_HASHERS,
    ]


@pytest.fixture(scope="session", autouse=True)
def database_templates(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The live apps' migrated database templates (tests/live.py) live in this session's
    temporary directory."""
    live.TEMPLATE_DIR = tmp_path_factory.getbasetemp() / "database-templates"


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def server(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The loopback upstream alone, for tests of chat.upstream without Django's settings."""
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture
def upstream(fake_upstream_server: FakeUpstream, settings) -> Iterator[FakeUpstream]:
    fake_upstream_server.reset()
    settings.XAI_BASE_URL = fake_upstream_server.base_url
    settings.XAI_API_KEY = API_KEY
    settings.XAI_API_STYLE = "chat_completions"
    settings.UPSTREAM_MAX_RETRIES = 0
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium per test module (the browser tests' modules are sync)."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, fake_upstream_server: FakeUpstream) -> Iterator[Page]:
    fake_upstream_server.reset()
    context = browser.new_context()
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], errors


@pytest.fixture
def alice(django_user_model) -> User:
    return django_user_model.objects.create_user("alice", password="alice-password-1")


@pytest.fixture
def bob(django_user_model) -> User:
    return django_user_model.objects.create_user("bob", password="bob-password-1")


@pytest.fixture
def staff(django_user_model) -> User:
    return django_user_model.objects.create_user(
        "staff", password="staff-password-1", is_staff=True, is_superuser=True
    )


class Socket:
    """A WebsocketCommunicator for one user, with helpers to read frames by type."""

    def __init__(self, user: User) -> None:
        self.comm = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
        self.comm.scope["user"] = user

    async def connect(self) -> Socket:
        connected, _ = await self.comm.connect()
        assert connected
        return self

    async def send(self, **frame) -> None:
        await self.comm.send_json_to(frame)

    async def receive(self, timeout: float = 5) -> dict:
        return await self.comm.receive_json_from(timeout=timeout)

    async def until(self, kind: str, timeout: float = 10) -> tuple[dict, list[dict]]:
        """Frames up to and including the first of `kind`; returns (that frame, all)."""
        seen = []
        while True:
            frame = await self.receive(timeout)
            seen.append(frame)
            if frame["type"] == kind:
                return frame, seen

    async def close(self) -> None:
        await self.comm.disconnect()


@pytest.fixture
def socket_for():
    sockets: list[Socket] = []

    async def make(user: User) -> Socket:
        socket = await Socket(user).connect()
        sockets.append(socket)
        return socket

    return make
