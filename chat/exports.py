"""Export and import of conversations (docs/export-format.md), without request objects.

Export: one conversation as Markdown (its active path) or as JSON, or all of a user's
conversations as one JSON document built in batches (a constant number of queries per
batch, and memory bounded by one batch whatever the account's size).

Import: this app's JSON (format "grokchat", version 1) and ChatGPT's `conversations.json`.
A file is read and checked whole into plain data first (parse()); only then is anything
written, in one transaction (save()). Ids in a file only link its own messages together:
every import creates new rows. Imported conversations are never billed: no ledger rows,
no day totals, nothing counted against a budget.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from chat.forms import ConversationSettingsForm, storable
from chat.models import Attachment, Conversation, Message, Usage
from chat.search import answer_sources, source_chip
from chat.tree import Tree
from chat.upstream import Citation

FORMAT = "grokchat"
VERSION = 1
EXPORT_BATCH = 50  # conversations per batch of the all-conversations export
TITLE_CHARS = 200  # Conversation.title's max_length: longer imported titles are cut
MODEL_CHARS = 100
SETTINGS = ("system_prompt", "temperature", "top_p", "max_output_tokens", "reasoning_effort")
# Where an imported conversation came from, as the page and the Markdown export say it.
SOURCE_NAMES = {"grokchat": "a Grok Chat export", "chatgpt": "ChatGPT"}
TOKEN_FIELDS = (
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
)


# ---------------------------------------------------------------- export


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def usage_data(row: Usage) -> dict[str, Any]:
    """A ledger row as the JSON export gives it (docs/export-format.md, "usage")."""
    return {
        "purpose": row.purpose,
        "model": row.model,
        "requested_model": row.requested_model,
        "outcome": row.outcome,
        "source": row.source,
        **{name: getattr(row, name) for name in TOKEN_FIELDS},
        "server_side_tool_calls": row.num_server_side_tools_used,
        "cost_usd": row.cost_usd_text or None,
        "cost_source": row.cost_source,
        "created_at": _time(row.created_at),
    }


# An answer's own fields, as they are exported and imported again (Message's names).
ANSWER_FIELDS = (
    "reasoning",
    "state",
    "error",
    "model",
    "purpose",
    "finish_reason",
    "ttft_ms",
    "duration_ms",
    "citations",
)


def _message_data(
    message: Message, attachments: list[dict[str, Any]], usage: Usage | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": message.id,
        "parent": message.parent_id,
        "role": message.role,
        "content": message.content,
        "created_at": _time(message.created_at),
        "selected_at": _time(message.selected_at),
    }
    if message.role == Message.Role.ASSISTANT:
        data.update({name: getattr(message, name) for name in ANSWER_FIELDS})
        data["usage"] = None if usage is None else usage_data(usage)
    else:
        data["attachments"] = attachments
    return data


def _conversation_data(
    conversation: Conversation,
    messages: list[Message],
    attachments: dict[int, list[dict[str, Any]]],
    usage: list[Usage],
) -> dict[str, Any]:
    by_message = {row.message_id: row for row in usage if row.message_id is not None}
    tree = Tree.of((m.id, m.parent_id, m.selected_at) for m in messages)
    return {
        "id": conversation.id,
        "title": conversation.title,
        "title_source": conversation.title_source,
        "model": conversation.model,
        "created_at": _time(conversation.created_at),
        "updated_at": _time(conversation.updated_at),
        "imported_from": conversation.imported_from or None,
        "imported_at": _time(conversation.imported_at),
        "settings": {name: getattr(conversation, name) for name in SETTINGS},
        "active_path": tree.path(),
        "messages": [
            _message_data(m, attachments.get(m.id, []), by_message.get(m.id)) for m in messages
        ],
        # Its ledger rows that belong to none of its messages: its title requests.
        "other_usage": [usage_data(row) for row in usage if row.message_id is None],
    }


def _batch_data(conversations: list[Conversation]) -> list[dict[str, Any]]:
    """Those conversations as the JSON export gives them, in three queries in all."""
    ids = [c.id for c in conversations]
    messages: dict[int, list[Message]] = {}
    # output_items are the upstream's own items (encrypted reasoning): not exported.
    for message in (
        Message.objects.filter(conversation_id__in=ids)
        .defer("output_items", "worker")
        .order_by("conversation_id", "id")
    ):
        messages.setdefault(message.conversation_id, []).append(message)
    attachments: dict[int, list[dict[str, Any]]] = {}
    for image in (
        Attachment.objects.filter(message__conversation_id__in=ids)
        .order_by("created_at", "id")
        .values("message_id", "content_type", "size", "width", "height", "sha256")
    ):
        described = {key: value for key, value in image.items() if key != "message_id"}
        attachments.setdefault(image["message_id"], []).append(described)
    usage: dict[int, list[Usage]] = {}
    for row in Usage.objects.filter(conversation_id__in=ids).order_by("id"):
        usage.setdefault(row.conversation_id or 0, []).append(row)
    return [
        _conversation_data(c, messages.get(c.id, []), attachments, usage.get(c.id, []))
        for c in conversations
    ]


def _envelope(user: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "exported_at": _time(timezone.now()),
        "user": user.get_username(),
    }


def conversation_json(conversation: Conversation) -> str:
    """One conversation as a JSON document of the format (its `conversations` a list of one)."""
    document = {**_envelope(conversation.user), "conversations": _batch_data([conversation])}
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


def all_conversations_json(user: Any, batch: int = EXPORT_BATCH) -> Iterator[str]:
    """All of the user's conversations as one JSON document, in pieces: a batch of
    conversations at a time (four queries a batch), newest id last, one per line."""
    envelope = json.dumps(_envelope(user), ensure_ascii=False)
    yield envelope[:-1] + ', "conversations": [\n'
    after = 0
    first = True
    while True:
        conversations = list(
            Conversation.objects.for_user(user).filter(id__gt=after).order_by("id")[:batch]
        )
        if not conversations:
            break
        pieces = [json.dumps(data, ensure_ascii=False) for data in _batch_data(conversations)]
        yield ("" if first else ",\n") + ",\n".join(pieces)
        first = False
        after = conversations[-1].id
    yield "\n]}\n"


def _markdown_time(value: dt.datetime) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z")


def _usage_line(row: Usage | None) -> str:
    if row is None:
        return ""
    parts = [row.model or row.requested_model, f"{row.total_tokens:,} tokens"]
    if row.cost_usd is not None:
        parts.append(f"${row.cost_usd_text}")
    return " · ".join(part for part in parts if part)


def conversation_markdown(conversation: Conversation) -> str:
    """The conversation's active path as a readable Markdown document: the answers'
    Markdown as it is, reasoning folded in <details>, sources as links."""
    tree = conversation.tree()
    path = tree.path()
    rows = (
        conversation.messages.filter(id__in=path)
        .select_related("usage")
        .prefetch_related("attachments")
        .defer("output_items")
        .order_by()
    )
    by_id = {m.id: m for m in rows}
    total = len(tree.parents)
    lines = [f"# {' '.join(conversation.title.split())}", ""]
    if conversation.model:
        lines.append(f"- Model: {conversation.model}")
    lines.append(f"- Created: {_markdown_time(conversation.created_at)}")
    lines.append(f"- Updated: {_markdown_time(conversation.updated_at)}")
    if conversation.imported_from and conversation.imported_at:
        source = SOURCE_NAMES.get(conversation.imported_from, conversation.imported_from)
        lines.append(f"- Imported from {source} on {_markdown_time(conversation.imported_at)}")
    others = total - len(path)
    branches = (
        f" The other {others} message{'s' if others != 1 else ''} of its other branches "
        "are in the JSON export."
        if others
        else ""
    )
    lines += [
        f"- Exported: {_markdown_time(timezone.now())}",
        "",
        f"> This is the conversation's active path only: {len(path)} message"
        f"{'s' if len(path) != 1 else ''}.{branches} Attached images are listed, not included.",
        "",
    ]
    for message_id in path:
        message = by_id[message_id]
        if message.role == Message.Role.USER:
            lines += ["## You", "", message.content, ""]
            images = list(message.attachments.all())
            if images:
                listed = ", ".join(f"{a.content_type} {a.width}×{a.height}" for a in images)
                lines += [f"*Attached: {listed}*", ""]
            continue
        lines += ["## Grok", ""]
        if message.reasoning:
            lines += ["<details><summary>Reasoning</summary>", "", message.reasoning, ""]
            lines += ["</details>", ""]
        if message.content:
            lines += [message.content, ""]
        if message.state != Message.State.COMPLETE:
            note = message.error or message.state
            lines += [f"*({message.state}: {note})*" if note != message.state else f"*({note})*"]
            lines.append("")
        sources = [source_chip(n, c) for n, c in enumerate(message.citations or [], 1)]
        if sources:
            lines += ["Sources:", ""]
            for s in sources:
                label = _markdown_text(s.title or s.label)
                lines.append(
                    f"{s.number}. [{label}](<{s.href}>)" if s.href else f"{s.number}. {label}"
                )
            lines.append("")
        usage = _usage_line(getattr(message, "usage", None))
        if usage:
            lines += [f"*{usage}*", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _markdown_text(text: str) -> str:
    """Text for inside a link's brackets: no line breaks or brackets to end it early."""
    return " ".join(text.split()).replace("[", "(").replace("]", ")")


