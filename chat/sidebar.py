"""The sidebar's conversations: pages of them, newest first (keyset pagination on
(updated_at, id), one query a page however many there are), grouped by date.

Whose "Today": the browser's time zone, which chat.js keeps in the `tz` cookie, because a
day is the user's own (a conversation at 23:00 in Los Angeles is from today there, not from
tomorrow as in UTC); settings.TIME_ZONE without a usable cookie."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest
from django.utils import timezone

from chat.models import Conversation

PAGE_SIZE = 50
TIMEZONE_COOKIE = "tz"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})")


class BadCursor(ValueError):
    pass


@dataclass
class Group:
    key: str  # the same on every page: chat.js joins a page's first group to the last one
    label: str
    conversations: list[Conversation] = field(default_factory=list)


@dataclass
class Page:
    groups: list[Group]
    next_cursor: str  # empty on the last page


def group_key(updated_at: datetime, now: datetime, zone: tzinfo) -> tuple[str, str]:
    """(key, label) of the date group of a conversation last active at `updated_at`, seen
    at `now` in the time zone `zone`: Today, Yesterday, Previous 7 days, Previous 30 days,
    then its month. Calendar days of that zone, not 24-hour periods."""
    today = now.astimezone(zone).date()
    day = updated_at.astimezone(zone).date()
    days = (today - day).days
    if days <= 0:  # a clock a little ahead of ours is still today
        return "today", "Today"
    if days == 1:
        return "yesterday", "Yesterday"
    if days <= 7:
        return "previous-7", "Previous 7 days"
    if days <= 30:
        return "previous-30", "Previous 30 days"
    return f"{day:%Y-%m}", f"{day:%B %Y}"


def group_by_date(conversations: list[Conversation], now: datetime, zone: tzinfo) -> list[Group]:
    """Conversations, newest first, into their date groups, in that order."""
    groups: list[Group] = []
    for conversation in conversations:
        key, label = group_key(conversation.updated_at, now, zone)
        if not groups or groups[-1].key != key:
            groups.append(Group(key, label))
        groups[-1].conversations.append(conversation)
    return groups


def encode_cursor(conversation: Conversation) -> str:
    """Where the next page starts: after this conversation ("<µs since 1970>.<id>")."""
    micros = (conversation.updated_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{conversation.id}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    found = _CURSOR.fullmatch(cursor)
    if not found:
        raise BadCursor(cursor)
    try:
        return _EPOCH + timedelta(microseconds=int(found[1])), int(found[2])
    except OverflowError:  # past the year 9999
        raise BadCursor(cursor) from None


def request_zone(request: HttpRequest) -> ZoneInfo:
    """The browser's time zone from the `tz` cookie, else settings.TIME_ZONE."""
    name = unquote(request.COOKIES.get(TIMEZONE_COOKIE, ""))[:64]
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):  # unknown, or a path like "../x"
            pass
    return ZoneInfo(settings.TIME_ZONE)


def conversations_page(user, cursor: str = "", now: datetime | None = None, zone=None) -> Page:
    """One page of the user's conversations after `cursor` (the first without one): one
    query, using the (user, -updated_at) index. Raises BadCursor for a malformed cursor."""
    rows = Conversation.objects.for_user(user).order_by("-updated_at", "-id")
    if cursor:
        updated_at, conversation_id = decode_cursor(cursor)
        rows = rows.filter(
            Q(updated_at__lt=updated_at) | Q(updated_at=updated_at, id__lt=conversation_id)
        )
    shown = list(rows.only("id", "title", "updated_at")[: PAGE_SIZE + 1])
    more = len(shown) > PAGE_SIZE
    shown = shown[:PAGE_SIZE]
    groups = group_by_date(shown, now or timezone.now(), zone or ZoneInfo(settings.TIME_ZONE))
    return Page(groups, encode_cursor(shown[-1]) if more else "")
