"""Phone and tablet: the sidebar drawer, the composer above the on-screen keyboard, Enter on
a touch screen, and pages that fit 390 px, in headless Chromium against Daphne."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import log_in, needs_chromium, wait_ready, wait_until
from tests.devices import LAPTOP, PHONE, SEED, TITLES, device_page, page_scrolls_sideways
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk
from tests.live import live_app

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live")
    with live_app(tmp, fake_upstream_server.base_url, staff=True, setup=SEED) as url:
        yield url


@pytest.fixture
def upstream(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture(params=["light", "dark"])
def phone(request, browser: Browser, upstream: FakeUpstream) -> Iterator[Page]:
    with device_page(browser, PHONE, color_scheme=request.param) as page:
        yield page


def focus_is_in(page: Page, selector: str) -> bool:
    return page.evaluate(
        f"document.activeElement !== null && document.activeElement.closest({selector!r}) !== null"
    )


def drawer_is_closed(page: Page) -> None:
    expect(page.locator("#sidebar")).to_be_hidden()
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "false")
    expect(page.locator("#sidebar-backdrop")).to_be_hidden()
    assert page.evaluate("document.getElementById('chat').inert") is False


def open_drawer(page: Page) -> None:
    page.locator("#sidebar-toggle").tap()
    expect(page.locator("#sidebar")).to_be_visible()
    expect(page.locator("#sidebar-toggle")).to_have_attribute("aria-expanded", "true")
    # Wholly on screen once its slide-in has ended.
    wait_until(page, "document.getElementById('sidebar').getBoundingClientRect().left === 0")
    assert focus_is_in(page, "#sidebar")
    # What it covers is out of reach (inert) until it closes.
    assert page.evaluate("document.getElementById('chat').inert") is True


def test_on_a_phone_the_sidebar_is_a_drawer_that_the_button_esc_a_tap_outside_and_a_choice_close(
    phone: Page, live: str
) -> None:
    log_in(phone, live, "alice", "alice-password-1")
    wait_ready(phone)
    toggle = phone.locator("#sidebar-toggle")
    expect(toggle).to_have_attribute("aria-controls", "sidebar")
    expect(toggle).to_have_accessible_name("Conversations")
    drawer_is_closed(phone)
    # The conversation and the composer have the whole width.
    for selector in ("#messages", "#chat"):
        assert phone.locator(selector).bounding_box()["width"] == 390, selector

    open_drawer(phone)  # the button closes it again
    toggle.tap()
    drawer_is_closed(phone)
    assert focus_is_in(phone, "#sidebar-toggle")

    open_drawer(phone)  # Esc
    phone.keyboard.press("Escape")
    drawer_is_closed(phone)
    assert focus_is_in(phone, "#sidebar-toggle")

    open_drawer(phone)  # a tap outside it, on the backdrop
    phone.touchscreen.tap(370, 420)
    drawer_is_closed(phone)
    assert focus_is_in(phone, "#sidebar-toggle")

    open_drawer(phone)  # choosing a conversation
    with phone.expect_navigation():
        phone.get_by_role("link", name=TITLES[1]).tap()
    drawer_is_closed(phone)
    expect(phone.locator("#messages article.message")).to_have_count(2)
    assert phone.locator("#messages").bounding_box()["width"] == 390


def test_the_drawer_is_a_plain_sidebar_on_a_laptop(browser: Browser, live: str) -> None:
    with device_page(browser, LAPTOP) as page:
        log_in(page, live, "alice", "alice-password-1")
        expect(page.locator("#sidebar")).to_be_visible()
        expect(page.locator("#sidebar-toggle")).to_be_hidden()
        assert page.locator("#sidebar").bounding_box()["x"] == 0
        assert page.locator("#messages").bounding_box()["x"] >= 260


def test_the_composer_stays_above_the_on_screen_keyboard(phone: Page, live: str) -> None:
    log_in(phone, live, "alice", "alice-password-1")
    wait_ready(phone)
    viewport = phone.locator('meta[name="viewport"]')
    expect(viewport).to_have_attribute(
        "content", "width=device-width, initial-scale=1, interactive-widget=resizes-content"
    )
    # A conversation with a long answer: more than fits on the screen.
    phone.goto(live + phone.locator("#conversation-list a").first.get_attribute("href"))
    wait_ready(phone)
    phone.locator("#prompt").tap()
    # An on-screen keyboard of 340 px: the visible area shrinks to 504 px.
    phone.set_viewport_size({"width": 390, "height": 504})
    wait_until(phone, "window.visualViewport.height === 504")
    box = phone.locator("#composer").bounding_box()
    assert box is not None
    assert box["y"] >= 0 and box["y"] + box["height"] <= 504, box
    send = phone.locator("#send-button").bounding_box()
    assert send is not None and send["y"] + send["height"] <= 504, send
    assert phone.evaluate("document.activeElement.id") == "prompt"
    assert not page_scrolls_sideways(phone)


def answer(text: str) -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish="stop"), usage_chunk(12, 3)))


def test_on_a_touch_screen_enter_makes_a_new_line_and_the_send_button_sends(
    phone: Page, live: str, upstream: FakeUpstream
) -> None:
    log_in(phone, live, "bob", "bob-password-1")
    wait_ready(phone)
    prompt = phone.locator("#prompt")
    expect(prompt).to_have_attribute(
        "placeholder", "Message Grok (Send to send, Enter for a new line)"
    )
    prompt.tap()
    phone.keyboard.type("A haiku about the sea,")
    phone.keyboard.press("Enter")
    phone.keyboard.type("please")
    expect(prompt).to_have_value("A haiku about the sea,\nplease")
    assert upstream.stream_requests() == []
    expect(phone.locator("#messages article.message")).to_have_count(0)

    upstream.queue(answer("Waves fold into foam"))
    phone.locator("#send-button").tap()
    answers = phone.locator("article.message[data-role=assistant]")
    expect(answers.last).to_have_attribute("data-state", "complete")
    expect(answers.last.locator(".content")).to_have_text("Waves fold into foam")
    assert upstream.stream_requests()[-1].json()["messages"][-1]["content"] == (
        "A haiku about the sea,\nplease"
    )


def test_on_a_laptop_enter_sends_as_before(browser: Browser, live: str, upstream) -> None:
    with device_page(browser, LAPTOP) as page:
        log_in(page, live, "bob", "bob-password-1")
        wait_ready(page)
        prompt = page.locator("#prompt")
        expect(prompt).to_have_attribute(
            "placeholder", "Message Grok (Enter to send, Shift+Enter for a new line)"
        )
        upstream.queue(answer("Hello"))
        prompt.fill("Hi")
        page.keyboard.press("Enter")
        expect(page.locator("article.message[data-role=assistant]").last).to_have_attribute(
            "data-state", "complete"
        )
        assert len(upstream.stream_requests()) == 1


@pytest.mark.parametrize("path", ["/usage/", "/settings/", "/accounts/login/"])
def test_the_usage_settings_and_login_pages_fit_a_phone(
    phone: Page, live: str, upstream: FakeUpstream, path: str
) -> None:
    if path != "/accounts/login/":
        log_in(phone, live, "alice", "alice-password-1")
        if path == "/usage/":  # a request in the ledger: the tables have rows
            wait_ready(phone)
            upstream.queue(answer("Noted"))
            phone.locator("#prompt").fill("Note this")
            phone.locator("#send-button").tap()
            expect(phone.locator("article.message[data-role=assistant]").last).to_have_attribute(
                "data-state", "complete"
            )
    phone.goto(live + path)
    assert not page_scrolls_sideways(phone)
    for box in phone.locator(".table-box").all():
        expect(box).to_have_attribute("tabindex", "0")
        expect(box).to_have_attribute("role", "region")
        assert box.evaluate("b => getComputedStyle(b).overflowX") == "auto"
        heading = box.get_attribute("aria-labelledby")
        assert heading and phone.locator(f"#{heading}").count() == 1


def test_the_admin_usage_report_and_drill_down_fit_a_phone(
    browser: Browser, live: str, upstream: FakeUpstream
) -> None:
    with device_page(browser, PHONE) as page:
        log_in(page, live, "staff", "staff-password-1")
        wait_ready(page)
        upstream.queue(answer("Counted"))
        page.locator("#prompt").fill("Count this")
        page.locator("#send-button").tap()
        expect(page.locator("article.message[data-role=assistant]").last).to_have_attribute(
            "data-state", "complete"
        )
        page.goto(live + "/admin/usage/")
        expect(page.locator("#usage-users")).to_be_attached()
        assert not page_scrolls_sideways(page)
        users = page.locator(".table-box", has=page.locator("#usage-users"))
        assert users.evaluate("b => b.scrollWidth > b.clientWidth")  # it scrolls, in its box
        page.locator("#usage-users th[scope=row] a", has_text="staff").click()
        expect(page.locator("#user-conversations")).to_be_attached()
        assert not page_scrolls_sideways(page)
