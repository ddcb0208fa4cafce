"""The chat websocket: one socket per browser tab. See docs/protocol.md."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from bisect import bisect_left
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from asgiref.sync import async_to_sync
from asgiref.typing import ASGIReceiveCallable, ASGISendCallable
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model, user_logged_out
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models.signals import pre_save
from django.dispatch import receiver

from chat import frames, search, titles
from chat.forms import settings_from_frame
from chat.frames import Frame
from chat.limits import SOCKETS
from chat.models import Conversation, Message, SiteSettings, Usage
from chat.services import (
    Refused,
    ResentAnswer,
    StartedAnswer,
    answer_again,
    check_session,
    select_branch,
    start_answer,
)
from chat.streams import (
    LAYER_ERRORS,
    RUNNING,
    AnswerRun,
    channel_layer,
    control_group,
    stop_answer,
    user_group,
    viewers_group,
)
from chat.upstream import UNENCODABLE

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)

RECENT_ANSWERS = 10
CLOSE_LOGGED_OUT = 4401
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a UUID fits (docs/protocol.md, `send`)
# The channel layer (Redis) failed: the page reconnects, and the new socket joins its
# groups afresh (a restarted Redis forgot them).
CLOSE_UNAVAILABLE = 4503
CLOSE_FELL_BEHIND = 4408


def session_group(session_key: str) -> str:
    # A digest, so that session keys never travel through the channel layer.
    return "session_" + hashlib.sha256(session_key.encode()).hexdigest()[:32]


@receiver(user_logged_out)
def close_the_sessions_sockets(sender, request, user, **kwargs) -> None:
    """Logging out closes that session's open sockets, in every process."""
    key = getattr(getattr(request, "session", None), "session_key", None)
    if key:
        async_to_sync(channel_layer().group_send)(session_group(key), frames.session_ended())


@receiver(pre_save, sender=settings.AUTH_USER_MODEL)
def close_the_users_sockets(
    sender, instance: User, raw: bool, using: str, update_fields, **kwargs
) -> None:
    """Deactivating a user or changing their password closes their open sockets, in every
    process, once the change is committed (each socket checks its session again: a request
    refused would say the same). Changes that bypass save() meet the check of each request."""
    if raw or instance.pk is None:
        return
    if update_fields is not None and not {"is_active", "password"} & set(update_fields):
        return  # as every login saves last_login: no query
    before = (
        get_user_model()
        .objects.using(using)
        .filter(pk=instance.pk)
        .values_list("is_active", "password")
        .first()
    )
    if before is None:
        return
    was_active, password = before
    if (was_active and not instance.is_active) or password != instance.password:
        # robust: the save stands if the channel layer is down; requests still check.
        transaction.on_commit(
            partial(_tell_the_users_sockets, instance.pk), using=using, robust=True
        )


def _tell_the_users_sockets(user_id: int) -> None:
    async_to_sync(channel_layer().group_send)(user_group(user_id), frames.access_changed())


