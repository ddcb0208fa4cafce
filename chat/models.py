from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, cast

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.validators import RegexValidator
from django.db import IntegrityError, models, transaction
from django.db.models import Count, F, Q, Sum, Value
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce, TruncDate
from django.db.models.signals import post_delete
from django.dispatch import receiver
from django.utils import timezone
from django.utils.crypto import salted_hmac

from chat import billing, search
from chat.tree import Tree

LEAF = object()  # Conversation.start_answer(): after the last message of the active path


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user) -> ConversationQuerySet:
        return self.filter(user=user)


class Conversation(models.Model):
    class TitleSource(models.TextChoices):
        FIRST_WORDS = "first_words", "the first words of the first message"
        GENERATED = "generated", "written by a model after the first answer (chat.titles)"
        USER = "user", "set by the user, which no generated title replaces"

    class ImportSource(models.TextChoices):
        GROKCHAT = "grokchat", "this app's own JSON export"
        CHATGPT = "chatgpt", "ChatGPT's conversations.json export"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, default="New chat")
    title_source = models.CharField(
        max_length=20, choices=TitleSource.choices, default=TitleSource.FIRST_WORDS
    )
    model = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    # Its settings (chat.forms.ConversationSettingsForm), applied to each of its requests;
    # blank or null: the upstream's default (chat.prompts).
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    reasoning_effort = models.CharField(max_length=10, blank=True)
    # Imported conversations (chat.exports) were never answered here: nothing of them is
    # on the ledger, and the page says where they came from.
    imported_from = models.CharField(
        max_length=20, choices=ImportSource.choices, blank=True, help_text="blank: made here"
    )
    imported_at = models.DateTimeField(null=True, blank=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title

    @staticmethod
    def title_from(text: str) -> str:
        words = " ".join(text.split())
        return (words[:60] + "…") if len(words) > 60 else (words or "New chat")

    @transaction.atomic
    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        # Locked first, as Message.finish() locks it: an answer saving now either lands
        # before the deletion (which then unlinks its ledger row) or finds it gone.
        Conversation.objects.select_for_update().filter(pk=self.pk).exists()
        return super().delete(*args, **kwargs)

    @property
    def prompt_cache_key(self) -> str:
        """The key xAI's prompt cache groups this conversation's requests by: the same on
        every turn, another for every other conversation, and not guessable without
        SECRET_KEY (an HMAC of the id, shaped as a UUID like xAI's examples)."""
        digest = salted_hmac("chat.Conversation.prompt_cache_key", str(self.pk), algorithm="sha256")
        return str(uuid.UUID(digest.hexdigest()[:32]))

    def touch(self) -> None:
        self.updated_at = timezone.now()
        self.save(update_fields=["updated_at"])

    def tree(self) -> Tree:
        """The shape of the conversation, in one query of three columns."""
        return Tree.of(self.messages.order_by().values_list("id", "parent_id", "selected_at"))

    def history(self, path: list[int]) -> list[dict[str, Any]]:
        """The turns to send upstream along `path` (ids, first message first): each message
        with text; an answer without any (failed, or stopped before its first word) is left
        out with the message it answered, so no later turn sends it again. An answer saved
        with its Responses output items carries them as "items" (chat.upstream.Turn). A message with
        images has `images` too: [{"type", "file"}], read by chat.attachments.load_images()."""
        rows = (
            self.messages.filter(id__in=path)
            .order_by()
            .values_list("id", "role", "content", "output_items")
        )
        messages = {row[0]: row[1:] for row in rows}
        images = Attachment.refs_of(path)
        turns: list[dict[str, Any]] = []
        for message_id in path:
            role, content, items = messages[message_id]
            if role == Message.Role.ASSISTANT and not content:
                if turns and turns[-1]["role"] == Message.Role.USER:
                    turns.pop()
            elif content:
                turn: dict[str, Any] = {"role": role, "content": content}
                if role == Message.Role.ASSISTANT and items:
                    turn["items"] = items
                if message_id in images:
                    turn["images"] = images[message_id]
                turns.append(turn)
        return turns

    def history_to(self, message_id: int | None) -> list[dict[str, Any]]:
        """The turns that lead to `message_id`, it included (None: none)."""
        return [] if message_id is None else self.history(self.tree().ancestors(message_id))

    def append(self, **fields: Any) -> Message:
        """A message after the last one of the active path (for imports and tests)."""
        return self.messages.create(parent_id=self.tree().leaf(), **fields)

    @transaction.atomic(savepoint=False)  # within a send's transaction: no savepoint needed
    def start_answer(
        self, text: str, model: str, worker: str = "", *, parent_id: int | None | object = LEAF
    ) -> tuple[Message, Message]:
        """Save the user's message after `parent_id` (by default the active path's last
        message) and an empty streaming answer to it, both now on the active path."""
        parent = self.tree().leaf() if parent_id is LEAF else cast("int | None", parent_id)
        user_message = self.messages.create(role=Message.Role.USER, content=text, parent_id=parent)
        answer = self.add_answer(user_message.pk, model, worker, Usage.Purpose.ANSWER)
        return user_message, answer

    def add_answer(
        self, question_id: int, model: str, worker: str, purpose: str, prefix: str = ""
    ) -> Message:
        """An empty streaming answer to the message `question_id` (a continued one starts
        with the text it continues), now on the active path. A new message's model
        becomes the conversation's; another answer's doesn't."""
        answer = self.messages.create(
            role=Message.Role.ASSISTANT,
            state=Message.State.STREAMING,
            model=model,
            worker=worker,
            parent_id=question_id,
            purpose=purpose,
            content=prefix,
        )
        fields = ["updated_at"]
        if purpose == Usage.Purpose.ANSWER and self.model != model:
            self.model = model
            fields.append("model")
        self.updated_at = timezone.now()
        self.save(update_fields=fields)
        return answer


def streams_started_after() -> dt.datetime:
    """No answer can still be streaming that started before this (the total timeout, and
    a minute's grace): older "streaming" rows are leftovers of a crash."""
    return timezone.now() - dt.timedelta(seconds=settings.UPSTREAM_TOTAL_TIMEOUT + 60)


def of_dead_processes(rows: models.QuerySet, host: str, alive: Callable[[int], bool]) -> list[int]:
    """The ids of `rows` whose `worker` ("host:pid") is a process of `host` that is gone."""
    return [
        row.pk
        for row in rows.filter(worker__startswith=f"{host}:").only("pk", "worker")
        if not alive(int(row.worker.rpartition(":")[2] or 0))
    ]


class MessageQuerySet(models.QuerySet):
    def orphans(self, host: str, alive: Callable[[int], bool], started_before: dt.datetime):
        """Answers left "streaming" by a process that is gone.

        Those of a dead process on this host (a restart after SIGKILL), and those of any
        process that are older than the longest answer allowed (a host that never came back).
        """
        rows = self.filter(state=Message.State.STREAMING)
        gone = of_dead_processes(rows, host, alive)
        return rows.filter(Q(pk__in=gone) | Q(created_at__lt=started_before))


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
    # A conversation is a tree: an edit is a sibling of the message it replaces, a
    # regenerated answer a sibling of the answer. Roots (first messages) have no parent.
    parent = models.ForeignKey(
        "self", models.CASCADE, null=True, blank=True, related_name="children"
    )
    # Among siblings, the one selected last is on the active path (Conversation.path()).
    selected_at = models.DateTimeField(default=timezone.now)
    role = models.CharField(max_length=20, choices=Role.choices)
    # An answer's purpose, copied to its ledger row (Usage.Purpose); blank for a user's message.
    purpose = models.CharField(max_length=20, blank=True)
    content = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    # A complete answer's Responses API output items, verbatim and in order (reasoning with
    # its encrypted content, tool calls, the message): sent back in place of its text with
    # each later turn of its path (chat.upstream.Responses.input). Empty for other answers.
    output_items = models.JSONField(default=list, blank=True)
    state = models.CharField(max_length=20, choices=State.choices, default=State.COMPLETE)
    error = models.TextField(blank=True)
    model = models.CharField(max_length=100, blank=True)
    finish_reason = models.CharField(max_length=50, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    # The sources an answer cites ([{"url", "title"?}], chat.search.answer_sources), saved
    # with its end: its numbered source chips.
    citations = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    worker = models.CharField(
        max_length=100, blank=True, help_text="host:pid of the process that streams it"
    )

    objects = MessageQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["conversation", "id"]),
            models.Index(
                fields=["state"], condition=Q(state="streaming"), name="chat_message_streaming"
            ),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:50]}"

    @transaction.atomic
    def finish(self, *, user_id: int | None, usage: dict[str, Any], **fields: Any) -> Usage:
        """Save the answer's final state and its one ledger row, together.

        The ledger row lands whatever became of what it describes: a deleted conversation
        or user leaves it without those links, and a row already written for this answer
        (an estimate, by a process that took it for abandoned) is corrected, not doubled.
        """
        for name, value in fields.items():
            setattr(self, name, value)
        # Locked as Conversation.delete() locks it: a deletion waits for this save or
        # happens before it, never between its reads and its writes.
        kept = (
            Conversation.objects.select_for_update(no_key=True)
            .filter(pk=self.conversation_id)
            .exists()
            and Message.objects.filter(pk=self.pk).update(**fields) > 0
        )
        if user_id is not None and not get_user_model().objects.filter(pk=user_id).exists():
            user_id = None  # deleted while the answer streamed
        row = Usage(
            user_id=user_id,
            conversation_id=self.conversation_id if kept else None,
            message=self if kept else None,
            answer_id=self.pk,
            outcome=self.state,
            model=self.model,
            finish_reason=self.finish_reason,
            ttft_ms=self.ttft_ms,
            duration_ms=self.duration_ms,
            **usage,
        )
        row.price_and_cost()
        earlier = Usage.objects.select_for_update().filter(answer_id=self.pk).first()
        if earlier is not None:
            UsageDay.add(earlier, sign=-1)
            row.pk, row.created_at = earlier.pk, earlier.created_at
        row.save()
        UsageDay.add(row)
        self.usage = row
        return row

    @transaction.atomic
    def end_abandoned(self, state: str, error: str = "") -> Usage | None:
        """End an answer that no process streams any more: what was checkpointed, with
        an estimate of its usage (the process that streamed it, if it still lives, later
        corrects both).

        None if it was no longer streaming (the claim below lets only one end it).
        """
        claimed = Message.objects.filter(pk=self.pk, state=Message.State.STREAMING).update(
            state=state
        )
        if not claimed:
            return None
        from chat.prompts import system_prompt  # (chat.prompts builds on these models)

        self.refresh_from_db()
        conversation = self.conversation
        history = conversation.history_to(self.parent_id)
        prompt = [turn["content"] for turn in history]
        prompt.append(system_prompt(conversation.user, conversation))
        images = billing.images_in(history)
        usage = {
            **Usage.estimated_fields(prompt, self.content, self.reasoning, images),
            "requested_model": self.model,
            "purpose": self.purpose or Usage.Purpose.ANSWER,
        }
        return self.finish(user_id=self.conversation.user_id, usage=usage, state=state, error=error)

    def interrupt_orphan(self) -> Usage | None:
        """End an answer whose process died (see end_abandoned)."""
        return self.end_abandoned(
            Message.State.INTERRUPTED, "The server stopped while this answer was streaming."
        )


