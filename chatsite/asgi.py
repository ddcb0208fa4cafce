import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from chat.middleware import SiteOriginValidator  # noqa: E402
from chat.routing import websocket_urlpatterns  # noqa: E402
from chat.streams import on_server_start  # noqa: E402

on_server_start()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SiteOriginValidator(
            # types-channels wants its own type-only pattern class, which path() never returns.
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))  # type: ignore[arg-type]
        ),
    }
)

# Each open socket keeps thousands of objects alive, and with CPython's default thresholds
# (a collection every 700 allocations) the collector took a fifth of the server's CPU and
# paused it for up to 0.3 s at 1,000 streams (docs/benchmarks.md). Collect young objects
# less often, and leave everything loaded at startup out of the collections. Measured again
# with stock libraries (issue 12): without it, 200 streams' first tokens come 35% later.
gc.set_threshold(10_000, 10, 10)
gc.collect()
gc.freeze()
