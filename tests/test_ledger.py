"""The usage ledger: one row per upstream request whatever its end, priced, within limits."""

from __future__ import annotations

import datetime as dt
import io
import json
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.db.models import Sum
from django.utils import timezone

from chat.catalog import models_offered, sync_prices
from chat.models import Budget, Conversation, Message, ModelPrice, Usage, UsageDay
from chat.streams import interrupt_all
from tests.fake_upstream import (
    Reply,
    chunk,
    json_reply,
    slow_stream,
    sse,
    transcript,
    usage_chunk,
)

pytestmark = pytest.mark.django_db(transaction=True)

GROK_4_FAST = {"prompt": Decimal("0.20"), "cached_prompt": Decimal("0.05"), "completion": "0.50"}


@database_sync_to_async
def _rows(**filters) -> list[Usage]:
    return list(Usage.objects.filter(**filters).order_by("id"))


@database_sync_to_async
def _count(model) -> int:
    return model.objects.count()


@database_sync_to_async
def _set(kind, **fields):
    return kind.objects.create(**fields)


async def _ask(socket, text: str = "hello", model: str | None = None, conversation_id=None):
    await socket.send(type="send", content=text, conversation_id=conversation_id, model=model)
    end, frames = await socket.until("message.end")
    return end, frames


async def _one_row(message_id: int) -> Usage:
    rows = await _rows(message_id=message_id)
    assert len(rows) == 1, rows
    return rows[0]


# -- one row per request, whatever its end -----------------------------------------------


async def test_a_complete_answer_has_one_reported_row(upstream, alice, socket_for):
    socket = await socket_for(alice)
    end, _ = await _ask(socket)
    row = await _one_row(end["message_id"])
    assert row.outcome == "complete" and row.source == Usage.Source.REPORTED
    assert (row.prompt_tokens, row.cached_prompt_tokens) == (165, 164)
    # fantasy-xai-grok-4-fast-2.sse: xAI counts reasoning apart from completion.
    assert (row.completion_tokens, row.reasoning_tokens, row.total_tokens) == (2, 129, 296)
    assert row.cost_in_usd_ticks == row.reported_cost_ticks == 739000 and row.reported
    assert row.cost_source == Usage.CostSource.REPORTED
    assert row.model == "grok-4-fast-reasoning" and row.finish_reason == "stop"
    assert row.raw_usage["num_sources_used"] == 0
    assert end["usage"]["source"] == "reported" and end["usage"]["cost_usd"] == "0.0000739"


async def test_a_retried_request_is_recorded_once(upstream, alice, socket_for, settings):
    settings.UPSTREAM_MAX_RETRIES = 2
    upstream.queue(
        json_reply(503, {"error": "busy"}, **{"retry-after": "0"}),
        Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse")),
    )
    socket = await socket_for(alice)
    end, _ = await _ask(socket)
    assert end["state"] == "complete"
    assert len(upstream.stream_requests()) == 2
    row = await _one_row(end["message_id"])
    assert row.source == Usage.Source.REPORTED and row.cost_in_usd_ticks == 739000
    assert await _count(Usage) == 1


async def test_an_error_inside_the_stream_keeps_the_reported_usage(upstream, alice, socket_for):
    # Usage arrived, then an error event: the report stands, the answer is an error.
    body = sse(chunk("partial "), usage_chunk(30, 2), {"error": {"message": "overloaded"}})
    upstream.queue(Reply(body=body))
    socket = await socket_for(alice)
    end, _ = await _ask(socket)
    assert end["state"] == "error"
    row = await _one_row(end["message_id"])
    assert row.source == Usage.Source.REPORTED and row.outcome == "error"
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (30, 2, 32)


async def test_shutdown_interrupts_answers_and_records_them(upstream, alice, socket_for):
    upstream.queue(slow_stream(count=400, delay=0.02))
    socket = await socket_for(alice)
    await socket.send(type="send", content="count", conversation_id=None, model=None)
    start, _ = await socket.until("message.start")
    await socket.until("delta")
    assert await interrupt_all() == 1
    end, _ = await socket.until("message.end")
    assert end["state"] == "interrupted"
    row = await _one_row(start["message"]["id"])
    assert row.outcome == "interrupted" and row.source == Usage.Source.ESTIMATED
    assert row.completion_tokens > 0


async def test_watching_and_reconnecting_adds_no_rows(upstream, alice, socket_for):
    upstream.queue(slow_stream(count=20, delay=0.02))
    first = await socket_for(alice)
    await first.send(type="send", content="count", conversation_id=None, model=None)
    start, _ = await first.until("message.start")
    for _ in range(3):  # tabs come and go while it streams
        other = await socket_for(alice)
        await other.send(type="watch", conversation_id=start["conversation_id"])
        await other.until("watching")
        await other.close()
    await first.until("message.end")
    other = await socket_for(alice)
    await other.send(type="watch", conversation_id=start["conversation_id"])
    watching, _ = await other.until("watching")
    assert watching["recent"][0]["usage"]["source"] == "reported"
    assert await _count(Usage) == 1