def attachment_path(attachment: Attachment, filename: str) -> str:
    """Where an attachment's files go under MEDIA_ROOT: the names chat.attachments makes
    (random), never the uploader's file name."""
    return f"attachments/{attachment.user_id}/{filename}"


class Attachment(models.Model):
    """An image a user uploaded (chat.attachments): pending until a message of theirs
    takes it, then part of that message, sent upstream with it on every later turn."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="attachments")
    message = models.ForeignKey(
        Message, models.CASCADE, null=True, blank=True, related_name="attachments"
    )
    content_type = models.CharField(max_length=20, help_text="as its decoded content says")
    size = models.PositiveIntegerField(help_text="bytes")
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    file = models.FileField(upload_to=attachment_path, max_length=200)
    thumbnail = models.FileField(upload_to=attachment_path, max_length=200)
    # What is sent upstream for a WebP or GIF, which xAI does not take: a PNG of it (of a
    # GIF's first frame). Blank for PNG and JPEG, which go as they are.
    converted = models.FileField(upload_to=attachment_path, max_length=200, blank=True)

    class Meta:
        indexes = [models.Index(fields=["user", "message"])]
        ordering = ["created_at", "id"]  # a message's images in upload order (an edit's too)

    def __str__(self) -> str:
        return f"{self.content_type} {self.width}x{self.height} of {self.user_id}"

    @property
    def upstream_type(self) -> str:
        """The type of what is sent upstream: the file's, or its converted copy's."""
        if not self.converted:
            return self.content_type
        return "image/png" if self.converted.name.endswith(".png") else "image/jpeg"

    @property
    def thumbnail_type(self) -> str:
        return "image/png" if self.thumbnail.name.endswith(".png") else "image/jpeg"

    @classmethod
    def refs_of(cls, message_ids: list[int]) -> dict[int, list[dict[str, str]]]:
        """The images of those messages, oldest first, as history turns carry them: the
        type sent upstream and the stored file it is read from (one query)."""
        refs: dict[int, list[dict[str, str]]] = {}
        for row in cls.objects.filter(message_id__in=message_ids).only(
            "message_id", "content_type", "file", "converted"
        ):
            name = row.converted.name or row.file.name
            ref = {"type": row.upstream_type, "file": name}
            refs.setdefault(cast(int, row.message_id), []).append(ref)
        return refs


@receiver(post_delete, sender=Attachment)
def delete_attachment_files(sender: type[Attachment], instance: Attachment, **kwargs: Any) -> None:
    """Its files go with the last row that names them (an edit's copy shares them), once
    the deletion is committed."""
    names = [f.name for f in (instance.file, instance.thumbnail, instance.converted) if f.name]

    def delete() -> None:
        for name in names:
            named = Q(file=name) | Q(thumbnail=name) | Q(converted=name)
            if not Attachment.objects.filter(named).exists():
                default_storage.delete(name)

    transaction.on_commit(delete, robust=True)


class SendKey(models.Model):
    """A `send`'s client_id, kept a day: the same id sent again (a tab that reconnected
    before it heard message.start) attaches to the answer the first send started instead
    of starting, and paying for, another (docs/protocol.md, `send`)."""

    KEPT = dt.timedelta(hours=24)

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    client_id = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)
    # SET_NULL: a retry after its conversation was deleted must not start another answer.
    user_message = models.ForeignKey(Message, models.SET_NULL, null=True, related_name="+")
    answer = models.ForeignKey(Message, models.SET_NULL, null=True, related_name="+")

    class Meta:
        constraints = [
            # Two sends of one id racing in two processes: the second insert fails.
            models.UniqueConstraint(fields=["user", "client_id"], name="send_key_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.client_id}"

    @classmethod
    def find(cls, user, client_id: str) -> SendKey | None:
        """The user's key for `client_id` if it was sent within KEPT, with its answer."""
        return (
            cls.objects.filter(
                user=user, client_id=client_id, created_at__gte=timezone.now() - cls.KEPT
            )
            .select_related("user_message", "answer__conversation")
            .first()
        )

    @classmethod
    def remember(cls, user, client_id: str, user_message: Message, answer: Message) -> None:
        """Keep the key (raises IntegrityError if another send has it), dropping the user's
        expired keys, this one's old use among them."""
        cls.objects.filter(user=user, created_at__lt=timezone.now() - cls.KEPT).delete()
        cls.objects.create(user=user, client_id=client_id, user_message=user_message, answer=answer)


