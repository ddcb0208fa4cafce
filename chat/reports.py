"""Usage reports: the admin's report, one user's drill-down, and each user's own page.

Everything but the per-conversation list reads the daily totals (UsageDay), never the
ledger, and lets the database do the sums: a page costs the same few queries whether the
ledger holds a hundred rows or millions. Money stays integer ticks until it is shown, and
is shown exactly (see `usd`).
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

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
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from chat import billing
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
MAX_DAYS = 3660  # ten years: longer periods are cut, with a message
MAX_DAILY_BARS = 366  # longer periods are charted per month
PAGE_SIZE = 200
RENEWS_FORMAT = "j F Y, H:i"  # '1 December 2026, 00:00'
CONVERSATIONS_PAGE_SIZE = 100


# ------------------------------------------------------------------ formatting


def usd(ticks: int | None) -> str:
    """Ticks as US dollars, exactly, with at least four decimals: '0.0150', '0.0000012345'."""
    if ticks is None:
        return ""
    value = billing.ticks_to_usd(ticks).normalize()
    if value.as_tuple().exponent > -4:  # type: ignore[operator]
        value = value.quantize(Decimal("0.0001"))
    return f"{value:f}"


def csv_safe(value: str) -> str:
    """A text cell that spreadsheets will not run as a formula."""
    if value and value[0] in "=+-@\t\r":
        return "'" + value
    return value


def plural(count: int, one: str, many: str) -> str:
    return one if count == 1 else many


# ------------------------------------------------------------------ the period


@dataclass
class Period:
    """Whole local days, both ends included."""

    start: dt.date
    end: dt.date
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, params: QueryDict, today: dt.date) -> Period:
        default_start = today - dt.timedelta(days=DEFAULT_DAYS - 1)
        errors: list[str] = []

        def parse(name: str, label: str, default: dt.date) -> dt.date:
            value = params.get(name, "").strip()
            if not value:
                return default
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                errors.append(
                    f"The {label} date “{value}” is not a date like {today.isoformat()}; "
                    f"showing {default.isoformat()} instead."
                )
                return default

        start = parse("start", "start", default_start)
        end = parse("end", "end", today)
        if start > end:
            errors.append(
                f"The period starts ({start.isoformat()}) after it ends ({end.isoformat()}); "
                f"showing the last {DEFAULT_DAYS} days instead."
            )
            start, end = default_start, today
        if (end - start).days + 1 > MAX_DAYS:
            start = end - dt.timedelta(days=MAX_DAYS - 1)
            errors.append(
                f"Periods are limited to {MAX_DAYS} days; showing from {start.isoformat()}."
            )
        return cls(start, end, errors)

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.days)]

    def bounds(self) -> tuple[dt.datetime, dt.datetime]:
        """The period as aware datetimes, the end excluded, in the local time zone."""
        tz = timezone.get_current_timezone()
        since = dt.datetime.combine(self.start, dt.time.min, tzinfo=tz)
        until = dt.datetime.combine(self.end + dt.timedelta(days=1), dt.time.min, tzinfo=tz)
        return since, until

    def query(self) -> str:
        return f"start={self.start.isoformat()}&end={self.end.isoformat()}"


def with_params(params: QueryDict, **changes: Any) -> str:
    """The query string of `params` with `changes` (None removes a parameter)."""
    query = params.copy()
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = str(value)
    encoded = query.urlencode()
    return "?" + encoded if encoded else "?"


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
        keys = period.dates()
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


def chart_svg(bars: list[Bar], unit: str, *, chart_id: str, caption: str) -> SafeString:
    """Two bar panels (tokens, then cost) as inline SVG: no script, no style attribute."""
    width, left, right, top = 760, 96, 16, 30
    panel, gap, bottom = 110, 62, 34
    height = top + 2 * panel + gap + bottom
    plot = width - left - right
    slot = plot / max(len(bars), 1)
    bar_width = max(slot * 0.75, 0.5)
    series: list[tuple[str, list[int], Callable[[int], str], str]] = [
        ("Tokens", [b.tokens for b in bars], lambda v: f"{v:,} tokens", "#417690"),
        ("Cost (USD)", [b.cost_ticks for b in bars], lambda v: f"${usd(v)}", "#b8860b"),
    ]
    title_id, desc_id = f"{chart_id}-title", f"{chart_id}-desc"
    total_tokens = sum(b.tokens for b in bars)
    total_cost = sum(b.cost_ticks for b in bars)
    out = [
        f'<svg id="{escape(chart_id)}" class="usage-chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-labelledby="{title_id} {desc_id}">',
        f'<title id="{title_id}">{escape(caption)}</title>',
        f'<desc id="{desc_id}">{len(bars)} {unit}s, {total_tokens:,} tokens, '
        f"${escape(usd(total_cost))} in all.</desc>",
    ]
    for index, (name, values, describe, colour) in enumerate(series):
        y0 = top + index * (panel + gap)
        base = y0 + panel
        peak = max(values, default=0)
        out.append(
            f'<text class="chart-axis-title" x="{left}" y="{y0 - 10}" font-size="13" '
            f'font-weight="bold">{escape(name)} per {unit}</text>'
        )
        out.append(
            f'<line x1="{left}" y1="{y0}" x2="{left}" y2="{base}" stroke="#767676"/>'
            f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="#767676"/>'
        )
        for value, y in ((peak, y0 + 4), (0, base)):
            label = f"{value:,}" if index == 0 else f"${usd(value)}"
            out.append(
                f'<text class="chart-axis-label" x="{left - 6}" y="{y}" font-size="11" '
                f'text-anchor="end">{escape(label)}</text>'
            )
        for position, (bar, value) in enumerate(zip(bars, values, strict=True)):
            bar_height = panel * value / peak if peak else 0.0
            x = left + position * slot + (slot - bar_width) / 2
            out.append(
                f'<rect class="bar" data-label="{escape(bar.label)}" data-value="{value}" '
                f'x="{x:.2f}" y="{base - bar_height:.2f}" width="{bar_width:.2f}" '
                f'height="{bar_height:.2f}" fill="{colour}">'
                f"<title>{escape(bar.label)}: {escape(describe(value))}</title></rect>"
            )
        if bars:  # the first, middle and last labels under each panel
            last = len(bars) - 1
            for position in sorted({0, len(bars) // 2, last}):
                # The first label starts at its bar, the last ends at its bar: both stay inside.
                anchor, x = "middle", left + (position + 0.5) * slot
                if position == 0:
                    anchor, x = "start", left + position * slot
                elif position == last:
                    anchor, x = "end", left + (position + 1) * slot
                out.append(
                    f'<text class="chart-axis-label" x="{x:.2f}" y="{base + 16}" '
                    f'font-size="11" text-anchor="{anchor}">{escape(bars[position].label)}</text>'
                )
    out.append("</svg>")
    return mark_safe("".join(out))  # every text above is escaped


def chart_for(days: UsageDayQuerySet, period: Period, *, chart_id: str, caption: str) -> SafeString:
    bars, unit = chart_bars(days, period)
    return chart_svg(bars, unit, chart_id=chart_id, caption=caption)


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    field: str
    numeric: bool = True


COLUMNS = (
    Column("day", "Day", "day", numeric=False),
    Column("user", "User", "user__username", numeric=False),
    Column("model", "Model", "model", numeric=False),
    Column("requests", "Requests", "requests"),
    Column("errors", "Errors", "errors"),
    Column("estimated", "Estimated", "estimated"),
    Column("unpriced", "Unpriced", "unpriced"),
    Column("prompt", "Prompt", "prompt_tokens"),
    Column("cached", "Cached prompt", "cached_prompt_tokens"),
    Column("completion", "Completion", "completion_tokens"),
    Column("reasoning", "Reasoning", "reasoning_tokens"),
    Column("total", "Total tokens", "total_tokens"),
    Column("cost", "Cost (USD)", "cost_in_usd_ticks"),
)
SORTABLE = {column.key: column for column in COLUMNS}
DEFAULT_SORT = "-day"
TIEBREAK = ("-day", "user__username", "model")


def parse_sort(value: str | None) -> str:
    value = (value or "").strip()
    return value if value.lstrip("-") in SORTABLE and value.count("-") <= 1 else DEFAULT_SORT


def ordering(sort: str) -> list[str]:
    column = SORTABLE[sort.lstrip("-")]
    order = [("-" if sort.startswith("-") else "") + column.field]
    order += [name for name in TIEBREAK if name.lstrip("-") != column.field]
    return order


def headers(params: QueryDict, sort: str) -> list[dict[str, Any]]:
    """Each column's label, the link that sorts by it, and its aria-sort."""
    out = []
    for column in COLUMNS:
        if sort == column.key:
            state, next_sort = "ascending", "-" + column.key
        elif sort == "-" + column.key:
            state, next_sort = "descending", column.key
        else:
            first_desc = column.numeric or column.key == "day"
            state, next_sort = "none", ("-" if first_desc else "") + column.key
        out.append(
            {
                "key": column.key,
                "label": column.label,
                "numeric": column.numeric,
                "aria_sort": state,
                "url": with_params(params, sort=next_sort, page=None, format=None),
            }
        )
    return out


