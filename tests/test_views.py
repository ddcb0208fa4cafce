from __future__ import annotations

import re

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import Conversation, Message, Usage, UsageDay

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()


def _conversation(user, title="Chat", messages=2) -> Conversation:
    conversation = Conversation.objects.create(user=user, title=title)
    for i in range(messages):
        role = "user" if i % 2 == 0 else "assistant"
        conversation.append(role=role, content=f"text {i}")
    return conversation


def test_every_page_requires_login(client, alice):
    conversation = _conversation(alice)
    for url in ["/", f"/c/{conversation.id}/", f"/c/{conversation.id}/delete/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")
    response = client.post(f"/c/{conversation.id}/rename/", {"title": "x"})
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_the_first_visit_asks_for_the_first_admin(client, django_user_model):
    response = client.get("/accounts/login/")
    assert response.status_code == 302 and response["Location"] == "/setup/"
    response = client.get("/setup/")
    assert b"Create the first admin" in response.content
    response = client.post(
        "/setup/",
        {"username": "root", "password1": "a-long-pass-phrase", "password2": "a-long-pass-phrase"},
    )
    assert response.status_code == 302
    admin = django_user_model.objects.get()
    assert admin.is_staff and admin.is_superuser
    # Once a user exists the setup page is gone.
    client.logout()
    assert client.get("/setup/")["Location"] == "/accounts/login/"


def test_it_logs_in_and_out(client, alice):
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "alice-password-1"}
    )
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302


def test_the_sidebar_lists_only_my_conversations_newest_first(client, alice, bob, upstream):
    _conversation(alice, "older")
    newer = _conversation(alice, "newer")
    newer.touch()
    _conversation(bob, "bob's secret")
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert html.index(">newer</a>") < html.index(">older</a>")  # ("older": in "placeholder")
    assert "bob&#x27;s secret" not in html and "bob's secret" not in html


def test_it_refuses_another_users_conversation(client, alice, bob, upstream):
    conversation = _conversation(bob)
    client.force_login(alice)
    assert client.get(f"/c/{conversation.id}/").status_code == 404
    assert client.post(f"/c/{conversation.id}/rename/", {"title": "mine"}).status_code == 404
    assert client.get(f"/c/{conversation.id}/delete/").status_code == 404
    assert client.post(f"/c/{conversation.id}/delete/").status_code == 404
    conversation.refresh_from_db()
    assert conversation.title == "Chat"


def test_it_renames_and_deletes_a_conversation(client, alice, upstream):
    conversation = _conversation(alice)
    client.force_login(alice)
    client.post(f"/c/{conversation.id}/rename/", {"title": "  Trip   plans "})
    conversation.refresh_from_db()
    assert conversation.title == "Trip plans"
    confirm = client.get(f"/c/{conversation.id}/delete/")
    assert b"Delete" in confirm.content
    assert Conversation.objects.filter(id=conversation.id).exists()
    response = client.post(f"/c/{conversation.id}/delete/")
    assert response.status_code == 302
    assert not Conversation.objects.filter(id=conversation.id).exists()
    assert not Message.objects.filter(conversation_id=conversation.id).exists()


def test_a_conversation_page_shows_answers_with_their_usage(client, alice, upstream):
    conversation = _conversation(alice, messages=1)
    answer = conversation.append(
        role="assistant",
        content="**bold** answer",
        model="grok-4-fast-reasoning",
        ttft_ms=321,
    )
    Usage.objects.create(
        user=alice, message=answer, outcome="complete", prompt_tokens=126, total_tokens=250
    )
    client.force_login(alice)
    html = client.get(f"/c/{conversation.id}/").content.decode()
    assert "**bold** answer" in html
    assert "grok-4-fast-reasoning" in html


def test_pages_run_a_constant_number_of_queries(client, alice, upstream):
    client.force_login(alice)
    conversation = _conversation(alice, messages=2)
    client.get(f"/c/{conversation.id}/")  # warm the model list cache and the session

    def queries() -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(f"/c/{conversation.id}/").status_code == 200
        return len(ctx.captured_queries)

    small = queries()
    for _ in range(30):
        _conversation(alice, messages=4)
    for i in range(40):
        answer = conversation.append(role="assistant", content="a")
        Usage.objects.create(user=alice, message=answer, outcome="complete", total_tokens=i)
    assert queries() == small