class ModelPrice(models.Model):
    """What a model costs per million tokens, as xAI lists it or as an admin set it."""

    class Source(models.TextChoices):
        XAI = "xai", "xAI's /v1/language-models"
        ADMIN = "admin", "set by an admin"

    model = models.CharField(max_length=100, unique=True, help_text="a model id or alias")
    prompt = models.DecimalField(
        max_digits=12, decimal_places=4, help_text="USD per 1M prompt tokens"
    )
    cached_prompt = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="USD per 1M cached prompt tokens (blank: the prompt price)",
    )
    completion = models.DecimalField(
        max_digits=12, decimal_places=4, help_text="USD per 1M completion tokens"
    )
    reasoning = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="USD per 1M reasoning tokens (blank: the completion price, as xAI bills)",
    )
    source = models.CharField(
        max_length=10,
        choices=Source.choices,
        default=Source.ADMIN,
        help_text="prices set by an admin are never overwritten by xAI's list",
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model

    def as_price(self) -> billing.Price:
        return billing.Price.from_usd_per_million(
            self.prompt, self.cached_prompt, self.completion, self.reasoning
        )

    @classmethod
    def price_for(cls, *models: str) -> billing.Price | None:
        """The price in force now for the first of `models` that has one, with the price
        of each server-side tool call (ToolPrice)."""
        names = [name for name in models if name]
        rows = {row.model: row for row in cls.objects.filter(model__in=names)}
        for name in names:
            if name in rows:
                return dataclasses.replace(rows[name].as_price(), tools=ToolPrice.in_force())
        return None

    @classmethod
    def update_from_xai(cls, prices: dict[str, billing.Price]) -> int:
        """Store xAI's list prices, leaving the prices admins set alone."""
        per_million = billing.TICKS_PER_TOKEN_PER_USD_PER_MILLION
        admin_set = set(
            cls.objects.filter(source=cls.Source.ADMIN, model__in=prices).values_list(
                "model", flat=True
            )
        )
        changed = 0
        for model, price in prices.items():
            if model in admin_set:
                continue
            cls.objects.update_or_create(
                model=model,
                defaults={
                    "prompt": Decimal(price.prompt) / per_million,
                    "cached_prompt": Decimal(price.cached_prompt) / per_million,
                    "completion": Decimal(price.completion) / per_million,
                    "reasoning": None,
                    "source": cls.Source.XAI,
                    "updated_at": timezone.now(),
                },
            )
            changed += 1
        return changed


class ToolPrice(models.Model):
    """What a server-side tool call costs (web search, X search...), as an admin set it.

    Used only where the upstream reports no cost: xAI's `cost_in_usd_ticks` already
    includes its tool fees. Each ledger row keeps the price of the tools it used as it
    was at request time.
    """

    tool = models.CharField(
        max_length=100,
        unique=True,
        validators=[RegexValidator(r"^[a-z0-9_]+$", "Lower-case letters, digits and _ only.")],
        help_text="the tool as the usage report names its calls, without _calls: "
        "web_search, x_search, code_interpreter, file_search, mcp, document_search",
    )
    usd_per_thousand_calls = models.DecimalField(
        max_digits=12, decimal_places=4, help_text="USD per 1,000 calls (xAI: $5 for web_search)"
    )
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["tool"]

    def __str__(self) -> str:
        return self.tool

    @property
    def ticks_per_call(self) -> int:
        return billing.usd_per_thousand_calls_to_ticks(self.usd_per_thousand_calls)

    @classmethod
    def in_force(cls) -> dict[str, int]:
        """Ticks per call of every tool that has a price now."""
        return {row.tool: row.ticks_per_call for row in cls.objects.all()}


class Usage(models.Model):
    """One row per upstream request, whatever its end: the ledger.

    Tokens are the upstream's last usage report when the stream carried one, else an
    estimate (see docs/usage.md), else zero when the upstream refused the request before
    it began. The cost is the one the upstream reported (xAI's cost_in_usd_ticks) or,
    failing that, the tokens at the price in force at request time, stored on the row.
    """

    class Source(models.TextChoices):
        REPORTED = "reported", "reported by the upstream"
        ESTIMATED = "estimated", "estimated: the stream ended before any usage report"
        NONE = "none", "none: the upstream refused the request"

    class Purpose(models.TextChoices):
        ANSWER = "answer", "an answer to a message (sent or edited)"
        REGENERATE = "regenerate", "an answer again (regenerate or retry)"
        CONTINUE = "continue", "the rest of an answer that was cut"
        TITLE = "title", "a conversation's title"

    class CostSource(models.TextChoices):
        REPORTED = "reported", "reported by the upstream"
        COMPUTED = "computed", "tokens and tool calls at the stored prices"
        PARTIAL = "partial", "tokens and priced tool calls: some tool calls had no price"
        UNPRICED = "unpriced", "no price known for this model"

    # A ledger row outlives what it describes: deleting a user, a conversation or a message
    # unlinks it (the report shows "deleted user"), never deletes billing history.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    conversation = models.ForeignKey(Conversation, models.SET_NULL, null=True, blank=True)
    message = models.OneToOneField(
        Message, models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    answer_id = models.BigIntegerField(
        null=True, blank=True, unique=True, help_text="the answer's id, kept when it is deleted"
    )
    created_at = models.DateTimeField(default=timezone.now)
    api_style = models.CharField(max_length=30, default="chat_completions")
    purpose = models.CharField(max_length=20, choices=Purpose.choices, default=Purpose.ANSWER)
    requested_model = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=100, blank=True, help_text="as the upstream answered")
    response_id = models.CharField(max_length=200, blank=True)
    system_fingerprint = models.CharField(max_length=100, blank=True)
    finish_reason = models.CharField(max_length=50, blank=True)
    outcome = models.CharField(max_length=20, choices=Message.State.choices)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.ESTIMATED)
    prompt_tokens = models.PositiveIntegerField(default=0)
    cached_prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    # Server-side tool calls (web and X search...), as the upstream reported them. (Database
    # defaults too: rows written by raw SQL, like the benchmark's, used none.)
    num_server_side_tools_used = models.PositiveIntegerField(default=0, db_default=0)
    server_side_tool_usage_details = models.JSONField(
        default=dict, db_default={}, blank=True, help_text='calls by kind: {"web_search_calls": 2}'
    )
    # Prices in ticks per token (10^10 ticks = 1 USD), as in force at request time.
    price_prompt = models.BigIntegerField(null=True, blank=True)
    price_cached_prompt = models.BigIntegerField(null=True, blank=True)
    price_completion = models.BigIntegerField(null=True, blank=True)
    price_reasoning = models.BigIntegerField(null=True, blank=True)
    price_tool_calls = models.JSONField(
        default=dict,
        db_default={},
        blank=True,
        help_text='ticks per call of each tool used that had a price: {"web_search": 50000000}',
    )
    unpriced_tool_calls = models.PositiveIntegerField(
        default=0, db_default=0, help_text="tool calls the computed cost leaves out: no price"
    )
    reported_cost_ticks = models.BigIntegerField(
        null=True, blank=True, help_text="xAI's cost_in_usd_ticks, as reported"
    )
    computed_cost_ticks = models.BigIntegerField(null=True, blank=True)
    cost_in_usd_ticks = models.BigIntegerField(
        null=True, blank=True, help_text="the cost: reported where the upstream reported it"
    )
    cost_source = models.CharField(
        max_length=10, choices=CostSource.choices, default=CostSource.UNPRICED
    )
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    raw_usage = models.JSONField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "usage"
        indexes = [
            models.Index(fields=["created_at", "user"]),
            models.Index(fields=["user", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.model} {self.total_tokens}"

    @classmethod
    def estimated_fields(
        cls, prompt_texts: list[str], content: str, reasoning: str, images: int = 0
    ) -> dict[str, Any]:
        """The ledger fields of a stream that ended before its usage report."""
        return {
            **billing.estimate_usage(prompt_texts, content, reasoning, images),
            "source": cls.Source.ESTIMATED,
        }

    @property
    def reported(self) -> bool:
        return self.source == self.Source.REPORTED

    @property
    def cost_usd(self) -> Decimal | None:
        if self.cost_in_usd_ticks is None:
            return None
        return billing.ticks_to_usd(self.cost_in_usd_ticks)

    @property
    def cost_usd_text(self) -> str:
        """The cost in plain decimal notation ("" when unknown), for frames and attributes."""
        cost = self.cost_usd
        return "" if cost is None else f"{cost.normalize():f}"

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in billing.TOKEN_FIELDS}

    def tool_counters(self) -> dict[str, int]:
        """Its tool calls: all of them, then the kinds counted apart (TOOL_COUNTERS)."""
        details = self.server_side_tool_usage_details or {}
        return {
            billing.TOOL_CALLS.field: self.num_server_side_tools_used,
            **{name: details.get(name, 0) for name in billing.TOOL_FIELDS},
        }

    def price(self) -> billing.Price | None:
        prompt, cached, completion = (
            self.price_prompt,
            self.price_cached_prompt,
            self.price_completion,
        )
        if prompt is None or cached is None or completion is None:
            return None
        tools = self.price_tool_calls or {}
        return billing.Price(prompt, cached, completion, self.price_reasoning, tools)

    def price_and_cost(self) -> None:
        """Fill in the price (unless already fixed at request time) and the cost."""
        price = self.price()
        if price is None:
            price = ModelPrice.price_for(self.requested_model, self.model)
            if price is not None:
                for name, value in price.as_fields().items():
                    setattr(self, name, value)
        tools = billing.tool_calls_cost(
            price.tools if price is not None else {},
            self.num_server_side_tools_used,
            self.server_side_tool_usage_details or {},
        )
        # The row keeps the prices of the tools it used, as they were at request time.
        self.price_tool_calls = tools.prices
        self.unpriced_tool_calls = tools.unpriced
        if price is not None:
            # Each kind of token has its own price: the formula names them one by one.
            self.computed_cost_ticks = (
                billing.cost_ticks(
                    price,
                    prompt_tokens=self.prompt_tokens,
                    cached_prompt_tokens=self.cached_prompt_tokens,
                    completion_tokens=self.completion_tokens,
                    reasoning_tokens=self.reasoning_tokens,
                )
                + tools.ticks
            )
        if self.reported_cost_ticks is not None:
            self.cost_in_usd_ticks = self.reported_cost_ticks
            self.cost_source = self.CostSource.REPORTED
        elif self.computed_cost_ticks is not None:
            self.cost_in_usd_ticks = self.computed_cost_ticks
            self.cost_source = (
                self.CostSource.PARTIAL if tools.unpriced else self.CostSource.COMPUTED
            )
        else:
            self.cost_in_usd_ticks = None
            self.cost_source = self.CostSource.UNPRICED


USAGE_SUMS = (
    "requests",
    "errors",
    "estimated",
    "unpriced",
    *billing.TOKEN_FIELDS,
    "cost_in_usd_ticks",
)
# Of those requests, the title requests (purpose "title") and what they cost.
TITLE_SUMS = ("title_requests", "title_cost_in_usd_ticks")
# The server-side tool calls: all, the kinds counted apart, and those a computed cost
# left out (no price: cost_source "partial").
TOOL_SUMS = (billing.TOOL_CALLS.field, *billing.TOOL_FIELDS, "unpriced_tool_calls")
ALL_SUMS = (*USAGE_SUMS, *TITLE_SUMS, *TOOL_SUMS)


class UsageDayQuerySet(models.QuerySet):
    def between(self, start: dt.date, end: dt.date) -> UsageDayQuerySet:
        return self.filter(day__gte=start, day__lte=end)

    def sums(self) -> dict[str, int]:
        """Every counter summed (zeros, never None, where there are no rows)."""
        totals = self.aggregate(**{key: Sum(key) for key in ALL_SUMS})
        return {key: totals[key] or 0 for key in ALL_SUMS}

    def grouped(self, *fields: str):
        return self.values(*fields).annotate(**{key: Sum(key) for key in ALL_SUMS})


class UsageDay(models.Model):
    """Usage summed per local day, user and model, kept in step with the ledger.

    Each Usage row adds itself here in the transaction that writes it, so reports and
    budget checks read a few rows per user and day instead of the whole ledger.
    `python manage.py rebuild_usage_days` recomputes this table from the ledger.
    """

    day = models.DateField()
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    model = models.CharField(max_length=100)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    estimated = models.PositiveIntegerField(default=0, help_text="requests with estimated usage")
    unpriced = models.PositiveIntegerField(default=0, help_text="requests with no known cost")
    prompt_tokens = models.BigIntegerField(default=0)
    cached_prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_in_usd_ticks = models.BigIntegerField(default=0)
    title_requests = models.PositiveIntegerField(
        default=0, help_text="title requests (chat.titles), counted in requests too"
    )
    title_cost_in_usd_ticks = models.BigIntegerField(
        default=0, help_text="what the title requests cost, counted in the cost too"
    )
    tool_calls = models.PositiveIntegerField(
        default=0, db_default=0, help_text="server-side tool calls of every kind"
    )
    web_search_calls = models.PositiveIntegerField(default=0, db_default=0)
    x_search_calls = models.PositiveIntegerField(default=0, db_default=0)
    unpriced_tool_calls = models.PositiveIntegerField(
        default=0,
        db_default=0,
        help_text="tool calls without a price in computed costs (cost source partial)",
    )

    objects = UsageDayQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["day", "user", "model"], name="usage_day_unique")
        ]
        indexes = [models.Index(fields=["user", "day"])]

    @staticmethod
    def counters(row: Usage) -> dict[str, int]:
        title = row.purpose == Usage.Purpose.TITLE
        return {
            "requests": 1,
            "errors": int(row.outcome == Message.State.ERROR),
            "estimated": int(row.source == Usage.Source.ESTIMATED),
            "unpriced": int(row.cost_in_usd_ticks is None),
            **row.counters(),
            "cost_in_usd_ticks": row.cost_in_usd_ticks or 0,
            "title_requests": int(title),
            "title_cost_in_usd_ticks": (row.cost_in_usd_ticks or 0) if title else 0,
            **row.tool_counters(),
            "unpriced_tool_calls": (
                row.unpriced_tool_calls if row.cost_source == Usage.CostSource.PARTIAL else 0
            ),
        }

    @classmethod
    def add(cls, row: Usage, sign: int = 1) -> None:
        """Add a ledger row to its day (sign -1: take a row that is being corrected out)."""
        key = {
            "day": timezone.localdate(row.created_at),
            "user_id": row.user_id,
            "model": row.model or row.requested_model,
        }
        counters = {name: sign * value for name, value in cls.counters(row).items()}
        increments = {name: F(name) + value for name, value in counters.items()}
        days = cls.objects.filter(**key)
        if row.user_id is None:
            # Deleted users' days can be several rows (NULLs are distinct): add to one.
            days = days.filter(pk=days.values_list("pk", flat=True).first())
        if days.update(**increments) or sign < 0:
            return
        try:
            with transaction.atomic():
                cls.objects.create(**key, **counters)
        except IntegrityError:  # another process created the day meanwhile
            cls.objects.filter(**key).update(**increments)

    @classmethod
    @transaction.atomic
    def rebuild(cls) -> int:
        """Recompute every day from the ledger, in the database."""
        cls.objects.all().delete()
        day = TruncDate("created_at", tzinfo=timezone.get_current_timezone())
        groups = (
            Usage.objects.annotate(day=day)
            .values("day", "user_id", "model", "requested_model")
            .annotate(
                requests=Count("id"),
                errors=Count("id", filter=Q(outcome=Message.State.ERROR)),
                estimated=Count("id", filter=Q(source=Usage.Source.ESTIMATED)),
                unpriced=Count("id", filter=Q(cost_in_usd_ticks__isnull=True)),
                # Named apart from the model's fields, which an annotation may not shadow.
                **{f"sum_{name}": Sum(name) for name in billing.TOKEN_FIELDS},
                cost_sum=Sum("cost_in_usd_ticks"),
                title_count=Count("id", filter=Q(purpose=Usage.Purpose.TITLE)),
                title_cost=Sum("cost_in_usd_ticks", filter=Q(purpose=Usage.Purpose.TITLE)),
                tools_sum=Sum("num_server_side_tools_used"),
                # The kinds counted apart, read out of each row's JSON details.
                **{
                    f"sum_{name}": Sum(
                        Cast(
                            KeyTextTransform(name, "server_side_tool_usage_details"),
                            models.BigIntegerField(),
                        )
                    )
                    for name in billing.TOOL_FIELDS
                },
                unpriced_tools=Sum(
                    "unpriced_tool_calls", filter=Q(cost_source=Usage.CostSource.PARTIAL)
                ),
            )
            .order_by()
        )
        days: dict[tuple[Any, int, str], UsageDay] = {}
        for g in groups.iterator():
            key = (g["day"], g["user_id"], g["model"] or g["requested_model"])
            item = days.setdefault(key, cls(day=key[0], user_id=key[1], model=key[2]))
            item.requests += g["requests"]
            item.errors += g["errors"]
            item.estimated += g["estimated"]
            item.unpriced += g["unpriced"]
            for name in billing.TOKEN_FIELDS:
                setattr(item, name, getattr(item, name) + (g[f"sum_{name}"] or 0))
            item.cost_in_usd_ticks += g["cost_sum"] or 0
            item.title_requests += g["title_count"]
            item.title_cost_in_usd_ticks += g["title_cost"] or 0
            item.tool_calls += g["tools_sum"] or 0
            for name in billing.TOOL_FIELDS:
                setattr(item, name, getattr(item, name) + (g[f"sum_{name}"] or 0))
            item.unpriced_tool_calls += g["unpriced_tools"] or 0
        cls.objects.bulk_create(days.values(), batch_size=1000)
        return len(days)


