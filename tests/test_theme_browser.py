"""Dark mode: the header's theme toggle (remembered per user), the system's colour scheme,
code highlighting, the usage charts, the admin's usage pages, and WCAG AA contrast (axe)
in both themes, in headless Chromium against Daphne."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.axe import violations
from tests.browser import log_in, needs_chromium, wait_ready
from tests.devices import LAPTOP, PHONE, SEED, device_page
from tests.fake_upstream import FakeUpstream
from tests.live import live_app

pytestmark = needs_chromium

LIGHT_BG = "rgb(255, 255, 255)"
DARK_BG = "rgb(22, 24, 29)"
LIGHT_TEXT = "rgb(29, 33, 39)"
DARK_TEXT = "rgb(228, 231, 236)"


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("live")
    with live_app(tmp, fake_upstream_server.base_url, staff=True, setup=SEED) as url:
        yield url


def background(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).backgroundColor")


def text_colour(page: Page) -> str:
    return page.evaluate("getComputedStyle(document.body).color")


# A string's colour in highlight.js's github and github-dark styles (the stylesheets that
# base.html switches with the theme).
LIGHT_STRING = "rgb(3, 47, 98)"
DARK_STRING = "rgb(165, 214, 255)"


def code_is_highlighted_for(page: Page, scheme: str) -> None:
    string = page.locator(".code-block .hljs-string").first
    expect(string).to_have_css("color", LIGHT_STRING if scheme == "light" else DARK_STRING)


def choose_theme(page: Page, theme: str) -> None:
    page.locator("#theme-select").select_option(theme)
    expect(page.locator("html")).to_have_attribute("data-theme", theme)
    expect(page.locator("#theme-form")).to_have_attribute("data-state", "saved")


def open_first_conversation(page: Page, live: str) -> None:
    href = page.locator("#conversation-list a").first.get_attribute("href")
    page.goto(live + str(href))
    wait_ready(page)


def test_the_theme_chosen_is_applied_at_once_and_remembered_after_reload_and_elsewhere(
    browser: Browser, live: str
) -> None:
    with device_page(browser, LAPTOP, color_scheme="light") as page:
        log_in(page, live, "bob", "bob-password-1")
        open_first_conversation(page, live)
        expect(page.locator("html")).to_have_attribute("data-theme", "system")
        assert background(page) == LIGHT_BG
        code_is_highlighted_for(page, "light")
        expect(page.locator("#theme-select")).to_have_accessible_name("Theme")
        expect(page.locator("#theme-apply")).to_be_hidden()  # the script applies a change

        choose_theme(page, "dark")
        assert background(page) == DARK_BG
        code_is_highlighted_for(page, "dark")

        page.reload()
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        expect(page.locator("#theme-select")).to_have_value("dark")
        assert background(page) == DARK_BG
        code_is_highlighted_for(page, "dark")

    # Bob on another browser, whose system is light: his choice holds there too.
    with device_page(browser, PHONE, color_scheme="light") as page:
        log_in(page, live, "bob", "bob-password-1")
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        assert background(page) == DARK_BG
        choose_theme(page, "system")
        assert background(page) == LIGHT_BG


def test_system_follows_the_colour_scheme_of_the_browser(browser: Browser, live: str) -> None:
    with device_page(browser, LAPTOP, color_scheme="dark") as page:
        log_in(page, live, "alice", "alice-password-1")
        open_first_conversation(page, live)
        expect(page.locator("html")).to_have_attribute("data-theme", "system")
        assert background(page) == DARK_BG
        code_is_highlighted_for(page, "dark")
        page.emulate_media(color_scheme="light")
        assert background(page) == LIGHT_BG
        code_is_highlighted_for(page, "light")


def test_a_theme_that_cannot_be_saved_is_undone_and_said(browser: Browser, live: str) -> None:
    with device_page(browser, LAPTOP, color_scheme="light") as page:
        log_in(page, live, "alice", "alice-password-1")
        expect(page.locator("html")).to_have_attribute("data-theme", "system")
        page.route("**/settings/theme/", lambda route: route.abort())
        page.locator("#theme-select").select_option("dark")
        expect(page.locator("#theme-form")).to_have_attribute("data-state", "error")
        expect(page.locator("html")).to_have_attribute("data-theme", "system")
        expect(page.locator("#theme-select")).to_have_value("system")
        expect(page.locator("#theme-select")).to_have_attribute(
            "title", "The theme could not be saved; try again."
        )
        assert background(page) == LIGHT_BG
        page.unroute("**/settings/theme/")
        page.reload()
        expect(page.locator("html")).to_have_attribute("data-theme", "system")


def test_without_script_the_toggle_is_a_form_that_works(browser: Browser, live: str) -> None:
    with device_page(browser, LAPTOP, color_scheme="light", java_script_enabled=False) as page:
        log_in(page, live, "bob", "bob-password-1")
        page.goto(live + "/settings/")
        page.locator("#theme-select").select_option("dark")
        with page.expect_navigation():
            page.locator("#theme-apply").click()
        assert page.url == live + "/settings/"
        expect(page.locator("html")).to_have_attribute("data-theme", "dark")
        assert background(page) == DARK_BG
        page.locator("#theme-select").select_option("system")
        with page.expect_navigation():
            page.locator("#theme-apply").click()
        expect(page.locator("html")).to_have_attribute("data-theme", "system")


def test_the_usage_chart_follows_the_theme(browser: Browser, live: str) -> None:
    def bar_colour(page: Page) -> str:
        return page.evaluate(
            "getComputedStyle(document.querySelector('#my-usage-chart .bars-tokens')).fill"
        )

    with device_page(browser, LAPTOP, color_scheme="light") as page:
        log_in(page, live, "alice", "alice-password-1")
        page.goto(live + "/usage/")
        light = bar_colour(page)
        page.emulate_media(color_scheme="dark")
        assert bar_colour(page) != light


def test_the_admin_usage_pages_follow_the_admins_own_theme(browser: Browser, live: str) -> None:
    def chart_colours(page: Page) -> list[str]:
        return page.evaluate(
            "[getComputedStyle(document.querySelector('.usage-chart .bars-tokens')).fill,"
            " getComputedStyle(document.querySelector('.usage-chart text')).fill]"
        )

    with device_page(browser, LAPTOP, color_scheme="dark") as page:
        log_in(page, live, "staff", "staff-password-1")
        page.goto(live + "/admin/usage/")
        # The admin's dark --link-fg and --body-fg (admin/css/dark_mode.css).
        assert chart_colours(page) == ["rgb(129, 212, 250)", "rgb(238, 238, 238)"]
        assert violations(page) == []
        # The admin's own toggle (it keeps its choice in localStorage): light.
        page.evaluate("localStorage.setItem('theme', 'light')")
        page.reload()
        assert chart_colours(page) == ["rgb(65, 120, 147)", "rgb(51, 51, 51)"]
        assert violations(page) == []
        # The drill-down of a user, in the admin's dark theme again.
        page.evaluate("localStorage.setItem('theme', 'dark')")
        page.goto(live + "/admin/auth/user/?q=alice")
        change = str(page.get_by_role("link", name="alice", exact=True).get_attribute("href"))
        alice_id = change.split("?")[0].rstrip("/").split("/")[-2]
        page.goto(f"{live}/admin/usage/user/{alice_id}/")
        expect(page.locator("#user-models")).to_be_attached()
        assert chart_colours(page) == ["rgb(129, 212, 250)", "rgb(238, 238, 238)"]
        assert violations(page) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("where", ["login", "chat", "settings", "usage"])
def test_axe_finds_nothing_serious_in_either_theme(
    browser: Browser, live: str, scheme: str, where: str
) -> None:
    with device_page(browser, LAPTOP, color_scheme=scheme) as page:
        if where == "login":
            page.goto(live + "/accounts/login/")
        else:
            log_in(page, live, "alice", "alice-password-1")
            if where == "chat":
                open_first_conversation(page, live)
                expect(page.locator(".code-block")).to_be_visible()
            else:
                page.goto(f"{live}/{where}/")
        assert page.evaluate("getComputedStyle(document.documentElement).colorScheme") in (
            "light dark",
            "normal",
        )
        assert text_colour(page) == (LIGHT_TEXT if scheme == "light" else DARK_TEXT)
        assert violations(page) == []


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_axe_finds_nothing_serious_on_a_phone_with_the_drawer_open(
    browser: Browser, live: str, theme: str
) -> None:
    with device_page(browser, PHONE) as page:
        log_in(page, live, "staff", "staff-password-1")
        wait_ready(page)
        choose_theme(page, theme)
        page.locator("#sidebar-toggle").tap()
        expect(page.locator("#sidebar")).to_be_visible()
        assert violations(page) == []