class SendWindow:
    """What a socket sent that its browser has not acknowledged yet (docs/protocol.md, `ack`).

    Daphne buffers whatever the app sends, however slowly the client reads, and tells the
    app nothing of it: the browser's acks are how the server knows. An ack must fall where
    a frame ended, so a client cannot acknowledge what it has not read.
    """

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.sent = 0  # characters of all frames sent, which are ASCII: bytes too
        self.acked = 0
        self.ends: deque[int] = deque()  # where each unacknowledged frame ends
        # Frames sent together (a long text in parts) count as at most half the cap until
        # acknowledged, so that a long snapshot leaves room for the deltas sent while its
        # acks are on the way: the (start, end) of each such burst.
        self.bursts: deque[tuple[int, int]] = deque()
        self.burst_start = 0

    @property
    def backlog(self) -> int:
        uncounted = sum(
            max(0, end - max(start, self.acked) - self.cap // 2) for start, end in self.bursts
        )
        return self.sent - self.acked - uncounted

    def full(self) -> bool:
        return self.backlog > self.cap

    def begin(self) -> None:
        """The frames added from now on go together."""
        self.burst_start = self.sent

    def add(self, size: int) -> None:
        self.sent += size
        self.ends.append(self.sent)
        if self.sent - self.burst_start > self.cap // 2:
            if self.bursts and self.bursts[-1][0] == self.burst_start:
                self.bursts.pop()
            self.bursts.append((self.burst_start, self.sent))

    def ack(self, received: int) -> bool:
        """Frames up to `received` arrived; False if no frame sent ended there."""
        if received == self.acked:
            return True
        index = bisect_left(self.ends, received)
        if index == len(self.ends) or self.ends[index] != received:
            return False
        for _ in range(index + 1):
            self.ends.popleft()
        while self.bursts and self.bursts[0][1] <= received:
            self.bursts.popleft()
        self.acked = received
        return True


class ChatConsumer(AsyncJsonWebsocketConsumer):
    # -- lifecycle -------------------------------------------------------------------

    user: User

    async def __call__(
        self, scope: Any, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        try:
            await super().__call__(scope, receive, send)
        except LAYER_ERRORS as exc:
            # Not a 500 or an "internal error" close with a traceback per socket: Redis
            # went away, which the page rides out by reconnecting with backoff.
            logger.warning("socket closed: the channel layer failed: %s", exc)
            await self.disconnect(CLOSE_UNAVAILABLE)
            await self.close(code=CLOSE_UNAVAILABLE)

    async def connect(self) -> None:
        self.window = SendWindow(settings.CHAT_SOCKET_BUFFER_BYTES)
        self.behind = False  # closing: the browser fell too far behind
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_LOGGED_OUT)
            return
        # AuthMiddlewareStack's lazy object stands for the logged-in User.
        self.user = cast("User", user)
        # Over the user's socket limit: refused at the handshake (HTTP 403), before any
        # group or task is made for it.
        self.socket_id = await SOCKETS.claim(self.user)
        if self.socket_id is None:
            logger.info("user %s refused a socket: at their limit", self.user.pk)
            await self.close()
            return
        self.watching: int | None = None
        # What this socket has shown of answers it follows through the group.
        self.known: dict[int, list[int]] = {}
        session = self.scope.get("session")
        self.session_key: str | None = getattr(session, "session_key", None)
        try:
            if self.session_key:
                await self.channel_layer.group_add(
                    session_group(self.session_key), self.channel_name
                )
            await self.channel_layer.group_add(user_group(self.user.pk), self.channel_name)
            await self.accept()
        except BaseException:  # a failed connect may see no disconnect: free the count here
            socket_id, self.socket_id = self.socket_id, None
            if socket_id is not None:
                await SOCKETS.release(socket_id)
            raise

    async def disconnect(self, code: int) -> None:
        for run in list(RUNNING.values()):
            run.detach(self.channel_name)
        session_key = getattr(self, "session_key", None)
        watching = getattr(self, "watching", None)
        user = getattr(self, "user", None)
        try:
            if session_key:
                await self.channel_layer.group_discard(
                    session_group(session_key), self.channel_name
                )
            if user is not None:
                await self.channel_layer.group_discard(user_group(user.pk), self.channel_name)
            if watching is not None:
                await self.channel_layer.group_discard(viewers_group(watching), self.channel_name)
        except LAYER_ERRORS as exc:  # the channel is gone anyway; its memberships expire
            logger.info("socket %s left its groups behind: %s", self.channel_name, exc)
        finally:  # the socket stops counting even when the channel layer is down
            socket_id = getattr(self, "socket_id", None)
            if socket_id is not None:
                self.socket_id = None
                await SOCKETS.release(socket_id)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        try:
            if not isinstance(content, dict):
                raise Refused("bad_frame", "A frame must be a JSON object.")
            kind = content.get("type")
            # (`send` checks the session in the same trip to the database as its writes.)
            if kind in ("watch", "stop", "switch"):
                await database_sync_to_async(check_session)(self.user, self.session_key)
            if kind == "ack":
                self.acknowledge(content)
            elif kind == "send":
                await self.send_message(content)
            elif kind == "edit":
                await self.edit(content)
            elif kind == "regenerate":
                await self.answer_again(content, Usage.Purpose.REGENERATE)
            elif kind == "continue":
                await self.answer_again(content, Usage.Purpose.CONTINUE)
            elif kind == "switch":
                await self.switch(self._int_field(content, "message_id"))
            elif kind == "watch":
                await self.watch(self._int_field(content, "conversation_id"))
            elif kind == "stop":
                await self.stop(self._int_field(content, "message_id"))
            elif kind == "ping":
                await self.send_json(frames.pong())
            else:
                raise Refused("unknown_type", f"Unknown message type: {str(kind)[:50]!r}.")
        except Refused as exc:
            if exc.code == frames.LOGGED_OUT_CODE:
                await self._end_session()
            else:
                await self.send_json(frames.error(exc.code, exc.message, **exc.extra))

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        # Non-ASCII escaped: the characters the browser counts in its acks are the bytes sent.
        return json.dumps(content, ensure_ascii=True)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        try:
            return await super().decode_json(text_data)
        except (ValueError, RecursionError):  # deep nesting raises RecursionError
            return _BadJson

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        if self.behind:
            return  # the socket is closing; the page will send again once reconnected
        if text_data is None:
            await self.send_json(frames.error("bad_frame", "Send text frames of JSON."))
            return
        content = await self.decode_json(text_data)
        if content is _BadJson:
            await self.send_json(frames.error("bad_json", "That frame was not valid JSON."))
            return
        await self.receive_json(content)

    async def send(  # type: ignore[override]  # as AsyncWebsocketConsumer.send's own
        self, text_data: str | None = None, bytes_data: bytes | None = None, close: bool = False
    ) -> None:
        """Every frame to the browser goes out here: past the cap of unacknowledged bytes
        the socket is closed instead, and its answers go on without it."""
        if self.behind:
            return  # the page reloads what it missed when it reconnects
        if text_data is not None:
            if self.window.full():
                await self._fall_behind()
                return
            self.window.add(len(text_data))
        await super().send(text_data, bytes_data, close)

    async def send_json(self, content: Any, close: bool = False) -> None:
        # Through send() above (channels' send_json goes past it, to its own superclass).
        self.window.begin()
        await self.send(text_data=await self.encode_json(content), close=close)

    async def send_frames(self, parts: list[Frame]) -> None:
        """Frames that go together, such as a long text in parts: they count as one
        towards the cap (SendWindow)."""
        self.window.begin()
        for frame in parts:
            await self.send(text_data=await self.encode_json(frame))

    async def _fall_behind(self) -> None:
        self.behind = True
        logger.warning(
            "closing a socket of user %s: %d bytes sent and not acknowledged",
            self.user.id,
            self.window.backlog,
        )
        for run in list(RUNNING.values()):
            run.detach(self.channel_name)
        await self.close(code=CLOSE_FELL_BEHIND)

    # -- message types ---------------------------------------------------------------

    def acknowledge(self, content: dict[str, Any]) -> None:
        received = content.get("received")
        if not isinstance(received, int) or isinstance(received, bool) or received < 0:
            raise Refused("bad_frame", "The field 'received' must be a whole number.")
        if not self.window.ack(received):
            raise Refused("bad_frame", "That is not where a frame ended.")

    async def send_message(self, content: dict[str, Any]) -> None:
        text = self._text_field(content)
        conversation_id = content.get("conversation_id")
        if conversation_id is not None:
            conversation_id = self._int_field(content, "conversation_id")
        parent_id = content.get("parent_id")
        if parent_id is not None:
            if conversation_id is None:
                raise Refused("bad_frame", "A new conversation's message follows no message.")
            parent_id = self._int_field(content, "parent_id")
        conversation_settings = self._new_conversation_settings(content, conversation_id)
        await self._start_message(
            content,
            conversation_id,
            text,
            parent_id=parent_id,
            conversation_settings=conversation_settings,
        )

    async def edit(self, content: dict[str, Any]) -> None:
        edited = self._int_field(content, "message_id")
        text = self._text_field(content)
        conversation_id = self._int_field(content, "conversation_id")
        await self._start_message(content, conversation_id, text, edit_of=edited)

    async def _start_message(
        self, content: dict[str, Any], conversation_id: int | None, text: str, **where: Any
    ) -> None:
        """A `send` or `edit` whose own fields are checked: the fields they share, then
        the message saved (chat.services.start_answer, `where` it goes) and its answer."""
        model, client_id = self._model_field(content), self._client_id_field(content)
        attachment_ids = self._attachments_field(content)
        self._check_api_key()
        tools = await self._search_tools(content)
        started = await database_sync_to_async(start_answer)(
            self.user,
            self.session_key,
            conversation_id,
            text,
            model,
            client_id,
            attachment_ids=attachment_ids,
            **where,
        )
        await self._begin(started, client_id, announce=conversation_id is None, tools=tools)

    async def answer_again(self, content: dict[str, Any], purpose: str) -> None:
        answer_id = self._int_field(content, "message_id")
        regenerate = purpose == Usage.Purpose.REGENERATE
        model = self._model_field(content) if regenerate else None
        client_id = self._client_id_field(content)
        self._check_api_key()
        tools = await self._search_tools(content) if regenerate else ()
        started = await database_sync_to_async(answer_again)(
            self.user, self.session_key, answer_id, purpose, model, client_id
        )
        await self._begin(started, client_id, announce=False, tools=tools)

    async def switch(self, message_id: int) -> None:
        conversation_id, path = await database_sync_to_async(select_branch)(self.user, message_id)
        # Every tab of the conversation (this one too) shows the branch: one path for all.
        await self.channel_layer.group_send(
            viewers_group(conversation_id), frames.chat_branch(conversation_id, message_id, path)
        )
        if self.watching != conversation_id:
            await self.send_json(frames.branch(conversation_id, message_id, path))

    async def _begin(
        self,
        started: StartedAnswer | ResentAnswer,
        client_id: str | None,
        announce: bool,
        tools: tuple[dict[str, Any], ...] = (),
    ) -> None:
        """Start the answer a request saved, with the server-side `tools` it asked for, and
        show it here and in the other tabs (or, for a request sent again, show the answer
        its first try started)."""
        if isinstance(started, ResentAnswer):
            await self.attach(started, client_id, announce=announce)
            return
        conversation, answer = started.conversation, started.answer
        run = AnswerRun(
            user_id=self.user.id,
            conversation_id=conversation.id,
            message_id=answer.id,
            model=answer.model,
            history=started.history,
            send=self.send_frames,
            origin=self.channel_name,
            price=started.price,
            purpose=answer.purpose,
            prefix=answer.content,
            options=dataclasses.replace(started.options, tools=tools),
        )
        if titles.wanted(conversation, started.user_message, answer):
            run.after_complete = titles.after_first_answer
        try:
            if started.created:
                await self.send_json(frames.conversation(conversation, answer.model))
            await self.watch(conversation.id, announce=False, owned=True)
            start = frames.message_start(
                started.user_message,
                answer,
                started.dropped,
                client_id,
                started.siblings,
                started.user_attachments,
            )
            await self.send_json(start)
        finally:
            # Its row is written: the answer streams and is saved even if Redis failed just
            # now (this socket then closes; the page reloads it). The upstream request goes
            # out before the other tabs are told: it is on the way to the first token.
            run.start()
        await run.listening.wait()
        await self.channel_layer.group_send(
            viewers_group(conversation.id), frames.chat_start(start, self.channel_name)
        )

    async def watch(self, conversation_id: int, announce: bool = True, owned: bool = False) -> None:
        if self.watching != conversation_id:
            if not owned and not await self._owns_conversation(conversation_id):
                raise Refused("not_found", "No such conversation.", conversation_id=conversation_id)
            if self.watching is not None:
                await self.channel_layer.group_discard(
                    viewers_group(self.watching), self.channel_name
                )
                for run in list(RUNNING.values()):
                    run.detach(self.channel_name)
            self.watching = conversation_id
            self.known = {}
            await self.channel_layer.group_add(viewers_group(conversation_id), self.channel_name)
        if announce:
            recent, replayed = await self._recent_answers(conversation_id)
            await self.send_frames([*replayed, frames.watching(conversation_id, recent)])
            # Answers streaming now, here or in another process, reply with chat.snapshot.
            await self._ask_for_snapshot(conversation_id)

    async def attach(self, resent: ResentAnswer, client_id: str | None, announce: bool) -> None:
        """A `send` retried: show the answer its first try started, streaming or ended."""
        conversation, answer = resent.conversation, resent.answer
        if announce:  # the tab asked for a new conversation: this is it
            await self.send_json(frames.conversation(conversation, answer.model))
        await self.watch(conversation.id, announce=False, owned=True)
        await self.send_json(
            frames.message_start(
                resent.user_message,
                answer,
                0,
                client_id,
                resent.siblings,
                resent.user_attachments,
            )
        )
        # Read after joining the group: from now on its end reaches this socket anyway.
        ended = await self._ended_answer(answer.id)
        if ended is None:
            await self._ask_for_snapshot(conversation.id, answer.id)
        else:
            await self.send_frames(frames.replay(ended))

    async def stop(self, message_id: int) -> None:
        conversation_id = await self._streaming_answer_conversation(message_id)
        if conversation_id is None:
            raise Refused("not_found", "No such answer.", message_id=message_id)
        await stop_answer(message_id, conversation_id)

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _int_field(content: dict[str, Any], name: str) -> int:
        value = content.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise Refused("bad_frame", f"The field {name!r} must be a positive integer.")
        return value

    def _text_field(self, content: dict[str, Any]) -> str:
        text = content.get("content")
        if not isinstance(text, str):
            raise Refused("bad_frame", "The field 'content' must be a string.")
        if not text.strip():
            raise Refused("empty", "Type a message first.")
        if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
            raise Refused(
                "too_long",
                f"That message is {len(text)} characters long; the limit is "
                f"{settings.CHAT_MAX_MESSAGE_CHARS}.",
            )
        self._storable(text, "The message")
        return text

    def _model_field(self, content: dict[str, Any]) -> str | None:
        model = content.get("model")
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 100):
            raise Refused("bad_frame", "The field 'model' must be a model name.")
        if model is not None:
            self._storable(model, "The model name")
        return model

    @staticmethod
    def _attachments_field(content: dict[str, Any]) -> list[int]:
        """The `attachments` of a `send` or `edit`: ids of the user's pending uploads
        (chat.services checks whose they are, and how many)."""
        ids = content.get("attachments")
        if ids is None:
            return []
        if (
            not isinstance(ids, list)
            or len(ids) > 100
            or not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in ids)
        ):
            raise Refused("bad_frame", "The field 'attachments' must be a list of image ids.")
        return list(dict.fromkeys(ids))  # each once, in order

    @staticmethod
    def _client_id_field(content: dict[str, Any]) -> str | None:
        client_id = content.get("client_id")
        if client_id is not None and not (
            isinstance(client_id, str) and CLIENT_ID.fullmatch(client_id)
        ):
            raise Refused("bad_frame", "The field 'client_id' must be 1 to 64 of A-Z a-z 0-9 - _.")
        return client_id

    @staticmethod
    def _check_api_key() -> None:
        if not settings.XAI_API_KEY:
            raise Refused(
                "no_api_key",
                "No xAI API key is configured. Set XAI_API_KEY and restart the app.",
            )

    @staticmethod
    def _storable(text: str, what: str) -> None:
        """Refuse text no database stores: PostgreSQL refuses NUL, and a lone surrogate (half
        of an emoji's pair; JSON can escape one) is not UTF-8."""
        if "\x00" in text:
            raise Refused(
                "bad_frame", f"{what} holds a NUL character (U+0000), which cannot be stored."
            )
        found = UNENCODABLE.search(text)  # (the decoder's definition: now a lone surrogate)
        if found is not None:
            raise Refused(
                "bad_frame",
                f"{what} holds a lone surrogate (U+{ord(found.group()):04X}, half of a "
                f"character such as an emoji) at character {found.start() + 1}, which cannot "
                "be stored.",
            )

    @staticmethod
    def _new_conversation_settings(
        content: dict[str, Any], conversation_id: int | None
    ) -> dict[str, Any] | None:
        """The `send`'s `settings`, checked by the settings form: for a new conversation
        only (an existing one's are posted to /c/<id>/settings/)."""
        value = content.get("settings")
        if value is None:
            return None
        if conversation_id is not None:
            raise Refused(
                "bad_frame",
                "The field 'settings' is for a new conversation (conversation_id null).",
            )
        try:
            return settings_from_frame(value)
        except ValidationError as exc:
            raise Refused("bad_frame", " ".join(exc.messages)) from None

    async def _search_tools(self, content: dict[str, Any]) -> tuple[dict[str, Any], ...]:
        """The tools a request's `search` asks for, with the site's filters; refused when
        the API style has no search or an admin turned that search off (nothing saved)."""
        try:
            choice = search.parse_choice(content.get("search"))
        except ValueError as exc:
            raise Refused("bad_frame", str(exc)) from None
        if not choice.any:
            return ()
        if reason := search.unavailable_reason():
            raise Refused("search_unavailable", reason)
        site = await database_sync_to_async(SiteSettings.current)()
        try:
            return site.search_tools(choice)
        except ValueError as exc:
            raise Refused("search_unavailable", str(exc)) from None

    @database_sync_to_async
    def _owns_conversation(self, conversation_id: int) -> bool:
        found = Conversation.objects.for_user(self.user).filter(id=conversation_id).exists()
        if not found:
            logger.warning("user %s asked for conversation %s", self.user.id, conversation_id)
        return found

    @database_sync_to_async
    def _recent_answers(self, conversation_id: int) -> tuple[list[Frame], list[Frame]]:
        """The last answers that ended, so a tab that was away sees how they ended: those
        that fit in `watching`, and the frames that replay the others."""
        path = Conversation(pk=conversation_id).tree().path()
        answers = (
            Message.objects.filter(id__in=path, role=Message.Role.ASSISTANT)
            .exclude(state=Message.State.STREAMING)
            .select_related("usage")
            .defer("output_items")
            .order_by("-id")[:RECENT_ANSWERS]
        )
        recent: list[Frame] = []
        replayed: list[Frame] = []
        room = frames.TEXT_PER_FRAME
        for answer in answers:  # newest first
            size = len(answer.content) + len(answer.reasoning) + _sources_size(answer)
            if size <= room:
                recent.append(frames.recent_answer(answer))
                room -= size
            else:
                replayed[:0] = frames.replay(answer)  # oldest first
        return recent, replayed

    @database_sync_to_async
    def _ended_answer(self, message_id: int) -> Message | None:
        rows = Message.objects.exclude(state=Message.State.STREAMING).select_related("usage")
        return rows.filter(id=message_id).first()

    @database_sync_to_async
    def _streaming_answer_conversation(self, message_id: int) -> int | None:
        row = (
            Message.objects.filter(
                id=message_id,
                role=Message.Role.ASSISTANT,
                conversation__user=self.user,
            )
            .values_list("conversation_id", flat=True)
            .first()
        )
        if row is None:
            logger.warning("user %s tried to stop message %s", self.user.id, message_id)
        return row

    @database_sync_to_async
    def _saved_text(self, message_id: int) -> tuple[int, str, str] | None:
        return (
            Message.objects.filter(id=message_id, conversation__user=self.user)
            .values_list("conversation_id", "content", "reasoning")
            .first()
        )

    async def _ask_for_snapshot(self, conversation_id: int, message_id: int | None = None) -> None:
        """Answers streaming in the conversation (or just `message_id`), in whichever
        process, reply with chat.snapshot and from then on send deltas to the group."""
        await self.channel_layer.group_send(
            control_group(conversation_id), frames.stream_snapshot(self.channel_name, message_id)
        )

    async def _end_session(self) -> None:
        await self.send_json(frames.logged_out())
        await self.close(code=CLOSE_LOGGED_OUT)

    def _visible(self, event: dict[str, Any]) -> bool:
        return event.get("origin") != self.channel_name

    # -- channel-layer handlers ------------------------------------------------------

    async def chat_start(self, event: dict[str, Any]) -> None:
        if self._visible(event):
            frame = event["frame"]
            self.known[frame["message"]["id"]] = [len(frame["message"]["content"]), 0]
            await self.send_json(frame)
            # Tell the answer it is followed: it replies with a snapshot, then sends deltas.
            await self._ask_for_snapshot(frame["conversation_id"], frame["message"]["id"])

    async def chat_delta(self, event: dict[str, Any]) -> None:
        if not self._visible(event):
            return
        known = self.known.get(event["message_id"])
        if known is None or self.watching is None:
            return  # a snapshot is on its way and will include this text
        if event["content_offset"] > known[0] or event["reasoning_offset"] > known[1]:
            # Text went missing on the way (a failed group send): ask for the whole again.
            self.known.pop(event["message_id"])
            await self._ask_for_snapshot(self.watching, event["message_id"])
            return
        content = event["content"][max(0, known[0] - event["content_offset"]) :]
        reasoning = event["reasoning"][max(0, known[1] - event["reasoning_offset"]) :]
        known[0] = max(known[0], event["content_offset"] + len(event["content"]))
        known[1] = max(known[1], event["reasoning_offset"] + len(event["reasoning"]))
        parts = frames.deltas(event["message_id"], content, reasoning)
        parts += [frames.tool(event["message_id"], status) for status in event.get("tools", ())]
        if parts:
            await self.send_frames(parts)

    async def chat_snapshot(self, event: dict[str, Any]) -> None:
        if event["conversation_id"] != self.watching:
            return
        self.known[event["message_id"]] = [len(event["content"]), len(event["reasoning"])]
        await self.send_frames(
            frames.snapshot_in_parts(
                event["message_id"],
                event["conversation_id"],
                event["content"],
                event["reasoning"],
                event.get("tools"),
            )
        )

    async def chat_branch(self, event: dict[str, Any]) -> None:
        if event["conversation_id"] == self.watching:
            await self.send_json(
                frames.branch(event["conversation_id"], event["message_id"], event["path"])
            )

    async def session_ended(self, event: dict[str, Any]) -> None:
        await self._end_session()

    async def title_changed(self, event: dict[str, Any]) -> None:
        await self.send_json(event["frame"])

    async def access_changed(self, event: dict[str, Any]) -> None:
        try:
            await database_sync_to_async(check_session)(self.user, self.session_key)
        except Refused:
            await self._end_session()

    async def chat_end(self, event: dict[str, Any]) -> None:
        if not self._visible(event):
            return
        frame = event["frame"]
        known = self.known.pop(frame["message_id"], None)
        if (
            known is None
            or known[0] < event["content_length"]
            or known[1] < event["reasoning_length"]
        ):
            # Some of its text never reached this tab (it asked for a snapshot as the answer
            # ended): the text as saved, then the end.
            saved = await self._saved_text(frame["message_id"])
            if saved is not None:
                await self.send_frames(frames.snapshot_in_parts(frame["message_id"], *saved))
        await self.send_json(frame)


def _sources_size(answer: Message) -> int:
    """The characters an answer's sources add to a frame (they count with its text)."""
    return sum(len(c.get("url", "")) + len(c.get("title", "")) for c in answer.citations or ())


class _BadJson:
    pass