class BudgetQuerySet(models.QuerySet):
    def for_user(self, user) -> Budget | None:
        """The user's own budget, else the default one, else None (no limits)."""
        own, default = self.rows_for(user)
        return own or default

    def rows_for(self, user) -> tuple[Budget | None, Budget | None]:
        """The user's own budget and the default one, each None if there is none."""
        budgets = {b.user_id: b for b in self.filter(Q(user=user) | Q(user__isnull=True))}
        return budgets.get(user.pk), budgets.get(None)


class Budget(models.Model):
    """Limits on what a user may spend and how fast: the default, or one user's override.

    Tokens and money: a user's own row replaces the default row as a whole, and a blank
    limit means no limit. The rate limits (messages a minute, answers at once, open
    sockets): blank means the default, the default row's if it sets one, else the
    setting's (chat.limits.limits_for); 0 means no limit.
    """

    class Period(models.TextChoices):
        DAY = "day", "per day"
        MONTH = "month", "per month"

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        models.CASCADE,
        null=True,
        blank=True,
        related_name="budget",
        help_text="blank: the default budget for every user without their own",
    )
    period = models.CharField(max_length=10, choices=Period.choices, default=Period.MONTH)
    max_tokens = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="total tokens per period (blank: no limit)"
    )
    max_cost_usd = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="USD per period (blank: no limit)",
    )
    max_messages_per_minute = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="blank: the default budget's, else CHAT_MAX_MESSAGES_PER_MINUTE; 0: no limit",
    )
    max_concurrent_streams = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="answers streaming at once (blank: the default budget's, else "
        "CHAT_MAX_CONCURRENT_ANSWERS; 0: no limit)",
    )
    max_open_sockets = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="chat sockets (tabs) open at once (blank: the default budget's, else "
        "CHAT_MAX_SOCKETS_PER_USER; 0: no limit)",
    )

    objects = BudgetQuerySet.as_manager()

    class Meta:
        constraints = [
            # One row per user, and one default (user NULL) at most.
            models.UniqueConstraint(Coalesce("user", Value(0)), name="one_budget_per_user")
        ]

    def __str__(self) -> str:
        return f"Budget of {self.user}" if self.user_id else "Default budget"

    @property
    def max_cost_ticks(self) -> int | None:
        return None if self.max_cost_usd is None else billing.usd_to_ticks(self.max_cost_usd)

    def status(self, spent: dict[str, int]) -> BudgetStatus:
        return BudgetStatus(self, spent.get("total_tokens", 0), spent.get("cost_in_usd_ticks", 0))


