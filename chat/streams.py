"""One answer, streamed in its own task from the upstream to whoever watches it.

The socket that asked for the answer gets every delta directly (the short path). Other
sockets watching the conversation, in this process or another, get them through the
channel layer group `conv_<id>`, coalesced every GROUP_FLUSH_SECONDS. Each running answer
listens on its own channel, a member of the group `ctl_<id>`, for `stop` and `snapshot`
requests, so Stop works from any tab in any process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError

from chat import frames
from chat.billing import TOKEN_FIELDS, Price
from chat.models import Message, Usage, streams_started_after
from chat.upstream import Answer, Delta, Timeouts, Upstream, UpstreamError

logger = logging.getLogger(__name__)

GROUP_FLUSH_SECONDS = 0.05
# Runs of this process by message id: the local fast path for Stop, and what shutdown ends.
RUNNING: dict[int, AnswerRun] = {}

# Sends frames that go together (a long text in parts) to the asking socket.
Send = Callable[[list[dict[str, Any]]], Awaitable[None]]


def viewers_group(conversation_id: int) -> str:
    return f"conv_{conversation_id}"


def control_group(conversation_id: int) -> str:
    return f"ctl_{conversation_id}"


def channel_layer() -> BaseChannelLayer:
    """The default channel layer, which settings always configure."""
    layer = get_channel_layer()
    if layer is None:
        raise ImproperlyConfigured("CHANNEL_LAYERS has no default layer")
    return layer


def upstream_from_settings() -> Upstream:
    return Upstream(
        base_url=settings.XAI_BASE_URL,
        api_key=settings.XAI_API_KEY,
        style=settings.XAI_API_STYLE,
        timeouts=Timeouts(
            connect=settings.UPSTREAM_CONNECT_TIMEOUT,
            first_token=settings.UPSTREAM_FIRST_TOKEN_TIMEOUT,
            idle=settings.UPSTREAM_IDLE_TIMEOUT,
            total=settings.UPSTREAM_TOTAL_TIMEOUT,
        ),
        max_retries=settings.UPSTREAM_MAX_RETRIES,
    )


def worker_id() -> str:
    """This process, as stored on the answers it streams."""
    return f"{socket.gethostname()}:{os.getpid()}"


def sweep_orphans() -> int:
    """End answers left "streaming" by dead processes as interrupted, with their usage rows.

    Run at start: rows under this process's own host and pid belong to an earlier process
    that had the same pid (a container restarted after SIGKILL runs as pid 1 again).
    """
    me = os.getpid()

    def alive(pid: int) -> bool:
        if pid == me:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return pid > 0

    orphans = Message.objects.orphans(socket.gethostname(), alive, streams_started_after())
    ended = 0
    for message in orphans.select_related("conversation"):
        if message.interrupt_orphan() is not None:
            ended += 1
    if ended:
        logger.warning("marked %d answers of stopped processes as interrupted", ended)
    return ended


def on_server_start() -> None:
    """Called once by chatsite.asgi in each server process, before it serves anything."""
    try:
        sweep_orphans()
    except DatabaseError as exc:  # not migrated yet: the app still starts and says so
        logger.warning("could not look for interrupted answers: %s", exc)
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None and hasattr(reactor, "addSystemEventTrigger"):
        # Daphne stops on SIGTERM through Twisted: end and save the answers first.
        from twisted.internet import defer

        reactor.addSystemEventTrigger(
            "before",
            "shutdown",
            lambda: defer.Deferred.fromFuture(asyncio.ensure_future(interrupt_all())),
        )


async def interrupt_all(timeout: float = 10.0) -> int:
    """End every answer of this process as "interrupted", saving each with its usage row.

    For shutdown: the partial answers and what they cost are written before the loop
    stops. Returns how many answers were running.
    """
    runs = list(RUNNING.values())
    for run in runs:
        run.stop(Message.State.INTERRUPTED)
    tasks = [run.task for run in runs if run.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    return len(runs)


class AnswerRun:
    def __init__(
        self,
        *,
        user_id: int,
        conversation_id: int,
        message_id: int,
        model: str,
        history: list[dict[str, str]],
        send: Send | None,
        origin: str | None,
        price: Price | None = None,
    ) -> None:
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.model = model
        self.history = history
        self.price = price  # in force when the request was made
        self._send = send
        self.origin = origin
        self.answer = Answer()
        self.end_state: str | None = None  # set by stop() or shutdown before cancelling
        self.task: asyncio.Task[None] | None = None
        self.layer = channel_layer()
        # The asking socket's frames: deltas read while the last frame went out are joined.
        self._outbox = Delta()
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        # The group's: only once another socket follows the answer (it asked for a snapshot).
        self._watched = False
        self._pending = Delta()
        self._flush_handle: asyncio.TimerHandle | None = None
        self._sent_to_group = [0, 0]  # content and reasoning lengths already in the group
        self._checkpointed_at = time.monotonic()
        self._checkpoint: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"answer-{self.message_id}")
        RUNNING[self.message_id] = self
        return self.task

    def stop(self, state: str = Message.State.STOPPED) -> None:
        if self.task and not self.task.done() and self.end_state is None:
            self.end_state = state
            self.task.cancel()

    def detach(self, channel_name: str) -> None:
        """The asking socket is gone or looks elsewhere: send everything via the group."""
        if self.origin == channel_name:
            self._send = None
            self.origin = None

    async def run(self) -> None:
        control_channel = await self.layer.new_channel()
        await self.layer.group_add(control_group(self.conversation_id), control_channel)
        listener = asyncio.create_task(self._listen(control_channel))
        started = time.monotonic()
        state: str = Message.State.COMPLETE
        error = ""
        try:
            upstream = upstream_from_settings()
            async for delta in upstream.stream(self.answer, self.model, self.history):
                self._emit(delta)
        except asyncio.CancelledError:
            # Stop, or shutdown: keep what arrived and record it below.
            if self.task is not None:
                self.task.uncancel()
            state = self.end_state or Message.State.INTERRUPTED
        except UpstreamError as exc:
            state, error = Message.State.ERROR, exc.message
        except Exception:
            logger.exception("answer %s failed", self.message_id)
            state, error = Message.State.ERROR, "The server failed while streaming this answer."
        finally:
            listener.cancel()
            RUNNING.pop(self.message_id, None)
        try:
            await self._finish(state, error, started)
        finally:
            await self.layer.group_discard(control_group(self.conversation_id), control_channel)

    # -- helpers ---------------------------------------------------------------------

    def _emit(self, delta: Delta) -> None:
        if self._send is not None:
            self._outbox.content += delta.content
            self._outbox.reasoning += delta.reasoning
            self._outbox_ready.set()
            if self._sender is None:
                self._sender = asyncio.create_task(self._send_loop())
        self._maybe_checkpoint()
        if not self._watched:
            # Nobody else follows: the text only moves the group's offsets along.
            self._sent_to_group[0] += len(delta.content)
            self._sent_to_group[1] += len(delta.reasoning)
            return
        self._pending.content += delta.content
        self._pending.reasoning += delta.reasoning
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(GROUP_FLUSH_SECONDS, self._schedule_flush)

    async def _send_loop(self) -> None:
        """Send the asking socket what arrived, as it arrives: the deltas read while the
        previous frame went out go together in the next one (nothing waits for a timer)."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            out, self._outbox = self._outbox, Delta()
            parts = frames.deltas(self.message_id, out.content, out.reasoning)
            if parts and self._send is not None:
                try:
                    await self._send(parts)
                except Exception:  # the socket went away between two deltas
                    self._send = None
                    self.origin = None
            if self._closing and not (self._outbox.content or self._outbox.reasoning):
                return

    def _maybe_checkpoint(self) -> None:
        interval = settings.STREAM_CHECKPOINT_SECONDS
        now = time.monotonic()
        if not interval or now - self._checkpointed_at < interval:
            return
        if self._checkpoint is None or self._checkpoint.done():
            self._checkpointed_at = now
            self._checkpoint = asyncio.create_task(self._save_checkpoint())

    async def _save_checkpoint(self) -> None:
        """Save the text so far, so that a killed process loses at most an interval of it."""
        await database_sync_to_async(
            Message.objects.filter(pk=self.message_id, state=Message.State.STREAMING).update
        )(content=self.answer.content, reasoning=self.answer.reasoning)

    def _schedule_flush(self) -> None:
        self._flush_handle = None
        asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        pending, self._pending = self._pending, Delta()
        if not (pending.content or pending.reasoning):
            return
        content_offset, reasoning_offset = self._sent_to_group
        self._sent_to_group = [
            content_offset + len(pending.content),
            reasoning_offset + len(pending.reasoning),
        ]
        try:
            await self.layer.group_send(
                viewers_group(self.conversation_id),
                frames.chat_delta(
                    self.message_id,
                    pending.content,
                    pending.reasoning,
                    content_offset,
                    reasoning_offset,
                    self.origin,
                ),
            )
        except Exception as exc:  # watchers see the gap by its offsets and ask for a snapshot
            logger.warning("answer %s: could not send to watchers: %r", self.message_id, exc)

    async def _listen(self, channel: str) -> None:
        while True:
            try:
                request = await self.layer.receive(channel)
            except Exception as exc:  # Redis hiccup: Stop must keep working after it
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the answer ended: its listener goes with it
                logger.warning("answer %s: control channel: %r", self.message_id, exc)
                await asyncio.sleep(0.5)
                continue
            if request.get("message_id") not in (None, self.message_id):
                continue
            if request.get("type") == "stream.stop":
                self.stop()
            elif request.get("type") == "stream.snapshot" and request.get("reply_to"):
                self._watched = True
                await self.layer.send(request["reply_to"], self.snapshot_event())

    def snapshot_event(self) -> dict[str, Any]:
        return frames.chat_snapshot(
            self.message_id, self.conversation_id, self.answer.content, self.answer.reasoning
        )

    async def _finish(self, state: str, error: str, started: float) -> None:
        if self._checkpoint is not None:
            await asyncio.gather(self._checkpoint, return_exceptions=True)
        if self._sender is not None:  # the last deltas go out before message.end
            self._closing = True
            self._outbox_ready.set()
            await asyncio.gather(self._sender, return_exceptions=True)
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        await self._flush()
        answer = self.answer
        ttft_ms = round((answer.first_token_at - started) * 1000) if answer.first_token_at else None
        duration_ms = round((time.monotonic() - started) * 1000)
        message = Message(pk=self.message_id, conversation_id=self.conversation_id)
        usage_fields = usage_for(answer, self.history)
        usage_fields.update(self.price.as_fields() if self.price else {})
        usage_fields.update(
            api_style=settings.XAI_API_STYLE,
            requested_model=self.model,
            response_id=answer.response_id[:200],
            system_fingerprint=answer.system_fingerprint[:100],
        )
        await database_sync_to_async(message.finish)(
            user_id=self.user_id,
            usage=usage_fields,
            state=state,
            content=answer.content,
            reasoning=answer.reasoning,
            error=error,
            model=(answer.model or self.model)[:100],
            finish_reason=answer.finish_reason[:50],
            ttft_ms=ttft_ms,
            duration_ms=duration_ms,
        )
        frame = frames.message_end(message, message.usage)
        if self._send is not None:
            try:
                await self._send([frame])
            except Exception:
                self.origin = None
        try:
            await self.layer.group_send(
                viewers_group(self.conversation_id), frames.chat_end(frame, self.origin)
            )
        except Exception as exc:  # saved and sent to the asker already; watchers reload
            logger.warning("answer %s: could not tell the watchers: %r", self.message_id, exc)


def usage_for(answer: Answer, history: list[dict[str, str]]) -> dict[str, Any]:
    """The ledger fields for what the upstream reported, or an estimate (docs/usage.md)."""
    usage = answer.usage
    if usage is not None:
        return {
            **usage.as_dict(),
            "source": Usage.Source.REPORTED,
            "reported_cost_ticks": usage.cost_in_usd_ticks,
            "raw_usage": usage.raw,
        }
    if not answer.accepted:
        # Refused (an error status) or never reached: the upstream generated nothing.
        return {field: 0 for field in TOKEN_FIELDS} | {"source": Usage.Source.NONE}
    # The stream ended before its usage report: the prompt as sent and the partial answer.
    prompt = [turn["content"] for turn in history]
    return Usage.estimated_fields(prompt, answer.content, answer.reasoning)
