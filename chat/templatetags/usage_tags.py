"""The chat page's budget notice (two queries, whatever the size of the ledger) and the
token counters its script's meta line lists."""

from __future__ import annotations

import json

from django import template
from django.utils.html import json_script
from django.utils.safestring import SafeString

from chat import frames
from chat.billing import TOKEN_COUNTERS, TOOL_CALLS, TOOL_COUNTERS
from chat.models import Usage, budget_status
from chat.reports import budget_words, usd

register = template.Library()


@register.simple_tag
def budget_notice(user) -> str:
    """'You have used 85% of your monthly budget.' from 80% on, else ''."""
    if not getattr(user, "is_authenticated", False):
        return ""
    status = budget_status(user)
    if status is None or not (status.near or status.over):
        return ""
    return budget_words(status)


@register.filter(name="usd")
def usd_filter(ticks: int | None) -> str:
    """Ticks as US dollars, exactly (chat.reports.usd): '0.0150'."""
    return usd(ticks)


@register.simple_tag
def token_counters() -> SafeString:
    """The counters as data for static/js/chat.js: a JSON script element, never run. The
    tokens, then the tool calls with their words for one and many; the last, all tool
    calls, is shown for the calls the kinds before it leave (`rest`)."""
    counters: list[dict[str, object]] = [
        {"field": c.field, "label": c.label} for c in TOKEN_COUNTERS
    ]
    counters += [
        {"field": c.field, "label": c.label, "one": c.one, "many": c.many} for c in TOOL_COUNTERS
    ]
    calls = TOOL_CALLS
    counters.append(
        {
            "field": calls.field,
            "label": calls.label,
            "one": calls.one,
            "many": calls.many,
            "rest": True,
        }
    )
    return json_script(counters, "token-counters")


@register.filter
def usage_json(usage: Usage) -> str:
    """A rendered answer's usage as message.end carries it, for the page's script
    (autoescaped into its attribute like any text)."""
    return json.dumps(frames.usage_of(usage))