# ---------------------------------------------------------------- import


class BadImport(ValueError):
    """A file that cannot be imported, with what is wrong and where, for its user."""


@dataclass
class NewMessage:
    parent: int | None  # index in its conversation's `messages`, which comes earlier
    role: str
    content: str
    created_at: dt.datetime
    active: bool = False
    reasoning: str = ""
    state: str = Message.State.COMPLETE
    error: str = ""
    model: str = ""
    purpose: str = ""
    finish_reason: str = ""
    ttft_ms: int | None = None
    duration_ms: int | None = None
    citations: list[Citation] = field(default_factory=list)


@dataclass
class NewConversation:
    title: str
    created_at: dt.datetime
    updated_at: dt.datetime
    title_source: str = Conversation.TitleSource.USER
    model: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    messages: list[NewMessage] = field(default_factory=list)


@dataclass
class Parsed:
    source: str  # Conversation.ImportSource
    conversations: list[NewConversation]

    @property
    def message_count(self) -> int:
        return sum(len(c.messages) for c in self.conversations)


def _refuse_constant(name: str) -> None:
    raise BadImport(f"The file is not valid JSON: it holds {name}, which JSON does not allow.")


def parse(data: bytes) -> Parsed:
    """The conversations in a file, checked: BadImport says what is wrong and where."""
    if len(data) > settings.CHAT_IMPORT_MAX_BYTES:
        raise BadImport(_too_big(len(data)))
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadImport("The file's JSON is nested too deeply to read.") from None
    except BadImport:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise BadImport(f"The file is not valid JSON: {str(exc)[:200]}") from None
    if isinstance(document, dict) and "format" in document:
        return Parsed(Conversation.ImportSource.GROKCHAT, _grokchat(document))
    if isinstance(document, list) or (isinstance(document, dict) and "mapping" in document):
        items = document if isinstance(document, list) else [document]
        return Parsed(Conversation.ImportSource.CHATGPT, _chatgpt(items))
    raise BadImport(
        "This is not an export this app reads: it takes its own JSON export (an object "
        'with "format": "grokchat") or ChatGPT\'s conversations.json (a list of '
        "conversations)."
    )