def cells(row: Mapping[str, Any]) -> list[Any]:
    """One table row's values, in COLUMNS order, as shown and as exported."""
    out: list[Any] = []
    for column in COLUMNS:
        value = row[column.field]
        if column.key == "day":
            value = value.isoformat()
        elif column.key == "cost":
            value = usd(value)
        out.append(value)
    return out


def total_cells(totals: Mapping[str, int]) -> list[Any]:
    """The totals under the numeric columns, formatted as the rows are."""
    return [
        usd(totals[c.field]) if c.key == "cost" else totals[c.field] for c in COLUMNS if c.numeric
    ]


def labelled(columns: Iterable[Column], values: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {"key": c.key, "numeric": c.numeric, "value": v}
        for c, v in zip(columns, values, strict=True)
    ]


def row_fields() -> tuple[str, ...]:
    return ("day", "user_id", "user__username", "model", *USAGE_SUMS)


@dataclass
class Filters:
    user_id: int | None = None
    model: str = ""
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, params: QueryDict) -> Filters:
        filters = cls(model=params.get("model", "").strip())
        user = params.get("user", "").strip()
        if user:
            try:
                filters.user_id = int(user)
            except ValueError:
                filters.errors.append(f"“{user}” is not a user id; showing every user.")
        return filters

    def apply(self, days: UsageDayQuerySet) -> UsageDayQuerySet:
        if self.user_id is not None:
            days = days.filter(user_id=self.user_id)
        if self.model:
            days = days.filter(model=self.model)
        return days


