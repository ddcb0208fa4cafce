from django.contrib import admin

from chat.models import Conversation, Message, Usage


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
    list_display = (
        "created_at",
        "user",
        "model",
        "outcome",
        "prompt_tokens",
        "cached_prompt_tokens",
        "completion_tokens",
        "reasoning_tokens",
        "total_tokens",
        "reported",
    )
    list_filter = ("outcome", "reported", "model", "api_style")
    search_fields = ("user__username", "model", "response_id")
    list_select_related = ("user",)
    raw_id_fields = ("user", "conversation", "message")
    date_hierarchy = "created_at"
