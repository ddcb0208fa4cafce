"""Every frame of the chat websocket, and the channel-layer events that carry them.

The first part mirrors docs/protocol.md, "Server to browser", one function per frame type
in the document's order; the consumer and the answer runs only call these. The second part
builds the events between processes (channel layer): they live here too because three of
them carry a frame of the first part and chat.snapshot carries the snapshot frame's fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chat.billing import TOKEN_FIELDS

if TYPE_CHECKING:
    from chat.models import Conversation, Message, Usage
    from chat.services import Siblings
    from chat.upstream import ToolStatus

Frame = dict[str, Any]

# Daphne sends no websocket message over 1 MiB (its websocket_max_message_size limits both
# ways), so a long text goes in several frames, each with at most this many characters of
# it: at most 12 bytes each in ASCII JSON (an escaped surrogate pair), 768 KiB in all.
TEXT_PER_FRAME = 65536

# -- Server to browser (docs/protocol.md) ------------------------------------------------


def conversation(started: Conversation, model: str) -> Frame:
    """`conversation`: a `send` started a new conversation (protocol.md, Server to browser)."""
    return {
        "type": "conversation",
        "conversation": {"id": started.id, "title": started.title, "model": model},
    }


def conversation_title(conversation_id: int, title: str) -> Frame:
    """`conversation.title`: a conversation of the user's got a new title (protocol.md)."""
    return {"type": "conversation.title", "conversation_id": conversation_id, "title": title}


def watching(conversation_id: int, recent: list[Frame]) -> Frame:
    """`watching`: the answer to `watch`; `recent` holds recent_answer() frames (protocol.md)."""
    return {"type": "watching", "conversation_id": conversation_id, "recent": recent}


def recent_answer(message: Message) -> Frame:
    """One of `watching`'s `recent`: the fields of `message.end` plus `content` and
    `reasoning` (protocol.md, `watching`), for a tab that was away when the answer ended."""
    return {
        **message_end(message, getattr(message, "usage", None)),
        "content": message.content,
        "reasoning": message.reasoning,
    }


def snapshot(
    message_id: int,
    conversation_id: int,
    content: str,
    reasoning: str,
    tools: list[Frame] | None = None,
) -> Frame:
    """`snapshot`: the whole text so far of an answer streaming now, and where each of its
    tool calls stands (`tools`: tool_status() dicts) (protocol.md)."""
    return {
        "type": "snapshot",
        "message_id": message_id,
        "conversation_id": conversation_id,
        "content": content,
        "reasoning": reasoning,
        "tools": tools or [],
    }


def snapshot_in_parts(
    message_id: int,
    conversation_id: int,
    content: str,
    reasoning: str,
    tools: list[Frame] | None = None,
) -> list[Frame]:
    """A `snapshot` of the text's beginning, then `delta`s of the rest: frames small
    enough to send (protocol.md, `snapshot`)."""
    half = TEXT_PER_FRAME // 2
    first = snapshot(message_id, conversation_id, content[:half], reasoning[:half], tools)
    return [first, *deltas(message_id, content[half:], reasoning[half:])]


def replay(message: Message) -> list[Frame]:
    """An answer that ended, as if it streamed now: for a text too long for `watching`."""
    text = snapshot_in_parts(
        message.id, message.conversation_id, message.content, message.reasoning
    )
    return [*text, message_end(message, getattr(message, "usage", None))]


def message_start(
    user_message: Message,
    answer: Message,
    history_dropped: int,
    client_id: str | None = None,
    siblings: Siblings | None = None,
    attachments: list[Frame] | None = None,
) -> Frame:
    """`message.start`: the answer is about to stream (protocol.md). `siblings`: the ids of
    each message's siblings, itself included (Siblings), else it has none. `attachments`:
    the user's message's images (chat.attachments.describe)."""
    return {
        "type": "message.start",
        "conversation_id": answer.conversation_id,
        "client_id": client_id,
        "user_message": {
            "id": user_message.id,
            "role": "user",
            "content": user_message.content,
            "parent_id": user_message.parent_id,
            "siblings": siblings.user_message if siblings else [user_message.id],
            "attachments": attachments or [],
        },
        "message": {
            "id": answer.id,
            "role": "assistant",
            "state": answer.state,
            "model": answer.model,
            "parent_id": answer.parent_id,
            "siblings": siblings.answer if siblings else [answer.id],
            "purpose": answer.purpose,
            "content": answer.content if answer.state == "streaming" else "",
        },
        "history_dropped": history_dropped,
    }


def delta(message_id: int, content: str, reasoning: str) -> Frame:
    """`delta`: text arrived, to append (protocol.md)."""
    return {"type": "delta", "message_id": message_id, "content": content, "reasoning": reasoning}


def deltas(message_id: int, content: str, reasoning: str) -> list[Frame]:
    """`delta` frames carrying `content` and `reasoning`, each small enough to send."""
    half = TEXT_PER_FRAME // 2
    return [
        delta(message_id, content[i : i + half], reasoning[i : i + half])
        for i in range(0, max(len(content), len(reasoning)), half)
    ]


# A search query longer than this (an upstream could send any) is cut in a `tool` frame.
TOOL_QUERY_CHARS = 1000


def tool_status(status: ToolStatus) -> Frame:
    """One tool call's status as `tool` and `snapshot` carry it (protocol.md, `tool`)."""
    return {**status.as_dict(), "query": status.query[:TOOL_QUERY_CHARS]}


