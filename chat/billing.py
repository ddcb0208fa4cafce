"""Token and money arithmetic: plain functions, no Django, no I/O.

Money is counted in xAI's unit, the tick: 10^10 ticks make one US dollar. A price of
$0.20 per million tokens is 2,000 ticks per token, so every price with four decimals in
USD per million tokens is a whole number of ticks per token and every cost is an integer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeGuard


# The token counters, defined once: the ledger's and the daily totals' columns, the frames'
# usage, the reports, the CSV and the page's meta line all follow this list, in this order.
@dataclass(frozen=True)
class TokenCounter:
    field: str  # the name on Usage, UsageDay, the usage frame and the CSV
    label: str  # the column header and the meta line's word


TOKEN_COUNTERS = (
    TokenCounter("prompt_tokens", "Prompt"),
    TokenCounter("cached_prompt_tokens", "Cached"),
    TokenCounter("completion_tokens", "Completion"),
    TokenCounter("reasoning_tokens", "Reasoning"),
    TokenCounter("total_tokens", "Total"),
)
TOKEN_FIELDS = tuple(counter.field for counter in TOKEN_COUNTERS)


# The server-side tool calls counted apart (xAI's `server_side_tool_usage_details` keys), in
# the daily totals, the frames' usage, the reports, the CSV and the meta line; TOOL_CALLS
# counts every call, these and any other kind.
@dataclass(frozen=True)
class ToolCounter:
    field: str  # the key in the usage report, and the name on UsageDay, the frame, the CSV
    label: str  # the column header
    one: str  # the meta line's words: "1 web search", "2 web searches"
    many: str


TOOL_CALLS = ToolCounter("tool_calls", "Tool calls", "tool call", "tool calls")
TOOL_COUNTERS = (
    ToolCounter("web_search_calls", "Web searches", "web search", "web searches"),
    ToolCounter("x_search_calls", "X searches", "X search", "X searches"),
)
TOOL_FIELDS = tuple(counter.field for counter in TOOL_COUNTERS)
CALLS_SUFFIX = "_calls"  # "web_search_calls" counts calls of the tool "web_search"

TICKS_PER_USD = 10**10
# USD per million tokens -> ticks per token.
TICKS_PER_TOKEN_PER_USD_PER_MILLION = TICKS_PER_USD // 10**6


@dataclass(frozen=True)
class Price:
    """Ticks per token for each kind of token; None where the kind is billed as another."""

    prompt: int
    cached_prompt: int
    completion: int
    reasoning: int | None = None  # None: reasoning is billed as completion (xAI's rule)
    # Ticks per call of each server-side tool that has a price ("web_search": 50_000_000).
    tools: Mapping[str, int] = field(default_factory=dict, hash=False)

    @classmethod
    def from_usd_per_million(
        cls,
        prompt: Decimal,
        cached_prompt: Decimal | None,
        completion: Decimal,
        reasoning: Decimal | None = None,
    ) -> Price:
        return cls(
            prompt=usd_per_million_to_ticks(prompt),
            cached_prompt=usd_per_million_to_ticks(
                prompt if cached_prompt is None else cached_prompt
            ),
            completion=usd_per_million_to_ticks(completion),
            reasoning=None if reasoning is None else usd_per_million_to_ticks(reasoning),
        )

    def as_fields(self) -> dict[str, int | None | dict[str, int]]:
        return {
            "price_prompt": self.prompt,
            "price_cached_prompt": self.cached_prompt,
            "price_completion": self.completion,
            "price_reasoning": self.reasoning,
            "price_tool_calls": dict(self.tools),
        }


def usd_per_million_to_ticks(value: Decimal) -> int:
    ticks = Decimal(value) * TICKS_PER_TOKEN_PER_USD_PER_MILLION
    if ticks != ticks.to_integral_value():
        raise ValueError(f"{value} USD per million tokens is not a whole number of ticks")
    return int(ticks)


def usd_per_thousand_calls_to_ticks(value: Decimal) -> int:
    """USD per 1,000 calls -> ticks per call: $5 per 1,000 is 50,000,000 ticks a call."""
    ticks = Decimal(value) * TICKS_PER_USD / 1000
    if ticks != ticks.to_integral_value():
        raise ValueError(f"{value} USD per 1,000 calls is not a whole number of ticks a call")
    return int(ticks)


def ticks_to_usd(ticks: int) -> Decimal:
    return Decimal(ticks) / TICKS_PER_USD


def format_usd(amount: Decimal) -> str:
    """Dollars with cents, and more digits only where a small amount needs them."""
    text = f"{amount.normalize():f}"
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def usd_to_ticks(usd: Decimal) -> int:
    return int(Decimal(usd) * TICKS_PER_USD)


def cost_ticks(
    price: Price,
    *,
    prompt_tokens: int,
    cached_prompt_tokens: int,
    completion_tokens: int,
    reasoning_tokens: int,
) -> int:
    """What a request costs at `price`.

    Cached tokens are part of prompt_tokens (as xAI and OpenAI count them) and are billed
    at the cached price instead. Reasoning tokens are counted apart from completion tokens,
    as xAI reports them, and billed at the reasoning price, or the completion price.
    """
    cached = min(cached_prompt_tokens, prompt_tokens)
    reasoning_price = price.completion if price.reasoning is None else price.reasoning
    return (
        (prompt_tokens - cached) * price.prompt
        + cached * price.cached_prompt
        + completion_tokens * price.completion
        + reasoning_tokens * reasoning_price
    )


def tool_call_count(reported: int, details: Mapping[str, int]) -> int:
    """The request's server-side tool calls: as reported, or the calls its details list
    where they add up to more (a report without the total)."""
    return max(reported, sum(calls_by_tool(details).values()))


def calls_by_tool(details: Mapping[str, int]) -> dict[str, int]:
    """{"web_search_calls": 2, "x_posts_fetched": 9} -> {"web_search": 2}: only counts of
    calls, by the tool's name."""
    return {
        key.removesuffix(CALLS_SUFFIX): count
        for key, count in details.items()
        if key.endswith(CALLS_SUFFIX) and len(key) > len(CALLS_SUFFIX) and count > 0
    }