async def test_the_days_totals_equal_what_the_upstream_reported(upstream, alice, bob, socket_for):
    names = [
        "fantasy-xai-grok-4-fast-2.sse",
        "fantasy-xai-grok-3-mini-1.sse",
        "fantasy-xai-grok-4-fast-tool-1.sse",
        "fantasy-xai-grok-code-fast-1.sse",
    ]
    expected = {"prompt_tokens": 0, "total_tokens": 0, "reasoning_tokens": 0}
    expected_cost = 0
    for user in (alice, bob):
        socket = await socket_for(user)
        for name in names:
            upstream.queue(Reply(body=transcript(name), pieces="random"))
            await _ask(socket)
            raw = _last_usage(transcript(name))
            expected["prompt_tokens"] += raw["prompt_tokens"]
            expected["total_tokens"] += raw["total_tokens"]
            expected["reasoning_tokens"] += raw["completion_tokens_details"]["reasoning_tokens"]
            expected_cost += raw.get("cost_in_usd_ticks", 0)

    totals = await database_sync_to_async(UsageDay.objects.all().sums)()
    assert totals["requests"] == 8 and totals["errors"] == 0 and totals["estimated"] == 0
    assert {key: totals[key] for key in expected} == expected
    assert totals["cost_in_usd_ticks"] == expected_cost
    # grok-code-fast-1's recording carries no cost and no price is known: counted as such.
    assert totals["unpriced"] == 2

    ledger = await database_sync_to_async(
        lambda: Usage.objects.aggregate(t=Sum("total_tokens"), c=Sum("cost_in_usd_ticks"))
    )()
    assert (ledger["t"], ledger["c"]) == (expected["total_tokens"], expected_cost)
    before = await database_sync_to_async(
        lambda: sorted(UsageDay.objects.values_list("user", "model", "total_tokens", "requests"))
    )()
    await database_sync_to_async(UsageDay.rebuild)()
    after = await database_sync_to_async(
        lambda: sorted(UsageDay.objects.values_list("user", "model", "total_tokens", "requests"))
    )()
    assert before == after and len(after) >= 6


def _last_usage(body: bytes) -> dict:
    usage = None
    for line in body.decode().splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    return usage


# -- prices ------------------------------------------------------------------------------


async def test_without_a_reported_cost_the_admins_price_gives_it(upstream, alice, socket_for):
    await _set(ModelPrice, model="grok-code-fast-1", **GROK_4_FAST)
    upstream.queue(Reply(body=transcript("fantasy-xai-grok-code-fast-1.sse")))
    socket = await socket_for(alice)
    end, _ = await _ask(socket, model="grok-code-fast-1")
    row = await _one_row(end["message_id"])
    # 213 prompt of which 192 cached, 27 completion, 133 reasoning billed as completion.
    assert row.cost_source == Usage.CostSource.COMPUTED
    assert row.cost_in_usd_ticks == 21 * 2000 + 192 * 500 + (27 + 133) * 5000
    assert (row.price_prompt, row.price_cached_prompt, row.price_completion) == (2000, 500, 5000)
    assert row.price_reasoning is None


async def test_a_reported_cost_wins_over_the_computed_one(upstream, alice, socket_for):
    await _set(ModelPrice, model="grok-4-fast", prompt=1, cached_prompt=1, completion=1)
    socket = await socket_for(alice)
    end, _ = await _ask(socket, model="grok-4-fast")
    row = await _one_row(end["message_id"])
    assert row.cost_source == Usage.CostSource.REPORTED and row.cost_in_usd_ticks == 739000
    assert row.computed_cost_ticks == (1 + 164 + 2 + 129) * 10_000


async def test_a_later_price_change_never_rewrites_old_rows(upstream, alice, socket_for):
    price = await _set(ModelPrice, model="grok-code-fast-1", **GROK_4_FAST)
    socket = await socket_for(alice)
    upstream.queue(Reply(body=transcript("fantasy-xai-grok-code-fast-1.sse")))
    first, _ = await _ask(socket, model="grok-code-fast-1")
    price.completion = Decimal("1.00")
    await database_sync_to_async(price.save)()
    upstream.queue(Reply(body=transcript("fantasy-xai-grok-code-fast-1.sse")))
    second, _ = await _ask(socket, model="grok-code-fast-1")
    old, new = await _one_row(first["message_id"]), await _one_row(second["message_id"])
    assert old.price_completion == 5000 and new.price_completion == 10000
    assert old.cost_in_usd_ticks == 21 * 2000 + 192 * 500 + 160 * 5000
    assert new.cost_in_usd_ticks == 21 * 2000 + 192 * 500 + 160 * 10000


