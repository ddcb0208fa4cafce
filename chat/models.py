from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user) -> ConversationQuerySet:
        return self.filter(user=user)


class Conversation(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    model = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title

    @staticmethod
    def title_from(text: str) -> str:
        words = " ".join(text.split())
        return (words[:60] + "…") if len(words) > 60 else (words or "New chat")

    def touch(self) -> None:
        self.updated_at = timezone.now()
        self.save(update_fields=["updated_at"])

    def history(self) -> list[dict[str, str]]:
        """The turns to send upstream: every message with text, oldest first."""
        rows = self.messages.exclude(content="").values_list("role", "content")
        return [{"role": role, "content": content} for role, content in rows]

    @transaction.atomic
    def start_answer(self, text: str, model: str) -> tuple[Message, Message]:
        """Save the user's message and an empty streaming answer in one transaction."""
        user_message = self.messages.create(role=Message.Role.USER, content=text)
        answer = self.messages.create(
            role=Message.Role.ASSISTANT, state=Message.State.STREAMING, model=model
        )
        fields = ["updated_at"]
        if self.model != model:
            self.model = model
            fields.append("model")
        self.updated_at = timezone.now()
        self.save(update_fields=fields)
        return user_message, answer


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class State(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="messages")
    role = models.CharField(max_length=20, choices=Role.choices)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.COMPLETE)
    error = models.TextField(blank=True)
    model = models.CharField(max_length=100, blank=True)
    finish_reason = models.CharField(max_length=50, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["conversation", "id"])]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:50]}"

    @transaction.atomic
    def finish(self, *, user_id: int, usage: dict[str, Any], **fields: Any) -> Usage:
        """Save the answer's final state and its one usage row, together."""
        for name, value in fields.items():
            setattr(self, name, value)
        self.save(update_fields=list(fields))
        return Usage.objects.create(
            user_id=user_id,
            conversation_id=self.conversation_id,
            message=self,
            outcome=self.state,
            model=self.model,
            finish_reason=self.finish_reason,
            ttft_ms=self.ttft_ms,
            duration_ms=self.duration_ms,
            **usage,
        )


class UsageQuerySet(models.QuerySet):
    def per_user(self):
        return (
            self.values("user__id", "user__username")
            .annotate(
                requests=Count("id"),
                errors=Count("id", filter=Q(outcome=Message.State.ERROR)),
                prompt_tokens=Sum("prompt_tokens"),
                cached_prompt_tokens=Sum("cached_prompt_tokens"),
                completion_tokens=Sum("completion_tokens"),
                reasoning_tokens=Sum("reasoning_tokens"),
                total_tokens=Sum("total_tokens"),
            )
            .order_by("user__username")
        )


class Usage(models.Model):
    """One row per upstream request, whatever its end."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="usage")
    conversation = models.ForeignKey(Conversation, models.SET_NULL, null=True, blank=True)
    message = models.OneToOneField(
        Message, models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    created_at = models.DateTimeField(default=timezone.now)
    api_style = models.CharField(max_length=30, default="chat_completions")
    requested_model = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=100, blank=True, help_text="as the upstream answered")
    response_id = models.CharField(max_length=200, blank=True)
    system_fingerprint = models.CharField(max_length=100, blank=True)
    finish_reason = models.CharField(max_length=50, blank=True)
    outcome = models.CharField(max_length=20, choices=Message.State.choices)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    cost_in_usd_ticks = models.BigIntegerField(null=True, blank=True)
    reported = models.BooleanField(
        default=False, help_text="True when the upstream reported this usage"
    )
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    raw_usage = models.JSONField(null=True, blank=True)

    objects = UsageQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "usage"
        indexes = [
            models.Index(fields=["created_at", "user"]),
            models.Index(fields=["user", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.model} {self.total_tokens}"


def estimate_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for requests the upstream never billed."""
    return (len(text) + 3) // 4
