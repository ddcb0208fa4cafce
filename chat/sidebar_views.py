"""The sidebar's fragments: more conversations (GET /conversations/?before=<cursor>) and
search results (GET /conversations/search/?q=...), each HTML that chat.js puts in place."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render

from chat.finder import MAX_QUERY_CHARS, find_conversations
from chat.sidebar import BadCursor, conversations_page, request_zone


def sidebar_context(request: HttpRequest, cursor: str = "") -> dict:
    """What templates/chat/_conversation_page.html needs (the chat page includes it too)."""
    zone = request_zone(request)
    page = conversations_page(request.user, cursor, zone=zone)
    return {"sidebar_page": page, "sidebar_zone": zone.key}


@login_required
def conversation_page(request: HttpRequest) -> HttpResponse:
    try:
        context = sidebar_context(request, request.GET.get("before", ""))
    except BadCursor:
        return HttpResponseBadRequest(
            "?before= must be a cursor from a Load more button: <digits>.<digits>.",
            content_type="text/plain; charset=utf-8",
        )
    return render(request, "chat/_conversation_page.html", context)


@login_required
def search(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "")[:MAX_QUERY_CHARS]
    hits = find_conversations(request.user, query)
    return render(request, "chat/_search_results.html", {"hits": hits, "query": query})
