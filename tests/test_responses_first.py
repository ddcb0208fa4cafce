"""Responses API first: the style "auto" picks, the reasoning state an answer leaves (its
output items) sent back with the next turns of its path, `store`, and the prompt cache key
of each conversation (xAI's wire formats, section 7; the loopback upstream's recorded
requests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from chat.capabilities import api_style
from chat.models import Conversation, Message, Usage
from chat.upstream import resolve_api_style
from tests.fake_upstream import Reply, transcript
from tests.test_upstream import RESPONSE, responses_event

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
ENCRYPTED = "vercel-xai-responses-reasoning-encrypted-1.sse"


@pytest.fixture(autouse=True)
def _no_cached_model_list():
    cache.clear()
    yield
    cache.clear()


def final_output(name: str) -> list[dict[str, Any]]:
    """The `output` of a recorded stream's `response.completed`, as the upstream sent it."""
    for line in transcript(name).decode().splitlines():
        if line.startswith("data:") and '"response.completed"' in line:
            return json.loads(line[len("data:") :])["response"]["output"]
    raise AssertionError(f"{name} has no response.completed")


def reasoning_reply(secret: str, text: str) -> Reply:
    """A Responses stream whose output is a reasoning item with encrypted content `secret`
    and a message saying `text`."""
    reasoning = {
        "id": f"rs_{secret}",
        "type": "reasoning",
        "summary": [],
        "encrypted_content": secret,
        "status": "completed",
    }
    message = {
        "id": f"msg_{secret}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }
    usage = {"input_tokens": 20, "output_tokens": 5, "total_tokens": 25}
    done = {**RESPONSE, "status": "completed", "output": [reasoning, message], "usage": usage}
    return Reply(
        body=b"".join(
            [
                responses_event("response.created", response=RESPONSE),
                responses_event("response.output_item.done", output_index=0, item=reasoning),
                responses_event("response.output_text.delta", delta=text, output_index=1),
                responses_event("response.output_item.done", output_index=1, item=message),
                responses_event("response.completed", response=done),
            ]
        )
    )


def said(text: str) -> dict[str, str]:
    """The user's turn saying `text`."""
    return {"role": "user", "content": text}


async def ask(socket, **frame: Any) -> dict:
    """Send a frame that starts an answer; its message.end."""
    await socket.send(**frame)
    end, _ = await socket.until("message.end")
    return end


@database_sync_to_async
def saved(message_id: int) -> Message:
    return Message.objects.get(pk=message_id)


@database_sync_to_async
def cache_key_of(conversation_id: int) -> str:
    return Conversation.objects.get(pk=conversation_id).prompt_cache_key


@database_sync_to_async
def ledger_styles() -> list[str]:
    return list(Usage.objects.order_by("id").values_list("api_style", flat=True))


def sent_bodies(upstream) -> list[dict[str, Any]]:
    return [request.json() for request in upstream.stream_requests()]


# ---------------------------------------------------------------------------- auto


@pytest.mark.parametrize(
    ("base_url", "style"),
    [
        ("https://api.x.ai/v1", "responses"),
        ("https://API.X.AI/v1/", "responses"),
        ("https://us-east-1.api.x.ai/v1", "responses"),
        ("http://127.0.0.1:8080/v1", "chat_completions"),  # llama.cpp
        ("http://localhost:11434/v1", "chat_completions"),  # Ollama
        ("https://api.x.ai.example.com/v1", "chat_completions"),
        ("https://notapi.x.ai/v1", "chat_completions"),
        ("https://openrouter.ai/api/v1", "chat_completions"),
    ],
)
def test_auto_speaks_responses_to_xai_and_chat_completions_to_any_other_server(base_url, style):
    assert resolve_api_style("auto", base_url) == style


@pytest.mark.parametrize("configured", ["chat_completions", "responses", "anthropic_messages"])
def test_a_configured_style_is_spoken_whatever_the_base_url(configured, settings):
    for base_url in ("https://api.x.ai/v1", "http://127.0.0.1:8080/v1"):
        assert resolve_api_style(configured, base_url) == configured
        settings.XAI_API_STYLE, settings.XAI_BASE_URL = configured, base_url
        assert api_style() == configured


def test_the_settings_default_to_auto_and_no_store():
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("XAI_API_STYLE", "XAI_STORE", "XAI_BASE_URL")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY="a test key that keeps data/secret_key untouched, 50+ chars",
        PYTHONPATH=str(ROOT),
    )
    script = (
        "import django; django.setup(); from django.conf import settings;"
        "from chat.capabilities import api_style;"
        "print(settings.XAI_API_STYLE, settings.XAI_STORE, api_style())"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["auto", "False", "responses"]


async def test_auto_speaks_chat_completions_to_another_server_and_the_ledger_says_so(
    upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = "auto"  # the loopback upstream is no api.x.ai
    socket = await socket_for(alice)
    end = await ask(socket, type="send", content="Hello", conversation_id=None)
    assert end["state"] == "complete", end
    [request] = upstream.stream_requests()
    assert request.path == "/v1/chat/completions"
    assert await ledger_styles() == ["chat_completions"]


def test_the_page_says_what_needs_the_responses_api(client, alice, settings, upstream):
    client.force_login(alice)
    settings.XAI_API_STYLE = "auto"  # the loopback upstream: chat completions
    html = client.get("/").content.decode()
    assert 'id="api-style-note"' in html and "need xAI's Responses API" in html
    assert 'data-api-style="chat_completions"' in html

    settings.XAI_API_STYLE = "responses"
    page = client.get("/")
    assert page.context["responses_api"] is True
    assert 'id="api-style-note"' not in page.content.decode()


# ---------------------------------------------------------------------------- reasoning


async def test_the_second_turn_sends_the_first_answers_encrypted_reasoning_verbatim_and_in_order(
    upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = "responses"
    upstream.queue(Reply(body=transcript(ENCRYPTED), pieces="random"), reasoning_reply("B", "Ok"))
    socket = await socket_for(alice)
    first = await ask(socket, type="send", content="Sonoran food?", conversation_id=None)
    assert first["state"] == "complete", first
    await ask(socket, type="send", content="And drinks?", conversation_id=first["conversation_id"])

    items = final_output(ENCRYPTED)
    assert [item["type"] for item in items] == ["reasoning", "message"]
    assert len(items[0]["encrypted_content"]) == 1731
    # Saved with the answer, as the upstream sent them.
    assert (await saved(first["message_id"])).output_items == items
    second = sent_bodies(upstream)[1]
    assert second["input"] == [
        {"role": "user", "content": "Sonoran food?"},
        *items,  # the reasoning item first, encrypted content and all, then the message
        {"role": "user", "content": "And drinks?"},
    ]
    assert second["store"] is False
    assert second["include"] == ["reasoning.encrypted_content"]


async def test_store_is_sent_as_configured(upstream, settings, alice, socket_for):
    settings.XAI_API_STYLE = "responses"
    upstream.queue(reasoning_reply("A", "One."), reasoning_reply("B", "Two."))
    socket = await socket_for(alice)
    await ask(socket, type="send", content="Hello", conversation_id=None)
    settings.XAI_STORE = True
    await ask(socket, type="send", content="Hello again", conversation_id=None)
    assert [body["store"] for body in sent_bodies(upstream)] == [False, True]


async def test_an_answer_cut_short_keeps_no_items_and_goes_back_as_text(
    upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = "responses"
    whole = transcript(ENCRYPTED)
    # The stream breaks after the text began, before response.completed.
    upstream.queue(Reply(body=whole[: len(whole) // 2], end="drop"), reasoning_reply("B", "Ok"))
    socket = await socket_for(alice)
    first = await ask(socket, type="send", content="Sonoran food?", conversation_id=None)
    assert first["state"] == "error"
    cut = await saved(first["message_id"])
    assert cut.content and cut.output_items == []

    await ask(socket, type="send", content="Go on", conversation_id=first["conversation_id"])
    assert sent_bodies(upstream)[1]["input"] == [
        {"role": "user", "content": "Sonoran food?"},
        {"role": "assistant", "content": cut.content},
        {"role": "user", "content": "Go on"},
    ]


async def test_a_regenerated_branch_sends_the_items_of_the_answers_on_its_own_path_only(
    upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = "responses"
    upstream.queue(
        reasoning_reply("enc-A", "A."),
        reasoning_reply("enc-B", "B."),
        reasoning_reply("enc-C", "C."),  # A again (regenerated): its sibling
        reasoning_reply("enc-D", "D."),
    )
    socket = await socket_for(alice)
    a = await ask(socket, type="send", content="one", conversation_id=None)
    conversation_id = a["conversation_id"]
    await ask(socket, type="send", content="two", conversation_id=conversation_id)
    c = await ask(socket, type="regenerate", message_id=a["message_id"])
    assert c["state"] == "complete"
    await ask(socket, type="send", content="three", conversation_id=conversation_id)

    a_items = (await saved(a["message_id"])).output_items
    c_items = (await saved(c["message_id"])).output_items
    bodies = sent_bodies(upstream)
    assert bodies[1]["input"] == [said("one"), *a_items, said("two")]
    # Regenerating A sends the question alone: neither A's items nor B's.
    assert bodies[2]["input"] == [said("one")]
    # After it, the path is one, C, three: C's items, never A's or B's.
    assert bodies[3]["input"] == [said("one"), *c_items, said("three")]
    assert [item.get("encrypted_content") for item in c_items] == ["enc-C", None]
    assert "enc-A" not in json.dumps(bodies[3]) and "enc-B" not in json.dumps(bodies[3])


async def test_other_styles_send_an_answer_with_items_as_its_text(
    upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = "responses"
    upstream.queue(reasoning_reply("enc-A", "A."))
    socket = await socket_for(alice)
    a = await ask(socket, type="send", content="one", conversation_id=None)
    assert (await saved(a["message_id"])).output_items  # kept, for a Responses request

    settings.XAI_API_STYLE = "chat_completions"  # the site moved to another server
    await ask(socket, type="send", content="two", conversation_id=a["conversation_id"])
    assert sent_bodies(upstream)[1]["messages"] == [
        said("one"),
        {"role": "assistant", "content": "A."},
        said("two"),
    ]


# ---------------------------------------------------------------------------- cache key


async def test_every_turn_of_a_conversation_has_one_prompt_cache_key_and_another_has_another(
    upstream, settings, alice, bob, socket_for
):
    settings.XAI_API_STYLE = "responses"
    upstream.queue(*(reasoning_reply(f"enc-{n}", f"{n}.") for n in range(4)))
    alices = await socket_for(alice)
    first = await ask(alices, type="send", content="one", conversation_id=None)
    await ask(alices, type="send", content="two", conversation_id=first["conversation_id"])
    other = await ask(alices, type="send", content="elsewhere", conversation_id=None)
    bobs = await ask(await socket_for(bob), type="send", content="bob's", conversation_id=None)

    keys = [body["prompt_cache_key"] for body in sent_bodies(upstream)]
    assert keys[0] == keys[1] == await cache_key_of(first["conversation_id"])
    assert keys[2] == await cache_key_of(other["conversation_id"])
    assert keys[3] == await cache_key_of(bobs["conversation_id"])
    assert len(set(keys)) == 3
    # Not to be guessed from the id: it takes SECRET_KEY to make one.
    settings.SECRET_KEY = "another secret key, another set of cache keys, 50 chars"
    assert await cache_key_of(first["conversation_id"]) != keys[0]


async def test_chat_completions_send_the_cache_key_as_the_x_grok_conv_id_header(
    upstream, alice, socket_for
):
    socket = await socket_for(alice)  # XAI_API_STYLE chat_completions (tests' upstream)
    first = await ask(socket, type="send", content="one", conversation_id=None)
    await ask(socket, type="send", content="two", conversation_id=first["conversation_id"])
    other = await ask(socket, type="send", content="elsewhere", conversation_id=None)

    requests = upstream.stream_requests()
    headers = [request.headers.get("x-grok-conv-id") for request in requests]
    assert headers[0] == headers[1] == await cache_key_of(first["conversation_id"])
    assert headers[2] == await cache_key_of(other["conversation_id"]) != headers[0]
    assert all("prompt_cache_key" not in request.json() for request in requests)
