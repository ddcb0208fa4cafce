"""The model list (chat.catalog, chat.upstream.fetch_catalog): read from the loopback
upstream in xAI's shape and in OpenAI's, the default model chosen from it, and old
conversations whose model the upstream no longer lists."""

from __future__ import annotations

import logging
import re

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from chat.catalog import CACHE_KEY, accepts_images, default_model, models_offered
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

# xAI's list after 2026-05-15: grok-3, grok-4-0709 and the grok-4-fast models are gone.
XAI_LIST = {
    "models": [
        {
            "id": "grok-4.3",
            "aliases": ["grok-4.3-latest"],
            "input_modalities": ["text", "image"],
            "output_modalities": ["text"],
            "prompt_text_token_price": 30000,
            "completion_text_token_price": 150000,
        },
        {
            "id": "grok-4-1-fast-reasoning",
            "aliases": [],
            "input_modalities": ["text"],
            "output_modalities": ["text"],
        },
    ]
}
CURRENT = ["grok-4-1-fast-reasoning", "grok-4.3", "grok-4.3-latest"]  # alphabetically
OPENAI_LIST = {
    "object": "list",
    "data": [
        {"id": "llama-3.3-70b", "object": "model", "owned_by": "meta", "created": 1},
        {"id": "qwen3-32b", "object": "model", "owned_by": "qwen", "created": 1},
    ],
}


def picker(html: str) -> list[tuple[str, bool, bool, str]]:
    """The model picker's options: (value, selected, disabled, text)."""
    select = re.search(r'<select id="model-picker".*?</select>', html, re.S)
    assert select, "no model picker on the page"
    return [
        (value, " selected" in attrs, " disabled" in attrs, text)
        for value, attrs, text in re.findall(
            r'<option value="([^"]*)"([^>]*)>([^<]*)</option>', select.group(0)
        )
    ]


def offered(html: str) -> list[str]:
    return [value for value, _, disabled, _ in picker(html) if not disabled]


def selected(html: str) -> str:
    [value] = [value for value, chosen, _, _ in picker(html) if chosen]
    return value


def model_requests(upstream) -> list[str]:
    return [r.path for r in upstream.requests if r.method == "GET"]


def test_xais_list_fills_the_picker_with_aliases_and_says_which_models_take_images(
    client, alice, upstream, settings
):
    settings.CHAT_DEFAULT_MODEL = "grok-4.3"
    upstream.language_models = XAI_LIST
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert offered(html) == CURRENT and selected(html) == "grok-4.3"
    assert model_requests(upstream) == ["/v1/language-models"]
    assert accepts_images("grok-4.3") is True and accepts_images("grok-4.3-latest") is True
    assert accepts_images("grok-4-1-fast-reasoning") is False
    assert accepts_images("grok-3") is None  # the list says nothing of it


def test_openais_list_on_models_is_read_when_language_models_is_missing(
    client, alice, upstream, settings
):
    settings.CHAT_DEFAULT_MODEL = "grok-4-0709"  # not listed
    upstream.models = OPENAI_LIST  # and /language-models answers 404
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert offered(html) == ["llama-3.3-70b", "qwen3-32b"] and selected(html) == "llama-3.3-70b"
    assert model_requests(upstream) == ["/v1/language-models", "/v1/models"]
    assert accepts_images("qwen3-32b") is None  # OpenAI's list has no modalities


@pytest.mark.parametrize(
    "language_models",
    [
        OPENAI_LIST,  # a 200 in OpenAI's shape
        {"models": []},  # xAI's shape, but naming no model
        {"models": [{"name": "no id"}, "grok-4"]},
        ["grok-4"],
    ],
    ids=["openai-shape", "empty", "no-ids", "not-an-object"],
)
def test_a_language_models_answering_200_in_another_shape_is_passed_over_for_models(
    client, alice, upstream, settings, language_models
):
    settings.CHAT_DEFAULT_MODEL = "grok-4"
    upstream.language_models = language_models
    upstream.models = {"object": "list", "data": [{"id": "grok-4"}, {"id": "grok-4.3"}]}
    client.force_login(alice)
    html = client.get("/").content.decode()
    assert offered(html) == ["grok-4", "grok-4.3"] and selected(html) == "grok-4"
    assert model_requests(upstream) == ["/v1/language-models", "/v1/models"]


def test_a_models_list_in_xais_shape_is_read_too(client, alice, upstream, settings):
    settings.CHAT_DEFAULT_MODEL = "grok-4.3"
    upstream.models = XAI_LIST  # some servers answer /models with the `models` key
    client.force_login(alice)
    assert offered(client.get("/").content.decode()) == CURRENT


def test_the_default_is_chat_default_model_if_listed_else_the_first_listed_else_the_setting(
    client, alice, upstream, settings
):
    upstream.language_models = XAI_LIST
    client.force_login(alice)

    def page_and_default() -> tuple[str, str]:
        cache.delete(CACHE_KEY)
        html = client.get("/").content.decode()
        cache.delete(CACHE_KEY)
        return html, default_model()

    settings.CHAT_DEFAULT_MODEL = "grok-4.3-latest"  # listed, as an alias
    html, default = page_and_default()
    assert default == selected(html) == "grok-4.3-latest" and offered(html) == CURRENT

    settings.CHAT_DEFAULT_MODEL = "grok-4-0709"  # retired on 2026-05-15
    html, default = page_and_default()
    assert default == selected(html) == "grok-4-1-fast-reasoning"
    # The retired default is not offered: only what the upstream lists.
    assert offered(html) == CURRENT and "grok-4-0709" not in html

    # No list at all: CHAT_DEFAULT_MODEL, offered alone.
    for trouble in ["no key", "upstream down"]:
        if trouble == "no key":
            settings.XAI_API_KEY = ""
        else:
            settings.XAI_API_KEY = "xai-test-key"
            settings.XAI_BASE_URL = "http://127.0.0.1:1/v1"  # nothing listens on port 1
        html, default = page_and_default()
        assert default == selected(html) == "grok-4-0709", trouble
        assert offered(html) == ["grok-4-0709"], trouble