def tool(message_id: int, status: Frame) -> Frame:
    """`tool`: a server-side tool call of the answer (web or X search) changed state
    (protocol.md); `status` is a tool_status() dict."""
    return {"type": "tool", "message_id": message_id, **status}


def message_end(message: Message, usage: Usage | None) -> Frame:
    """`message.end`: the answer ended, whatever the way (protocol.md)."""
    return {
        "type": "message.end",
        "message_id": message.id,
        "conversation_id": message.conversation_id,
        "state": message.state,
        "error": message.error or None,
        "model": message.model,
        "finish_reason": message.finish_reason,
        "ttft_ms": message.ttft_ms,
        "duration_ms": message.duration_ms,
        "usage": usage_of(usage) if usage else None,
        "citations": message.citations or [],
    }


def usage_of(usage: Usage) -> Frame:
    """`message.end`'s `usage` (protocol.md; the counters are chat.billing.TOKEN_FIELDS,
    then the tool calls: TOOL_CALLS and TOOL_COUNTERS)."""
    return {
        **{field: getattr(usage, field) for field in TOKEN_FIELDS},
        **usage.tool_counters(),
        "source": usage.source,
        "cost_usd": usage.cost_usd_text or None,
        "cost_source": usage.cost_source,
    }


def branch(conversation_id: int, message_id: int, path: list[int]) -> Frame:
    """`branch`: the message `message_id` became its siblings' choice; `path` is the
    conversation's active path now (protocol.md)."""
    return {
        "type": "branch",
        "conversation_id": conversation_id,
        "message_id": message_id,
        "path": path,
    }


def error(code: str, message: str, **extra: Any) -> Frame:
    """`error`: a frame was refused; `extra` is message_id, conversation_id or retry_after
    where it applies (protocol.md, `error` and its codes)."""
    return {"type": "error", "code": code, "message": message, **extra}


LOGGED_OUT_CODE = "logged_out"
LOGGED_OUT_MESSAGE = "You have been logged out."


def logged_out() -> Frame:
    """The `error` with code `logged_out` sent before closing with 4401 (protocol.md)."""
    return error(LOGGED_OUT_CODE, LOGGED_OUT_MESSAGE)


def pong() -> Frame:
    """`pong`: the answer to `ping` (protocol.md)."""
    return {"type": "pong"}


# -- Channel-layer events (between processes; not part of the browser's protocol) --------
# `type` names the consumer's handler (chat.start -> chat_start); `origin` is the asking
# socket's channel, which already got the frame directly.


def chat_start(frame: Frame, origin: str | None) -> Frame:
    """A `message.start` frame for the other sockets watching the conversation."""
    return {"type": "chat.start", "frame": frame, "origin": origin}


def chat_delta(
    message_id: int,
    content: str,
    reasoning: str,
    content_offset: int,
    reasoning_offset: int,
    origin: str | None,
    tools: list[Frame] | None = None,
) -> Frame:
    """Text for the watchers, with where it starts so that they can see a gap, and the
    tool statuses (tool_status() dicts) that came with it, in order."""
    return {
        "type": "chat.delta",
        "message_id": message_id,
        "content": content,
        "reasoning": reasoning,
        "content_offset": content_offset,
        "reasoning_offset": reasoning_offset,
        "origin": origin,
        "tools": tools or [],
    }


def chat_snapshot(
    message_id: int,
    conversation_id: int,
    content: str,
    reasoning: str,
    tools: list[Frame] | None = None,
) -> Frame:
    """An answer's whole text so far, and its tool calls' statuses, for the socket that
    asked (becomes a `snapshot`)."""
    frame = snapshot(message_id, conversation_id, content, reasoning, tools)
    return {**frame, "type": "chat.snapshot"}


def chat_end(frame: Frame, origin: str | None, content: str, reasoning: str) -> Frame:
    """A `message.end` frame for the other sockets watching the conversation, with the
    lengths of the answer's text, so that a socket that has less shows the saved whole."""
    return {
        "type": "chat.end",
        "frame": frame,
        "origin": origin,
        "content_length": len(content),
        "reasoning_length": len(reasoning),
    }


def stream_stop(message_id: int, reply_to: str | None = None) -> Frame:
    """To a conversation's running answers: the one with `message_id` stops (and tells
    `reply_to` with stream.stopping that it does)."""
    request: Frame = {"type": "stream.stop", "message_id": message_id}
    if reply_to is not None:
        request["reply_to"] = reply_to
    return request


def stream_stopping(message_id: int) -> Frame:
    """From a running answer to whoever asked it to stop: it runs, and stops."""
    return {"type": "stream.stopping", "message_id": message_id}


def stream_snapshot(reply_to: str, message_id: int | None = None) -> Frame:
    """To a conversation's running answers (or just `message_id`): send `reply_to` a
    chat.snapshot, then deltas through the group."""
    request: Frame = {"type": "stream.snapshot", "reply_to": reply_to}
    if message_id is not None:
        request["message_id"] = message_id
    return request


def chat_branch(conversation_id: int, message_id: int, path: list[int]) -> Frame:
    """A `branch` frame for every socket watching the conversation."""
    return {**branch(conversation_id, message_id, path), "type": "chat.branch"}


def title_changed(frame: Frame) -> Frame:
    """A `conversation.title` frame for every socket of its user (the group `user_<id>`)."""
    return {"type": "title.changed", "frame": frame}


def session_ended() -> Frame:
    """To a session's sockets: it logged out, close."""
    return {"type": "session.ended"}


def access_changed() -> Frame:
    """To a user's sockets: the account was deactivated or its password changed; each
    checks its session again and closes if it no longer lets the user in."""
    return {"type": "access.changed"}
