"""Token and money arithmetic (chat/billing.py): plain functions, checked against xAI's bills."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from chat import billing
from tests.fake_upstream import transcript

GROK_4_FAST = billing.Price.from_usd_per_million(Decimal("0.20"), Decimal("0.05"), Decimal("0.50"))
GROK_3_MINI = billing.Price.from_usd_per_million(Decimal("0.30"), Decimal("0.075"), Decimal("0.50"))


def _usage(name: str) -> dict:
    usage = None
    for line in transcript(name).decode().splitlines():
        if line.startswith("data: {"):
            usage = json.loads(line[6:]).get("usage") or usage
    return usage


@pytest.mark.parametrize(
    ("name", "price"),
    [
        ("fantasy-xai-grok-4-fast-2.sse", GROK_4_FAST),
        ("fantasy-xai-grok-4-fast-tool-1.sse", GROK_4_FAST),
        ("fantasy-xai-grok-3-mini-1.sse", GROK_3_MINI),
    ],
)
def test_the_cost_at_list_price_equals_what_xai_billed(name: str, price: billing.Price) -> None:
    usage = _usage(name)
    cost = billing.cost_ticks(
        price,
        prompt_tokens=usage["prompt_tokens"],
        cached_prompt_tokens=usage["prompt_tokens_details"]["cached_tokens"],
        completion_tokens=usage["completion_tokens"],
        reasoning_tokens=usage["completion_tokens_details"]["reasoning_tokens"],
    )
    assert cost == usage["cost_in_usd_ticks"]


def test_a_reasoning_price_of_its_own_is_used_when_set() -> None:
    price = billing.Price(prompt=1, cached_prompt=1, completion=10, reasoning=100)
    kwargs = {"prompt_tokens": 0, "cached_prompt_tokens": 0}
    assert billing.cost_ticks(price, completion_tokens=2, reasoning_tokens=3, **kwargs) == 320


def test_cached_tokens_beyond_the_prompt_are_not_billed_twice() -> None:
    price = billing.Price(prompt=10, cached_prompt=1, completion=0)
    cost = billing.cost_ticks(
        price, prompt_tokens=5, cached_prompt_tokens=9, completion_tokens=0, reasoning_tokens=0
    )
    assert cost == 5


def test_prices_convert_to_whole_ticks_and_back() -> None:
    assert billing.usd_per_million_to_ticks(Decimal("3.00")) == 30000
    assert billing.usd_per_million_to_ticks(Decimal("0.0001")) == 1
    with pytest.raises(ValueError, match="not a whole number of ticks"):
        billing.usd_per_million_to_ticks(Decimal("0.00005"))
    assert billing.ticks_to_usd(739000) == Decimal("0.0000739")
    assert billing.usd_to_ticks(Decimal("1.5")) == 15_000_000_000


def test_xai_list_prices_are_ticks_per_token() -> None:
    item = {
        "id": "grok-4",
        "prompt_text_token_price": 30000,
        "cached_prompt_text_token_price": 7500,
        "completion_text_token_price": 150000,
    }
    assert billing.price_from_language_model(item) == billing.Price(30000, 7500, 150000)
    del item["cached_prompt_text_token_price"]
    assert billing.price_from_language_model(item).cached_prompt == 30000
    assert billing.price_from_language_model({"id": "x", "prompt_text_token_price": 1}) is None
    bad = {"prompt_text_token_price": "3", "completion_text_token_price": 1}
    assert billing.price_from_language_model(bad) is None


def test_budget_periods_start_at_local_midnight_and_on_the_first() -> None:
    tz = ZoneInfo("Europe/Berlin")
    now = dt.datetime(2026, 12, 31, 23, 30, tzinfo=tz)
    assert billing.period_start("day", now) == dt.datetime(2026, 12, 31, tzinfo=tz)
    assert billing.next_period_start("day", now) == dt.datetime(2027, 1, 1, tzinfo=tz)
    assert billing.period_start("month", now) == dt.datetime(2026, 12, 1, tzinfo=tz)
    assert billing.next_period_start("month", now) == dt.datetime(2027, 1, 1, tzinfo=tz)
    march = dt.datetime(2026, 3, 29, 12, tzinfo=tz)  # the day clocks go forward
    assert billing.next_period_start("day", march) == dt.datetime(2026, 3, 30, tzinfo=tz)


def test_dollars_show_cents_and_the_digits_small_amounts_need() -> None:
    assert billing.format_usd(Decimal("12.5")) == "$12.50"
    assert billing.format_usd(Decimal("10")) == "$10.00"
    assert billing.format_usd(Decimal("0.0001478")) == "$0.0001478"
