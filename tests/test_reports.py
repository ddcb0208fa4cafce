"""The admin usage report, its drill-down and CSV, and each user's own Usage page."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import billing, reports
from chat.models import USAGE_SUMS, Budget, Conversation, Message, Usage, UsageDay

pytestmark = pytest.mark.django_db

NUMERIC = slice(3, None)  # the report's columns after day, user and model


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def at(day: dt.date, hour: int = 12) -> dt.datetime:
    return timezone.make_aware(dt.datetime.combine(day, dt.time(hour)))


def today() -> dt.date:
    return timezone.localdate()


def spend(
    user: User,
    *,
    prompt: int = 0,
    completion: int = 0,
    reasoning: int = 0,
    cached: int = 0,
    cost_ticks: int | None = None,
    model: str = "grok-4",
    when: dt.datetime | None = None,
    source: str = "reported",
    outcome: str = "complete",
    conversation: Conversation | None = None,
) -> Usage:
    """One answer's end as the app records it: Message.finish writes the ledger row and
    adds it to the daily totals."""
    conversation = conversation or Conversation.objects.create(user=user, title="Chat")
    answer = Message.objects.create(
        conversation=conversation, role="assistant", state="streaming", model=model
    )
    usage: dict[str, Any] = {
        "source": source,
        "requested_model": model,
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "completion_tokens": completion,
        "reasoning_tokens": reasoning,
        "total_tokens": prompt + completion + reasoning,
        "reported_cost_ticks": cost_ticks,
    }
    if when is not None:
        usage["created_at"] = when
    return answer.finish(user_id=user.id, usage=usage, state=outcome)


class _Table(HTMLParser):
    """The rows of one <table id=...>: (section, tr attributes, cell texts)."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.depth = 0
        self.section = ""
        self.rows: list[tuple[str, dict[str, str], list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "table":
            if self.depth or found.get("id") == self.table_id:
                self.depth += 1
        elif self.depth and tag in ("thead", "tbody", "tfoot"):
            self.section = tag
        elif self.depth and tag == "tr":
            self.rows.append((self.section, found, []))
        elif self.depth and tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if not self.depth:
            return
        if tag == "table":
            self.depth -= 1
        elif tag in ("td", "th") and self.cell is not None:
            self.rows[-1][2].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table(
    html: str, table_id: str, section: str = "tbody"
) -> list[tuple[dict[str, str], list[str]]]:
    parser = _Table(table_id)
    parser.feed(html)
    assert parser.rows, f"no table #{table_id}"
    return [(attrs, cells) for sec, attrs, cells in parser.rows if sec == section]


def data_rows(html: str) -> list[list[str]]:
    """The rows of the report's changelist (which shows no table when there are none)."""
    if 'id="result_list"' not in html:
        assert "0 usage days" in html
        return []
    return [cells for _, cells in table(html, "result_list")]


def columns(html: str) -> list[str]:
    """The changelist's column names, in order."""
    start = html.index('id="result_list"')
    head = html[start : html.index("</thead>", start)]
    return re.findall(r'<th scope="col" class="[^"]*column-(\w+)', head)


def report_totals(html: str) -> dict[str, str]:
    """The totals row under the per-user table, by column."""
    row = re.search(r'<tr id="usage-totals">(.*?)</tr>', html, re.S).group(1)
    return dict(re.findall(r'<td class="num (\w+)">([^<]*)</td>', row))


def page_html(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return response.content.decode()


def read_csv(client, url: str) -> tuple[Any, list[list[str]]]:
    response = client.get(url)
    assert response.status_code == 200
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    return response, rows


@pytest.fixture
def carol(django_user_model) -> User:
    return django_user_model.objects.create_user("carol", password="carol-password-1")


@pytest.fixture
def ledger(alice, bob, carol) -> list[Usage]:
    """Requests of three users over three days and two models, with reported costs."""
    start = today() - dt.timedelta(days=5)
    plan = [
        (alice, 0, "grok-4", 100, 40, 10, 30, 1_234_567),
        (alice, 0, "grok-4", 50, 5, 0, 0, 99_000),
        (alice, 2, "grok-3-mini", 300, 60, 25, 100, 2_000_001),
        (bob, 0, "grok-4", 7, 3, 1, 0, 30_000),
        (bob, 4, "grok-3-mini", 900, 100, 0, 500, 12_500_000),
        (carol, 4, "grok-4", 20, 20, 20, 0, None),
    ]
    rows = []
    for user, offset, model, prompt, completion, reasoning, cached, cost in plan:
        rows.append(
            spend(
                user,
                prompt=prompt,
                completion=completion,
                reasoning=reasoning,
                cached=cached,
                cost_ticks=cost,
                model=model,
                when=at(start + dt.timedelta(days=offset)),
            )
        )
    return rows


# ------------------------------------------------------------------ the admin report


def test_non_staff_are_sent_to_the_admin_login(client, alice, ledger):
    client.force_login(alice)
    for url in [
        "/admin/usage/",
        "/admin/usage/?format=csv",
        "/admin/chat/usageday/",
        f"/admin/usage/user/{alice.id}/",
    ]:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url


def test_the_admin_index_links_to_the_report(client, staff):
    client.force_login(staff)
    html = page_html(client, "/admin/")
    assert re.search(r'<a href="/admin/usage/">Usage report</a>', html)


def test_the_counter_fields_are_the_token_counters():
    for model in (Usage, UsageDay):
        fields = [f.name for f in model._meta.get_fields() if f.name.endswith("_tokens")]
        assert tuple(fields) == billing.TOKEN_FIELDS, model
    assert [c.field for c in billing.TOKEN_COUNTERS] == list(billing.TOKEN_FIELDS)
    # The report's columns, the CSV's and the rollup's sums follow them, in their order.
    assert USAGE_SUMS[4:-1] == billing.TOKEN_FIELDS
    assert [name for name, _ in reports.COLUMNS[3:-2]] == list(billing.TOKEN_FIELDS)
    report = admin.site.get_model_admin(UsageDay)
    # Then the cost, the title columns and the tool calls.
    assert report.csv_header[7:-6] == billing.TOKEN_FIELDS


def test_the_totals_equal_the_sum_of_the_rows_and_of_what_was_spent(client, staff, ledger):
    client.force_login(staff)
    html = page_html(client, "/admin/usage/")
    names = columns(html)
    rows = [dict(zip(names, cells, strict=True)) for cells in data_rows(html)]
    # One row per user, model and day.
    keys = {(r.user.username, r.model, timezone.localdate(r.created_at)) for r in ledger}
    assert {(r["username"], r["model"], dt.date.fromisoformat(r["date"])) for r in rows} == keys
    totals = report_totals(html)
    for name in ("requests", "errors", "estimated", *billing.TOKEN_FIELDS):
        assert sum(int(row[name]) for row in rows) == int(totals[name]), name
    assert sum(money_value(row["cost"]) for row in rows) == Decimal(totals["cost"])
    # ...and both are what the ledger recorded.
    for name in billing.TOKEN_FIELDS:
        assert int(totals[name]) == sum(getattr(r, name) for r in ledger), name
    assert int(totals["requests"]) == len(ledger)
    assert sum(int(row["unpriced"]) for row in rows) == sum(
        1 for r in ledger if r.cost_in_usd_ticks is None
    )
    expected_cost = billing.ticks_to_usd(sum(r.cost_in_usd_ticks or 0 for r in ledger))
    assert Decimal(totals["cost"]) == expected_cost
    assert f'id="usage-total-tokens">{sum(r.total_tokens for r in ledger)}<' in html
    # The per-user table adds up to the same totals.
    users = {attrs["data-username"]: cells for attrs, cells in table(html, "usage-users")}
    assert set(users) == {"alice", "bob", "carol"}
    for name, cells in users.items():
        assert int(cells[8]) == sum(r.total_tokens for r in ledger if r.user.username == name)
    assert sum(int(cells[8]) for cells in users.values()) == int(totals["total_tokens"])


def test_costs_are_shown_exactly_with_at_least_four_decimals():
    assert reports.usd(0) == "0.0000"
    assert reports.usd(1) == "0.0000000001"
    assert reports.usd(12_345) == "0.0000012345"
    assert reports.usd(15 * 10**9) == "1.5000"
    assert reports.usd(123_456_789_012_345) == "12345.6789012345"
    assert reports.usd(None) == ""


def test_the_report_filters_by_period_user_and_model(client, staff, alice, bob, ledger):
    client.force_login(staff)

    def shown(query: str) -> set[tuple[str, str, str]]:
        return {(c[0], c[1], c[2]) for c in data_rows(page_html(client, "/admin/usage/" + query))}

    def expected(keep) -> set[tuple[str, str, str]]:
        return {
            (timezone.localdate(r.created_at).isoformat(), r.user.username, r.model)
            for r in ledger
            if keep(r)
        }

    def day(r: Usage) -> dt.date:
        return timezone.localdate(r.created_at)

    first, middle, last = sorted({day(r) for r in ledger})
    assert shown(f"?day__gte={middle}&day__lte={middle}") == expected(lambda r: day(r) == middle)
    assert shown(f"?day__gte={first}&day__lte={middle}") == expected(lambda r: day(r) <= middle)
    hierarchy = f"?day__year={last.year}&day__month={last.month}&day__day={last.day}"
    assert shown(hierarchy) == expected(lambda r: day(r) == last)
    assert shown(f"?user__id__exact={bob.id}") == expected(lambda r: r.user_id == bob.id)
    assert shown("?model=grok-3-mini") == expected(lambda r: r.model == "grok-3-mini")
    assert shown(f"?user__id__exact={alice.id}&model=grok-4") == expected(
        lambda r: r.user_id == alice.id and r.model == "grok-4"
    )
    # The filters offer the users and the models.
    html = page_html(client, "/admin/usage/")
    assert f'href="?user__id__exact={alice.id}"' in html and 'href="?model=grok-3-mini"' in html
    html = page_html(client, f"/admin/usage/?user__id__exact={bob.id}")
    # The totals and the per-user table follow the filter.
    assert int(report_totals(html)["total_tokens"]) == sum(
        r.total_tokens for r in ledger if r.user_id == bob.id
    )
    assert [a["data-username"] for a, _ in table(html, "usage-users")] == ["bob"]
    # Nothing in the period.
    empty = page_html(client, "/admin/usage/?day__gte=2001-01-01&day__lte=2001-01-31")
    assert data_rows(empty) == [] and "No requests in this period." in empty
    assert report_totals(empty)["total_tokens"] == "0"


def test_the_default_period_is_the_last_30_days(client, staff, alice):
    spend(alice, prompt=1, when=at(today() - dt.timedelta(days=29)))
    spend(alice, prompt=2, when=at(today() - dt.timedelta(days=30)))
    spend(alice, prompt=4, when=at(today() - dt.timedelta(days=400)))
    client.force_login(staff)
    html = page_html(client, "/admin/usage/")
    assert [c[0] for c in data_rows(html)] == [(today() - dt.timedelta(days=29)).isoformat()]
    assert f"{today() - dt.timedelta(days=29)} to {today()}" in html
    assert len(data_rows(page_html(client, "/admin/usage/?period=90"))) == 2
    assert len(data_rows(page_html(client, "/admin/usage/?period=all"))) == 3
    # Days picked otherwise replace the default.
    old = today() - dt.timedelta(days=400)
    assert [c[0] for c in data_rows(page_html(client, f"/admin/usage/?day__lte={old}"))] == [
        old.isoformat()
    ]


def test_an_unknown_filter_is_refused_by_the_changelist(client, staff, ledger):
    client.force_login(staff)
    response = client.get("/admin/usage/?start=2025-13-40")
    assert response.status_code == 302 and response["Location"] == "/admin/usage/?e=1"
    assert client.get("/admin/usage/?e=1").status_code == 200


def money_value(text: str) -> Decimal:
    """A cost cell's amount: "—" (unpriced requests only) counts as nothing."""
    return Decimal(0) if text == reports.UNPRICED else Decimal(text)


def sort_link(html: str, label: str) -> str:
    """The query of the link that sorts by the column headed `label` (first click)."""
    return re.search(rf'<div class="text"><a href="\?(o=[^"]+)">{label}</a>', html).group(1)


@pytest.mark.parametrize(
    "label, column, numeric",
    [
        ("Total", 11, True),
        ("Cost \\(USD\\)", 12, "money"),
        ("Prompt", 7, True),
        ("User", 1, False),
        ("Model", 2, False),
        ("Day", 0, False),
    ],
)
def test_the_report_sorts_by_a_column_either_way(client, staff, ledger, label, column, numeric):
    client.force_login(staff)
    html = page_html(client, "/admin/usage/")
    key = {True: int, "money": money_value, False: str}[numeric]
    query = sort_link(html, label)
    orders = []
    for _ in range(2):  # the sorted column's header links to the other direction
        sorted_html = page_html(client, "/admin/usage/?" + query)
        values = [key(cells[column]) for cells in data_rows(sorted_html)]
        assert len(set(values)) > 1  # the order is visible
        orders.append(values)
        query = sort_link(sorted_html, label)
    first, second = orders
    ascending = first == sorted(first)
    assert first == sorted(first, reverse=not ascending)
    assert second == sorted(second, reverse=ascending)


def test_the_default_sort_is_newest_day_first_then_user(client, staff, ledger):
    client.force_login(staff)
    rows = data_rows(page_html(client, "/admin/usage/"))
    keys = [(c[0], c[1], c[2]) for c in rows]
    expected = sorted(keys, key=lambda k: (k[1], k[2]))
    expected.sort(key=lambda k: k[0], reverse=True)
    assert keys == expected


def test_the_rows_come_in_pages_and_the_totals_cover_every_page(client, staff, ledger, monkeypatch):
    monkeypatch.setattr(admin.site.get_model_admin(UsageDay), "list_per_page", 2)
    client.force_login(staff)
    by_total = sort_link(page_html(client, "/admin/usage/"), "Total")
    first = page_html(client, f"/admin/usage/?{by_total}")
    pages = [data_rows(first)]
    for number in (2, 3):
        pages.append(data_rows(page_html(client, f"/admin/usage/?{by_total}&p={number}")))
    assert [len(p) for p in pages] == [2, 2, 1]
    everything = [row for page in pages for row in page]
    totals = [int(c[11]) for c in everything]
    assert totals in (sorted(totals), sorted(totals, reverse=True))  # the sort holds
    # Every page shows the totals of the whole filter.
    assert int(report_totals(first)["total_tokens"]) == sum(totals)
    assert sum(totals) == sum(r.total_tokens for r in ledger)
    assert "Download CSV (all 5 rows)" in first
    # The page links keep the sort.
    assert f'href="?{by_total.replace("&", "&amp;")}&amp;p=2"' in first


def test_the_csv_holds_the_table_every_row_in_the_same_order(client, staff, ledger, monkeypatch):
    client.force_login(staff)
    by_prompt = sort_link(page_html(client, "/admin/usage/"), "Prompt")
    query = f"?{by_prompt}&model=grok-4"
    html = page_html(client, "/admin/usage/" + query)
    shown = data_rows(html)
    csv_url = re.search(r'id="usage-csv" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    response, rows = read_csv(client, "/admin/usage/" + csv_url)
    assert response["Content-Type"].startswith("text/csv")
    start = today() - dt.timedelta(days=29)
    assert response["Content-Disposition"] == (
        f'attachment; filename="usage-{start.isoformat()}-to-{today().isoformat()}.csv"'
    )
    header, body = rows[0], rows[1:]
    assert header[:3] == ["day", "user__username", "model"]
    assert header[-6:-3] == ["cost_usd", "title_requests", "title_cost_usd"]
    assert header[-3:] == ["tool_calls", "web_search_calls", "x_search_calls"]
    # The CSV's numbers add up: a day of unpriced requests only is 0.0000 there, "—" shown.
    assert body == [
        [("0.0000" if cell == reports.UNPRICED else cell) for cell in row] for row in shown
    ]
    # Numbers are plain integers and the costs decimal strings.
    for row in body:
        assert all(re.fullmatch(r"\d+", value) for value in [*row[3:-6], row[-5], *row[-3:]])
        assert re.fullmatch(r"\d+\.\d{4,}", row[-6]) and re.fullmatch(r"\d+\.\d{4,}", row[-4])
    # With pages, the CSV still has every row of the filter, in the table's order.
    monkeypatch.setattr(admin.site.get_model_admin(UsageDay), "list_per_page", 1)
    by_user = sort_link(page_html(client, "/admin/usage/"), "User")
    page_two = page_html(client, f"/admin/usage/?{by_user}&p=2")
    _, every = read_csv(client, f"/admin/usage/?{by_user}&format=csv&p=2")
    assert "Download CSV (all 5 rows)" in page_two
    assert len(data_rows(page_two)) == 1 and every[2] == data_rows(page_two)[0]
    days = {(r.user_id, r.model, timezone.localdate(r.created_at)) for r in ledger}
    assert len(every) - 1 == len(days)
    users = [row[1] for row in every[1:]]
    assert users in (sorted(users), sorted(users, reverse=True)) and len(set(users)) > 1


def test_the_csv_period_is_in_its_file_name(client, staff, ledger):
    client.force_login(staff)
    response = client.get("/admin/usage/?day__gte=2024-02-01&day__lte=2024-02-29&format=csv")
    assert 'filename="usage-2024-02-01-to-2024-02-29.csv"' in response["Content-Disposition"]
    assert list(csv.reader(io.StringIO(response.content.decode())))[1:] == []


@pytest.mark.parametrize("name", ["=HYPERLINK(1)", "+cmd", "-2+3", "@SUM(A1)", "\tx"])
def test_csv_cells_never_start_a_formula(client, staff, django_user_model, name):
    mallory = django_user_model.objects.create_user(name, password="x-password-1")
    spend(mallory, prompt=5, model="=cmd|' /C calc'!A0")
    client.force_login(staff)
    _, rows = read_csv(client, "/admin/usage/?format=csv")
    [row] = rows[1:]
    assert row[1] == "'" + name
    assert row[2] == "'=cmd|' /C calc'!A0"
    assert row[3] == "1" and row[7] == "5"
    assert reports.csv_safe(5) == 5 and reports.csv_safe("grok-4") == "grok-4"


def test_the_chart_has_a_bar_per_day_and_zero_bars_for_quiet_days(client, staff, alice):
    quiet_start = today() - dt.timedelta(days=6)
    spend(alice, prompt=40, cost_ticks=4_000, when=at(quiet_start + dt.timedelta(days=1)))
    spend(alice, prompt=10, cost_ticks=1_000, when=at(today()))
    client.force_login(staff)
    html = page_html(client, f"/admin/usage/?day__gte={quiet_start}&day__lte={today()}")
    svg = re.search(r'<svg id="usage-chart".*?</svg>', html, re.S).group(0)
    bars = re.findall(r'<rect class="bar" data-label="([^"]+)" data-value="(\d+)"', svg)
    days = [(quiet_start + dt.timedelta(days=i)).isoformat() for i in range(7)]
    assert [label for label, _ in bars] == days * 2  # tokens, then cost
    tokens = {label: int(v) for label, v in bars[:7]}
    cost = {label: int(v) for label, v in bars[7:]}
    assert tokens[days[1]] == 40 and tokens[days[-1]] == 10
    assert cost[days[1]] == 4_000 and cost[days[-1]] == 1_000
    assert [tokens[d] for d in days[2:6]] == [0, 0, 0, 0]
    assert f"<title>{days[1]}: 40 tokens</title>" in svg
    assert f"<title>{days[-1]}: ${reports.usd(1_000)}</title>" in svg
    assert "Tokens per day" in svg and "Cost (USD) per day" in svg
    heights = dict(re.findall(r'data-label="([^"]+)" data-value="\d+" [^>]*height="([\d.]+)"', svg))
    assert float(heights[days[2]]) == 0.0
    # No script and no style attribute: the page's CSP allows neither inline.
    assert "<script" not in svg and "style=" not in svg


def test_the_bars_fill_the_panel_from_the_tallest_and_label_both_ends():
    bars = reports.chart_layout([0, 50, 100, 25])
    assert [float(b["height"]) for b in bars] == [0.0, 55.0, 110.0, 27.5]
    assert all(float(b["y"]) + float(b["height"]) == reports.PANEL for b in bars)
    slot = (reports.WIDTH - reports.LEFT - reports.RIGHT) / 4
    assert float(bars[1]["x"]) == pytest.approx(reports.LEFT + slot * 1.125, abs=0.01)
    assert [(b["anchor"], b["tick_x"]) for b in bars] == [
        ("start", f"{reports.LEFT:.2f}"),
        ("", ""),
        ("middle", f"{reports.LEFT + 2.5 * slot:.2f}"),
        ("end", f"{reports.WIDTH - reports.RIGHT:.2f}"),
    ]
    assert [b["height"] for b in reports.chart_layout([0, 0])] == ["0.00", "0.00"]
    assert reports.chart_layout([]) == []


def test_the_chart_escapes_what_it_shows(client, staff, django_user_model):
    person = django_user_model.objects.create_user('<b id="x">"eve"</b>', password="x-pass-1")
    spend(person, prompt=3)
    client.force_login(staff)
    html = page_html(client, f"/admin/usage/user/{person.id}/")
    svg = re.search(r'<svg id="user-usage-chart".*?</svg>', html, re.S).group(0)
    assert "&lt;b id=&quot;x&quot;&gt;&quot;eve&quot;&lt;/b&gt;" in svg and "<b " not in svg


def test_a_long_period_is_charted_per_month(client, staff, alice):
    spend(alice, prompt=70, when=at(dt.date(2023, 3, 15)))
    client.force_login(staff)
    html = page_html(client, "/admin/usage/?day__gte=2023-01-01&day__lte=2024-06-30")
    labels = re.findall(r'<rect class="bar" data-label="([^"]+)" data-value="(\d+)"', html)
    months = [label for label, _ in labels[: len(labels) // 2]]
    assert months[0] == "2023-01" and months[-1] == "2024-06" and len(months) == 18
    assert dict(labels[:18])["2023-03"] == "70"


# ------------------------------------------------------------------ the drill-down


def test_the_drill_down_lists_the_users_conversations_with_their_sums(client, staff, alice, bob):
    trip = Conversation.objects.create(user=alice, title="Trip plans")
    recipes = Conversation.objects.create(user=alice, title="Recipes")
    spent = {
        trip.id: [(100, 20, 5, 1_000_000), (40, 10, 0, 300_000)],
        recipes.id: [(7, 3, 0, None)],
    }
    for conversation in (trip, recipes):
        for prompt, completion, reasoning, cost in spent[conversation.id]:
            spend(
                alice,
                prompt=prompt,
                cached=prompt // 4,
                completion=completion,
                reasoning=reasoning,
                cost_ticks=cost,
                conversation=conversation,
            )
    secret = Conversation.objects.create(user=bob, title="Bob's secret")
    spend(bob, prompt=999, conversation=secret)
    old = Conversation.objects.create(user=alice, title="Long ago")
    spend(alice, prompt=5, conversation=old, when=at(today() - dt.timedelta(days=60)))

    client.force_login(staff)
    html = page_html(client, f"/admin/usage/user/{alice.id}/")
    shown = {
        attrs["data-conversation-id"]: cells for attrs, cells in table(html, "user-conversations")
    }
    assert set(shown) == {str(trip.id), str(recipes.id)}
    for conversation in (trip, recipes):
        cells = shown[str(conversation.id)]
        assert cells[0] == conversation.title
        assert int(cells[2]) == len(spent[conversation.id])
        assert int(cells[5]) == sum(cost is None for *_, cost in spent[conversation.id])
        # The prompt tokens its cache key got from xAI's cache, then all its tokens.
        assert int(cells[6]) == sum(p // 4 for p, *_ in spent[conversation.id])
        assert int(cells[7]) == sum(p + c + r for p, c, r, _ in spent[conversation.id])
        ticks = sum(cost or 0 for *_, cost in spent[conversation.id])
        unpriced = all(cost is None for *_, cost in spent[conversation.id])
        assert cells[8] == (reports.UNPRICED if unpriced else reports.usd(ticks))
    assert "Bob&#x27;s secret" not in html and "Bob's secret" not in html
    # Links to the conversation, its messages and the ledger rows, which the admin serves.
    assert f'href="/admin/chat/conversation/{trip.id}/change/"' in html
    messages_url = f"/admin/chat/message/?conversation__id__exact={trip.id}"
    assert f'href="{messages_url}"' in html
    assert f'href="/admin/chat/usage/?user__id__exact={alice.id}"' in html
    listing = client.get(messages_url)
    assert {m.conversation_id for m in listing.context["cl"].result_list} == {trip.id}
    assert listing.context["cl"].result_count == len(spent[trip.id])
    ledger = client.get(f"/admin/chat/usage/?user__id__exact={alice.id}")
    assert ledger.context["cl"].result_count == Usage.objects.filter(user=alice).count()
    # Totals per model and per day agree with the conversations.
    [(_, model_cells)] = table(html, "user-models")
    assert int(model_cells[8]) == sum(p + c + r for v in spent.values() for p, c, r, _ in v)
    # A longer period brings the old conversation in.
    since = today() - dt.timedelta(days=90)
    longer = page_html(client, f"/admin/usage/user/{alice.id}/?start={since}&end={today()}")
    assert str(old.id) in {
        a["data-conversation-id"] for a, _ in table(longer, "user-conversations")
    }


def test_the_drill_down_shows_the_budget_status(client, staff, alice):
    budget = Budget.objects.create(user=alice, period="day", max_tokens=200, max_cost_usd=None)
    spend(alice, prompt=170)
    client.force_login(staff)
    html = page_html(client, f"/admin/usage/user/{alice.id}/")
    assert "170 of 200 tokens" in html and "85%" in html and "near the limit" in html
    assert f'href="/admin/chat/budget/{budget.pk}/change/"' in html


def test_the_drill_down_period_is_a_form_with_the_last_30_days_by_default(client, staff, alice):
    spend(alice, prompt=5, when=at(today() - dt.timedelta(days=29)))
    spend(alice, prompt=7, when=at(today() - dt.timedelta(days=30)))
    client.force_login(staff)
    url = f"/admin/usage/user/{alice.id}/"
    default = client.get(url)
    assert default.context["period"] == reports.Period(today() - dt.timedelta(days=29), today())
    assert f'value="{today() - dt.timedelta(days=29)}"' in default.content.decode()
    assert "<dd" not in default.content.decode() and 'id="user-total-tokens">5<' in (
        default.content.decode()
    )
    for query, words in [
        ("?start=2025-13-40&end=yesterday", "Enter a valid date."),
        (f"?start={today()}&end={today() - dt.timedelta(days=3)}", "starts after it ends"),
        ("?start=1900-01-01&end=2026-01-01", "Periods are limited to 3660 days."),
    ]:
        response = client.get(url + query)
        html = response.content.decode()
        assert words in html and 'id="usage-errors"' in html, query
        assert response.context["period"].end == today(), query
    longer = client.get(url + f"?start={today() - dt.timedelta(days=30)}")
    assert longer.context["totals"]["total_tokens"] == 12


def test_the_drill_down_404s_for_an_unknown_user(client, staff):
    client.force_login(staff)
    assert client.get("/admin/usage/user/987654/").status_code == 404


def test_the_drill_down_of_a_deleted_conversation_keeps_its_usage(client, staff, alice):
    conversation = Conversation.objects.create(user=alice, title="Gone")
    spend(alice, prompt=30, conversation=conversation)
    conversation.delete()
    client.force_login(staff)
    html = page_html(client, f"/admin/usage/user/{alice.id}/")
    [(attrs, cells)] = table(html, "user-conversations")
    assert cells[0] == "(deleted conversation)" and cells[7] == "30"


# ------------------------------------------------------------------ budgets on the report


def test_the_report_lists_users_near_or_over_their_budget(
    client, staff, alice, bob, carol, django_user_model
):
    Budget.objects.create(user=None, period="month", max_tokens=1000)
    dave = django_user_model.objects.create_user("dave", password="dave-password-1")
    own = Budget.objects.create(user=dave, period="day", max_cost_usd=Decimal("0.01"))
    erin = django_user_model.objects.create_user("erin", password="erin-password-1")
    Budget.objects.create(user=erin, period="month", max_messages_per_minute=5)  # no money limit
    spend(alice, prompt=800)  # 80%: near
    spend(bob, prompt=600)
    spend(bob, prompt=650)  # 125%: over
    spend(carol, prompt=799)  # 79.9%: not listed
    spend(dave, prompt=1, cost_ticks=billing.usd_to_ticks(Decimal("0.0095")))  # 95%: near
    spend(erin, prompt=10**6)  # no token or money limit of her own: never listed
    client.force_login(staff)
    html = page_html(client, "/admin/usage/")
    lines = {
        attrs["data-username"]: (attrs["data-state"], cells)
        for attrs, cells in table(html, "usage-budgets")
    }
    assert set(lines) == {"alice", "bob", "dave"}
    assert lines["bob"][0] == "over" and lines["bob"][1][3] == "125%"
    assert lines["bob"][1][4] == "1250 of 1000"
    assert lines["alice"][0] == "near" and lines["alice"][1][3] == "80%"
    assert lines["dave"][0] == "near" and lines["dave"][1][3] == "95%"
    assert lines["dave"][1][5] == "$0.0095 of $0.0100"
    # Fullest first, and links to edit: dave's own budget, or give the others their own.
    assert [attrs["data-username"] for attrs, _ in table(html, "usage-budgets")] == [
        "bob",
        "dave",
        "alice",
    ]
    assert f'href="/admin/chat/budget/{own.pk}/change/"' in html
    assert f'href="/admin/chat/budget/add/?user={alice.id}"' in html
    assert client.get(f"/admin/chat/budget/add/?user={alice.id}").status_code == 200


def test_usage_before_this_period_does_not_count_toward_the_budget(client, staff, alice):
    Budget.objects.create(user=None, period="day", max_tokens=100)
    spend(alice, prompt=500, when=timezone.now() - dt.timedelta(days=2))
    client.force_login(staff)
    html = page_html(client, "/admin/usage/")
    assert [a for a, _ in table(html, "usage-budgets") if "data-username" in a] == []
    assert "Nobody has used 80% of their budget this period." in html


# ------------------------------------------------------------------ the user's Usage page


def test_the_usage_page_needs_a_login(client):
    response = client.get("/usage/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_my_usage_page_shows_my_numbers_and_never_another_users(client, alice, bob):
    mine = [
        spend(alice, prompt=120, completion=30, reasoning=12, cached=40, cost_ticks=5_000_000),
        spend(alice, prompt=80, completion=20, model="grok-3-mini", cost_ticks=2_500_000),
    ]
    spend(bob, prompt=987_654, completion=13, model="bobs-private-model", cost_ticks=77_777_777)
    client.force_login(alice)
    html = page_html(client, "/usage/")

    def figure(name: str) -> str:
        return re.search(rf'<dd id="usage-{name}">([^<]*)</dd>', html).group(1)

    assert figure("requests") == str(len(mine))
    assert figure("prompt_tokens") == str(sum(r.prompt_tokens for r in mine))
    assert figure("cached_prompt_tokens") == str(sum(r.cached_prompt_tokens for r in mine))
    assert figure("completion_tokens") == str(sum(r.completion_tokens for r in mine))
    assert figure("reasoning_tokens") == str(sum(r.reasoning_tokens for r in mine))
    assert figure("total_tokens") == str(sum(r.total_tokens for r in mine))
    assert figure("cost") == "$" + reports.usd(sum(r.cost_in_usd_ticks for r in mine))
    [(_, day)] = table(html, "usage-days")
    assert day[0] == today().isoformat() and int(day[8]) == sum(r.total_tokens for r in mine)
    for secret in ["987654", "987667", "bobs-private-model", reports.usd(77_777_777)]:
        assert secret not in html, secret
    assert "no limits" in html  # no budget: this month, no limits


def test_my_usage_page_counts_this_budget_period_only(client, alice):
    Budget.objects.create(user=None, period="day", max_tokens=10_000)
    spend(alice, prompt=300, when=timezone.now() - dt.timedelta(days=1, hours=1))
    spend(alice, prompt=25)
    client.force_login(alice)
    html = page_html(client, "/usage/")
    assert '<dd id="usage-total_tokens">25</dd>' in html
    assert "Your usage today" in html


def test_my_usage_page_shows_what_is_left_when_it_renews_and_my_limits(client, alice):
    Budget.objects.create(
        user=None,
        period="month",
        max_tokens=5000,
        max_cost_usd=Decimal("2.50"),
        max_messages_per_minute=6,
        max_concurrent_streams=2,
    )
    spend(alice, prompt=1000, completion=200, cost_ticks=billing.usd_to_ticks(Decimal("0.75")))
    client.force_login(alice)
    html = page_html(client, "/usage/")
    assert "1200 of 5000 tokens used; <strong>3800</strong> left." in html
    assert "$0.7500 of $2.5000 used; <strong>$1.7500</strong> left." in html
    resets = billing.next_period_start("month", timezone.localtime())
    assert f'id="budget-renews">Your budget renews on 1 {resets:%B %Y}, 00:00.' in html
    assert 'id="limit-rate">Messages per minute: 6.' in html
    assert 'id="limit-streams">Answers streaming at once: 2.' in html
    assert "budget-warning" not in html


@pytest.mark.parametrize("tokens, warned", [(790, False), (799, False), (800, True), (999, True)])
def test_the_warning_starts_at_80_percent_of_the_budget(client, alice, tokens, warned):
    Budget.objects.create(user=None, period="month", max_tokens=1000)
    spend(alice, prompt=tokens)
    client.force_login(alice)
    words = f"You have used {tokens * 100 // 1000}% of your monthly budget."
    usage = page_html(client, "/usage/")
    chat = page_html(client, "/")
    assert ("budget-warning" in usage) is warned
    assert (words in usage) is warned
    assert ('id="budget-notice"' in chat) is warned
    assert (words in chat) is warned


def test_the_over_budget_notice_says_when_it_renews(client, alice):
    Budget.objects.create(user=alice, period="day", max_cost_usd=Decimal("0.10"))
    spend(alice, prompt=10, cost_ticks=billing.usd_to_ticks(Decimal("0.12")))
    client.force_login(alice)
    usage = page_html(client, "/usage/")
    chat = page_html(client, "/")
    for html in (usage, chat):
        assert "You have used all of your daily budget (120%)." in html
        assert "New messages are refused until it renews on" in html
    assert 'class="banner over-budget"' in usage
    assert "<strong>$0.0000</strong> left." in usage


def test_estimated_requests_are_said_to_be_estimated(client, alice):
    spend(alice, prompt=100, source="estimated", outcome="stopped")
    spend(alice, prompt=100, source="estimated", outcome="interrupted")
    spend(alice, prompt=100)
    client.force_login(alice)
    html = page_html(client, "/usage/")
    assert (
        "2 of these requests ended before the provider reported usage; "
        "their tokens are estimated." in html
    )
    assert 'id="usage-estimated"' in html


def test_nothing_is_said_to_be_estimated_when_all_usage_was_reported(client, alice):
    spend(alice, prompt=100)
    client.force_login(alice)
    html = page_html(client, "/usage/")
    assert 'id="usage-estimated"' not in html
    assert "before the provider reported usage" not in html


def test_the_chat_page_links_to_the_usage_page(client, alice, upstream):
    client.force_login(alice)
    assert 'id="usage-link" class="usage-link" href="/usage/"' in page_html(client, "/")


# ------------------------------------------------------------------ query counts


def count_queries(client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
        assert response.status_code == 200, url
    return len(captured.captured_queries)


def test_query_counts_stay_the_same_as_the_ledger_grows(
    client, staff, alice, bob, django_user_model, upstream, monkeypatch
):
    monkeypatch.setattr(admin.site.get_model_admin(UsageDay), "list_per_page", 5)
    monkeypatch.setattr(reports, "CONVERSATIONS_PAGE_SIZE", 5)
    Budget.objects.create(user=None, period="month", max_tokens=1000)
    Budget.objects.create(user=bob, period="day", max_tokens=100)
    spend(alice, prompt=900)
    spend(bob, prompt=90)
    staff_client = client
    staff_client.force_login(staff)
    alice_client = type(client)()
    alice_client.force_login(alice)
    start = today() - dt.timedelta(days=20)
    admin_urls = [
        "/admin/usage/",
        f"/admin/usage/?day__gte={start}&o=-11",
        "/admin/usage/?period=all",
        "/admin/usage/?format=csv",
        f"/admin/usage/user/{alice.id}/",
    ]
    alice_client.get("/")  # warm the model list cache
    before = {url: count_queries(staff_client, url) for url in admin_urls}
    before["/usage/"] = count_queries(alice_client, "/usage/")
    before["/"] = count_queries(alice_client, "/")

    for i in range(12):
        user = django_user_model.objects.create_user(f"user{i}")
        Budget.objects.create(user=user, period="day" if i % 2 else "month", max_tokens=50)
        for day in range(0, 20, 3):
            spend(
                user,
                prompt=10 + i + day,
                model=f"model-{day % 4}",
                when=at(start + dt.timedelta(days=day)),
            )
    conversation = Conversation.objects.create(user=alice, title="many")
    for day in range(15):
        spend(alice, prompt=day, conversation=conversation, when=at(start + dt.timedelta(days=day)))
        spend(alice, prompt=day, model="grok-3-mini", when=at(start + dt.timedelta(days=day)))

    after = {url: count_queries(staff_client, url) for url in admin_urls}
    after["/usage/"] = count_queries(alice_client, "/usage/")
    after["/"] = count_queries(alice_client, "/")
    assert after == before
    # ...and few: nothing is queried per user, day, model or conversation.
    # The report's changelist has its own few (the count, the page, the filters' choices,
    # the date hierarchy) on top of ours.
    assert max(before.values()) <= 16, before
    # The budget notice costs the chat page two queries: without budgets, one finds none.
    Budget.objects.all().delete()
    assert count_queries(alice_client, "/") == before["/"] - 1
