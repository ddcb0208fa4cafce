"""The admin's usage report in a laptop's window: it fits without sideways scrolling."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import log_in, needs_chromium
from tests.fake_upstream import FakeUpstream
from tests.live import live_app
from tests.test_report_browser import SEED, SEED_SCRIPT

pytestmark = needs_chromium

# Long names and big numbers: the widest cells a report shows.
WIDE_SEED = [
    *SEED,
    ("bob", 2, "grok-4-1-fast-reasoning-2026-11-20", 987_654_321, 123_456_789, 55_555_555, None),
    ("bob", 5, "grok-code-fast-1-preview-long-name", 45_000_000, 9_000_000, 1_000_000, 12_345),
]


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("admin-wide")
    setup = SEED_SCRIPT.format(seed=WIDE_SEED)
    with live_app(tmp, fake_upstream_server.base_url, staff=True, setup=setup) as url:
        yield url


@pytest.fixture
def laptop(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()


def page_overflow(page: Page) -> int:
    """How many pixels the page is wider than its window (0: no sideways scrolling)."""
    return page.evaluate(
        "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " - document.documentElement.clientWidth"
    )


# The tables whose visible part runs into the filters beside them: a table wider than its
# column and not in a box of its own that scrolls (or clips) spills over them.
TABLES_OVER_THE_FILTERS = """() => {
  const filters = document.getElementById("changelist-filter");
  if (!filters) return [];
  const f = filters.getBoundingClientRect();
  const spilling = [];
  for (const table of document.querySelectorAll("#content table")) {
    let right = table.getBoundingClientRect().right;
    for (let box = table.parentElement; box; box = box.parentElement) {
      if (getComputedStyle(box).overflowX !== "visible") {
        right = Math.min(right, box.getBoundingClientRect().right);
        break;
      }
    }
    const t = table.getBoundingClientRect();
    const beside = t.top < f.bottom && t.bottom > f.top;
    if (beside && right > f.left + 0.5 && t.left < f.right) spilling.push(table.id || "(table)");
  }
  return spilling;
}"""


@pytest.mark.parametrize("path", ["/admin/usage/", "/admin/chat/usage/"])
def test_the_usage_report_and_the_ledger_fit_a_1280_px_window(laptop: Page, live: str, path: str):
    log_in(laptop, live, "staff", "staff-password-1")
    laptop.goto(live + path + "?period=90")
    expect(laptop.locator("#result_list tbody tr").first).to_be_visible()
    expect(laptop.locator("#result_list")).to_contain_text("grok-4-1-fast-reasoning-2026-11-20")
    assert page_overflow(laptop) == 0
    assert laptop.evaluate(TABLES_OVER_THE_FILTERS) == []
    # Every column is there to read: the list scrolls in its own box where it must.
    last_header = laptop.locator("#result_list thead th").last
    last_header.scroll_into_view_if_needed()
    expect(last_header).to_be_in_viewport()
    assert page_overflow(laptop) == 0


def test_the_reports_per_user_table_shows_whole_in_a_1280_px_window(laptop: Page, live: str):
    log_in(laptop, live, "staff", "staff-password-1")
    laptop.goto(live + "/admin/usage/?period=90")
    users = laptop.locator("#usage-users")
    expect(users).to_contain_text("1221666756")  # bob's tokens, the widest numbers
    width, room = users.evaluate("t => [t.scrollWidth, t.parentElement.clientWidth]")
    assert width <= room, (width, room)
    last_right = users.locator("thead th").last.evaluate("th => th.getBoundingClientRect().right")
    assert last_right <= 1280