class BudgetStatus:
    """How much of a budget is spent this period."""

    WARN_AT = Decimal("0.8")

    def __init__(self, budget: Budget, tokens: int, cost_ticks: int) -> None:
        self.budget = budget
        self.tokens = tokens
        self.cost_ticks = cost_ticks
        now = timezone.localtime()
        self.starts = billing.period_start(budget.period, now)
        self.resets = billing.next_period_start(budget.period, now)

    @property
    def cost_usd(self) -> Decimal:
        return billing.ticks_to_usd(self.cost_ticks)

    @property
    def tokens_left(self) -> int | None:
        if self.budget.max_tokens is None:
            return None
        return max(0, self.budget.max_tokens - self.tokens)

    @property
    def cost_left_usd(self) -> Decimal | None:
        limit = self.budget.max_cost_ticks
        return None if limit is None else billing.ticks_to_usd(max(0, limit - self.cost_ticks))

    @property
    def fraction(self) -> Decimal | None:
        """The larger of the spent fractions of the limits set (None if neither is)."""
        parts = []
        if self.budget.max_tokens is not None:
            parts.append(Decimal(self.tokens) / max(self.budget.max_tokens, 1))
        limit = self.budget.max_cost_ticks
        if limit is not None:
            parts.append(Decimal(self.cost_ticks) / max(limit, 1))
        return max(parts) if parts else None

    @property
    def percent(self) -> int | None:
        fraction = self.fraction
        return None if fraction is None else int(fraction * 100)

    @property
    def over(self) -> bool:
        fraction = self.fraction
        return fraction is not None and fraction >= 1

    @property
    def near(self) -> bool:
        fraction = self.fraction
        return fraction is not None and self.WARN_AT <= fraction < 1


