from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils import timezone

from chat.catalog import sync_prices
from chat.models import Budget, Conversation, Message, ModelPrice, Usage


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("role", "state", "model", "content", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "user", "model", "created_at", "updated_at")
    list_filter = ("model",)
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


@admin.register(Usage)
class UsageAdmin(admin.ModelAdmin):
    """The ledger is read-only: rows are written once, with their day totals."""

    list_display = (
        "created_at",
        "user",
        "model",
        "outcome",
        "source",
        "prompt_tokens",
        "cached_prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "total_tokens",
        "cost_usd",
        "cost_source",
    )
    list_filter = ("outcome", "source", "cost_source", "model", "api_style")
    search_fields = ("user__username", "model", "response_id")
    list_select_related = ("user",)
    date_hierarchy = "created_at"

    @admin.display(description="cost (USD)")
    def cost_usd(self, obj: Usage):
        return obj.cost_usd

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Usage | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Usage | None = None) -> bool:
        return False


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
            self.message_user(request, f"Could not fetch prices: {exc}", messages.ERROR)
            return
        self.message_user(request, f"{changed} prices updated from xAI.", messages.SUCCESS)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "period",
        "max_tokens",
        "max_cost_usd",
        "max_messages_per_minute",
        "max_concurrent_streams",
    )
    list_select_related = ("user",)
    raw_id_fields = ("user",)
