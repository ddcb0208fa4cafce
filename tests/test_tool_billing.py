"""Server-side tool calls on the bill (issue 15): counted on the ledger row, in the daily
totals, the reports, the CSV and message.end, and priced per 1,000 calls where the upstream
reports no cost.

The streams are the recorded xAI Responses web search stream
(tests/fixtures/upstream/vercel-xai-responses-web-search-1.sse, SOURCES.md: input 1875,
cached 1578, output 695, reasoning 397, total 2570, num_server_side_tools_used 1, no cost)
as recorded, or with its final usage replaced by one in the same shape that also lists the
calls by kind (`server_side_tool_usage_details`, as in xAI's x-search recording).
"""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async

from chat import billing
from chat.models import ModelPrice, ToolPrice, Usage, UsageDay
from tests.fake_upstream import Reply, transcript

pytestmark = pytest.mark.django_db(transaction=True)

WEB_SEARCH = "vercel-xai-responses-web-search-1.sse"
MODEL = "grok-4-fast-reasoning"
# $0.20 / $0.05 / $0.50 per million: 2000, 500 and 5000 ticks a token.
GROK_4_FAST = {"prompt": Decimal("0.20"), "cached_prompt": Decimal("0.05"), "completion": "0.50"}
FIVE_DOLLARS_A_THOUSAND = 50_000_000  # ticks per call
# The recording's tokens at GROK_4_FAST: its output of 695 holds the 397 of reasoning,
# each priced once (at the completion price, as xAI bills reasoning).
TOKENS_COST = (1875 - 1578) * 2000 + 1578 * 500 + (695 - 397) * 5000 + 397 * 5000


def recorded_usage() -> dict[str, Any]:
    """The usage of the recording's response.completed, read with the json module."""
    for line in transcript(WEB_SEARCH).decode().splitlines():
        if line.startswith("data: ") and '"response.completed"' in line:
            return json.loads(line[6:])["response"]["usage"]
    raise AssertionError("no response.completed in the recording")


def with_details(cost: int | None = None, **calls: int) -> dict[str, Any]:
    """The recorded usage, reporting `calls` by kind (and `cost`, if given)."""
    details = {
        "web_search_calls": 0,
        "x_search_calls": 0,
        "code_interpreter_calls": 0,
        "file_search_calls": 0,
        "mcp_calls": 0,
        "document_search_calls": 0,
        **calls,
    }
    usage = {
        **recorded_usage(),
        "num_server_side_tools_used": sum(calls.values()),
        "server_side_tool_usage_details": details,
    }
    if cost is not None:
        usage["cost_in_usd_ticks"] = cost
    return usage


def stream(usage: dict[str, Any] | None = None) -> bytes:
    """The recorded stream; with `usage`, its response.completed reports that instead."""
    lines = transcript(WEB_SEARCH).decode().split("\n")
    if usage is not None:
        for index, line in enumerate(lines):
            if line.startswith("data: ") and '"response.completed"' in line:
                event = json.loads(line[6:])
                event["response"]["usage"] = usage
                lines[index] = "data: " + json.dumps(event)
    return "\n".join(lines).encode()


@pytest.fixture
def responses(upstream, settings):
    settings.XAI_API_STYLE = "responses"
    settings.CHAT_TITLES = False  # no title requests: the totals are the answers' alone
    return upstream


async def ask(socket, reply: Reply, upstream) -> dict[str, Any]:
    upstream.queue(reply)
    await socket.send(type="send", content="What is xAI?", conversation_id=None, model=MODEL)
    end, _ = await socket.until("message.end")
    assert end["state"] == "complete", end
    return end


@database_sync_to_async
def row_of(end: dict[str, Any]) -> Usage:
    rows = list(Usage.objects.filter(message_id=end["message_id"]))
    assert len(rows) == 1, rows
    return rows[0]


@database_sync_to_async
def create(kind, **fields):
    return kind.objects.create(**fields)


@database_sync_to_async
def day_values(*names: str) -> list[tuple[Any, ...]]:
    return sorted(UsageDay.objects.values_list("user", "model", *names))


# -- the arithmetic --------------------------------------------------------------------------


def test_five_dollars_per_thousand_calls_is_fifty_million_ticks_a_call() -> None:
    assert billing.usd_per_thousand_calls_to_ticks(Decimal("5")) == FIVE_DOLLARS_A_THOUSAND
    assert billing.usd_per_thousand_calls_to_ticks(Decimal("2.50")) == 25_000_000
    assert 1000 * FIVE_DOLLARS_A_THOUSAND == 5 * billing.TICKS_PER_USD
    with pytest.raises(ValueError):
        billing.usd_per_thousand_calls_to_ticks(Decimal("0.00000001"))


