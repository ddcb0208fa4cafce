"""The settings panel's save (POST /c/<id>/settings/), the settings page (custom
instructions) and the password change."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import SESSION_KEY
from django.core.cache import cache
from django.test import Client

from chat.models import Conversation, SiteSettings, UserSettings

pytestmark = pytest.mark.django_db

FULL = {
    "system_prompt": "  Answer in French.  ",
    "temperature": "0.7",
    "top_p": "0.9",
    "max_output_tokens": "1000",
    "reasoning_effort": "high",
}
SAVED = {
    "system_prompt": "Answer in French.",
    "temperature": 0.7,
    "top_p": 0.9,
    "max_output_tokens": 1000,
    "reasoning_effort": "high",
}


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


def _settings_of(conversation: Conversation) -> dict:
    conversation.refresh_from_db()
    return {name: getattr(conversation, name) for name in SAVED}


def test_alice_saves_her_conversations_settings_and_gets_them_back_with_a_summary(client, alice):
    conversation = Conversation.objects.create(user=alice, title="Chat", model="grok-4")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/settings/", FULL)
    assert response.status_code == 200
    assert response.json() == {
        **SAVED,
        "summary": "System prompt · temp 0.7 · top_p 0.9 · max 1,000 tokens · effort high",
    }
    assert _settings_of(conversation) == SAVED

    # Each save sets all five: blank fields go back to the upstream's defaults.
    response = client.post(f"/c/{conversation.id}/settings/", {"temperature": "1"})
    assert response.json()["summary"] == "temp 1"
    assert _settings_of(conversation) == {
        "system_prompt": "",
        "temperature": 1.0,
        "top_p": None,
        "max_output_tokens": None,
        "reasoning_effort": "",
    }


def test_bob_gets_404_for_alices_conversations_settings(client, alice, bob):
    conversation = Conversation.objects.create(user=alice, title="Chat")
    client.force_login(bob)
    assert client.post(f"/c/{conversation.id}/settings/", FULL).status_code == 404
    assert _settings_of(conversation)["system_prompt"] == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "2.5"),
        ("temperature", "nan"),
        ("top_p", "-1"),
        ("max_output_tokens", "0"),
        ("max_output_tokens", "1.5"),
        ("reasoning_effort", "extreme"),
        ("system_prompt", "a\x00b"),
    ],
)
def test_bad_settings_answer_400_with_the_fields_errors_and_change_nothing(
    client, alice, field, value
):
    conversation = Conversation.objects.create(user=alice, title="Chat", temperature=0.3)
    client.force_login(alice)
    response = client.post(f"/c/{conversation.id}/settings/", {**FULL, field: value})
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert list(errors) == [field] and errors[field][0], errors
    assert _settings_of(conversation)["temperature"] == 0.3
    assert _settings_of(conversation)["system_prompt"] == ""


def test_saving_settings_needs_login_a_post_and_the_csrf_token(alice):
    conversation = Conversation.objects.create(user=alice, title="Chat")
    url = f"/c/{conversation.id}/settings/"
    anonymous = Client()
    assert anonymous.post(url, FULL)["Location"].startswith("/accounts/login/")
    checked = Client(enforce_csrf_checks=True)
    checked.force_login(alice)
    assert checked.get(url).status_code == 405
    assert checked.post(url, FULL).status_code == 403
    assert _settings_of(conversation)["system_prompt"] == ""


def test_the_chat_page_shows_the_saved_settings_and_which_models_take_an_effort(
    client, alice, upstream
):
    conversation = Conversation.objects.create(
        user=alice,
        title="Chat",
        model="grok-4",
        system_prompt="Be <terse>.",
        max_output_tokens=2000,
    )
    client.force_login(alice)
    page = client.get(f"/c/{conversation.id}/").content.decode()
    assert '<span id="settings-summary">System prompt · max 2,000 tokens</span>' in page
    assert "Be &lt;terse&gt;.</textarea>" in page
    assert 'name="max_output_tokens" value="2000"' in page
    efforts = page.split('<script id="model-efforts" type="application/json">')[1]
    assert json.loads(efforts.split("</script>")[0]) == {
        "grok-4": [],
        "grok-3-mini": ["low", "high"],
    }
    new_chat = client.get("/").content.decode()
    assert '<span id="settings-summary">Default settings</span>' in new_chat


def test_the_settings_page_saves_alices_custom_instructions(client, alice, bob, settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    assert client.get("/settings/")["Location"].startswith("/accounts/login/")
    client.force_login(alice)
    page = client.get("/settings/").content.decode()
    assert "Custom instructions" in page and 'href="/settings/password/"' in page
    response = client.post("/settings/", {"custom_instructions": "I am a chemist."}, follow=True)
    assert response.redirect_chain == [("/settings/", 302)]
    assert "Your custom instructions are saved." in response.content.decode()
    assert UserSettings.objects.get(user=alice).custom_instructions == "I am a chemist."
    client.post("/settings/", {"custom_instructions": "Metric units."})
    assert UserSettings.objects.get(user=alice).custom_instructions == "Metric units."
    too_long = client.post("/settings/", {"custom_instructions": "x" * 51})
    assert too_long.status_code == 200 and "at most 50 characters" in too_long.content.decode()
    assert UserSettings.objects.get(user=alice).custom_instructions == "Metric units."
    assert not UserSettings.objects.filter(user=bob).exists()


def test_the_chat_sidebar_links_to_the_settings_page(client, alice, upstream):
    client.force_login(alice)
    assert (
        'id="settings-link" class="usage-link" href="/settings/"'
        in client.get("/").content.decode()
    )


def test_alice_changes_her_password_stays_logged_in_and_her_other_session_is_logged_out(alice):
    here, elsewhere = Client(), Client()
    for session in (here, elsewhere):
        session.force_login(alice)
    assert "Change your password" in here.get("/settings/password/").content.decode()
    wrong = here.post(
        "/settings/password/",
        {
            "old_password": "not-her-password",
            "new_password1": "a-new-pass-phrase-2",
            "new_password2": "a-new-pass-phrase-2",
        },
    )
    assert wrong.status_code == 200 and "Your old password was entered incorrectly" in (
        wrong.content.decode()
    )
    response = here.post(
        "/settings/password/",
        {
            "old_password": "alice-password-1",
            "new_password1": "a-new-pass-phrase-2",
            "new_password2": "a-new-pass-phrase-2",
        },
        follow=True,
    )
    assert response.redirect_chain == [("/settings/", 302)]
    assert "Your password is changed." in response.content.decode()
    alice.refresh_from_db()
    assert alice.check_password("a-new-pass-phrase-2")

    assert here.get("/settings/").status_code == 200
    assert here.session[SESSION_KEY] == str(alice.pk)
    assert elsewhere.get("/settings/")["Location"].startswith("/accounts/login/")
    assert SESSION_KEY not in elsewhere.session


def test_a_staff_user_sets_the_sites_default_system_prompt_once_in_the_admin(client, staff):
    client.force_login(staff)
    add = "/admin/chat/sitesettings/add/"
    response = client.post(add, {"default_system_prompt": "Be kind."})
    assert response.status_code == 302
    assert SiteSettings.objects.get().default_system_prompt == "Be kind."
    assert client.get(add).status_code == 403  # one row: changed from now on, not added
    client.post("/admin/chat/sitesettings/1/change/", {"default_system_prompt": "Be brief."})
    assert SiteSettings.objects.get(pk=1).default_system_prompt == "Be brief."
    assert client.post("/admin/chat/sitesettings/1/delete/", {"post": "yes"}).status_code == 403