def _too_big(size: int) -> str:
    limit = settings.CHAT_IMPORT_MAX_BYTES
    return f"The file is too large: {size:,} bytes, and the most this site imports is {limit:,}."


class _Where:
    """Where in the file a value is, for error messages."""

    def __init__(self, text: str) -> None:
        self.text = text

    def at(self, more: str) -> _Where:
        return _Where(f"{self.text}, {more}")

    def fail(self, problem: str) -> BadImport:
        return BadImport(f"{self.text}: {problem}")


def _get(
    obj: dict[str, Any], key: str, kinds: tuple[type, ...], where: _Where, default: Any
) -> Any:
    """obj[key] if it is of one of `kinds` (null and missing give `default`)."""
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise where.fail(f'"{key}" must be {_kind_names(kinds)}, not true or false.')
    if not isinstance(value, kinds):
        raise where.fail(f'"{key}" must be {_kind_names(kinds)}, not {_json_type(value)}.')
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {
        str: "text",
        int: "a whole number",
        float: "a number",
        list: "a list",
        dict: "an object",
    }
    names[bool] = "true or false"
    return " or ".join(names.get(kind, kind.__name__) for kind in kinds)


def _json_type(value: Any) -> str:
    return {
        str: "text",
        int: "a number",
        float: "a number",
        list: "a list",
        dict: "an object",
        bool: "true or false",
    }.get(type(value), type(value).__name__)