def test_tool_calls_are_priced_by_kind_and_those_without_a_price_are_counted() -> None:
    details = {"web_search_calls": 2, "x_search_calls": 1, "mcp_calls": 0}
    cost = billing.tool_calls_cost({"web_search": 50_000_000, "mcp": 7}, 3, details)
    assert (cost.ticks, cost.prices, cost.unpriced) == (100_000_000, {"web_search": 50_000_000}, 1)
    # Calls the report does not itemise have no kind, so no price.
    assert billing.tool_calls_cost({"web_search": 50_000_000}, 1, {}).unpriced == 1
    both = {"web_search": 50_000_000, "x_search": 25_000_000}
    priced = billing.tool_calls_cost(both, 3, details)
    assert (priced.ticks, priced.unpriced) == (125_000_000, 0)


def test_counts_that_are_not_calls_are_neither_counted_nor_priced() -> None:
    details = {"x_search_calls": 1, "x_posts_fetched": 9, "_calls": 4}
    assert billing.calls_by_tool(details) == {"x_search": 1}
    assert billing.tool_call_count(0, details) == 1  # the details alone: their calls
    assert billing.tool_call_count(3, details) == 3  # the total reported wins when larger
    assert billing.tool_calls_cost({"x_search": 5}, 1, details).ticks == 5


# -- the ledger, the days, message.end -------------------------------------------------------


async def test_a_responses_report_with_tool_usage_lands_on_the_row_the_day_and_message_end(
    responses, alice, socket_for
):
    socket = await socket_for(alice)
    recorded = await ask(socket, Reply(body=stream(), pieces="random"), responses)
    itemised = await ask(
        socket,
        Reply(body=stream(with_details(web_search_calls=2, x_search_calls=1)), pieces="random"),
        responses,
    )

    row = await row_of(recorded)
    assert (row.num_server_side_tools_used, row.server_side_tool_usage_details) == (1, {})
    assert recorded["usage"]["tool_calls"] == 1
    assert recorded["usage"]["web_search_calls"] == recorded["usage"]["x_search_calls"] == 0

    row = await row_of(itemised)
    assert row.num_server_side_tools_used == 3
    assert row.server_side_tool_usage_details["web_search_calls"] == 2
    assert row.server_side_tool_usage_details["x_search_calls"] == 1
    assert (row.prompt_tokens, row.total_tokens) == (1875, 2570)
    usage = itemised["usage"]
    assert (usage["tool_calls"], usage["web_search_calls"], usage["x_search_calls"]) == (3, 2, 1)

    names = ("requests", "tool_calls", "web_search_calls", "x_search_calls")
    assert await day_values(*names) == [(alice.id, MODEL, 2, 4, 2, 1)]
    await database_sync_to_async(UsageDay.rebuild)()
    assert await day_values(*names, "unpriced_tool_calls") == [(alice.id, MODEL, 2, 4, 2, 1, 0)]


async def test_the_report_the_csv_and_the_usage_pages_count_the_tool_calls(
    responses, alice, staff, socket_for, client
):
    socket = await socket_for(alice)
    await ask(socket, Reply(body=stream()), responses)
    await ask(
        socket, Reply(body=stream(with_details(web_search_calls=2, x_search_calls=1))), responses
    )
    get = sync_to_async(client.get)
    await sync_to_async(client.force_login)(staff)

    html = (await get("/admin/usage/")).content.decode()
    for column in ("tool_calls", "web_search_calls", "x_search_calls"):
        assert re.search(rf'<td class="field-{column}">(\d+)</td>', html), column
    cells = dict(re.findall(r'<td class="field-(\w+_calls)">(\d+)</td>', html))
    assert cells == {"tool_calls": "4", "web_search_calls": "2", "x_search_calls": "1"}
    assert "4 tool calls: 2 web searches, 1 X search, 1 other" in html
    totals = re.search(r'<tr id="usage-totals">(.*?)</tr>', html, re.S).group(1)
    assert '<td class="num tool_calls">4</td>' in totals

    rows = list(csv.reader(io.StringIO((await get("/admin/usage/?format=csv")).content.decode())))
    found = dict(zip(rows[0], rows[1], strict=True))
    assert (found["tool_calls"], found["web_search_calls"], found["x_search_calls"]) == (
        "4",
        "2",
        "1",
    )

    html = (await get(f"/admin/usage/user/{alice.id}/")).content.decode()
    assert "4 tool calls: 2 web searches, 1 X search, 1 other" in html
    assert '<td class="num tool_calls">4</td>' in html  # its conversations, its models, days

    await sync_to_async(client.force_login)(alice)
    html = (await get("/usage/")).content.decode()
    assert re.search(
        r'id="usage-tool-calls">4 tool calls: 2 web searches, 1 X search, 1 other<', html
    )


# -- the cost --------------------------------------------------------------------------------