def csv_response(rows: Iterable[Mapping[str, Any]], period: Period) -> HttpResponse:
    filename = f"usage-{period.start.isoformat()}-to-{period.end.isoformat()}.csv"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow([column.field if column.key != "cost" else "cost_usd" for column in COLUMNS])
    for row in rows:
        writer.writerow(
            [csv_safe(value) if isinstance(value, str) else value for value in cells(row)]
        )
    return response


# ------------------------------------------------------------------ budgets


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
            if budget is None or budget.period != period:
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


# ------------------------------------------------------------------ views


def _admin_context(request: HttpRequest, title: str) -> dict[str, Any]:
    return {**admin.site.each_context(request), "title": title}


@staff_member_required
def usage_report(request: HttpRequest) -> HttpResponse:
    params = request.GET
    period = Period.from_query(params, timezone.localdate())
    filters = Filters.from_query(params)
    sort = parse_sort(params.get("sort"))
    in_period = UsageDay.objects.between(period.start, period.end)
    days = filters.apply(in_period)
    rows = days.values(*row_fields()).order_by(*ordering(sort))
    if params.get("format") == "csv":
        return csv_response(rows.iterator(chunk_size=2000), period)

    page = Paginator(rows, PAGE_SIZE).get_page(params.get("page"))
    totals = days.sums()
    users = list(days.grouped("user_id", "user__username").order_by("user__username"))
    user_choices = list(
        in_period.order_by("user__username").values_list("user_id", "user__username").distinct()
    )
    if filters.user_id is not None and all(uid != filters.user_id for uid, _ in user_choices):
        user_choices.append((filters.user_id, f"user #{filters.user_id}"))
    model_choices = list(in_period.order_by("model").values_list("model", flat=True).distinct())
    if filters.model and filters.model not in model_choices:
        model_choices.append(filters.model)
    watch, default_budget = budget_watch()
    context = {
        **_admin_context(request, "Usage report"),
        "period": period,
        "errors": period.errors + filters.errors,
        "filters": filters,
        "sort": sort,
        "headers": headers(params, sort),
        "page": page,
        "rows": [{"row": row, "cells": labelled(COLUMNS, cells(row))} for row in page.object_list],
        "totals": totals,
        "total_cells": labelled([c for c in COLUMNS if c.numeric], total_cells(totals)),
        "total_cost": usd(totals["cost_in_usd_ticks"]),
        "users": [{**user, "cost": usd(user["cost_in_usd_ticks"])} for user in users],
        "user_choices": user_choices,
        "model_choices": model_choices,
        "chart": chart_for(
            days,
            period,
            chart_id="usage-chart",
            caption=f"Tokens and cost, {period.start.isoformat()} to {period.end.isoformat()}",
        ),
        "csv_url": with_params(params, format="csv", page=None),
        "page_urls": {
            "first": with_params(params, page=1, format=None),
            "previous": with_params(params, page=page.previous_page_number(), format=None)
            if page.has_previous()
            else None,
            "next": with_params(params, page=page.next_page_number(), format=None)
            if page.has_next()
            else None,
            "last": with_params(params, page=page.paginator.num_pages, format=None),
        },
        "budget_lines": watch,
        "default_budget": default_budget,
    }
    return render(request, "admin/usage_report.html", context)


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
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            reasoning_tokens=Sum("reasoning_tokens"),
            total_tokens=Sum("total_tokens"),
            cost_in_usd_ticks=Coalesce(Sum("cost_in_usd_ticks"), 0),  # unpriced count as 0
            first=Min("created_at"),
            last=Max("created_at"),
        )
        .order_by("-last", "conversation_id")
    )


