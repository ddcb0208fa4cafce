"""Usage reports: what the admin's report (chat.admin.UsageDayAdmin), one user's drill-down
and each user's own page share: the token table, the chart, the CSV and the budgets.

Hand-written views remain only for the drill-down and the user's page: they show one
person's sums over a period, not a list of one model's rows, which is what the admin's
changelist is for.

Everything but the per-conversation list reads the daily totals (UsageDay) and lets the
database do the sums, so a page costs the same few queries whatever the ledger's size.
Money stays integer ticks until it is shown, and is shown exactly (see `usd`).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import Coalesce, TruncMonth
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import dateformat, timezone

from chat import billing
from chat.limits import limits_for
from chat.models import (
    USAGE_SUMS,
    Budget,
    BudgetStatus,
    Usage,
    UsageDay,
    UsageDayQuerySet,
    budget_status,
)

DEFAULT_DAYS = 30
MAX_DAYS = 3660  # ten years
MAX_DAILY_BARS = 366  # longer periods are charted per month
RENEWS_FORMAT = "j F Y, H:i"  # '1 December 2026, 00:00'
CONVERSATIONS_PAGE_SIZE = 100

# The columns after a table's first (user, model or day): counts, the tokens, the cost,
# the server-side tool calls.
COLUMNS = (
    ("requests", "Requests"),
    ("errors", "Errors"),
    ("estimated", "Estimated"),
    *((counter.field, counter.label) for counter in billing.TOKEN_COUNTERS),
    ("cost", "Cost (USD)"),
    (billing.TOOL_CALLS.field, billing.TOOL_CALLS.label),
)


def usd(ticks: int | None) -> str:
    """Ticks as US dollars, exactly, with at least four decimals: '0.0150', '0.0000012345'."""
    if ticks is None:
        return ""
    value = billing.ticks_to_usd(ticks).normalize()
    exponent = value.as_tuple().exponent  # a str only for NaN and infinity
    if isinstance(exponent, int) and exponent > -4:
        value = value.quantize(Decimal("0.0001"))
    return f"{value:f}"


# A cost that no price gave (chat.billing): said as such, never as $0.0000.
UNPRICED = "—"


def money(ticks: int | None, *, unpriced: bool = False, sign: bool = False) -> str:
    """A cost as the reports and the admin show it: `usd`, with a dollar sign where no
    column heading says "USD" (`sign`); UNPRICED for a ledger row with no cost, or for sums
    whose every request was unpriced (`unpriced`)."""
    if ticks is None or unpriced:
        return UNPRICED
    return f"${usd(ticks)}" if sign else usd(ticks)


def all_unpriced(row: Mapping[str, Any] | Any) -> bool:
    """Sums of requests none of which had a price: their cost is unknown, not zero."""
    get = row.get if isinstance(row, Mapping) else lambda name: getattr(row, name)
    return bool(get("requests")) and get("unpriced") == get("requests")


def csv_safe(value: Any) -> Any:
    """A text cell that spreadsheets will not run as a formula."""
    if isinstance(value, str) and value and value[0] in "=+-@\t\r":
        return "'" + value
    return value


def csv_response(
    filename: str, header: Iterable[str], rows: Iterable[Iterable[Any]]
) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows([csv_safe(value) for value in row] for row in rows)
    return response


def plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


def tool_words(totals: Mapping[str, int]) -> str:
    """'3 tool calls: 2 web searches, 1 X search' ('' without any): the kinds counted
    apart (billing.TOOL_COUNTERS), then the calls of other kinds or of no reported kind."""
    calls = billing.TOOL_CALLS
    count = totals.get(calls.field) or 0
    if not count:
        return ""
    parts = [
        f"{totals[c.field]} {plural(totals[c.field], c.one, c.many)}"
        for c in billing.TOOL_COUNTERS
        if totals.get(c.field)
    ]
    rest = count - sum(totals.get(c.field) or 0 for c in billing.TOOL_COUNTERS)
    if parts and rest > 0:
        parts.append(f"{rest} other")
    words = f"{count} {plural(count, calls.one, calls.many)}"
    return f"{words}: {', '.join(parts)}" if parts else words


def unpriced_tools_words(totals: Mapping[str, int]) -> str:
    """What the computed costs leave out for want of a tool price ('' if nothing)."""
    count = totals.get("unpriced_tool_calls") or 0
    if not count:
        return ""
    return (
        f"{count} {plural(count, 'tool call has', 'tool calls have')} no known price "
        "(admin, Tool prices): the cost leaves them out."
    )


# ------------------------------------------------------------------ the period


@dataclass(frozen=True)
class Period:
    """Whole local days, both ends included."""

    start: dt.date
    end: dt.date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The period as aware datetimes, the end excluded, in the local time zone."""
        tz = timezone.get_current_timezone()
        since = dt.datetime.combine(self.start, dt.time.min, tzinfo=tz)
        until = dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
        return since, until

    def query(self) -> str:
        return f"start={self.start.isoformat()}&end={self.end.isoformat()}"