async def test_without_a_reported_cost_the_tool_calls_are_added_to_the_computed_cost(
    responses, alice, socket_for
):
    await create(ModelPrice, model=MODEL, **GROK_4_FAST)
    await create(ToolPrice, tool="web_search", usd_per_thousand_calls=Decimal("5"))
    await create(ToolPrice, tool="x_search", usd_per_thousand_calls=Decimal("2.5"))
    socket = await socket_for(alice)
    end = await ask(
        socket, Reply(body=stream(with_details(web_search_calls=2, x_search_calls=1))), responses
    )
    row = await row_of(end)
    assert row.cost_source == Usage.CostSource.COMPUTED and row.reported_cost_ticks is None
    assert row.cost_in_usd_ticks == TOKENS_COST + 2 * 50_000_000 + 1 * 25_000_000
    assert row.price_tool_calls == {"web_search": 50_000_000, "x_search": 25_000_000}
    assert row.unpriced_tool_calls == 0
    assert (
        end["usage"]["cost_usd"] == f"{billing.ticks_to_usd(row.cost_in_usd_ticks).normalize():f}"
    )


async def test_a_reported_cost_wins_over_the_tool_prices(responses, alice, socket_for):
    await create(ModelPrice, model=MODEL, **GROK_4_FAST)
    await create(ToolPrice, tool="web_search", usd_per_thousand_calls=Decimal("5"))
    socket = await socket_for(alice)
    usage = with_details(cost=177_640_000, web_search_calls=1, x_search_calls=2)
    end = await ask(socket, Reply(body=stream(usage)), responses)
    row = await row_of(end)
    assert row.cost_source == Usage.CostSource.REPORTED
    assert row.cost_in_usd_ticks == row.reported_cost_ticks == 177_640_000
    # The computed figure is kept beside it, tool calls included (x_search has no price).
    assert row.computed_cost_ticks == TOKENS_COST + 50_000_000 and row.unpriced_tool_calls == 2
    assert await day_values("cost_in_usd_ticks", "unpriced_tool_calls") == [
        (alice.id, MODEL, 177_640_000, 0)
    ]


async def test_tool_calls_without_a_price_leave_the_cost_partial_and_are_counted(
    responses, alice, socket_for
):
    await create(ModelPrice, model=MODEL, **GROK_4_FAST)
    await create(ToolPrice, tool="web_search", usd_per_thousand_calls=Decimal("5"))
    socket = await socket_for(alice)
    end = await ask(
        socket, Reply(body=stream(with_details(web_search_calls=2, x_search_calls=1))), responses
    )
    row = await row_of(end)
    assert row.cost_source == Usage.CostSource.PARTIAL == end["usage"]["cost_source"]
    assert row.cost_in_usd_ticks == TOKENS_COST + 2 * 50_000_000
    assert (row.unpriced_tool_calls, row.price_tool_calls) == (1, {"web_search": 50_000_000})
    # The recording names no kind for its one call: no price can apply.
    recorded = await row_of(await ask(socket, Reply(body=stream()), responses))
    assert recorded.cost_source == Usage.CostSource.PARTIAL and recorded.unpriced_tool_calls == 1
    assert recorded.cost_in_usd_ticks == TOKENS_COST
    assert await day_values("unpriced_tool_calls", "unpriced") == [(alice.id, MODEL, 2, 0)]
    await database_sync_to_async(UsageDay.rebuild)()
    assert await day_values("unpriced_tool_calls", "unpriced") == [(alice.id, MODEL, 2, 0)]


async def test_the_tool_price_is_fixed_when_the_request_starts_and_never_rewritten(
    responses, alice, socket_for
):
    await create(ModelPrice, model=MODEL, **GROK_4_FAST)
    price = await create(ToolPrice, tool="web_search", usd_per_thousand_calls=Decimal("5"))
    socket = await socket_for(alice)
    body = stream(with_details(web_search_calls=2))
    # The first piece at once, the rest when the test says: the price changes meanwhile.
    responses.queue(Reply(pieces=[body[:2000], body[2000:]], paced=True))
    await socket.send(type="send", content="What is xAI?", conversation_id=None, model=MODEL)
    await socket.until("message.start")
    price.usd_per_thousand_calls = Decimal("10")
    await database_sync_to_async(price.save)()
    responses.next_piece()
    first, _ = await socket.until("message.end")
    second = await ask(socket, Reply(body=body), responses)

    old, new = await row_of(first), await row_of(second)
    assert old.price_tool_calls == {"web_search": 50_000_000}
    assert old.cost_in_usd_ticks == TOKENS_COST + 2 * 50_000_000
    assert new.price_tool_calls == {"web_search": 100_000_000}
    assert new.cost_in_usd_ticks == TOKENS_COST + 2 * 100_000_000
    await database_sync_to_async(price.delete)()
    assert (await row_of(first)).cost_in_usd_ticks == old.cost_in_usd_ticks


# -- the admin -------------------------------------------------------------------------------


def test_admins_set_the_price_per_thousand_calls_of_a_tool(client, staff):
    client.force_login(staff)
    assert "Tool prices" in client.get("/admin/").content.decode()
    response = client.post(
        "/admin/chat/toolprice/add/", {"tool": "web_search", "usd_per_thousand_calls": "5"}
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert ToolPrice.objects.get().ticks_per_call == FIVE_DOLLARS_A_THOUSAND
    refused = client.post(
        "/admin/chat/toolprice/add/", {"tool": "Web Search", "usd_per_thousand_calls": "5"}
    )
    assert refused.status_code == 200 and ToolPrice.objects.count() == 1
