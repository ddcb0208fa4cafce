"""The sidebar's date groups and its pages of conversations (chat.sidebar)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import Conversation
from chat.sidebar import (
    PAGE_SIZE,
    BadCursor,
    decode_cursor,
    encode_cursor,
    group_by_date,
    group_key,
)

NOW = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # a Monday afternoon in UTC
PARIS = ZoneInfo("Europe/Paris")
LOS_ANGELES = ZoneInfo("America/Los_Angeles")


def _label(updated_at: datetime, zone=UTC) -> str:
    return group_key(updated_at, NOW, zone)[1]


def test_the_groups_are_today_yesterday_the_last_7_and_30_days_then_months():
    assert _label(NOW) == "Today"
    assert _label(datetime(2026, 11, 30, 0, 0, tzinfo=UTC)) == "Today"
    assert _label(datetime(2026, 11, 29, 23, 59, tzinfo=UTC)) == "Yesterday"
    assert _label(datetime(2026, 11, 28, 12, tzinfo=UTC)) == "Previous 7 days"
    assert _label(datetime(2026, 11, 23, 0, 1, tzinfo=UTC)) == "Previous 7 days"
    assert _label(datetime(2026, 11, 22, 12, tzinfo=UTC)) == "Previous 30 days"
    assert _label(datetime(2026, 10, 31, 12, tzinfo=UTC)) == "Previous 30 days"
    assert _label(datetime(2026, 10, 30, 12, tzinfo=UTC)) == "October 2026"
    assert _label(datetime(2026, 1, 2, tzinfo=UTC)) == "January 2026"
    assert _label(datetime(2025, 12, 31, tzinfo=UTC)) == "December 2025"
    # A clock a little ahead of the server's: still today, not an error.
    assert _label(NOW + timedelta(minutes=5)) == "Today"


def test_today_is_the_calendar_day_of_the_time_zone_given():
    # 23:30 in Los Angeles on the 29th is 07:30 UTC on the 30th.
    late_evening = datetime(2026, 11, 30, 7, 30, tzinfo=UTC)
    assert _label(late_evening, UTC) == "Today"
    assert _label(late_evening, LOS_ANGELES) == "Yesterday"
    # 00:30 in Paris on the 30th is 23:30 UTC on the 29th.
    after_midnight = datetime(2026, 11, 29, 23, 30, tzinfo=UTC)
    assert _label(after_midnight, UTC) == "Yesterday"
    assert _label(after_midnight, PARIS) == "Today"
    # A month in the time zone too: 1 November 00:30 in Paris is still October in UTC.
    first_of_november = datetime(2026, 10, 31, 23, 30, tzinfo=UTC)
    assert group_key(first_of_november, NOW + timedelta(days=60), PARIS)[1] == "November 2026"


def test_conversations_newest_first_fall_into_groups_in_order():
    stamps = [NOW, NOW - timedelta(hours=2), NOW - timedelta(days=1), NOW - timedelta(days=40)]
    conversations = [Conversation(id=i, updated_at=t) for i, t in enumerate(stamps)]
    groups = group_by_date(conversations, NOW, UTC)
    assert [(g.key, g.label, [c.id for c in g.conversations]) for g in groups] == [
        ("today", "Today", [0, 1]),
        ("yesterday", "Yesterday", [2]),
        ("2026-10", "October 2026", [3]),
    ]
    assert group_by_date([], NOW, UTC) == []


def test_a_cursor_round_trips_to_the_microsecond_and_refuses_anything_else():
    conversation = Conversation(id=42, updated_at=datetime(2026, 11, 30, 1, 2, 3, 456789, UTC))
    cursor = encode_cursor(conversation)
    assert re.fullmatch(r"\d+\.42", cursor)
    assert decode_cursor(cursor) == (conversation.updated_at, 42)
    for bad in [
        "",
        "1",
        "1.",
        ".1",
        "1.2.3",
        "-1.2",
        "1.2 ",
        "１.２",
        "1" * 19 + ".1",
        "a.b",
        "9" * 18 + ".1",
    ]:
        with pytest.raises(BadCursor):
            decode_cursor(bad)


def _conversations(user, count: int, start: datetime | None = None) -> list[Conversation]:
    """`count` conversations an hour apart, the newest at `start`; several share a time."""
    start = start or datetime.now(UTC)
    rows = [
        Conversation(user=user, title=f"Chat {i}", updated_at=start - timedelta(hours=i // 2))
        for i in range(count)
    ]
    return Conversation.objects.bulk_create(rows)


def _sidebar_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li data-conversation-id="(\d+)"', html)]


def _next_url(html: str) -> str:
    found = re.search(r'class="load-more" data-url="([^"]+)"', html)
    return found[1].replace("&amp;", "&") if found else ""


@pytest.mark.django_db
def test_every_conversation_is_reached_page_by_page_newest_first_and_only_once(client, alice, bob):
    _conversations(alice, 2 * PAGE_SIZE + 7)
    _conversations(bob, 5)
    client.force_login(alice)
    page = client.get("/").content.decode()
    seen = _sidebar_ids(page)
    assert len(seen) == PAGE_SIZE
    url = _next_url(page)
    while url:
        response = client.get(url)
        assert response.status_code == 200
        html = response.content.decode()
        seen += _sidebar_ids(html)
        url = _next_url(html)
    expected = list(
        Conversation.objects.filter(user=alice)
        .order_by("-updated_at", "-id")
        .values_list("id", flat=True)
    )
    assert seen == expected  # every one of alice's, in order, none twice, none of bob's


@pytest.mark.django_db
def test_a_sidebar_page_costs_the_same_queries_with_60_or_600_conversations(client, alice):
    client.force_login(alice)

    def queries_for_second_page() -> int:
        url = _next_url(client.get("/conversations/").content.decode())
        assert url
        with CaptureQueriesContext(connection) as captured:
            assert client.get(url).status_code == 200
        return len(captured)

    _conversations(alice, 60)
    small = queries_for_second_page()
    _conversations(alice, 540, start=datetime.now(UTC) - timedelta(days=400))
    large = queries_for_second_page()
    assert small == large
    # The chat page too, whatever the number of conversations behind its first page.
    with CaptureQueriesContext(connection) as captured:
        assert client.get("/").status_code == 200
    Conversation.objects.filter(user=alice).delete()
    _conversations(alice, 60)
    with CaptureQueriesContext(connection) as again:
        client.get("/")
    assert len(captured) == len(again)


@pytest.mark.django_db
def test_the_groups_follow_the_browsers_time_zone_cookie(client, alice):
    now = datetime.now(UTC)
    Conversation.objects.create(user=alice, title="Hi", updated_at=now)
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert 'data-timezone="UTC"' in html and ">Today</h2>" in html
    client.cookies["tz"] = "America%2FLos_Angeles"
    html = client.get("/").content.decode()
    assert 'data-timezone="America/Los_Angeles"' in html
    for bad in ["Nowhere/Atlantis", "..%2F..%2Fetc%2Fpasswd", "%00", "x" * 500]:
        client.cookies["tz"] = bad
        response = client.get("/conversations/")
        assert response.status_code == 200  # the server's time zone instead
        assert ">Today</h2>" in response.content.decode()


@pytest.mark.django_db
def test_a_malformed_cursor_is_a_clear_400(client, alice):
    client.force_login(alice)
    for bad in ["x", "1.2.3", "-5.1", "%00", "9" * 40 + ".1"]:
        response = client.get("/conversations/", {"before": bad})
        assert response.status_code == 400
        assert "?before= must be a cursor" in response.content.decode()


@pytest.mark.django_db
def test_the_sidebar_pages_require_login(client, alice):
    for url in ["/conversations/", "/conversations/search/?q=x"]:
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