def test_the_model_picker_lists_the_upstreams_models(client, alice, upstream, settings):
    settings.CHAT_DEFAULT_MODEL = "grok-4"
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert "grok-3-mini" in html and "grok-4" in html
    client.get("/")
    model_requests = [r for r in upstream.requests if r.path == "/v1/models"]
    assert len(model_requests) == 1  # cached
    assert model_requests[0].headers["authorization"].startswith("Bearer ")


def test_the_chat_page_says_when_no_key_is_configured(client, alice, upstream, settings):
    settings.XAI_API_KEY = ""
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert "No xAI API key is configured" in html


def test_the_admin_usage_page_sums_tokens_per_user(client, alice, bob, staff):
    for user, prompt, completion, reasoning in [
        (alice, 100, 10, 5),
        (alice, 200, 20, 0),
        (bob, 7, 3, 1),
    ]:
        row = Usage.objects.create(
            user=user,
            outcome="complete",
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            total_tokens=prompt + completion + reasoning,
        )
        UsageDay.add(row)  # as Message.finish does: the report reads the daily totals
    client.force_login(alice)
    assert client.get("/admin/usage/").status_code == 302  # not staff
    client.force_login(staff)
    index = client.get("/admin/").content.decode()
    assert "/admin/usage/" in index
    response = client.get("/admin/usage/")
    rows = {row["label"]: row for row in response.context["users_table"]["rows"]}
    assert rows["alice"]["requests"] == 2
    assert rows["alice"]["total_tokens"] == 335
    assert rows["alice"]["reasoning_tokens"] == 5
    assert rows["bob"]["total_tokens"] == 11
    assert response.context["totals"]["total_tokens"] == 346
    # A period with no requests
    empty = client.get("/admin/usage/?day__gte=2001-01-01&day__lte=2001-01-31")
    assert empty.context["users_table"]["rows"] == []


def test_the_admin_lists_users_conversations_messages_and_usage(client, staff, alice):
    _conversation(alice)
    client.force_login(staff)
    for url in [
        "/admin/auth/user/",
        "/admin/chat/conversation/",
        "/admin/chat/message/",
        "/admin/chat/usage/",
    ]:
        assert client.get(url).status_code == 200, url


def test_pages_send_a_strict_content_security_policy(client, alice, upstream):
    client.force_login(alice)
    response = client.get("/")
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["X-Frame-Options"] == "DENY"


def test_the_model_picker_prefers_xais_language_models_with_aliases(
    client, alice, upstream, settings
):
    upstream.language_models = {
        "models": [
            {
                "id": "grok-4-0709",
                "aliases": ["grok-4", "grok-4-latest"],
                "prompt_text_token_price": 30000,
                "completion_text_token_price": 150000,
            },
            {"id": "grok-3-mini", "aliases": []},
        ]
    }
    client.force_login(alice)
    html = client.get("/").content.decode()
    for name in ["grok-4-0709", "grok-4-latest", "grok-3-mini"]:
        assert f'value="{name}"' in html, name
    assert [r.path for r in upstream.requests] == ["/v1/language-models"]


def test_a_long_conversation_shows_its_newest_messages_and_links_to_earlier_ones(
    client, alice, django_assert_max_num_queries
):
    from chat.views import MESSAGES_PER_PAGE

    conversation = Conversation.objects.create(user=alice, title="long")
    for i in range(MESSAGES_PER_PAGE + 50):
        conversation.append(role="user", content=f"message {i}")
    client.force_login(alice)
    # (site settings: the search toggles; the user's theme: chat.themes)
    with django_assert_max_num_queries(10):
        page = client.get(f"/c/{conversation.id}/").content.decode()
    # Stored messages have ids; the <template> chat.js clones for live ones has none.
    rendered = re.compile(r'data-message-id="\d+" data-role="user"')
    assert len(rendered.findall(page)) == MESSAGES_PER_PAGE
    assert f"message {MESSAGES_PER_PAGE + 49}<" in page and "message 49<" not in page
    oldest_shown = conversation.messages.order_by("id")[50].id
    assert f'href="?before={oldest_shown}"' in page
    older = client.get(f"/c/{conversation.id}/?before={oldest_shown}").content.decode()
    assert len(rendered.findall(older)) == 50
    assert "message 0<" in older and "message 50<" not in older
    assert "earlier-messages" not in older and "latest-messages" in older
