"""Our one middleware of our own: no library logs which user was refused which page."""

import logging
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

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
