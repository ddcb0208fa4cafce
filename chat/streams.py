"""One answer, streamed in its own task from the upstream to whoever watches it.

The socket that asked for the answer gets every delta directly (the short path). Other
sockets watching the conversation, in this process or another, get them through the
channel layer group `conv_<id>`, coalesced every GROUP_FLUSH_SECONDS. Each running answer
listens on its own channel, a member of the group `ctl_<id>`, for `stop` and `snapshot`
requests, so Stop works from any tab in any process.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, get_channel_layer
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from redis.exceptions import RedisError

from chat import frames
from chat.attachments import load_images
from chat.billing import TOKEN_FIELDS, Price, images_in, tool_call_count
from chat.capabilities import allowed_options, api_style
from chat.models import Message, OpenSocket, Usage, streams_started_after
from chat.search import answer_sources
from chat.upstream import Answer, Delta, RequestOptions, Timeouts, Upstream, UpstreamError

logger = logging.getLogger(__name__)

GROUP_FLUSH_SECONDS = 0.05
# Runs of this process by message id: the local fast path for Stop, and what shutdown ends.
RUNNING: dict[int, AnswerRun] = {}


class SideRequest(Protocol):
    """An upstream request of this process that is not an answer (a title, chat.titles)."""

    task: asyncio.Task[None] | None

    def stop(self, state: str = ...) -> None: ...


# Shutdown ends these too, after the answers (whose ends may start some), and waits for
# their ledger rows.
SIDE_REQUESTS: set[SideRequest] = set()

# Sends frames that go together (a long text in parts) to the asking socket.
Send = Callable[[list[dict[str, Any]]], Awaitable[None]]
# What the channel layer raises when Redis fails (the in-memory layer raises none of them).
LAYER_ERRORS: tuple[type[Exception], ...] = (RedisError,)
# How long the control channel of an answer waits before it tries Redis again.
LAYER_RETRY_SECONDS = 0.5


def viewers_group(conversation_id: int) -> str:
    return f"conv_{conversation_id}"


def control_group(conversation_id: int) -> str:
    return f"ctl_{conversation_id}"


def user_group(user_id: int) -> str:
    """Every open socket of one user, in every process."""
    return f"user_{user_id}"


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
        style=api_style(),
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


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this pid runs now."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def another_process_alive(pid: int) -> bool:
    """Whether another process than this one runs with this pid (rows under this pid that
    this process did not write are an earlier process's, which had the same pid)."""
    return pid != os.getpid() and process_alive(pid)


def sweep_orphans() -> int:
    """End answers left "streaming" by dead processes as interrupted, with their usage rows.

    Run at start: rows under this process's own host and pid belong to an earlier process
    that had the same pid (a container restarted after SIGKILL runs as pid 1 again).
    """
    orphans = Message.objects.orphans(
        socket.gethostname(), another_process_alive, streams_started_after()
    )
    ended = 0
    for message in orphans.select_related("conversation"):
        if message.interrupt_orphan() is not None:
            ended += 1
    if ended:
        logger.warning("marked %d answers of stopped processes as interrupted", ended)
    return ended


def streamed_nowhere(worker: str, message_id: int) -> bool:
    """Whether no process can be streaming this answer, as far as this host can tell: it
    belongs to this process, which does not run it, or to a process of this host that is
    gone. (A process of another host is asked instead: see stop_answer().)"""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return message_id not in RUNNING
    return not process_alive(int(pid))


# How long a stop waits for a process to say it runs the answer before ending it itself.
STOP_REPLY_SECONDS = 5.0
# A send's answer row is saved a moment before its run starts: younger rows are not stuck.
STUCK_AFTER_SECONDS = 30


def end_stuck_answers(streaming: Iterable[Message]) -> int:
    """End, as interrupted, the answers among `streaming` that no process streams (so they
    no longer count against the concurrency limit); how many were ended."""
    settled = timezone.now() - dt.timedelta(seconds=STUCK_AFTER_SECONDS)
    ended = 0
    for message in streaming:
        if message.created_at < settled and streamed_nowhere(message.worker, message.pk):
            if message.interrupt_orphan() is not None:
                logger.warning("answer %s was streamed by no process: ended", message.pk)
                ended += 1
    return ended


def on_server_start() -> None:
    """Called once by chatsite.asgi in each server process, before it serves anything."""
    try:
        sweep_orphans()
        # Rows of sockets that dead processes left open (one that had this pid included).
        OpenSocket.objects.stale(
            timezone.now(), socket.gethostname(), another_process_alive
        ).delete()
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
    stops, then those of the other requests (SIDE_REQUESTS). Returns how many answers
    were running.
    """
    runs = list(RUNNING.values())
    for run in runs:
        run.stop(Message.State.INTERRUPTED)
    tasks = [run.task for run in runs if run.task is not None]
    if tasks:
        await asyncio.wait(tasks, timeout=timeout)
    side = list(SIDE_REQUESTS)  # with those the answers just ended have started
    for request in side:
        request.stop(Message.State.INTERRUPTED)
    side_tasks = [request.task for request in side if request.task is not None]
    if side_tasks:
        await asyncio.wait(side_tasks, timeout=timeout)
    for run in runs:  # the database still fails: their figures at least reach the log
        if run.unsaved is not None:
            run.log_ledger_row(run.unsaved)
    return len(runs)


@dataclass
class SavePolicy:
    """How an answer's final save is retried while the database fails (locked, restarting,
    unreachable): the text and the usage wait in memory, attempts back off from
    `first_delay` to `max_delay` seconds, and after `patience` seconds the browser is told
    the answer is not saved yet while the attempts go on. Tests pass their own clock."""

    patience: float = 60.0
    first_delay: float = 0.1
    max_delay: float = 10.0
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
    clock: Callable[[], float] = time.monotonic


SAVE_POLICY = SavePolicy()
# Errors that pass: the next attempt may well succeed.
TRANSIENT_DATABASE_ERRORS = (OperationalError, InterfaceError)
NOT_SAVED_YET = (
    "This answer could not be saved: the database did not answer. The server keeps "
    "trying; reload the page later to see whether it was."
)
NOT_SAVABLE = "This answer could not be saved; what it cost was recorded."


def is_transient(exc: BaseException) -> bool:
    """Whether a database error may pass. psycopg reports a limit of the database (SQLSTATE
    class 54: a value too large for an index or a tsvector) as an OperationalError too,
    which no retry mends: saving it again would go on for ever."""
    if not isinstance(exc, TRANSIENT_DATABASE_ERRORS):
        return False
    sqlstate = getattr(exc.__cause__, "sqlstate", None) or ""
    return not sqlstate.startswith("54")


def _log_failure(task: asyncio.Task[Any]) -> None:
    """A task's exception goes to the log with its traceback, never only to "Task
    exception was never retrieved" at garbage collection."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())


