"""A conversation's settings, the system prompt and what a model refuses, as the upstream
receives them (the loopback upstream's recorded request bodies)."""

from __future__ import annotations

from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from chat.billing import fit_history
from chat.catalog import models_offered
from chat.models import Conversation, Message, SiteSettings, UserSettings
from tests.fake_upstream import Reply, transcript
from tests.test_upstream import responses_stream

pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS = {
    "system_prompt": "Answer in French.",
    "temperature": 0.7,
    "top_p": 0.9,
    "max_output_tokens": 1000,
    "reasoning_effort": "high",
}
SYSTEM = "Be brief.\n\nI am a chemist.\n\nAnswer in French."


@pytest.fixture(autouse=True)
def _no_cached_model_list():
    cache.clear()  # what the model list said in another test must not decide here
    yield
    cache.clear()


@database_sync_to_async
def _site_and_custom_instructions(user, site: str, custom: str) -> None:
    SiteSettings.objects.create(default_system_prompt=site)
    UserSettings.objects.create(user=user, custom_instructions=custom)


@database_sync_to_async
def _conversation(conversation_id: int) -> Conversation:
    return Conversation.objects.get(id=conversation_id)


@database_sync_to_async
def _counts() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


async def _send(socket, **frame: Any) -> tuple[dict, list[dict]]:
    await socket.send(type="send", content="Hello", conversation_id=None, **frame)
    return await socket.until("message.end")


STYLE_REPLIES = {
    "chat_completions": lambda: transcript("fantasy-xai-grok-3-mini-1.sse"),
    "responses": responses_stream,
    "anthropic_messages": lambda: transcript("fantasy-anthropic-claude-sonnet-4-1.sse"),
}


@pytest.mark.parametrize("style", list(STYLE_REPLIES))
async def test_the_system_prompt_and_the_settings_reach_each_api_style_by_its_own_names(
    style, upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = style
    await _site_and_custom_instructions(alice, "Be brief.", "  I am a chemist.\n")
    upstream.queue(Reply(body=STYLE_REPLIES[style](), pieces="random"))
    socket = await socket_for(alice)
    end, _ = await _send(socket, model="grok-3-mini", settings=SETTINGS)
    assert end["state"] == "complete", end

    [request] = upstream.stream_requests()
    body = request.json()
    user_turn = {"role": "user", "content": "Hello"}
    assert body["temperature"] == 0.7 and body["top_p"] == 0.9
    if style == "chat_completions":
        assert body["messages"] == [{"role": "system", "content": SYSTEM}, user_turn]
        assert body["max_tokens"] == 1000 and body["reasoning_effort"] == "high"
    elif style == "responses":
        assert body["instructions"] == SYSTEM and body["input"] == [user_turn]
        assert body["max_output_tokens"] == 1000 and body["reasoning"] == {"effort": "high"}
        assert "reasoning_effort" not in body and "max_tokens" not in body
    else:
        assert body["system"] == SYSTEM and body["messages"] == [user_turn]
        assert body["max_tokens"] == 1000
        assert "reasoning_effort" not in body and "reasoning" not in body

    conversation = await _conversation(end["conversation_id"])
    assert {name: getattr(conversation, name) for name in SETTINGS} == SETTINGS


async def test_a_conversations_settings_apply_to_each_of_its_requests_and_unset_ones_to_none(
    upstream, alice, socket_for
):
    socket = await socket_for(alice)
    await _send(socket, model="grok-3-mini")  # no settings, no instructions: nothing added
    plain = upstream.stream_requests()[0].json()
    assert plain["messages"] == [{"role": "user", "content": "Hello"}]
    for name in ("temperature", "top_p", "max_tokens", "reasoning_effort"):
        assert name not in plain, name

    first, _ = await _send(socket, model="grok-4", settings={"system_prompt": "Be terse."})
    await socket.send(type="send", content="More", conversation_id=first["conversation_id"])
    await socket.until("message.end")
    second = upstream.stream_requests()[2].json()
    assert second["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Olá!"},
        {"role": "user", "content": "More"},
    ]
    assert "temperature" not in second and "max_tokens" not in second


async def test_effort_is_not_sent_to_a_model_that_refuses_it(upstream, alice, socket_for):
    socket = await socket_for(alice)
    end, _ = await _send(socket, model="grok-4", settings={**SETTINGS, "reasoning_effort": "low"})
    assert end["state"] == "complete"
    body = upstream.stream_requests()[0].json()
    assert "reasoning_effort" not in body
    assert body["temperature"] == 0.7 and body["max_tokens"] == 1000  # the rest still goes
    # Saved all the same: another model of the conversation may take it.
    assert (await _conversation(end["conversation_id"])).reasoning_effort == "low"


async def test_an_effort_the_model_does_not_take_is_not_sent_and_one_it_takes_is(
    upstream, alice, socket_for
):
    socket = await socket_for(alice)
    await _send(socket, model="grok-3-mini", settings={"reasoning_effort": "medium"})
    await _send(socket, model="grok-3-mini", settings={"reasoning_effort": "high"})
    medium, high = (request.json() for request in upstream.stream_requests())
    assert "reasoning_effort" not in medium  # grok-3-mini takes low and high only
    assert high["reasoning_effort"] == "high"


