"""Per-user limits checked before any upstream request: budget, message rate, streams.

Hand-written rather than a rate-limit library (django-ratelimit and the like count hits in
a cache): these limits are counts and sums over our own ledger, read in the send's own
transaction, so every process sees the same numbers and two sends can't both pass.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.utils import formats, timezone

from chat.billing import format_usd
from chat.models import Budget, Message, Usage, budget_status, streams_started_after
from chat.streams import end_stuck_answers

MINUTE = dt.timedelta(minutes=1)


@dataclass
class Refusal:
    code: str
    message: str
    retry_after: int | None = None


def refusal_for(user, budget: Budget, now: dt.datetime | None = None) -> Refusal | None:
    """Why `user`, under `budget`, may not send a message now, or None. Call it inside the
    send's transaction."""
    now = now or timezone.now()
    mine = Message.objects.filter(conversation__user=user)

    if budget.max_messages_per_minute is not None:
        window = mine.filter(role=Message.Role.USER, created_at__gt=now - MINUTE)
        times = list(window.values_list("created_at", flat=True))
        # Answers of deleted conversations still count: their ledger rows stand for them.
        gone = Usage.objects.filter(user=user, message=None, created_at__gt=now - MINUTE)
        times = sorted([*times, *gone.values_list("created_at", flat=True)], reverse=True)
        if len(times) >= budget.max_messages_per_minute:
            # Free again when the oldest message that counts leaves the window.
            oldest = times[budget.max_messages_per_minute - 1]
            wait = max(1, int((oldest + dt.timedelta(minutes=1) - now).total_seconds()) + 1)
            return Refusal(
                "rate_limited",
                f"You can send {budget.max_messages_per_minute} messages a minute. "
                f"Try again in {wait} s.",
                retry_after=wait,
            )

    if budget.max_concurrent_streams is not None:
        rows = mine.filter(state=Message.State.STREAMING, created_at__gt=streams_started_after())
        streaming = rows.count()
        if streaming >= budget.max_concurrent_streams:
            # Answers no process streams any more are ended, not counted.
            streaming -= end_stuck_answers(rows.select_related("conversation"))
        if streaming >= budget.max_concurrent_streams:
            return Refusal(
                "too_many_streams",
                f"You already have {streaming} answer{'s' if streaming != 1 else ''} streaming; "
                f"the limit is {budget.max_concurrent_streams}. Wait for one to finish or stop it.",
            )

    status = budget_status(user, budget)
    if status is not None and status.over:
        period = "today" if budget.period == Budget.Period.DAY else "this month"
        used = []
        if budget.max_tokens is not None:
            used.append(f"{status.tokens:,} of {budget.max_tokens:,} tokens")
        if budget.max_cost_usd is not None:
            used.append(f"{format_usd(status.cost_usd)} of {format_usd(budget.max_cost_usd)}")
        resets = formats.date_format(timezone.localtime(status.resets), "DATETIME_FORMAT")
        return Refusal(
            "over_budget",
            f"You have used your budget for {period} ({', '.join(used)}). "
            f"It renews on {resets}; an admin can raise it.",
        )
    return None
