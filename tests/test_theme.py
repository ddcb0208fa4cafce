"""The theme toggle's form and view (POST /settings/theme/, chat/themes.py) and the theme
rendered into each page's <html data-theme> and code-style links."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from chat.models import UserSettings

pytestmark = pytest.mark.django_db


def theme_of(user) -> str | None:
    return UserSettings.objects.filter(user=user).values_list("theme", flat=True).first()


def html_theme(client: Client, url: str = "/settings/") -> str:
    html = client.get(url).content.decode()
    match = re.search(r'<html lang="en" data-theme="([a-z]+)">', html)
    assert match, html[:500]
    return match.group(1)


def test_alice_chooses_dark_and_her_pages_are_rendered_dark_while_bobs_are_not(
    client: Client, alice, bob
) -> None:
    client.force_login(alice)
    assert html_theme(client) == "system"
    response = client.post("/settings/theme/", {"theme": "dark", "next": "/usage/"})
    assert response.status_code == 302 and response["Location"] == "/usage/"
    assert theme_of(alice) == "dark"
    assert html_theme(client) == "dark"
    html = client.get("/usage/").content.decode()
    assert re.search(r'id="code-style-dark" href="[^"]+github-dark[^"]+" media="all"', html)
    assert re.search(r'id="code-style-light" href="[^"]+" media="not all"', html)
    assert '<option value="dark" selected>Dark</option>' in html

    bob_client = Client()
    bob_client.force_login(bob)
    assert html_theme(bob_client) == "system"
    assert theme_of(bob) is None


def test_the_theme_is_saved_beside_the_custom_instructions_without_touching_them(
    client: Client, alice
) -> None:
    UserSettings.objects.create(user=alice, custom_instructions="Be brief.", theme="dark")
    client.force_login(alice)
    client.post("/settings/theme/", {"theme": "light"})
    saved = UserSettings.objects.get(user=alice)
    assert (saved.theme, saved.custom_instructions) == ("light", "Be brief.")
    html = client.get("/").content.decode()
    assert 'data-theme="light"' in html
    assert re.search(r'id="code-style-light" href="[^"]+" media="all"', html)


def test_a_bad_theme_is_refused_with_a_clear_error_and_changes_nothing(
    client: Client, alice
) -> None:
    UserSettings.objects.create(user=alice, theme="dark")
    client.force_login(alice)
    for data in ({"theme": "purple"}, {"theme": ""}, {}, {"theme": "DARK"}):
        response = client.post("/settings/theme/", data)
        assert response.status_code == 400, data
        assert response.content.decode() == "Choose a theme: system, light or dark."
    response = client.post(
        "/settings/theme/", {"theme": "sepia"}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"error": "Choose a theme: system, light or dark."}
    assert theme_of(alice) == "dark"


def test_the_script_gets_json_back(client: Client, alice) -> None:
    client.force_login(alice)
    response = client.post(
        "/settings/theme/", {"theme": "light"}, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200 and response.json() == {"theme": "light"}
    assert theme_of(alice) == "light"


def test_a_get_an_anonymous_post_and_a_post_without_csrf_token_change_nothing(
    client: Client, alice
) -> None:
    assert client.post("/settings/theme/", {"theme": "dark"})["Location"].startswith(
        "/accounts/login/"
    )
    client.force_login(alice)
    assert client.get("/settings/theme/").status_code == 405
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.post("/settings/theme/", {"theme": "dark"}).status_code == 403
    assert theme_of(alice) is None


def test_next_may_only_lead_back_to_this_site(client: Client, alice) -> None:
    client.force_login(alice)
    for evil in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        response = client.post("/settings/theme/", {"theme": "dark", "next": evil})
        assert response["Location"] == "/", evil


def test_the_login_page_follows_the_system_and_offers_no_toggle(client: Client, alice) -> None:
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<html lang="en" data-theme="system">' in html
    assert 'media="(prefers-color-scheme: dark)"' in html
    assert "theme-select" not in html


def test_the_usage_chart_takes_its_colours_from_the_stylesheet(client: Client, alice) -> None:
    client.force_login(alice)
    svg = re.search(r"<svg .*?</svg>", client.get("/usage/").content.decode(), re.S)
    assert svg is not None
    assert 'class="bars-tokens"' in svg.group(0) and 'class="bars-cost"' in svg.group(0)
    assert not re.search(r'(fill|stroke)="#', svg.group(0))
