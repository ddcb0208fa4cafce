"""Costs in the admin: the ledger newest first with its costs in dollars, and a cost no
price gave said as "—", never as 0.0000."""

from __future__ import annotations

import datetime as dt

import pytest

from chat.models import Usage
from tests.test_reports import at, columns, page_html, report_totals, spend, table, today

pytestmark = pytest.mark.django_db


def ledger_rows(html: str) -> list[dict[str, str]]:
    names = columns(html)
    return [dict(zip(names, cells, strict=True)) for _, cells in table(html, "result_list")]


def test_the_ledger_lists_newest_first_with_costs_in_dollars_and_unpriced_ones_as_a_dash(
    client, staff, alice, bob
):
    yesterday = today() - dt.timedelta(days=1)
    spend(alice, prompt=100, cost_ticks=123_000_000, when=at(yesterday, 9))  # $0.0123
    spend(bob, prompt=200, cost_ticks=None, when=at(today(), 8))  # no price: unpriced
    spend(alice, prompt=300, cost_ticks=15, when=at(yesterday, 10))
    assert Usage.objects.filter(cost_in_usd_ticks__isnull=True).count() == 1
    client.force_login(staff)

    rows = ledger_rows(page_html(client, "/admin/chat/usage/"))

    assert [(r["user"], r["prompt_tokens"]) for r in rows] == [
        ("bob", "200"),
        ("alice", "300"),
        ("alice", "100"),
    ]
    assert [r["cost_usd"] for r in rows] == ["—", "$0.0000000015", "$0.0123"]
    assert rows[0]["cost_source"] == "no price known for this model"


def test_the_usage_report_shows_a_day_of_unpriced_requests_as_a_dash_and_priced_ones_in_usd(
    client, staff, alice, bob
):
    spend(alice, prompt=100, cost_ticks=123_000_000, when=at(today(), 9))
    spend(bob, prompt=200, cost_ticks=None, when=at(today(), 8))
    client.force_login(staff)

    html = page_html(client, "/admin/usage/")

    costs = {r["username"]: r["cost"] for r in ledger_rows(html)}
    assert costs == {"alice": "0.0123", "bob": "—"}
    assert report_totals(html)["cost"] == "0.0123"
    user_page = page_html(client, f"/admin/usage/user/{bob.id}/")
    [(_, cells)] = table(user_page, "user-conversations")
    assert cells[8] == "—"  # the conversation's cost, as in test_reports