class AnswerRun:
    def __init__(
        self,
        *,
        user_id: int,
        conversation_id: int,
        message_id: int,
        model: str,
        history: list[dict[str, Any]],
        send: Send | None,
        origin: str | None,
        price: Price | None = None,
        purpose: str = Usage.Purpose.ANSWER,
        prefix: str = "",
        options: RequestOptions | None = None,
    ) -> None:
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.message_id = message_id
        self.model = model
        self.history = history
        self.price = price  # in force when the request was made
        self.options = options or RequestOptions()  # the conversation's, as it asks them
        self._send = send
        self.origin = origin
        self.purpose = purpose
        # A continued answer starts with the text it continues; the upstream adds the rest.
        self.prefix = prefix
        self.answer = Answer(content_parts=[prefix] if prefix else [])
        self.end_state: str | None = None  # set by stop() or shutdown before cancelling
        self.task: asyncio.Task[None] | None = None
        # Set once the control channel is in its group (or failed to join): other tabs are
        # told of the answer only then, or their requests for a snapshot would go unheard.
        self.listening = asyncio.Event()
        self.layer = channel_layer()
        # The asking socket's frames: deltas read while the last frame went out are joined
        # (_outbox); a tool status goes after the text before it (_outbox_frames).
        self._outbox = Delta()
        self._outbox_frames: list[frames.Frame] = []
        self._outbox_ready = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._closing = False
        # The group's: only once another socket follows the answer (it asked for a snapshot).
        self._watched = False
        self._pending = Delta()
        self._pending_tools: list[frames.Frame] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._group_sends = asyncio.Lock()  # the group's events go out in the order taken
        # The content and reasoning lengths already in the group.
        self._sent_to_group = [len(prefix), 0]
        self._checkpointed_at = time.monotonic()
        self._checkpoint: asyncio.Task[None] | None = None
        self._layer_failed = False  # Redis failed while this answer streamed
        self._saving = False  # the stream ended: its final save is under way
        self.unsaved: dict[str, Any] | None = None  # its ledger row while not saved
        # Called once the answer is saved complete with text (a new conversation's first
        # answer: its title, chat.titles).
        self.after_complete: Callable[[AnswerRun], None] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"answer-{self.message_id}")
        self.task.add_done_callback(_log_failure)
        RUNNING[self.message_id] = self
        return self.task

    def stop(self, state: str = Message.State.STOPPED) -> None:
        # Once the stream has ended, the save must not be cut short.
        if self.task and not self.task.done() and self.end_state is None and not self._saving:
            self.end_state = state
            self.task.cancel()

    def detach(self, channel_name: str) -> None:
        """The asking socket is gone or looks elsewhere: send everything via the group."""
        if self.origin == channel_name:
            self._send = None
            self.origin = None

    async def run(self) -> None:
        # (A channel's name is made here: no round trip to Redis. The listener joins.)
        control_channel = await self.layer.new_channel()
        listener = asyncio.create_task(self._listen(control_channel))
        started = time.monotonic()
        state: str = Message.State.COMPLETE
        error = ""
        try:
            upstream = upstream_from_settings()
            # Less what the model refuses (the cached model list, a thread's cache read).
            options = await sync_to_async(allowed_options)(self.model, self.options)
            # The history's images, read from their files (off the database's thread).
            await sync_to_async(load_images, thread_sensitive=False)(self.history)
            async for delta in upstream.stream(self.answer, self.model, self.history, options):
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
            self.listening.set()
        self._saving = True
        try:
            await self._finish(state, error, started)
        finally:
            RUNNING.pop(self.message_id, None)
            try:
                await self.layer.group_discard(control_group(self.conversation_id), control_channel)
            except Exception as exc:  # its membership expires with the layer's expiry
                logger.warning("answer %s: leaving the control group: %r", self.message_id, exc)

    # -- helpers ---------------------------------------------------------------------

    def _emit(self, delta: Delta) -> None:
        tool = frames.tool_status(delta.tool) if delta.tool is not None else None
        if self._send is not None:
            self._outbox.content += delta.content
            self._outbox.reasoning += delta.reasoning
            if tool is not None:
                text, self._outbox = self._outbox, Delta()
                self._outbox_frames += frames.deltas(self.message_id, text.content, text.reasoning)
                self._outbox_frames.append(frames.tool(self.message_id, tool))
            self._outbox_ready.set()
            if self._sender is None:
                self._sender = asyncio.create_task(self._send_loop())
        self._maybe_checkpoint()
        if not self._watched:
            # Nobody else follows: the text only moves the group's offsets along (a tab
            # that comes gets the tools' statuses with its snapshot).
            self._sent_to_group[0] += len(delta.content)
            self._sent_to_group[1] += len(delta.reasoning)
            return
        self._pending.content += delta.content
        self._pending.reasoning += delta.reasoning
        if tool is not None:
            # The status and the text before it go now: the text after it follows it.
            self._pending_tools.append(tool)
            self._flush_now()
        elif self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(GROUP_FLUSH_SECONDS, self._schedule_flush)

    async def _send_loop(self) -> None:
        """Send the asking socket what arrived, as it arrives: the deltas read while the
        previous frame went out go together in the next one (nothing waits for a timer)."""
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            out, self._outbox = self._outbox, Delta()
            parts, self._outbox_frames = self._outbox_frames, []
            parts += frames.deltas(self.message_id, out.content, out.reasoning)
            if parts and self._send is not None:
                try:
                    await self._send(parts)
                except Exception:  # the socket went away between two deltas
                    self._send = None
                    self.origin = None
            if self._closing and not (
                self._outbox.content or self._outbox.reasoning or self._outbox_frames
            ):
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
        try:
            await database_sync_to_async(
                Message.objects.filter(pk=self.message_id, state=Message.State.STREAMING).update
            )(content=self.answer.content, reasoning=self.answer.reasoning)
        except Exception as exc:  # the next checkpoint, or the final save, tries again
            logger.warning("answer %s: checkpoint not saved: %r", self.message_id, exc)

    def _schedule_flush(self) -> None:
        self._flush_handle = None
        self._flush_now()

    def _flush_now(self) -> None:
        """Send the watchers what is pending: taken now, sent after the events before it."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        event = self._take_pending()
        if event is not None:
            asyncio.create_task(self._send_to_group(event)).add_done_callback(_log_failure)

    async def _flush(self) -> None:
        event = self._take_pending()
        if event is not None:
            await self._send_to_group(event)

    def _take_pending(self) -> frames.Frame | None:
        """The chat.delta event of what is pending for the watchers (None: nothing is)."""
        pending, self._pending = self._pending, Delta()
        tools, self._pending_tools = self._pending_tools, []
        if not (pending.content or pending.reasoning or tools):
            return None
        content_offset, reasoning_offset = self._sent_to_group
        self._sent_to_group = [
            content_offset + len(pending.content),
            reasoning_offset + len(pending.reasoning),
        ]
        return frames.chat_delta(
            self.message_id,
            pending.content,
            pending.reasoning,
            content_offset,
            reasoning_offset,
            self.origin,
            tools,
        )

    async def _send_to_group(self, event: frames.Frame) -> None:
        async with self._group_sends:  # (an asyncio.Lock lets its waiters in, in order)
            try:
                await self.layer.group_send(viewers_group(self.conversation_id), event)
            except Exception as exc:  # watchers see a gap by its offsets and ask for a snapshot
                logger.warning("answer %s: could not send to watchers: %r", self.message_id, exc)

    async def _listen(self, channel: str) -> None:
        """Stop and snapshot requests from any process, through the group `ctl_<id>`.

        The answer streams on whatever happens to Redis. When Redis fails, this joins the
        group again once it answers (a restarted Redis has forgotten the group), and the
        tabs that follow the conversation get the text so far.
        """
        joined = failing = False
        while True:
            try:
                if not joined:
                    await self.layer.group_add(control_group(self.conversation_id), channel)
                    joined = True
                    self.listening.set()
                    if failing:
                        logger.warning("answer %s: control channel is back", self.message_id)
                        failing = False
                        if self._send is None:
                            # Tabs that came back may have asked for a snapshot before this
                            # joined again: they get one all the same.
                            self._watched = True
                            await self.layer.group_send(
                                viewers_group(self.conversation_id), self.snapshot_event()
                            )
                request = await self.layer.receive(channel)
                if request.get("message_id") not in (None, self.message_id):
                    continue
                if request.get("type") == "stream.stop":
                    if request.get("reply_to"):  # the stopper learns that a process runs it
                        await self.layer.send(
                            request["reply_to"], frames.stream_stopping(self.message_id)
                        )
                    self.stop()
                elif request.get("type") == "stream.snapshot" and request.get("reply_to"):
                    self._watched = True
                    await self.layer.send(request["reply_to"], self.snapshot_event())
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # the answer ended: its listener goes with it
                if not failing:  # one line per outage, not one per try
                    logger.warning("answer %s: control channel: %s", self.message_id, exc)
                failing = self._layer_failed = True
                joined = False
                self.listening.set()
                await asyncio.sleep(LAYER_RETRY_SECONDS)

    def snapshot_event(self) -> dict[str, Any]:
        tools = [frames.tool_status(status) for status in self.answer.tool_calls_seen.values()]
        return frames.chat_snapshot(
            self.message_id,
            self.conversation_id,
            self.answer.content,
            self.answer.reasoning,
            tools,
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
        usage_fields = usage_for(answer, self.history, self.prefix)
        usage_fields.update(self.price.as_fields() if self.price else {})
        usage_fields.update(
            purpose=self.purpose,
            api_style=api_style(),
            requested_model=self.model,
            response_id=answer.response_id[:200],
            system_fingerprint=answer.system_fingerprint[:100],
        )
        fields = {
            "state": state,
            "content": answer.content,
            "reasoning": answer.reasoning,
            "error": error,
            "model": (answer.model or self.model)[:100],
            "finish_reason": answer.finish_reason[:50],
            "ttft_ms": ttft_ms,
            "duration_ms": duration_ms,
            "output_items": self.items_to_keep(state),
            "citations": answer_sources(answer.citations, answer.all_citations),
        }
        await self._save(fields, usage_fields)

    def items_to_keep(self, state: str) -> list[dict[str, Any]]:
        """The output items to send back with later turns: a complete answer's only. Those
        of an answer cut short may lack its message (its text goes instead), and those of
        a continued one lack the text it continued."""
        if state != Message.State.COMPLETE or self.prefix:
            return []
        return self.answer.output_items

    async def _save(self, fields: dict[str, Any], usage: dict[str, Any]) -> None:
        """Save the answer and its ledger row, retrying while the database fails, and tell
        the browser how it ended: always, saved or not (see SavePolicy)."""
        policy = SAVE_POLICY
        self.unsaved = usage
        began = policy.clock()
        delay = policy.first_delay
        told = False
        while True:
            message = Message(pk=self.message_id, conversation_id=self.conversation_id)
            try:
                await database_sync_to_async(message.finish)(
                    user_id=self.user_id, usage=usage, **fields
                )
            except Exception as exc:
                if is_transient(exc):
                    logger.warning(
                        "answer %s not saved (%r): trying again in %.1f s",
                        self.message_id,
                        exc,
                        delay,
                    )
                elif "content" not in fields:
                    logger.exception("answer %s could not be saved at all", self.message_id)
                    self.log_ledger_row(usage)
                    if not told:
                        await self._tell(self._unsaved_end(fields, usage, NOT_SAVABLE))
                    return
                else:
                    # Something in the answer itself: record its cost and its end without it
                    # (the text checkpointed last stays).
                    logger.exception(
                        "answer %s could not be saved: saving its end alone", self.message_id
                    )
                    fields = {"state": Message.State.ERROR, "error": NOT_SAVABLE}
                    usage = {
                        k: v for k, v in usage.items() if k not in ("raw_usage", "response_id")
                    }
                    self.unsaved = usage
                    continue
            else:
                self.unsaved = None
                await self._tell(frames.message_end(message, message.usage))
                if self.after_complete is not None and message.state == Message.State.COMPLETE:
                    if message.content:
                        self.after_complete(self)
                return
            if not told and policy.clock() - began >= policy.patience:
                told = True
                self.log_ledger_row(usage)
                await self._tell(self._unsaved_end(fields, usage, NOT_SAVED_YET))
            await policy.sleep(delay)
            delay = min(delay * 2, policy.max_delay)

    def _unsaved_end(
        self, fields: dict[str, Any], usage: dict[str, Any], error: str
    ) -> frames.Frame:
        """The `message.end` of an answer not saved: state error, and the usage as known."""
        message = Message(pk=self.message_id, conversation_id=self.conversation_id)
        for name, value in fields.items():
            setattr(message, name, value)
        message.state, message.error = Message.State.ERROR, error
        row = Usage(outcome=message.state, model=message.model, **usage)
        if row.price() is not None:
            row.price_and_cost()
        elif row.reported_cost_ticks is not None:  # (other prices are in the database)
            row.cost_in_usd_ticks = row.reported_cost_ticks
            row.cost_source = Usage.CostSource.REPORTED
        return frames.message_end(message, row)

    def log_ledger_row(self, usage: dict[str, Any]) -> None:
        """What the ledger row holds, in the log, while it cannot be written."""
        logger.error(
            "answer %s of user %s: ledger row not written yet: %s",
            self.message_id,
            self.user_id,
            json.dumps(usage, default=str, sort_keys=True),
        )

    async def _tell(self, frame: frames.Frame) -> None:
        """Send `message.end` to the asking socket and to the conversation's watchers."""
        if self._send is not None:
            try:
                await self._send([frame])
            except Exception:
                self._send = None
                self.origin = None
        try:
            if self._layer_failed and self._send is None:
                # Tabs that came back after Redis failed may have missed some of the text
                # (it ended before they could ask): the whole of it, then the end.
                await self.layer.group_send(
                    viewers_group(self.conversation_id), self.snapshot_event()
                )
            await self.layer.group_send(
                viewers_group(self.conversation_id),
                frames.chat_end(frame, self.origin, self.answer.content, self.answer.reasoning),
            )
        except Exception as exc:  # sent to the asker already; watchers reload
            logger.warning("answer %s: could not tell the watchers: %r", self.message_id, exc)


