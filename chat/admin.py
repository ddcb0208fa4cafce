import datetime as dt
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import Max, Min
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from chat import reports
from chat.billing import TOKEN_COUNTERS, TOOL_CALLS, TOOL_COUNTERS, TokenCounter, ToolCounter
from chat.catalog import failure_text, sync_prices
from chat.models import (
    TITLE_SUMS,
    TOOL_SUMS,
    USAGE_SUMS,
    Budget,
    Conversation,
    Message,
    ModelPrice,
    SiteSettings,
    ToolPrice,
    Usage,
    UsageDay,
    UserSettings,
)


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "state", "model", "content", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "title_source", "user", "model", "created_at", "updated_at")
    list_filter = ("model", "title_source")
    search_fields = ("title", "user__username")
    list_select_related = ("user",)
    raw_id_fields = ("user",)
    inlines = [MessageInline]


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ("id", "conversation", "role", "state", "model", "created_at")
    list_filter = ("role", "state")
    search_fields = ("content",)
    list_select_related = ("conversation",)
    raw_id_fields = ("conversation",)
    # Sent back to the model verbatim (encrypted reasoning): never edited by hand.
    readonly_fields = ("output_items",)


class ReadOnlyAdmin(admin.ModelAdmin):
    """The ledger and its daily totals are written by answers only, never by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Usage)
class UsageAdmin(ReadOnlyAdmin):
    """The ledger is read-only: rows are written once, with their day totals."""

    list_display = (
        "created_at",
        "user",
        "purpose",
        "model",
        "outcome",
        "source",
        "prompt_tokens",
        "cached_prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "total_tokens",
        "num_server_side_tools_used",
        "cost_usd",
        "cost_source",
    )
    list_filter = ("purpose", "outcome", "source", "cost_source", "model", "api_style")
    search_fields = ("user__username", "model", "response_id")
    list_select_related = ("user",)
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")  # newest first

    @admin.display(description="Cost", ordering="cost_in_usd_ticks")
    def cost_usd(self, obj: Usage) -> str:
        return reports.money(obj.cost_in_usd_ticks, sign=True)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = (
        "model",
        "prompt",
        "cached_prompt",
        "completion",
        "reasoning",
        "source",
        "updated_at",
    )
    list_filter = ("source",)
    search_fields = ("model",)
    readonly_fields = ("source", "updated_at")
    actions = ["fetch_from_xai"]

    def save_model(self, request: HttpRequest, obj: ModelPrice, form, change: bool) -> None:
        # An admin's price is kept over xAI's list from now on; old ledger rows keep theirs.
        obj.source = ModelPrice.Source.ADMIN
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)

    @admin.action(description="Fetch list prices from xAI (keeps prices set by admins)")
    def fetch_from_xai(self, request: HttpRequest, queryset) -> None:
        try:
            changed = sync_prices()
        except Exception as exc:
            self.message_user(
                request, f"Could not fetch prices: {failure_text(exc)}", messages.ERROR
            )
            return
        self.message_user(request, f"{changed} prices updated from xAI.", messages.SUCCESS)


@admin.register(ToolPrice)
class ToolPriceAdmin(admin.ModelAdmin):
    """The price of server-side tool calls, for costs the upstream does not report."""

    list_display = ("tool", "usd_per_thousand_calls", "updated_at")
    search_fields = ("tool",)
    readonly_fields = ("updated_at",)

    def save_model(self, request: HttpRequest, obj: ToolPrice, form, change: bool) -> None:
        # New requests get the new price; old ledger rows keep the one they were made at.
        obj.updated_at = timezone.now()
        super().save_model(request, obj, form, change)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "period",
        "max_tokens",
        "max_cost_usd",
        "max_messages_per_minute",
        "max_concurrent_streams",
        "max_open_sockets",
    )
    list_select_related = ("user",)
    raw_id_fields = ("user",)


def counter_column(counter: TokenCounter | ToolCounter) -> Callable[[UsageDay], int]:
    """A sortable changelist column for one token or tool call counter, headed by its
    label."""

    @admin.display(description=counter.label, ordering=counter.field)
    def column(obj: UsageDay) -> int:
        return getattr(obj, counter.field)

    column.__name__ = counter.field  # the cells' class: field-<name>
    return column


class RecentFilter(admin.SimpleListFilter):
    """The report's period: the last 30 days unless another is chosen, or days are picked
    with the date hierarchy or day__gte/day__lte."""

    title = "period"
    parameter_name = "period"
    DAYS = {"30": 30, "90": 90, "365": 365}

    def __init__(self, request: HttpRequest, params: Any, model: Any, model_admin: Any) -> None:
        # The default gives way to any day chosen otherwise.
        self.picked = any(name.startswith("day__") for name in request.GET)
        super().__init__(request, params, model, model_admin)
        days = self.DAYS.get(self.value() or ("" if self.picked else "30"))
        self.since = timezone.localdate() - dt.timedelta(days=days - 1) if days else None

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(value, f"Last {days} days") for value, days in self.DAYS.items()] + [
            ("all", "Every day")
        ]

    def choices(self, changelist: Any) -> Any:
        current = self.value() or ("" if self.picked else "30")
        for value, label in self.lookup_choices:
            yield {
                "selected": current == value,
                "query_string": changelist.get_query_string({self.parameter_name: value}),
                "display": label,
            }

    def queryset(self, request: HttpRequest, queryset: Any) -> Any:
        return queryset if self.since is None else queryset.filter(day__gte=self.since)


# The report's CSV writes money in US dollars, and says so in those columns' names.
CSV_MONEY = {"cost_in_usd_ticks": "cost_usd", "title_cost_in_usd_ticks": "title_cost_usd"}


@admin.register(UsageDay)
class UsageDayAdmin(ReadOnlyAdmin):
    """The usage report (/admin/usage/): the daily totals per user, model and day, filtered,
    sorted and paged by the changelist, with totals, a chart, a CSV of exactly the filtered
    rows and the budget watch around it (templates/admin/chat/usageday/change_list.html)."""

    # USAGE_SUMS: the counts, the token counters and the cost, in the report's order; then
    # how many of the requests were title requests, and their cost; then the tool calls.
    list_display: tuple[Any, ...] = (
        *("date", "username", "model", *USAGE_SUMS[:4]),
        *(counter_column(counter) for counter in TOKEN_COUNTERS),
        "cost",
        "title_requests",
        "title_cost",
        *(counter_column(counter) for counter in (TOOL_CALLS, *TOOL_COUNTERS)),
    )
    list_display_links = None
    list_filter = (RecentFilter, "user", "model")
    date_hierarchy = "day"
    ordering = ("-day", "user__username", "model")
    list_select_related = ("user",)
    list_per_page = 200
    show_full_result_count = False  # one count query, not two
    actions = None
    # The CSV's columns, those of list_display, read as plain values: 18,000 rows export in
    # a fraction of the time the changelist's per-cell display lookups would take.
    # (The unpriced tool calls, TOOL_SUMS' last, are said under the totals, not in columns.)
    csv_fields = ("day", "user__username", "model", *USAGE_SUMS, *TITLE_SUMS, *TOOL_SUMS[:-1])
    csv_header = tuple(CSV_MONEY.get(name, name) for name in csv_fields)

    def csv_cells(self) -> list[Callable[[Any], Any]]:
        """How each CSV column's value is written: the day as ISO, money in USD."""
        special: dict[str, Callable[[Any], Any]] = {
            "day": dt.date.isoformat,
            "user__username": lambda name: name or reports.DELETED_USER,
            **{name: reports.usd for name in CSV_MONEY},
        }
        return [special.get(name, lambda value: value) for name in self.csv_fields]

    @admin.display(description="Day", ordering="day")
    def date(self, obj: UsageDay) -> str:
        return obj.day.isoformat()

    @admin.display(description="User", ordering="user__username")
    def username(self, obj: UsageDay) -> str:
        return obj.user.get_username() if obj.user is not None else reports.DELETED_USER

    @admin.display(description="Cost (USD)", ordering="cost_in_usd_ticks")
    def cost(self, obj: UsageDay) -> str:
        return reports.money(obj.cost_in_usd_ticks, unpriced=reports.all_unpriced(obj))

    @admin.display(description="Title cost (USD)", ordering="title_cost_in_usd_ticks")
    def title_cost(self, obj: UsageDay) -> str:
        return reports.money(obj.title_cost_in_usd_ticks)

    @staticmethod
    def period(request: HttpRequest, changelist: Any) -> reports.Period | None:
        """The chart's days: those filtered on where given, else the rows' own."""
        recent = [f.since for f in changelist.filter_specs if isinstance(f, RecentFilter)]
        if recent and recent[0] is not None:
            found = {"first": recent[0], "last": timezone.localdate()}
        else:
            found = changelist.queryset.aggregate(first=Min("day"), last=Max("day"))
        bounds = []
        for name, default in (("day__gte", found["first"]), ("day__lte", found["last"])):
            try:
                bounds.append(dt.date.fromisoformat(request.GET.get(name, "")))
            except ValueError:
                bounds.append(default)
        start, end = bounds
        if start is None or end is None or start > end:
            return None
        return reports.Period(max(start, end - dt.timedelta(days=reports.MAX_DAYS - 1)), end)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        export = request.GET.get("format") == "csv"
        if "format" in request.GET:  # not a filter: the changelist would refuse it
            filters = request.GET.copy()
            del filters["format"]
            # (django-stubs types request.GET as immutable; Django itself allows a copy.)
            request.GET = filters  # type: ignore[assignment]
        response = super().changelist_view(request, extra_context)
        if not isinstance(response, TemplateResponse):  # a redirect (?e=1)
            return response
        context = response.context_data or {}
        changelist = context["cl"]
        days = changelist.queryset  # filtered and sorted, every page
        period = self.period(request, changelist)
        if export:
            name = f"usage-{period.start}-to-{period.end}.csv" if period else "usage.csv"
            cells = self.csv_cells()
            rows = (
                [cell(value) for cell, value in zip(cells, row, strict=True)]
                for row in days.values_list(*self.csv_fields).iterator(2000)
            )
            return reports.csv_response(name, self.csv_header, rows)
        query = request.GET.copy()
        query.pop("p", None)
        query["format"] = "csv"
        context.update(reports.report_context(days, period), csv_query=query.urlencode())
        return response


@admin.register(SiteSettings)
class SiteSettingsAdmin(admin.ModelAdmin):
    """One row: added once, then changed, never deleted."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not SiteSettings.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UserSettings)
class UserSettingsAdmin(admin.ModelAdmin):
    list_display = ("user",)
    search_fields = ("user__username",)
    raw_id_fields = ("user",)
