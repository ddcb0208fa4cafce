"""An admin reads the usage report in headless Chromium against Daphne, and downloads it."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from chat.billing import ticks_to_usd
from tests.browser import log_in, needs_chromium
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium

# (user, days ago, model, prompt, completion, reasoning, cost in ticks)
SEED = [
    ("alice", 0, "grok-4", 1200, 300, 45, 7_350_000),
    ("alice", 0, "grok-3-mini", 80, 20, 0, 34_000),
    ("alice", 3, "grok-4", 400, 100, 0, 2_700_000),
    ("alice", 40, "grok-4", 5000, 1000, 0, 30_000_000),  # outside the default 30 days
    ("bob", 1, "grok-3-mini", 77, 11, 3, 41_000),
]

SEED_SCRIPT = """
import datetime as dt
from django.contrib.auth.models import User
from django.utils import timezone
from chat.models import Conversation, Message
User.objects.create_user('bob', password='bob-password-1')
for name, days_ago, model, prompt, completion, reasoning, cost in {seed!r}:
    user = User.objects.get(username=name)
    conversation = Conversation.objects.create(user=user, title='seeded')
    answer = conversation.messages.create(role='assistant', state='streaming', model=model)
    answer.finish(
        user_id=user.id,
        state='complete',
        usage=dict(
            source='reported', requested_model=model,
            prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning,
            total_tokens=prompt + completion + reasoning, reported_cost_ticks=cost,
            created_at=timezone.now() - dt.timedelta(days=days_ago),
        ),
    )
"""


def tokens(name: str, within_days: int) -> int:
    return sum(p + c + r for u, ago, _, p, c, r, _ in SEED if u == name and ago < within_days)


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("report")
    setup = SEED_SCRIPT.format(seed=SEED)
    with live_app(tmp, fake_upstream_server.base_url, staff=True, setup=setup) as url:
        yield url


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    # A CSP violation (an inline style or script on our pages) is logged as a console error;
    # so is a missing resource (only the favicon, which the app has none of, may be missing).
    page.on(
        "response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    page.on(
        "console",
        lambda m: (
            problems.append(f"{m.text} {m.location}")
            if m.type == "error" and not m.location.get("url", "").endswith("/favicon.ico")
            else None
        ),
    )
    yield page
    context.close()
    assert problems == [], problems


def test_an_admin_filters_the_report_and_downloads_the_csv_that_matches_it(
    page: Page, live: str, tmp_path: Path
) -> None:
    log_in(page, live, "staff", "staff-password-1")
    page.goto(live + "/admin/")
    with page.expect_navigation():
        page.click("text=Usage report")

    # The default period (the last 30 days) leaves alice's 40-day-old request out.
    alice = page.locator("#usage-users tr[data-username=alice]")
    expect(alice.locator("td.total_tokens")).to_have_text(str(tokens("alice", 30)))
    expect(page.locator("#usage-users tr[data-username=bob] td.total_tokens")).to_have_text(
        str(tokens("bob", 30))
    )
    expect(page.locator("#usage-chart rect.bar")).to_have_count(2 * 30)

    # The admin widens the period to 90 days with the changelist's filter.
    today = dt.datetime.now(dt.UTC).date()
    start = today - dt.timedelta(days=89)
    with page.expect_navigation():
        page.locator("#changelist-filter a", has_text="Last 90 days").click()
    assert "period=90" in page.url
    expect(alice.locator("td.total_tokens")).to_have_text(str(tokens("alice", 90)))
    expect(page.locator("#usage-chart rect.bar")).to_have_count(2 * 90)
    alice_rows = page.locator("#result_list tbody tr", has_text="alice")
    expect(alice_rows).to_have_count(len({(ago, m) for u, ago, m, *_ in SEED if u == "alice"}))

    totals = page.locator("#usage-totals")
    shown_total = int(totals.locator("td.total_tokens").inner_text())
    shown_requests = int(totals.locator("td.requests").inner_text())
    shown_cost = Decimal(totals.locator("td.cost").inner_text())
    assert shown_total == sum(tokens(name, 90) for name in ("alice", "bob"))

    # The CSV holds the same rows: its sums are the page's totals.
    link = page.locator("#usage-csv")
    row_count = len({(u, ago, m) for u, ago, m, *_ in SEED})  # one per user, day and model
    expect(link).to_contain_text(f"Download CSV (all {row_count} rows)")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == f"usage-{start.isoformat()}-to-{today.isoformat()}.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    with saved.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == row_count
    assert sum(int(r["total_tokens"]) for r in rows) == shown_total
    assert sum(int(r["requests"]) for r in rows) == shown_requests
    assert sum(Decimal(r["cost_usd"]) for r in rows) == shown_cost
    assert shown_cost == ticks_to_usd(sum(seed[-1] for seed in SEED))
    alice_csv = sum(int(r["total_tokens"]) for r in rows if r["user__username"] == "alice")
    assert alice_csv == int(alice.locator("td.total_tokens").inner_text())

    # The user filter: only bob's rows, and the CSV link follows it.
    with page.expect_navigation():
        page.locator("#changelist-filter a", has_text="bob").click()
    expect(page.locator("#result_list tbody tr")).to_have_count(
        sum(1 for u, *_ in SEED if u == "bob")
    )
    expect(page.locator("#result_list tbody tr", has_text="alice")).to_have_count(0)
    expect(link).to_contain_text("Download CSV (all 1 row)")
    with page.expect_navigation():
        page.go_back()

    # The drill-down: alice's conversations in the period.
    with page.expect_navigation():
        alice.locator("a").click()
    expect(page.locator("#id_start")).to_have_value(start.isoformat())
    expect(page.locator("#user-total-tokens")).to_have_text(str(tokens("alice", 90)))
    expect(page.locator("#user-conversations tbody tr")).to_have_count(
        sum(1 for u, *_ in SEED if u == "alice")
    )
    # ...and its period form: back to the last 30 days.
    page.fill("#id_start", (today - dt.timedelta(days=29)).isoformat())
    with page.expect_navigation():
        page.click("#usage-period input[type=submit]")
    expect(page.locator("#user-total-tokens")).to_have_text(str(tokens("alice", 30)))
    expect(page.locator("#user-usage-chart rect.bar")).to_have_count(2 * 30)


def test_a_user_sees_their_own_usage_page(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    with page.expect_navigation():
        page.click("#usage-link")
    this_month = dt.datetime.now(dt.UTC).date().replace(day=1)
    today = dt.datetime.now(dt.UTC).date()
    expected = sum(
        p + c + r
        for u, ago, _, p, c, r, _ in SEED
        if u == "alice" and today - dt.timedelta(days=ago) >= this_month
    )
    expect(page.locator("#usage-total_tokens")).to_have_text(str(expected))
    expect(page.locator("#usage-days tfoot")).to_have_count(0)
    expect(page.locator("#usage-days tbody tr td.total_tokens")).not_to_have_count(0)
    expect(page.locator("#my-usage-chart rect.bar")).to_have_count(2 * today.day)