def _text(obj: dict[str, Any], key: str, where: _Where, limit: int | None = None) -> str:
    value = _get(obj, key, (str,), where, "")
    _storable(value, where.at(f'"{key}"'))
    if limit is not None and len(value) > limit:
        raise where.fail(f'"{key}" is longer than {limit} characters.')
    return value


def _storable(text: str, where: _Where) -> None:
    if "\x00" in text:
        raise where.fail(
            f"it holds a NUL character (U+0000) at character {text.index(chr(0)) + 1}, "
            "which cannot be stored."
        )
    try:
        storable(text)
    except ValidationError as exc:
        raise where.fail(exc.messages[0]) from None


def _title(value: Any, where: _Where) -> str:
    """A title as the app keeps one: on one line, cut to TITLE_CHARS characters."""
    if value is not None and not isinstance(value, str):
        raise where.fail(f'"title" must be text, not {_json_type(value)}.')
    title = " ".join((value or "").split())
    _storable(title, where.at('"title"'))
    return title[:TITLE_CHARS].rstrip() or "Imported chat"


def _count(total: int, where: _Where) -> None:
    limit = settings.CHAT_IMPORT_MAX_MESSAGES
    if total > limit:
        raise where.fail(
            f"the file holds more than {limit:,} messages, the most this site imports."
        )


def _conversation_list(items: Any, where: _Where) -> list[Any]:
    if not isinstance(items, list):
        raise where.fail(f"the conversations must be a list, not {_json_type(items)}.")
    limit = settings.CHAT_IMPORT_MAX_CONVERSATIONS
    if len(items) > limit:
        raise where.fail(
            f"it holds {len(items):,} conversations; the most this site imports at once is "
            f"{limit:,}."
        )
    if not items:
        raise where.fail("it holds no conversations.")
    return items


def _naive_to_utc(value: dt.datetime) -> dt.datetime:
    return timezone.make_aware(value, dt.UTC) if timezone.is_naive(value) else value


def _iso_time(obj: dict[str, Any], key: str, where: _Where, default: dt.datetime) -> dt.datetime:
    value = _get(obj, key, (str,), where, None)
    if value is None:
        return default
    try:
        parsed = parse_datetime(value)
    except ValueError:
        parsed = None
    if parsed is None:
        raise where.fail(f'"{key}" must be a date and time such as 2026-01-31T12:00:00Z.')
    return _naive_to_utc(parsed)


