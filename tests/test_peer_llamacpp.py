"""The peer check: the app against llama.cpp's OpenAI-compatible server and a real model.

llama.cpp is the server that issue 15 names for "any OpenAI-compatible server": it has no
`/language-models`, lists its model in OpenAI's `/v1/models`, and reports usage in a
last chunk when asked with `stream_options.include_usage`. The app speaks Chat Completions
to it (`XAI_API_STYLE=chat_completions`). The tokens a ledger row holds are checked
against the server's own counters (its /metrics), not against what the app relayed.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache

from chat.catalog import CACHE_KEY
from chat.models import Message, Usage
from tests.conftest import API_KEY
from tests.llamacpp import (
    MAX_ANSWER_TOKENS,
    MODEL_ID,
    LlamaServer,
    llama_server,
    missing,
    model_path,
)

# A real model on a CPU core: seconds, not the milliseconds of the fake upstream.
ANSWER_TIMEOUT = 120


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Iterator[LlamaServer]:
    needs = missing()
    if needs:
        pytest.fail(f"The peer check needs {needs}: run `make install`.", pytrace=False)
    model = model_path()
    assert model is not None
    log = tmp_path_factory.mktemp("llamacpp") / "server.log"
    with llama_server(model, API_KEY, log) as server:
        yield server


@pytest.fixture
def peer(llama: LlamaServer, settings) -> Iterator[LlamaServer]:
    """The app's settings pointed at llama.cpp, as its environment would set them."""
    settings.XAI_BASE_URL = llama.url + "/v1"
    settings.XAI_API_KEY = API_KEY
    settings.XAI_API_STYLE = "chat_completions"
    settings.UPSTREAM_MAX_RETRIES = 0
    cache.delete(CACHE_KEY)  # other tests' model lists (the fake upstream's) stay out
    yield llama
    cache.delete(CACHE_KEY)


def picker_options(html: str) -> list[str]:
    picker = re.search(r'<select id="model-picker".*?</select>', html, re.DOTALL)
    assert picker is not None, "no model picker on the page"
    return re.findall(r'<option value="([^"]*)"', picker.group(0))


def tokens_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """What one request cost by the server's counters: the prompt tokens it evaluated
    plus those it took from its cache, the cached ones, and the tokens it generated."""

    def spent(name: str) -> int:
        return round(after[name] - before[name])

    cached = spent("prompt_tokens_cached_total")
    prompt = spent("prompt_tokens_total") + cached
    completion = spent("tokens_predicted_total")
    return {
        "prompt_tokens": prompt,
        "cached_prompt_tokens": cached,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def ledger_tokens(usage: Usage | dict) -> dict[str, int]:
    names = ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "total_tokens")
    if isinstance(usage, dict):
        return {name: usage[name] for name in names}
    return {name: getattr(usage, name) for name in names}


@pytest.mark.django_db
def test_the_model_picker_offers_the_model_llama_cpp_lists_in_openais_shape(
    peer: LlamaServer, client, alice, settings
) -> None:
    # llama.cpp has only OpenAI's list (`data`), not xAI's /language-models.
    assert peer.get("/v1/language-models").status_code == 404
    listed = [item["id"] for item in peer.get("/v1/models").json()["data"]]
    assert listed == [MODEL_ID]

    client.force_login(alice)
    options = picker_options(client.get("/").content.decode())
    assert MODEL_ID in options
    # Nothing else, but the configured default, which the app always offers.
    assert set(options) - {settings.CHAT_DEFAULT_MODEL} == {MODEL_ID}


@database_sync_to_async
def _saved(message_id: int) -> tuple[Message, list[Usage]]:
    return Message.objects.get(id=message_id), list(Usage.objects.filter(message_id=message_id))


async def _ask(socket, peer: LlamaServer, **frame) -> tuple[dict, list[dict], dict[str, int]]:
    """Send one message; message.end, every frame, and the tokens the server counted."""
    before = await asyncio.to_thread(peer.counters)
    await socket.send(type="send", model=MODEL_ID, **frame)
    end, frames = await socket.until("message.end", timeout=ANSWER_TIMEOUT)
    after = await asyncio.to_thread(peer.counters)
    return end, frames, tokens_spent(before, after)


@pytest.mark.django_db(transaction=True)
async def test_alice_streams_two_answers_from_llama_cpp_each_saved_with_the_tokens_it_counted(
    peer: LlamaServer, alice, socket_for
) -> None:
    socket = await socket_for(alice)
    end, frames, spent = await _ask(
        socket, peer, content="What is the capital of France?", conversation_id=None
    )

    deltas = [f for f in frames if f["type"] == "delta"]
    assert deltas, "no delta arrived"
    assert end["state"] == "complete", end
    assert end["model"] == MODEL_ID
    assert end["finish_reason"] in ("stop", "length")
    assert end["usage"]["source"] == "reported"
    assert ledger_tokens(end["usage"]) == spent
    assert 0 < spent["completion_tokens"] <= MAX_ANSWER_TOKENS

    message, [first] = await _saved(end["message_id"])
    text = "".join(f["content"] for f in deltas)
    assert text.strip() and message.content == text and message.state == "complete"
    assert first.source == Usage.Source.REPORTED and first.outcome == "complete"
    assert ledger_tokens(first) == spent
    assert first.api_style == "chat_completions" and first.requested_model == MODEL_ID
    assert first.model == MODEL_ID and first.response_id.startswith("chatcmpl-")
    # The server's own report, stored as it came.
    assert first.raw_usage is not None
    assert first.raw_usage["completion_tokens"] == spent["completion_tokens"]

    # The second turn sends the first one again: llama.cpp serves it from its cache and
    # says so (prompt_tokens_details.cached_tokens), and the ledger keeps that apart.
    second, _, spent = await _ask(
        socket, peer, content="And of Italy?", conversation_id=end["conversation_id"]
    )
    assert second["state"] == "complete", second
    assert spent["cached_prompt_tokens"] > 0
    message, [usage] = await _saved(second["message_id"])
    assert message.content and ledger_tokens(usage) == spent
    # The first question and answer went with it: a longer prompt than the first one.
    assert usage.prompt_tokens > first.prompt_tokens