def test_xais_list_prices_are_stored_for_models_and_aliases(upstream, settings):
    upstream.language_models = {
        "models": [
            {
                "id": "grok-4-fast-reasoning",
                "aliases": ["grok-4-fast"],
                "prompt_text_token_price": 2000,
                "cached_prompt_text_token_price": 500,
                "completion_text_token_price": 5000,
            },
            {"id": "grok-imagine", "aliases": []},
        ]
    }
    ModelPrice.objects.create(model="grok-4-fast", prompt=9, completion=9, source="admin")
    assert sync_prices() == 1
    stored = ModelPrice.objects.get(model="grok-4-fast-reasoning")
    assert (stored.prompt, stored.cached_prompt, stored.completion) == (
        Decimal("0.2"),
        Decimal("0.05"),
        Decimal("0.5"),
    )
    assert stored.source == "xai"
    # An admin's price is kept; models without prices get no row.
    assert ModelPrice.objects.get(model="grok-4-fast").prompt == 9
    assert not ModelPrice.objects.filter(model="grok-imagine").exists()
    assert "grok-imagine" in models_offered()


# -- budgets and limits ------------------------------------------------------------------


async def _refused(socket, upstream, code: str) -> dict:
    requests = len(upstream.stream_requests())
    messages = await _count(Message)
    conversations = await _count(Conversation)
    await socket.send(type="send", content="one more", conversation_id=None, model=None)
    frame, _ = await socket.until("error")
    assert frame["code"] == code
    assert len(upstream.stream_requests()) == requests, "an upstream request was made"
    assert await _count(Message) == messages and await _count(Conversation) == conversations
    return frame


async def test_a_user_over_their_token_budget_triggers_no_upstream_request(
    upstream, alice, socket_for
):
    await _set(Budget, user=alice, period="day", max_tokens=300)
    socket = await socket_for(alice)
    await _ask(socket)  # 296 tokens: under
    await _ask(socket)  # 592: this one was allowed to start, now over
    frame = await _refused(socket, upstream, "over_budget")
    assert "592 of 300 tokens" in frame["message"]
    assert len(upstream.stream_requests()) == 2


async def test_the_default_budget_applies_and_a_users_own_replaces_it(
    upstream, alice, bob, socket_for
):
    await _set(Budget, user=None, period="month", max_cost_usd=Decimal("0.0001"))
    await _set(Budget, user=bob, period="month", max_cost_usd=None)
    alice_socket, bob_socket = await socket_for(alice), await socket_for(bob)
    await _ask(alice_socket)
    await _ask(alice_socket)  # 2 x 739000 ticks = $0.0001478
    frame = await _refused(alice_socket, upstream, "over_budget")
    assert "($0.0001478 of $0.0001)" in frame["message"] and "this month" in frame["message"]
    for _ in range(3):  # bob's own budget has no money limit
        end, _ = await _ask(bob_socket)
        assert end["state"] == "complete"


async def test_usage_before_the_period_does_not_count(upstream, alice, socket_for):
    await _set(Budget, user=alice, period="day", max_tokens=300)
    yesterday = timezone.localdate() - dt.timedelta(days=1)
    await _set(UsageDay, day=yesterday, user=alice, model="grok-4", total_tokens=10_000)
    socket = await socket_for(alice)
    end, _ = await _ask(socket)
    assert end["state"] == "complete"


async def test_a_user_over_the_message_rate_is_refused(upstream, alice, socket_for):
    await _set(Budget, user=alice, max_messages_per_minute=2)
    socket = await socket_for(alice)
    await _ask(socket)
    await _ask(socket)
    frame = await _refused(socket, upstream, "rate_limited")
    assert 1 <= frame["retry_after"] <= 61 and "2 messages a minute" in frame["message"]


async def test_a_user_at_the_concurrent_stream_limit_is_refused(upstream, alice, socket_for):
    await _set(Budget, user=alice, max_concurrent_streams=1)
    upstream.queue(slow_stream(count=400, delay=0.02))
    socket = await socket_for(alice)
    await socket.send(type="send", content="long", conversation_id=None, model=None)
    start, _ = await socket.until("message.start")
    await socket.until("delta")
    frame = await _refused(socket, upstream, "too_many_streams")
    assert "limit is 1" in frame["message"]
    await socket.send(type="stop", message_id=start["message"]["id"])
    await socket.until("message.end")
    end, _ = await _ask(socket)  # free again once it ended
    assert end["state"] == "complete"