@dataclass(frozen=True)
class ToolCost:
    ticks: int  # what the priced calls cost
    prices: dict[str, int]  # ticks per call of each tool used that has a price
    unpriced: int  # calls left out: their tool has no price, or the report names no tool


def tool_calls_cost(prices: Mapping[str, int], calls: int, details: Mapping[str, int]) -> ToolCost:
    """What a request's server-side tool calls cost at `prices` (ticks per call by tool).

    `calls` is the request's count of them and `details` its calls by kind, as reported;
    calls that no kind accounts for cannot be priced.
    """
    by_tool = calls_by_tool(details)
    used = {tool: prices[tool] for tool in by_tool if tool in prices}
    ticks = sum(count * used[tool] for tool, count in by_tool.items() if tool in used)
    priced = sum(count for tool, count in by_tool.items() if tool in used)
    return ToolCost(ticks, used, max(calls, sum(by_tool.values())) - priced)


def price_from_language_model(item: dict[str, Any]) -> Price | None:
    """The price in one item of xAI's `GET /v1/language-models`.

    xAI lists integer prices where 30000 means $3.00 per million tokens, which is exactly
    ticks per token. Items without text prices give None.
    """
    prompt = item.get("prompt_text_token_price")
    completion = item.get("completion_text_token_price")
    if not _whole(prompt) or not _whole(completion):
        return None
    cached = item.get("cached_prompt_text_token_price")
    return Price(
        prompt=prompt,
        cached_prompt=cached if _whole(cached) else prompt,
        completion=completion,
    )


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def estimate_tokens(text: str) -> int:
    """A rough token count, 4 characters a token, for streams that ended unreported."""
    return (len(text) + 3) // 4


# What one image is taken to cost in the estimates (docs/usage.md): xAI documents no
# per-image count; this is about a 1024x1024 image at OpenAI's high detail (765), rounded up.
IMAGE_TOKENS = 1000


def images_in(turns: list[dict[str, Any]]) -> int:
    """How many images the history turns carry (chat.models.Conversation.history)."""
    return sum(len(turn.get("images") or ()) for turn in turns)


def estimate_usage(
    prompt_texts: list[str], content: str, reasoning: str, images: int = 0
) -> dict[str, int]:
    """Usage for a stream that ended before its report: the prompt as sent and the partial
    answer, 4 characters a token, and IMAGE_TOKENS for each image sent (docs/usage.md).
    Nothing is guessed as cached."""
    prompt = sum(estimate_tokens(text) for text in prompt_texts) + images * IMAGE_TOKENS
    completion = estimate_tokens(content)
    reasoning_tokens = estimate_tokens(reasoning)
    return {
        "prompt_tokens": prompt,
        "cached_prompt_tokens": 0,
        "completion_tokens": completion,
        "reasoning_tokens": reasoning_tokens,
        "total_tokens": prompt + completion + reasoning_tokens,
    }


TURN_OVERHEAD_TOKENS = 4  # role and separators of each message, roughly


def turn_tokens(turn: dict[str, Any]) -> int:
    """A history turn's estimated size: its text, its images and the overhead."""
    images = len(turn.get("images") or ())
    return estimate_tokens(turn["content"]) + images * IMAGE_TOKENS + TURN_OVERHEAD_TOKENS


def fit_history(turns: list[dict[str, Any]], max_tokens: int) -> tuple[list[dict[str, Any]], int]:
    """The newest turns whose estimated size fits `max_tokens`, and how many were dropped.

    The system prompt (turns of role system, sent first) and the newest turn (the user's
    question) are always kept, and what is sent never starts with an answer whose question
    was dropped.
    """
    system = [turn for turn in turns if turn["role"] == "system"]
    rest = [turn for turn in turns if turn["role"] != "system"]
    total = sum(turn_tokens(turn) for turn in system)
    kept: list[dict[str, Any]] = []
    for turn in reversed(rest):
        size = turn_tokens(turn)
        if kept and total + size > max_tokens:
            break
        kept.append(turn)
        total += size
    kept.reverse()
    while len(kept) > 1 and kept[0]["role"] != "user":
        kept.pop(0)
    return system + kept, len(rest) - len(kept)


def period_start(period: str, now: dt.datetime) -> dt.datetime:
    """The start of the budget period ('day' or 'month') that `now` (aware, local) is in."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "month":
        start = start.replace(day=1)
    return start


def next_period_start(period: str, now: dt.datetime) -> dt.datetime:
    start = period_start(period, now)
    if period == "month":
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return start.replace(year=year, month=month)
    return start + dt.timedelta(days=1)
