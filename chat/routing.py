from django.urls import path

from chat.consumers import ChatConsumer

websocket_urlpatterns = [
    # django-stubs' path() takes only Django views; Channels routes ASGI apps with it.
    path("ws/chat/", ChatConsumer.as_asgi()),  # type: ignore[arg-type]
]