class DateInput(forms.DateInput):
    input_type = "date"
    format = "%Y-%m-%d"


class PeriodForm(forms.Form):
    """From and to, both included: the last 30 days where left blank or invalid."""

    start = forms.DateField(label="From", required=False, widget=DateInput)
    end = forms.DateField(label="to", required=False, widget=DateInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            raise forms.ValidationError("The period starts after it ends.")
        if start and end and (end - start).days + 1 > MAX_DAYS:
            raise forms.ValidationError(f"Periods are limited to {MAX_DAYS} days.")
        return data

    @classmethod
    def read(cls, params: QueryDict, today: dt.date) -> tuple[PeriodForm, Period]:
        """The form as submitted (showing the last 30 days where not), and its period."""
        default = Period(today - dt.timedelta(days=DEFAULT_DAYS - 1), today)
        data = params.copy()
        data.setdefault("start", default.start.isoformat())
        data.setdefault("end", default.end.isoformat())
        form = cls(data)
        if not form.is_valid():
            return form, default
        end = form.cleaned_data["end"] or today
        start = form.cleaned_data["start"] or end - dt.timedelta(days=DEFAULT_DAYS - 1)
        return form, Period(start, end)


# ------------------------------------------------------------------ the table


def cells(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row's cells after its first: counts, tokens, cost."""
    return [
        {
            "name": name,
            "value": money(row["cost_in_usd_ticks"], unpriced=all_unpriced(row))
            if name == "cost"
            else row[name],
        }
        for name, _ in COLUMNS
    ]


def usage_table(
    table_id: str,
    heading: str,
    rows: Iterable[dict[str, Any]],
    empty: str,
    totals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The context of templates/usage/table.html. Each row has `label`, optionally `url`
    and `data` (its data- attributes), and the sums of USAGE_SUMS."""
    return {
        "id": table_id,
        "heading": heading,
        "labels": [label for _, label in COLUMNS],
        "rows": [{**row, "cells": cells(row)} for row in rows],
        "empty": empty,
        "totals": cells(totals) if totals is not None else None,
    }


# ------------------------------------------------------------------ the chart


@dataclass(frozen=True)
class Bar:
    label: str
    tokens: int
    cost_ticks: int


def chart_bars(days: UsageDayQuerySet, period: Period) -> tuple[list[Bar], str]:
    """Tokens and cost per day of `period` (per month for long periods), zeros included."""
    if period.days <= MAX_DAILY_BARS:
        found = {row["day"]: row for row in days.grouped("day").order_by()}
        keys = [period.start + dt.timedelta(days=i) for i in range(period.days)]
        labels = [day.isoformat() for day in keys]
        unit = "day"
    else:
        rows = (
            days.annotate(month=TruncMonth("day"))
            .values("month")
            .annotate(total_tokens=Sum("total_tokens"), cost_in_usd_ticks=Sum("cost_in_usd_ticks"))
            .order_by()
        )
        found = {row["month"]: row for row in rows}
        keys = []
        month = period.start.replace(day=1)
        while month <= period.end:
            keys.append(month)
            month = (month + dt.timedelta(days=32)).replace(day=1)
        labels = [month.strftime("%Y-%m") for month in keys]
        unit = "month"
    bars = []
    for key, label in zip(keys, labels, strict=True):
        row = found.get(key, {})
        bars.append(Bar(label, row.get("total_tokens") or 0, row.get("cost_in_usd_ticks") or 0))
    return bars, unit


WIDTH, LEFT, RIGHT, TOP = 760, 96, 16, 30
PANEL, GAP, BOTTOM = 110, 62, 34


def chart_layout(values: list[int]) -> list[dict[str, Any]]:
    """The bars of one panel: x, y (from the panel's top), width and height, as text.

    The tallest bar fills the panel; the first, middle and last bars get an axis label,
    the first starting at its bar and the last ending at its bar so both stay inside.
    """
    slot = (WIDTH - LEFT - RIGHT) / max(len(values), 1)
    width = max(slot * 0.75, 0.5)
    peak = max(values, default=0)
    last = len(values) - 1
    out = []
    for position, value in enumerate(values):
        height = PANEL * value / peak if peak else 0.0
        tick = None
        if position in (0, len(values) // 2, last):
            tick = ("middle", LEFT + (position + 0.5) * slot)
            if position == 0:
                tick = ("start", LEFT + position * slot)
            elif position == last:
                tick = ("end", LEFT + (position + 1) * slot)
        out.append(
            {
                "value": value,
                "x": f"{LEFT + position * slot + (slot - width) / 2:.2f}",
                "y": f"{PANEL - height:.2f}",
                "width": f"{width:.2f}",
                "height": f"{height:.2f}",
                "anchor": tick[0] if tick else "",
                "tick_x": f"{tick[1]:.2f}" if tick else "",
            }
        )
    return out


def chart(bars: list[Bar], unit: str, *, chart_id: str, caption: str) -> dict[str, Any]:
    """The context of templates/usage/chart.html: two panels, tokens then cost."""
    panels = []
    # `kind` names the bars' CSS class (bars-tokens, bars-cost): the colours are the theme's.
    for index, (name, values, kind) in enumerate(
        [
            ("Tokens", [b.tokens for b in bars], "tokens"),
            ("Cost (USD)", [b.cost_ticks for b in bars], "cost"),
        ]
    ):
        shown = [f"{v:,} tokens" if index == 0 else f"${usd(v)}" for v in values]
        peak = max(values, default=0)
        top = TOP + index * (PANEL + GAP)
        layout = chart_layout(values)
        for bar, item, text in zip(bars, layout, shown, strict=True):
            item.update(label=bar.label, text=text)
        panels.append(
            {
                "name": name,
                "kind": kind,
                "top": top,
                "title_y": top - 10,
                "peak_y": top + 4,
                "base": top + PANEL,
                "label_y": top + PANEL + 16,
                "peak": f"{peak:,}" if index == 0 else f"${usd(peak)}",
                "zero": "0" if index == 0 else f"${usd(0)}",
                "bars": layout,
            }
        )
    return {
        "id": chart_id,
        "caption": caption,
        "unit": unit,
        "count": len(bars),
        "tokens": f"{sum(b.tokens for b in bars):,}",
        "cost": usd(sum(b.cost_ticks for b in bars)),
        "width": WIDTH,
        "height": TOP + 2 * PANEL + GAP + BOTTOM,
        "left": LEFT,
        "axis_x": LEFT - 6,
        "right": WIDTH - RIGHT,
        "panels": panels,
    }


def chart_for(
    days: UsageDayQuerySet, period: Period, *, chart_id: str, caption: str
) -> dict[str, Any]:
    bars, unit = chart_bars(days, period)
    return chart(bars, unit, chart_id=chart_id, caption=caption)


# ------------------------------------------------------------------ budgets

# How reports name the users whose accounts were deleted (their usage stays, unlinked).
DELETED_USER = "(deleted user)"


@dataclass
class BudgetLine:
    user_id: int
    username: str
    budget: Budget
    status: BudgetStatus
    edit_url: str

    @property
    def own(self) -> bool:
        return self.budget.user_id is not None

    @property
    def tokens(self) -> str:
        if self.budget.max_tokens is None:
            return f"{self.status.tokens} (no limit)"
        return f"{self.status.tokens} of {self.budget.max_tokens}"

    @property
    def cost(self) -> str:
        if self.budget.max_cost_usd is None:
            return f"${usd(self.status.cost_ticks)} (no limit)"
        return f"${usd(self.status.cost_ticks)} of ${usd(self.budget.max_cost_ticks)}"


def budget_watch() -> tuple[list[BudgetLine], Budget | None]:
    """Users at 80% or more of their budget this period, fullest first, and the default.

    One query for the budgets and one grouped query per period kind in use, whatever the
    number of users.
    """
    budgets = list(Budget.objects.all())
    default = next((b for b in budgets if b.user_id is None), None)
    own = {b.user_id: b for b in budgets if b.user_id is not None}
    limited = [b for b in budgets if b.max_tokens is not None or b.max_cost_usd is not None]
    now = timezone.localtime()
    lines: list[BudgetLine] = []
    for period in sorted({b.period for b in limited}):
        start = billing.period_start(period, now).date()
        spent = UsageDay.objects.filter(day__gte=start).grouped("user_id", "user__username")
        for row in spent.order_by():
            budget = own.get(row["user_id"], default)
            if budget is None or budget.period != period or row["user_id"] is None:
                continue
            status = budget.status({key: row[key] or 0 for key in USAGE_SUMS})
            if not (status.near or status.over):
                continue
            if budget.user_id is not None:
                edit_url = reverse("admin:chat_budget_change", args=[budget.pk])
            else:
                edit_url = reverse("admin:chat_budget_add") + f"?user={row['user_id']}"
            lines.append(
                BudgetLine(row["user_id"], row["user__username"], budget, status, edit_url)
            )
    lines.sort(key=lambda line: (-(line.status.fraction or 0), line.username))
    return lines, default


def budget_words(status: BudgetStatus) -> str:
    """'You have used 85% of your monthly budget.' and the like."""
    kind = "daily" if status.budget.period == Budget.Period.DAY else "monthly"
    if status.over:
        resets = dateformat.format(timezone.localtime(status.resets), RENEWS_FORMAT)
        return (
            f"You have used all of your {kind} budget ({status.percent}%). "
            f"New messages are refused until it renews on {resets}."
        )
    return f"You have used {status.percent}% of your {kind} budget."


# ------------------------------------------------------------------ the admin report's extras


def report_context(days: UsageDayQuerySet, period: Period | None) -> dict[str, Any]:
    """What the report shows around the changelist, from its filtered rows: the totals,
    the chart, the per-user table with its totals, and the budgets."""
    totals = days.sums()
    link = f"?{period.query()}" if period else ""
    users = [
        {
            **row,
            "label": row["user__username"] or DELETED_USER,
            # Deleted users' rows stay, together and without a drill-down.
            "url": reverse("admin_usage_user", args=[row["user_id"]]) + link
            if row["user_id"] is not None
            else "",
            "data": {"username": row["user__username"] or "", "user-id": row["user_id"] or ""},
        }
        for row in days.grouped("user_id", "user__username").order_by("user__username")
    ]
    watch, default_budget = budget_watch()
    context = {
        "title": "Usage report",
        "period": period,
        "totals": totals,
        "total_cost": usd(totals["cost_in_usd_ticks"]),
        "tool_words": tool_words(totals),
        "unpriced_tools": unpriced_tools_words(totals),
        "users_table": usage_table(
            "usage-users", "User", users, "No requests in this period.", totals
        ),
        "budget_lines": watch,
        "default_budget": default_budget,
    }
    if period is not None:
        context["chart"] = chart_for(
            days,
            period,
            chart_id="usage-chart",
            caption=f"Tokens and cost, {period.start.isoformat()} to {period.end.isoformat()}",
        )
    return context


# ------------------------------------------------------------------ the drill-down


def conversation_usage(user_id: int, period: Period) -> QuerySet:
    """The user's requests in `period` summed per conversation, latest activity first.

    Reads the ledger through its (user, created_at) index.
    """
    since, until = period.bounds()
    return (
        Usage.objects.filter(user_id=user_id, created_at__gte=since, created_at__lt=until)
        .values("conversation_id", "conversation__title")
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(outcome="error")),
            estimated=Count("id", filter=Q(source=Usage.Source.ESTIMATED)),
            unpriced=Count("id", filter=Q(cost_in_usd_ticks__isnull=True)),
            # What its prompt cache key saved: the prompt tokens read from xAI's cache.
            cached_prompt_tokens=Sum("cached_prompt_tokens"),
            total_tokens=Sum("total_tokens"),
            tool_calls=Sum("num_server_side_tools_used"),
            cost_in_usd_ticks=Coalesce(Sum("cost_in_usd_ticks"), 0),  # unpriced count as 0
            first=Min("created_at"),
            last=Max("created_at"),
        )
        .order_by("-last", "conversation_id")
    )


def per_model_and_day(days: UsageDayQuerySet, empty: str, prefix: str) -> dict[str, Any]:
    models = [
        {**row, "label": row["model"], "data": {"model": row["model"]}}
        for row in days.grouped("model").order_by("model")
    ]
    per_day = [
        {**row, "label": row["day"].isoformat(), "data": {"day": row["day"].isoformat()}}
        for row in days.grouped("day").order_by("-day")
    ]
    return {
        "models_table": usage_table(f"{prefix}-models", "Model", models, empty),
        "days_table": usage_table(f"{prefix}-days", "Day", per_day, empty),
    }


@staff_member_required
def user_usage(request: HttpRequest, user_id: int) -> HttpResponse:
    person = get_object_or_404(get_user_model(), pk=user_id)
    form, period = PeriodForm.read(request.GET, timezone.localdate())
    days = UsageDay.objects.between(period.start, period.end).filter(user_id=person.pk)
    totals = days.sums()
    limits = limits_for(person)
    budget = limits.budget
    status = budget_status(person, budget) if budget is not None else None
    page = Paginator(conversation_usage(person.pk, period), CONVERSATIONS_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    messages_url = reverse("admin:chat_message_changelist")
    conversations = []
    for row in page.object_list:
        item = {**row, "cost": money(row["cost_in_usd_ticks"], unpriced=all_unpriced(row))}
        if row["conversation_id"] is not None:
            item["admin_url"] = reverse(
                "admin:chat_conversation_change", args=[row["conversation_id"]]
            )
            item["messages_url"] = (
                f"{messages_url}?conversation__id__exact={row['conversation_id']}"
            )
        conversations.append(item)
    if budget is not None and budget.user_id is not None:
        budget_url = reverse("admin:chat_budget_change", args=[budget.pk])
    else:  # no budget, or the default one: give this user their own
        budget_url = reverse("admin:chat_budget_add") + f"?user={person.pk}"
    report_query = (
        f"user__id__exact={person.pk}&day__gte={period.start.isoformat()}"
        f"&day__lte={period.end.isoformat()}"
    )
    context = {
        **admin.site.each_context(request),
        "title": f"Usage of {person.get_username()}",
        "person": person,
        "form": form,
        "period": period,
        "totals": totals,
        "total_cost": usd(totals["cost_in_usd_ticks"]),
        "tool_words": tool_words(totals),
        "unpriced_tools": unpriced_tools_words(totals),
        **per_model_and_day(days, "No requests in this period.", "user"),
        "budget": budget,
        "limits": limits,
        "status": status,
        "status_cost": usd(status.cost_ticks) if status else "",
        "limit_cost": usd(budget.max_cost_ticks) if budget and budget.max_cost_ticks else "",
        "budget_url": budget_url,
        "conversations": conversations,
        "page": page,
        "ledger_url": reverse("admin:chat_usage_changelist") + f"?user__id__exact={person.pk}",
        "report_url": reverse("admin_usage") + "?" + report_query,
        "chart": chart_for(
            days,
            period,
            chart_id="user-usage-chart",
            caption=f"Tokens and cost of {person.get_username()}, "
            f"{period.start.isoformat()} to {period.end.isoformat()}",
        ),
    }
    return render(request, "admin/usage_user.html", context)


# ------------------------------------------------------------------ the user's own page


@login_required
def my_usage(request: HttpRequest) -> HttpResponse:
    """The signed-in user's own usage this budget period (this month without a budget)."""
    user = request.user
    assert user.is_authenticated  # login_required
    limits = limits_for(user)
    budget = limits.budget
    kind = budget.period if budget is not None else Budget.Period.MONTH
    start = billing.period_start(kind, timezone.localtime()).date()
    period = Period(start, timezone.localdate())
    mine = UsageDay.objects.filter(user=user, day__gte=start)
    totals = mine.sums()
    status = budget.status(totals) if budget is not None else None
    estimated, unpriced = totals["estimated"], totals["unpriced"]
    context = {
        "budget": budget,
        "limits": limits,
        "status": status,
        "warning": budget_words(status) if status and (status.near or status.over) else "",
        "period_name": "today" if kind == Budget.Period.DAY else "this month",
        "period": period,
        "totals": totals,
        "figures": [(c.field, c.label, totals[c.field]) for c in billing.TOKEN_COUNTERS],
        "total_cost": usd(totals["cost_in_usd_ticks"]),
        "tool_words": tool_words(totals) or "none",
        "cost_left": usd(max(0, budget.max_cost_ticks - status.cost_ticks))
        if status and budget and budget.max_cost_ticks is not None
        else "",
        "limit_cost": usd(budget.max_cost_ticks)
        if budget and budget.max_cost_ticks is not None
        else "",
        "estimated_note": (
            f"{estimated} of these requests ended before the provider reported usage; "
            f"{plural(estimated, 'its tokens are', 'their tokens are')} estimated."
        )
        if estimated
        else "",
        "unpriced_note": (
            f"{unpriced} {plural(unpriced, 'request has', 'requests have')} "
            "no known price; the cost above leaves them out."
        )
        if unpriced
        else "",
        "unpriced_tools": unpriced_tools_words(totals),
        **per_model_and_day(mine, "No requests yet.", "usage"),
        "chart": chart_for(
            mine,
            period,
            chart_id="my-usage-chart",
            caption=f"Your tokens and cost per day since {start.isoformat()}",
        ),
    }
    return render(request, "chat/usage.html", context)