async def test_what_the_model_list_says_of_effort_wins_over_the_rules(upstream, alice, socket_for):
    upstream.language_models = {
        "models": [
            # The rules say grok-4.3 takes effort and grok-4-custom does not: the list wins.
            {"id": "grok-4.3", "aliases": [], "capabilities": {"reasoning_effort": False}},
            {
                "id": "grok-4-custom",
                "aliases": ["grok-custom-latest"],
                "capabilities": {"reasoning_effort": ["low", "high"]},
            },
        ]
    }
    await database_sync_to_async(models_offered)()  # as the chat page fetches the list
    socket = await socket_for(alice)
    await _send(socket, model="grok-4.3", settings={"reasoning_effort": "low"})
    await _send(socket, model="grok-custom-latest", settings={"reasoning_effort": "high"})
    refused, accepted = (request.json() for request in upstream.stream_requests())
    assert "reasoning_effort" not in refused
    assert accepted["reasoning_effort"] == "high"


async def test_a_temperature_above_anthropics_range_is_sent_as_its_highest(
    upstream, settings, alice, socket_for
):
    settings.XAI_API_STYLE = "anthropic_messages"
    upstream.queue(Reply(body=transcript("fantasy-anthropic-claude-sonnet-4-1.sse")))
    socket = await socket_for(alice)
    await _send(socket, model="claude-sonnet-4", settings={"temperature": 1.5})
    assert upstream.stream_requests()[0].json()["temperature"] == 1.0


BAD_SETTINGS = [
    ({"temperature": 2.5}, "temperature: Ensure this value is less than or equal to 2"),
    ({"temperature": -0.1}, "temperature: Ensure this value is greater than or equal to 0"),
    ({"top_p": 1.5}, "top_p: Ensure this value is less than or equal to 1"),
    ({"max_output_tokens": 0}, "max_output_tokens: Ensure this value is greater than"),
    ({"max_output_tokens": 10**9}, "max_output_tokens: Ensure this value is less than"),
    ({"max_output_tokens": 10.5}, "max_output_tokens: Enter a whole number"),
    ({"temperature": True}, "temperature: Enter a number"),
    ({"temperature": "hot"}, "temperature: Enter a number"),
    ({"temperature": 10**400}, "temperature: Enter a number"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort: Select a valid choice"),
    ({"system_prompt": 5}, "system_prompt: Enter text"),
    ({"system_prompt": ["a"]}, "system_prompt: Enter text"),
    ({"system_prompt": "a\x00b"}, "system_prompt: Null characters are not allowed"),
    ({"system_prompt": "half \ud83d of"}, "system_prompt: It holds a lone surrogate (U+D83D"),
    ({"system_prompt": "x" * 101}, "system_prompt: Ensure this value has at most 100"),
    ({"temprature": 1}, "unknown fields: 'temprature'"),
    ("hot", "The field 'settings' must be an object"),
]


@pytest.mark.parametrize(("bad", "says"), BAD_SETTINGS)
async def test_bad_settings_are_refused_and_nothing_is_saved_or_sent(
    bad, says, upstream, settings, alice, socket_for
):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    socket = await socket_for(alice)
    await socket.send(type="send", content="Hello", conversation_id=None, settings=bad)
    error, _ = await socket.until("error")
    assert error["code"] == "bad_frame" and says in error["message"], error
    assert await _counts() == (0, 0)
    assert upstream.stream_requests() == []


async def test_settings_are_for_a_new_conversation_only(upstream, alice, socket_for):
    socket = await socket_for(alice)
    first, _ = await _send(socket)
    await socket.send(
        type="send",
        content="More",
        conversation_id=first["conversation_id"],
        settings={"temperature": 1},
    )
    error, _ = await socket.until("error")
    assert error["code"] == "bad_frame" and "new conversation" in error["message"]
    assert len(upstream.stream_requests()) == 1
    assert (await _conversation(first["conversation_id"])).temperature is None


def test_fitting_the_history_never_drops_the_system_prompt():
    system = {"role": "system", "content": "s" * 400}  # 100 tokens and 4 of overhead
    turns = [
        system,
        {"role": "user", "content": "old question " * 40},
        {"role": "assistant", "content": "old answer " * 40},
        {"role": "user", "content": "new"},
    ]
    kept, dropped = fit_history(turns, 120)
    assert kept == [system, turns[-1]] and dropped == 2


@pytest.mark.django_db
def test_an_abandoned_answers_estimate_counts_the_system_prompt_it_was_sent(alice):
    conversation = Conversation.objects.create(user=alice, system_prompt="x" * 400)
    _, answer = conversation.start_answer("q" * 40, "grok-4", "gone-host:1")
    row = answer.interrupt_orphan()
    assert row is not None and row.source == "estimated"
    assert row.prompt_tokens == 100 + 10  # 4 characters a token, as docs/usage.md says