def test_budget_status_warns_from_80_percent(alice):
    from chat.models import budget_status

    Budget.objects.create(user=alice, period="month", max_tokens=1000)
    UsageDay.objects.create(day=timezone.localdate(), user=alice, model="m", total_tokens=799)
    status = budget_status(alice)
    assert (status.percent, status.near, status.over) == (79, False, False)
    UsageDay.objects.filter(user=alice).update(total_tokens=800)
    status = budget_status(alice)
    assert (status.percent, status.near, status.over, status.tokens_left) == (80, True, False, 200)
    UsageDay.objects.filter(user=alice).update(total_tokens=1000)
    assert budget_status(alice).over


def test_the_commands_fetch_prices_and_rebuild_the_days(upstream, alice):
    from django.core.management import call_command

    upstream.language_models = {
        "models": [
            {
                "id": "grok-3-mini",
                "prompt_text_token_price": 3000,
                "cached_prompt_text_token_price": 750,
                "completion_text_token_price": 5000,
            }
        ]
    }
    out = io.StringIO()
    call_command("sync_prices", stdout=out)
    assert "1 model prices stored" in out.getvalue()
    assert ModelPrice.objects.get(model="grok-3-mini").cached_prompt == Decimal("0.075")

    conversation = Conversation.objects.create(user=alice)
    _, answer = conversation.start_answer("hi", "grok-3-mini")
    answer.finish(
        user_id=alice.id,
        usage={"prompt_tokens": 10, "total_tokens": 10, "source": "reported"},
        state="complete",
    )
    UsageDay.objects.update(total_tokens=0)  # drifted
    call_command("rebuild_usage_days", stdout=out)
    day = UsageDay.objects.get()
    assert (day.total_tokens, day.requests, day.cost_in_usd_ticks) == (10, 1, 30000)


def test_admins_edit_prices_and_budgets_and_only_read_the_ledger(client, staff, alice):
    client.force_login(staff)
    for url in ("/admin/chat/modelprice/", "/admin/chat/budget/", "/admin/chat/usage/"):
        assert client.get(url).status_code == 200, url
    assert client.get("/admin/chat/usage/add/").status_code == 403
    response = client.post(
        "/admin/chat/modelprice/add/",
        {"model": "grok-4", "prompt": "3", "cached_prompt": "0.75", "completion": "15"},
    )
    assert response.status_code == 302, response.content[:2000]
    price = ModelPrice.objects.get(model="grok-4")
    assert price.source == "admin" and price.as_price().completion == 150000
    response = client.post(
        "/admin/chat/budget/add/",
        {"user": alice.id, "period": "day", "max_tokens": "5000", "max_cost_usd": "1.25"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert Budget.objects.for_user(alice).max_cost_ticks == 12_500_000_000


def test_deleting_a_conversation_keeps_what_it_cost(upstream, alice, client):
    conversation = Conversation.objects.create(user=alice)
    _, answer = conversation.start_answer("hi", "grok-4")
    answer.finish(
        user_id=alice.id,
        usage={"prompt_tokens": 10, "total_tokens": 10, "source": "reported"},
        state="complete",
    )
    client.force_login(alice)
    client.post(f"/c/{conversation.id}/delete/")
    assert not Conversation.objects.exists()
    row = Usage.objects.get()
    assert (row.user, row.total_tokens, row.conversation, row.message) == (alice, 10, None, None)
    assert UsageDay.objects.get().total_tokens == 10


async def test_the_history_is_cut_to_the_context_window_and_the_user_told(
    upstream, alice, socket_for, settings
):
    settings.CHAT_CONTEXT_TOKENS = 1000
    settings.CHAT_ANSWER_RESERVE_TOKENS = 200  # 800 tokens, about 3,200 characters, of history
    socket = await socket_for(alice)
    first, _ = await _ask(socket, text="a" * 1600)
    conversation_id = first["conversation_id"]
    await _ask(socket, text="b" * 1600, conversation_id=conversation_id)
    await socket.send(type="send", content="c" * 400, conversation_id=conversation_id)
    start, _ = await socket.until("message.start")
    await socket.until("message.end")
    body = upstream.stream_requests()[-1].json()
    # The first question and its answer no longer fit: the newest turns are sent, oldest out.
    assert [m["content"][:1] for m in body["messages"]] == ["b", "O", "c"]
    assert start["history_dropped"] == 2
    row = (await _rows(message_id=start["message"]["id"]))[0]
    assert row.source == Usage.Source.REPORTED


def test_fitting_the_history_keeps_the_newest_turn_and_starts_with_a_question():
    from chat.billing import fit_history

    turns = [
        {"role": "user", "content": "q" * 400},
        {"role": "assistant", "content": "a" * 400},
        {"role": "user", "content": "x" * 4000},
    ]
    assert fit_history(turns, 10_000) == (turns, 0)
    assert fit_history(turns, 1105) == ([turns[2]], 2)  # the answer alone would fit
    assert fit_history(turns, 5) == ([turns[2]], 2)  # the question is always sent