def _epoch_time(obj: dict[str, Any], key: str, where: _Where, default: dt.datetime) -> dt.datetime:
    value = _get(obj, key, (int, float), where, None)
    if value is None:
        return default
    try:
        if not math.isfinite(value):
            raise ValueError
        return dt.datetime.fromtimestamp(value, dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise where.fail(f'"{key}" is not a time this app can store.') from None


# -- this app's own format


def _grokchat(document: dict[str, Any]) -> list[NewConversation]:
    where = _Where("The file")
    if document.get("format") != FORMAT:
        raise where.fail(
            f"its format is {str(document.get('format'))[:50]!r}; this app reads {FORMAT!r}."
        )
    version = document.get("version")
    if version != VERSION or isinstance(version, bool):
        raise where.fail(
            f"it is version {str(version)[:20]} of the format; this app reads version {VERSION}."
        )
    items = _conversation_list(document.get("conversations"), where)
    now = timezone.now()
    total = 0
    conversations = []
    for number, item in enumerate(items, 1):
        here = _Where(f"Conversation {number}")
        if not isinstance(item, dict):
            raise here.fail(f"it must be an object, not {_json_type(item)}.")
        here = _Where(f"Conversation {number} ({_title(item.get('title'), here)!r})")
        raw_messages = _get(item, "messages", (list,), here, [])
        total += len(raw_messages)
        _count(total, where)
        conversation = NewConversation(
            title=_title(item.get("title"), here),
            created_at=_iso_time(item, "created_at", here, now),
            updated_at=_iso_time(item, "updated_at", here, now),
            title_source=_choice(
                item, "title_source", Conversation.TitleSource.values, here, "user"
            ),
            model=_text(item, "model", here, MODEL_CHARS),
            settings=_settings(_get(item, "settings", (dict,), here, {}), here),
        )
        conversation.messages = _grokchat_messages(raw_messages, here, conversation.created_at)
        conversations.append(conversation)
    return conversations


def _choice(obj: dict[str, Any], key: str, choices: list[str], where: _Where, default: str) -> str:
    value = _get(obj, key, (str,), where, default) or default
    if value not in choices:
        raise where.fail(f'"{key}" must be one of {", ".join(choices)}, not {value[:50]!r}.')
    return value


def _settings(values: dict[str, Any], where: _Where) -> dict[str, Any]:
    """The conversation's settings, checked as the settings panel checks them."""
    given = {name: values.get(name) for name in SETTINGS}
    form = ConversationSettingsForm(data={k: v for k, v in given.items() if v is not None})
    if not form.is_valid():
        raise where.fail(f"its settings are not valid here: {form.error_text()}")
    return form.cleaned_data


def _grokchat_messages(
    items: list[Any], where: _Where, default_time: dt.datetime
) -> list[NewMessage]:
    index: dict[Any, int] = {}  # the file's id -> position in `messages`
    messages: list[NewMessage] = []
    times: list[dt.datetime] = []
    for number, item in enumerate(items, 1):
        here = where.at(f"message {number}")
        if not isinstance(item, dict):
            raise here.fail(f"it must be an object, not {_json_type(item)}.")
        key = item.get("id")
        if isinstance(key, bool) or not isinstance(key, int | str):
            raise here.fail('"id" must be a number or text that names it in this file.')
        if key in index:
            raise here.fail(f'"id" {str(key)[:50]!r} is given to another message before it.')
        parent = item.get("parent")
        if parent is not None and (isinstance(parent, bool) or parent not in index):
            raise here.fail(
                f'"parent" {str(parent)[:50]!r} is not the id of an earlier message of this '
                "conversation (a parent must come before its replies, so no cycle is possible)."
            )
        role = _choice(item, "role", Message.Role.values, here, "")
        state = _choice(item, "state", Message.State.values, here, Message.State.COMPLETE)
        if state == Message.State.STREAMING:
            # Exported mid-answer: nothing streams it here, and it must never be taken for
            # an orphan to end (and bill).
            state = Message.State.INTERRUPTED
        message = NewMessage(
            parent=None if parent is None else index[parent],
            role=role,
            content=_text(item, "content", here),
            created_at=_iso_time(item, "created_at", here, default_time),
            state=state,
        )
        times.append(_iso_time(item, "selected_at", here, message.created_at))
        if role == Message.Role.ASSISTANT:
            message.reasoning = _text(item, "reasoning", here)
            message.error = _text(item, "error", here)
            message.model = _text(item, "model", here, MODEL_CHARS)
            message.purpose = _choice(
                item, "purpose", [p for p in Usage.Purpose.values if p != "title"], here, "answer"
            )
            message.finish_reason = _text(item, "finish_reason", here, 50)
            message.ttft_ms = _milliseconds(item, "ttft_ms", here)
            message.duration_ms = _milliseconds(item, "duration_ms", here)
            message.citations = _citations(item, here)
        index[key] = len(messages)
        messages.append(message)
    # The file's active path, as the app finds it: the last selected child at each step.
    tree = Tree.of((position, m.parent, times[position]) for position, m in enumerate(messages))
    for position in tree.path():
        messages[position].active = True
    return messages


def _milliseconds(obj: dict[str, Any], key: str, where: _Where) -> int | None:
    value = _get(obj, key, (int,), where, None)
    if value is not None and not 0 <= value < 2**31:
        raise where.fail(f'"{key}" is out of range.')
    return value


def _citations(obj: dict[str, Any], where: _Where) -> list[Citation]:
    items = _get(obj, "citations", (list,), where, [])
    for item in items:
        if not isinstance(item, dict):
            raise where.fail('"citations" must be a list of objects with a "url".')
        for key in ("url", "title"):
            _text(item, key, where.at('"citations"'))
    return answer_sources(items, [])


# -- ChatGPT's conversations.json

# What the ChatGPT page shows of a conversation: the user's and the assistant's messages
# to everyone, with text. System and tool messages, hidden ones, tool calls (an assistant
# message with another recipient) and reasoning ("thoughts") are left out.
CHATGPT_TEXT_TYPES = ("text", "multimodal_text", "code")


def _chatgpt(items: list[Any]) -> list[NewConversation]:
    where = _Where("The file")
    items = _conversation_list(items, where)
    total = 0
    conversations = []
    now = timezone.now()
    for number, item in enumerate(items, 1):
        here = _Where(f"Conversation {number}")
        if not isinstance(item, dict):
            raise here.fail(f"it must be an object, not {_json_type(item)}.")
        title = _title(item.get("title"), here)
        here = _Where(f"Conversation {number} ({title!r})")
        mapping = item.get("mapping")
        if not isinstance(mapping, dict):
            raise here.fail(f'"mapping" must be an object, not {_json_type(mapping)}.')
        total += len(mapping)
        _count(total, where)
        created = _epoch_time(item, "create_time", here, now)
        conversation = NewConversation(
            title=title,
            created_at=created,
            updated_at=_epoch_time(item, "update_time", here, created),
            title_source=Conversation.TitleSource.GENERATED,
        )
        conversation.messages = _chatgpt_messages(mapping, item.get("current_node"), here, created)
        conversation.model = next(
            (m.model for m in reversed(conversation.messages) if m.active and m.model), ""
        )
        conversations.append(conversation)
    return conversations


def _chatgpt_messages(
    mapping: dict[str, Any], current: Any, where: _Where, default_time: dt.datetime
) -> list[NewMessage]:
    parents: dict[str, str | None] = {}
    shown: dict[str, NewMessage] = {}
    for key, node in mapping.items():
        here = where.at(f"node {key[:60]!r}")
        if not isinstance(node, dict):
            raise here.fail(f"it must be an object, not {_json_type(node)}.")
        parent = node.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise here.fail(f'"parent" must be a node id (text), not {_json_type(parent)}.')
        if parent is not None and parent not in mapping:
            raise here.fail(f'its "parent" {parent[:60]!r} is not a node of this conversation.')
        _get(node, "children", (list,), here, [])
        parents[key] = parent
        message = _chatgpt_message(node.get("message"), here, default_time)
        if message is not None:
            shown[key] = message
    order = _topological(parents, where)
    if current is not None and (not isinstance(current, str) or current not in mapping):
        raise where.fail('"current_node" is not a node of this conversation.')
    if current is None:  # older exports: the newest message is where the page was
        current = max((key for key in shown), key=lambda key: shown[key].created_at, default=None)
    active: set[str] = set()
    node_id = current
    while node_id is not None:
        active.add(node_id)
        node_id = parents[node_id]
    # Each message shown hangs under its nearest shown ancestor; an assistant's reply that
    # continues another (after a hidden tool call) joins it, as ChatGPT shows one turn.
    shown_above: dict[str, str | None] = {}
    replies: dict[str | None, int] = {}
    for key in order:
        parent = parents[key]
        shown_above[key] = parent if parent is None or parent in shown else shown_above[parent]
        if key in shown:
            replies[shown_above[key]] = replies.get(shown_above[key], 0) + 1
    position: dict[str, int] = {}
    messages: list[NewMessage] = []
    for key in order:
        message = shown.get(key)
        if message is None:
            continue
        above_key = shown_above[key]
        above = None if above_key is None else position[above_key]
        message.parent = above
        message.active = key in active
        if (
            above is not None
            and message.role == Message.Role.ASSISTANT
            and messages[above].role == Message.Role.ASSISTANT
            and replies[above_key] == 1
        ):
            messages[above].content += "\n\n" + message.content
            messages[above].model = messages[above].model or message.model
            position[key] = above
            continue
        position[key] = len(messages)
        messages.append(message)
    return messages


def _topological(parents: dict[str, str | None], where: _Where) -> list[str]:
    """The nodes, each after its parent; BadImport on a cycle."""
    order: list[str] = []
    done: set[str] = set()
    for start in parents:
        line: list[str] = []
        on_line: set[str] = set()
        node: str | None = start
        while node is not None and node not in done:
            if node in on_line:
                raise where.fail(f"its nodes' parents go round in a cycle (at node {node[:60]!r}).")
            line.append(node)
            on_line.add(node)
            node = parents[node]
        for node in reversed(line):
            order.append(node)
            done.add(node)
    return order


def _chatgpt_message(value: Any, where: _Where, default_time: dt.datetime) -> NewMessage | None:
    """A node's message as the app keeps it, or None when ChatGPT's page does not show it."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise where.fail(f'"message" must be an object, not {_json_type(value)}.')
    author = _get(value, "author", (dict,), where, {})
    role = _get(author, "role", (str,), where.at('"author"'), "")
    metadata = _get(value, "metadata", (dict,), where, {})
    content = _get(value, "content", (dict,), where, {})
    kind = _get(content, "content_type", (str,), where.at('"content"'), "")
    recipient = _get(value, "recipient", (str,), where, "all")
    if (
        role not in Message.Role.values
        or metadata.get("is_visually_hidden_from_conversation") is True
        or kind not in CHATGPT_TEXT_TYPES
        or (role == Message.Role.ASSISTANT and recipient != "all")
    ):
        return None
    if kind == "code":
        text = _get(content, "text", (str,), where.at('"content"'), "")
        language = _get(content, "language", (str,), where.at('"content"'), "")
        text = f"```{language if language.isalnum() else ''}\n{text}\n```" if text else ""
    else:
        text = _chatgpt_parts(_get(content, "parts", (list,), where.at('"content"'), []), where)
    _storable(text, where)
    if not text.strip():
        return None
    message = NewMessage(
        parent=None,
        role=role,
        content=text,
        created_at=_epoch_time(value, "create_time", where, default_time),
    )
    if role == Message.Role.ASSISTANT:
        slug = _get(metadata, "model_slug", (str,), where.at('"metadata"'), "")
        message.model = slug[:MODEL_CHARS]
        message.purpose = Usage.Purpose.ANSWER
    return message


def _chatgpt_parts(parts: list[Any], where: _Where) -> str:
    """A message's text parts joined; an image or other file part is named, not imported."""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict):
            kind = part.get("content_type")
            if kind == "image_asset_pointer":
                width, height = part.get("width"), part.get("height")
                size = (
                    f" {width}×{height}"
                    if isinstance(width, int) and isinstance(height, int)
                    else ""
                )
                texts.append(f"[image{size}: not imported]")
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                texts.append("[attachment: not imported]")
        elif part is not None:
            raise where.fail(f"a content part must be text or an object, not {_json_type(part)}.")
    return "\n\n".join(text for text in texts if text)


# -- writing


@transaction.atomic
def save(user: Any, parsed: Parsed) -> list[Conversation]:
    """The parsed conversations, as new rows of `user`'s, marked imported; no ledger rows.
    In one transaction: all of them, or (on any error) none."""
    now = timezone.now()
    conversations = Conversation.objects.bulk_create(
        [
            Conversation(
                user=user,
                title=c.title,
                title_source=c.title_source,
                model=c.model,
                created_at=c.created_at,
                updated_at=c.updated_at,
                imported_from=parsed.source,
                imported_at=now,
                **c.settings,
            )
            for c in parsed.conversations
        ],
        batch_size=500,
    )
    # The active path's messages were selected last: now; the others a second before.
    earlier = now - dt.timedelta(seconds=1)
    # Written a level of the trees at a time (first messages, their replies, ...): each
    # level's parents have their ids by then, and no row is written twice.
    levels: list[list[tuple[Message, list[Message], int | None]]] = []
    for conversation, new in zip(conversations, parsed.conversations, strict=True):
        rows: list[Message] = []
        depth: list[int] = []
        for message in new.messages:
            level = 0 if message.parent is None else depth[message.parent] + 1
            depth.append(level)
            row = Message(
                conversation=conversation,
                role=message.role,
                content=message.content,
                **{name: getattr(message, name) for name in ANSWER_FIELDS},
                created_at=message.created_at,
                selected_at=now if message.active else earlier,
            )
            rows.append(row)
            if level == len(levels):
                levels.append([])
            levels[level].append((row, rows, message.parent))
    for level_rows in levels:
        for row, siblings, parent in level_rows:
            if parent is not None:
                row.parent_id = siblings[parent].pk
        Message.objects.bulk_create([row for row, _, _ in level_rows], batch_size=500)
    return conversations


def import_file(user: Any, data: bytes) -> list[Conversation]:
    return save(user, parse(data))