def spent_since(user_id: int, since: dt.date) -> dict[str, int]:
    return UsageDay.objects.filter(user_id=user_id, day__gte=since).sums()


def budget_status(user, budget: Budget | None = None) -> BudgetStatus | None:
    budget = budget or Budget.objects.for_user(user)
    if budget is None:
        return None
    start = billing.period_start(budget.period, timezone.localtime())
    return budget.status(spent_since(user.pk, start.date()))


class OpenSocketQuerySet(models.QuerySet):
    def stale(self, now: dt.datetime, host: str, alive: Callable[[int], bool]):
        """Rows that no longer count: not renewed in time, or of a dead process on `host`."""
        gone = of_dead_processes(self, host, alive)
        return self.filter(Q(pk__in=gone) | Q(expires_at__lte=now))


class OpenSocket(models.Model):
    """A chat socket open now, counted against its user's limit in every process.

    Its process renews `expires_at` while it runs. A process killed without closing its
    sockets stops renewing them, so they stop counting when the lease ends (at once on
    the same host, where the dead process is seen: OpenSocketQuerySet.stale).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="+")
    worker = models.CharField(max_length=100, help_text="host:pid of the process that holds it")
    opened_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    objects = OpenSocketQuerySet.as_manager()

    class Meta:
        indexes = [models.Index(fields=["user", "expires_at"]), models.Index(fields=["worker"])]

    def __str__(self) -> str:
        return f"socket of {self.user_id} on {self.worker}"


class SiteSettings(models.Model):
    """The site's own settings, one row (admin, "Site settings")."""

    default_system_prompt = models.TextField(
        blank=True,
        help_text="sent first in the system prompt of every request, before each user's "
        "custom instructions and the conversation's own system prompt",
    )
    # Web and X search (chat.search): offered in the composer, with the Responses API only.
    web_search_enabled = models.BooleanField(
        default=True, help_text="users may turn on web search for their messages"
    )
    web_search_allowed_domains = models.TextField(
        blank=True,
        validators=[search.validate_domains],
        help_text=f"web search looks only at these domains (at most {search.MAX_DOMAINS}, "
        "one per line, such as example.com); leave empty to search everywhere",
    )
    web_search_excluded_domains = models.TextField(
        blank=True,
        validators=[search.validate_domains],
        help_text=f"web search never looks at these domains (at most {search.MAX_DOMAINS}); "
        "not together with allowed domains",
    )
    x_search_enabled = models.BooleanField(
        default=True, help_text="users may turn on X search for their messages"
    )
    x_search_allowed_handles = models.TextField(
        blank=True,
        validators=[search.validate_handles],
        help_text=f"X search considers only posts of these handles (at most "
        f"{search.MAX_HANDLES}, one per line, such as xai); leave empty for all of X",
    )
    x_search_excluded_handles = models.TextField(
        blank=True,
        validators=[search.validate_handles],
        help_text=f"X search ignores posts of these handles (at most {search.MAX_HANDLES}); "
        "not together with allowed handles",
    )

    class Meta:
        verbose_name = verbose_name_plural = "site settings"

    def __str__(self) -> str:
        return "Site settings"

    @classmethod
    def current(cls) -> SiteSettings:
        """The row, or the defaults while no admin has saved one."""
        return cls.objects.filter(pk=1).first() or cls(pk=1)

    def clean(self) -> None:
        # Saved one per line, as sent: domains lower-cased, handles without their @.
        for name, tidy in (
            ("web_search_allowed_domains", search.clean_domains),
            ("web_search_excluded_domains", search.clean_domains),
            ("x_search_allowed_handles", search.clean_handles),
            ("x_search_excluded_handles", search.clean_handles),
        ):
            try:
                setattr(self, name, "\n".join(tidy(getattr(self, name))))
            except ValidationError:
                pass  # the field's own validator reports it
        # xAI takes an allow list or a block list, never both (docs.x.ai, tools/*-search).
        errors = {}
        if self.web_search_allowed_domains.strip() and self.web_search_excluded_domains.strip():
            errors["web_search_excluded_domains"] = (
                "Set allowed domains or excluded domains, not both: xAI takes one of them."
            )
        if self.x_search_allowed_handles.strip() and self.x_search_excluded_handles.strip():
            errors["x_search_excluded_handles"] = (
                "Set allowed handles or excluded handles, not both: xAI takes one of them."
            )
        if errors:
            raise ValidationError(errors)

    def search_tools(self, choice: search.SearchChoice) -> tuple[dict[str, Any], ...]:
        """The request's tools for the toggles of `choice`, with the site's filters;
        ValueError saying which one an admin turned off."""
        off = [
            name
            for name, asked, enabled in (
                ("Web search", choice.web, self.web_search_enabled),
                ("X search", choice.x, self.x_search_enabled),
            )
            if asked and not enabled
        ]
        if off:
            verb = "are" if len(off) > 1 else "is"
            raise ValueError(f"{' and '.join(off)} {verb} turned off on this site by an admin.")
        tools = []
        if choice.web:
            tools.append(
                search.web_search_tool(
                    self.web_search_allowed_domains, self.web_search_excluded_domains
                )
            )
        if choice.x:
            tools.append(
                search.x_search_tool(self.x_search_allowed_handles, self.x_search_excluded_handles)
            )
        return tuple(tools)

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.pk = 1  # the one row, whatever the form says
        super().save(*args, **kwargs)


class UserSettings(models.Model):
    """A user's own settings (their "Settings" page)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="chat_settings"
    )

    class Theme(models.TextChoices):
        SYSTEM = "system", "System"
        LIGHT = "light", "Light"
        DARK = "dark", "Dark"

    custom_instructions = models.TextField(
        blank=True, help_text="sent in the system prompt of each of their requests"
    )
    theme = models.CharField(
        max_length=10, choices=Theme.choices, default=Theme.SYSTEM, db_default=Theme.SYSTEM
    )

    class Meta:
        verbose_name = verbose_name_plural = "user settings"

    def __str__(self) -> str:
        return f"Settings of {self.user}"