@staff_member_required
def user_usage(request: HttpRequest, user_id: int) -> HttpResponse:
    person = get_object_or_404(get_user_model(), pk=user_id)
    period = Period.from_query(request.GET, timezone.localdate())
    days = UsageDay.objects.between(period.start, period.end).filter(user_id=person.pk)
    totals = days.sums()
    per_model = list(days.grouped("model").order_by("model"))
    per_day = list(days.grouped("day").order_by("-day"))
    budget = Budget.objects.for_user(person)
    status = budget_status(person, budget) if budget is not None else None
    page = Paginator(conversation_usage(person.pk, period), CONVERSATIONS_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    messages_url = reverse("admin:chat_message_changelist")
    conversations = []
    for row in page.object_list:
        item = {**row, "cost": usd(row["cost_in_usd_ticks"])}
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
    context = {
        **_admin_context(request, f"Usage of {person.get_username()}"),
        "person": person,
        "period": period,
        "errors": period.errors,
        "totals": totals,
        "total_cost": usd(totals["cost_in_usd_ticks"]),
        "per_model": [{**r, "cost": usd(r["cost_in_usd_ticks"])} for r in per_model],
        "per_day": [{**r, "cost": usd(r["cost_in_usd_ticks"])} for r in per_day],
        "budget": budget,
        "status": status,
        "status_cost": usd(status.cost_ticks) if status else "",
        "limit_cost": usd(budget.max_cost_ticks) if budget and budget.max_cost_ticks else "",
        "budget_url": budget_url,
        "conversations": conversations,
        "page": page,
        "ledger_url": reverse("admin:chat_usage_changelist") + f"?user__id__exact={person.pk}",
        "report_url": reverse("admin_usage") + f"?{period.query()}&user={person.pk}",
        "chart": chart_for(
            days,
            period,
            chart_id="user-usage-chart",
            caption=f"Tokens and cost of {person.get_username()}, "
            f"{period.start.isoformat()} to {period.end.isoformat()}",
        ),
    }
    return render(request, "admin/usage_user.html", context)


@login_required
def my_usage(request: HttpRequest) -> HttpResponse:
    """The signed-in user's own usage this budget period (this month without a budget)."""
    user = request.user
    budget = Budget.objects.for_user(user)
    now = timezone.localtime()
    kind = budget.period if budget is not None else Budget.Period.MONTH
    start = billing.period_start(kind, now).date()
    period = Period(start, timezone.localdate())
    mine = UsageDay.objects.filter(user_id=user.pk, day__gte=start)
    totals = mine.sums()
    status = budget.status(totals) if budget is not None else None
    per_day = list(mine.grouped("day").order_by("-day"))
    per_model = list(mine.grouped("model").order_by("model"))
    estimated = totals["estimated"]
    context = {
        "budget": budget,
        "status": status,
        "warning": budget_words(status) if status and (status.near or status.over) else "",
        "period_name": "today" if kind == Budget.Period.DAY else "this month",
        "period": period,
        "totals": totals,
        "total_cost": usd(totals["cost_in_usd_ticks"]),
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
            f"{totals['unpriced']} {plural(totals['unpriced'], 'request has', 'requests have')} "
            "no known price; the cost above leaves them out."
        )
        if totals["unpriced"]
        else "",
        "per_day": [{**r, "cost": usd(r["cost_in_usd_ticks"])} for r in per_day],
        "per_model": [{**r, "cost": usd(r["cost_in_usd_ticks"])} for r in per_model],
        "chart": chart_for(
            mine,
            period,
            chart_id="my-usage-chart",
            caption=f"Your tokens and cost per day since {start.isoformat()}",
        ),
    }
    return render(request, "chat/usage.html", context)