def _old_conversation(user, model: str = "grok-3") -> tuple[Conversation, Message]:
    conversation = Conversation.objects.create(user=user, title="old", model=model)
    conversation.append(role="user", content="What is 2 + 2?")
    answer = conversation.append(
        role="assistant", content="It is 4.", model=model, state=Message.State.COMPLETE
    )
    return conversation, answer


def test_an_old_conversation_whose_model_is_gone_shows_it_and_preselects_a_current_one(
    client, alice, upstream, settings
):
    settings.CHAT_DEFAULT_MODEL = "grok-4.3"
    upstream.language_models = XAI_LIST
    conversation, answer = _old_conversation(alice)
    client.force_login(alice)
    response = client.get(f"/c/{conversation.id}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "It is 4." in html and f'data-message-id="{answer.id}"' in html
    assert 'data-model="grok-3"' in html  # the answer shows the model that wrote it
    assert selected(html) == "grok-4.3"
    assert ("grok-3", False, True, "grok-3 (no longer offered)") in picker(html)
    assert offered(html) == CURRENT

    # A conversation whose model is still listed keeps it, and nothing is shown as gone.
    listed, _ = _old_conversation(alice, model="grok-4-1-fast-reasoning")
    html = client.get(f"/c/{listed.id}/").content.decode()
    assert selected(html) == "grok-4-1-fast-reasoning"
    assert [option for option in picker(html) if option[2]] == []


@pytest.mark.django_db(transaction=True)
async def test_a_regenerate_or_send_without_a_model_replaces_a_gone_model_by_the_default(
    upstream, alice, socket_for, settings
):
    settings.CHAT_DEFAULT_MODEL = "grok-4.3"
    upstream.language_models = XAI_LIST
    conversation, answer = await database_sync_to_async(_old_conversation)(alice)
    socket = await socket_for(alice)

    # No list obtained (the failure is cached): the app cannot tell grok-3 is gone.
    settings.XAI_BASE_URL = "http://127.0.0.1:1/v1"  # nothing listens on port 1
    assert await database_sync_to_async(models_offered)() == ["grok-4.3"]
    settings.XAI_BASE_URL = upstream.base_url
    await socket.send(type="regenerate", message_id=answer.id)
    await socket.until("message.end")
    await database_sync_to_async(cache.delete)(CACHE_KEY)

    # With the list: the default, for a regenerate and for the next send.
    await socket.send(type="regenerate", message_id=answer.id)
    await socket.until("message.end")
    await socket.send(type="send", content="And 3 + 3?", conversation_id=conversation.id)
    await socket.until("message.end")
    kept, regenerated, sent = upstream.stream_requests()
    assert kept.json()["model"] == "grok-3"
    assert regenerated.json()["model"] == sent.json()["model"] == "grok-4.3"
    await database_sync_to_async(conversation.refresh_from_db)()
    assert conversation.model == "grok-4.3"  # and the conversation goes on with it


def test_what_was_found_goes_to_the_log(client, alice, upstream, settings, caplog):
    caplog.set_level(logging.INFO, logger="chat")
    base = upstream.base_url
    settings.CHAT_DEFAULT_MODEL = "grok-4.3"
    upstream.language_models = XAI_LIST
    models_offered()
    assert (
        "chat.catalog",
        logging.INFO,
        f"model list from {base}/language-models: 3 models; default grok-4.3 (CHAT_DEFAULT_MODEL)",
    ) in caplog.record_tuples

    caplog.clear()
    cache.delete(CACHE_KEY)
    settings.CHAT_DEFAULT_MODEL = "grok-4-0709"
    upstream.language_models = OPENAI_LIST
    upstream.models = {"data": [{"id": "grok-4.3"}, {"id": "grok-4-1-fast-reasoning"}]}
    models_offered()
    assert (
        "chat.catalog",
        logging.INFO,
        f"model list from {base}/models: 2 models; default grok-4-1-fast-reasoning, the first listed "
        "alphabetically (CHAT_DEFAULT_MODEL grok-4-0709 is not listed)",
    ) in caplog.record_tuples
    assert (
        "chat.upstream",
        logging.INFO,
        "the upstream's /language-models answered 200 without a list of models in xAI's "
        "shape: reading /models",
    ) in caplog.record_tuples


def test_a_list_naming_no_model_is_a_warning(upstream, settings, caplog):
    settings.CHAT_DEFAULT_MODEL = "grok-4"
    upstream.models = {"object": "list", "data": []}
    assert models_offered() == ["grok-4"]
    assert (
        "chat.catalog",
        logging.WARNING,
        f"the upstream's model list ({upstream.base_url}/models) names no model: offering "
        "CHAT_DEFAULT_MODEL grok-4 alone",
    ) in caplog.record_tuples