async def stop_answer(message_id: int, conversation_id: int) -> None:
    """Stop an answer wherever it runs; if no process runs it, end it here as stopped, with
    what was checkpointed and an estimate of its usage."""
    run = RUNNING.get(message_id)
    if run is not None:
        run.stop()
        return
    message = await database_sync_to_async(
        Message.objects.filter(pk=message_id, state=Message.State.STREAMING).first
    )()
    if message is None:
        return  # it ended meanwhile
    if not streamed_nowhere(message.worker, message_id):
        # Another process may run it: ask, and take silence for "nobody".
        layer = channel_layer()
        try:
            reply_to = await layer.new_channel()
            await layer.group_send(
                control_group(conversation_id), frames.stream_stop(message_id, reply_to)
            )
            async with asyncio.timeout(STOP_REPLY_SECONDS):
                await layer.receive(reply_to)
            return
        except TimeoutError:
            logger.warning("answer %s: no process answered its stop", message_id)
        except Exception as exc:
            logger.warning("answer %s: could not ask who runs it: %r", message_id, exc)
    await end_abandoned(message, Message.State.STOPPED)


async def end_abandoned(message: Message, state: str) -> None:
    """End an answer no process streams, and tell the conversation's watchers."""
    usage = await database_sync_to_async(message.end_abandoned)(state)
    if usage is None:
        return  # ended meanwhile, by its run or another stopper
    frame = frames.message_end(message, usage)
    try:
        await channel_layer().group_send(
            viewers_group(message.conversation_id),
            frames.chat_end(frame, None, message.content, message.reasoning),
        )
    except Exception as exc:
        logger.warning("answer %s: could not tell the watchers: %r", message.pk, exc)


