"""Per-user limits checked before any upstream request or socket: budget, message rate,
answers at once, open sockets.

Hand-written rather than a rate-limit library (django-ratelimit and the like count hits in
a cache): these limits are counts and sums over our own ledger and rows, read in the
send's (or the handshake's) own transaction with the user's row locked, so every process
sees the same numbers and two sends can't both pass.

Every user has the rate limits: their budget's, else the default budget's, else the
settings' (CHAT_MAX_*); 0 means no limit (docs/usage.md).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import DatabaseError, transaction
from django.utils import formats, timezone

from chat.billing import format_usd
from chat.models import Budget, Message, OpenSocket, Usage, budget_status, streams_started_after
from chat.streams import end_stuck_answers, process_alive, worker_id

logger = logging.getLogger(__name__)
MINUTE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Limits:
    """What a user may do at once and per minute (None: no limit), and their budget."""

    messages_per_minute: int | None
    concurrent_answers: int | None
    sockets: int | None
    budget: Budget | None  # whose token and money limits apply (None: none)


# Each rate limit: its Budget field and the setting that is its default.
RATE_LIMITS = {
    "messages_per_minute": ("max_messages_per_minute", "CHAT_MAX_MESSAGES_PER_MINUTE"),
    "concurrent_answers": ("max_concurrent_streams", "CHAT_MAX_CONCURRENT_ANSWERS"),
    "sockets": ("max_open_sockets", "CHAT_MAX_SOCKETS_PER_USER"),
}


def limits_for(user) -> Limits:
    """The user's limits: for each rate limit the first set of their own budget's, the
    default budget's and the setting; 0 there means no limit."""
    own, default = Budget.objects.rows_for(user)
    values: dict[str, int | None] = {}
    for name, (field, setting) in RATE_LIMITS.items():
        set_in = [getattr(row, field) for row in (own, default) if row is not None]
        value = next((v for v in set_in if v is not None), getattr(settings, setting))
        values[name] = value or None
    return Limits(**values, budget=own or default)


def lock_user(user):
    """Serialise one user's sends and handshakes until the transaction ends, so that two
    at once can't both pass a limit (a row lock on PostgreSQL; SQLite's IMMEDIATE
    transactions serialise all writers anyway). Returns the user's row as it is now, or
    None if it was deleted."""
    return get_user_model().objects.select_for_update().filter(pk=user.pk).first()


@dataclass
class Refusal:
    code: str
    message: str
    retry_after: int | None = None


def refusal_for(user, limits: Limits, now: dt.datetime | None = None) -> Refusal | None:
    """Why `user`, under `limits`, may not send a message now, or None. Call it inside the
    send's transaction, after lock_user."""
    now = now or timezone.now()
    mine = Message.objects.filter(conversation__user=user)

    per_minute = limits.messages_per_minute
    if per_minute is not None:
        # Each answer counts (a message sent, edited, or answered again or continued).
        window = mine.filter(
            role=Message.Role.ASSISTANT, created_at__gt=now - MINUTE, created_at__lte=now
        )
        times = list(window.values_list("created_at", flat=True))
        # Answers of deleted conversations still count: their ledger rows stand for them.
        # (Title requests are no messages: they never count.)
        gone = Usage.objects.filter(
            user=user,
            message=None,
            answer_id__isnull=False,
            created_at__gt=now - MINUTE,
            created_at__lte=now,
        )
        times = sorted([*times, *gone.values_list("created_at", flat=True)], reverse=True)
        if len(times) >= per_minute:
            # Free again when the oldest message that counts leaves the window.
            oldest = times[per_minute - 1]
            wait = max(1, int((oldest + dt.timedelta(minutes=1) - now).total_seconds()) + 1)
            return Refusal(
                "rate_limited",
                f"You can send {per_minute} messages a minute. Try again in {wait} s.",
                retry_after=wait,
            )

    at_once = limits.concurrent_answers
    if at_once is not None:
        rows = mine.filter(state=Message.State.STREAMING, created_at__gt=streams_started_after())
        streaming = rows.count()
        if streaming >= at_once:
            # Answers no process streams any more are ended, not counted.
            streaming -= end_stuck_answers(rows.select_related("conversation"))
        if streaming >= at_once:
            return Refusal(
                "too_many_streams",
                f"You already have {streaming} answer{'s' if streaming != 1 else ''} streaming; "
                f"the limit is {at_once}. Wait for one to finish or stop it.",
            )

    budget = limits.budget
    if budget is None:
        return None
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


# -- open sockets ------------------------------------------------------------------------


def open_socket(user, now: dt.datetime | None = None) -> int | None:
    """Count a new socket of `user`: the id of its row, or None when they have as many
    open as their limit allows (in every process: the rows are in the database)."""
    now = now or timezone.now()
    with transaction.atomic():
        lock_user(user)
        cap = limits_for(user).sockets
        if cap is not None:
            mine = OpenSocket.objects.filter(user=user)
            mine.stale(now, socket.gethostname(), process_alive).delete()
            if mine.count() >= cap:
                return None
        lease = dt.timedelta(seconds=settings.SOCKET_LEASE_SECONDS)
        return OpenSocket.objects.create(user=user, worker=worker_id(), expires_at=now + lease).pk


def close_socket(socket_id: int) -> None:
    OpenSocket.objects.filter(pk=socket_id).delete()


def renew_sockets(socket_ids: list[int], now: dt.datetime | None = None) -> int:
    """Extend the leases of these sockets; how many rows there were."""
    now = now or timezone.now()
    lease = dt.timedelta(seconds=settings.SOCKET_LEASE_SECONDS)
    return OpenSocket.objects.filter(pk__in=socket_ids).update(expires_at=now + lease)


class SocketLeases:
    """The sockets open in this process; while there are any, one task renews their rows
    every third of a lease (one query, however many sockets)."""

    def __init__(self) -> None:
        self.held: set[int] = set()
        self.task: asyncio.Task[None] | None = None

    async def claim(self, user) -> int | None:
        """open_socket(), and keep the row alive while the socket is open."""
        socket_id = await database_sync_to_async(open_socket)(user)
        if socket_id is None:
            return None
        self.held.add(socket_id)
        loop = asyncio.get_running_loop()
        if self.task is None or self.task.done() or self.task.get_loop() is not loop:
            self.task = loop.create_task(self._renew())
        return socket_id

    async def release(self, socket_id: int) -> None:
        self.held.discard(socket_id)
        try:
            await database_sync_to_async(close_socket)(socket_id)
        except DatabaseError:  # no longer renewed, the row stops counting when its lease ends
            logger.warning("could not delete the row of closed socket %s", socket_id)

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(settings.SOCKET_LEASE_SECONDS / 3)
            try:
                await database_sync_to_async(renew_sockets)(list(self.held))
            except Exception:  # the database is away, or worse: log it, try again next time
                logger.exception("could not renew the open sockets' leases")


SOCKETS = SocketLeases()