async def stop_answers(conversation_id: int, message_ids: list[int]) -> None:
    """Stop the conversation's streaming answers, before it is deleted. (Their runs save
    how they ended on their own; a deletion meanwhile only unlinks their ledger rows.)"""
    for message_id in message_ids:
        await stop_answer(message_id, conversation_id)


def usage_for(answer: Answer, history: list[dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    """The ledger fields for what the upstream reported, or an estimate (docs/usage.md).
    `prefix`: the text a continued answer started with, which this request did not make."""
    usage = answer.usage
    if usage is not None:
        return {
            **usage.as_dict(),
            "source": Usage.Source.REPORTED,
            "reported_cost_ticks": usage.cost_in_usd_ticks,
            "raw_usage": usage.raw,
            "num_server_side_tools_used": tool_call_count(usage.tools_used, usage.tool_usage),
            "server_side_tool_usage_details": usage.tool_usage,
        }
    if not answer.accepted:
        # Refused (an error status) or never reached: the upstream generated nothing.
        return {field: 0 for field in TOKEN_FIELDS} | {"source": Usage.Source.NONE}
    # The stream ended before its usage report: the prompt as sent and the partial answer.
    prompt = [turn["content"] for turn in history]
    content = answer.content[len(prefix) :]
    return Usage.estimated_fields(prompt, content, answer.reasoning, images_in(history))
