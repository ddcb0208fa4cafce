"""Conversation titles: after a new conversation's first answer, one more upstream request
asks a model for a short title (docs/usage.md, "Title requests").

For the ledger the request is like an answer: one Usage row (purpose "title") whatever its
end, priced at request time and added to the day's totals, so budgets count it. Titles are
not messages: only the budget is checked before the request, not the message rate or the
answers at once. The title replaces the first words of the first message unless the user
renamed the conversation (a conditional UPDATE: a rename always wins), and every open tab
of the user hears of it (`conversation.title`, docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from chat import frames
from chat.billing import Price
from chat.capabilities import api_style
from chat.models import Conversation, Message, ModelPrice, Usage, UsageDay, budget_status
from chat.streams import (
    SAVE_POLICY,
    SIDE_REQUESTS,
    TRANSIENT_DATABASE_ERRORS,
    AnswerRun,
    channel_layer,
    upstream_from_settings,
    usage_for,
    user_group,
)
from chat.upstream import Answer, RequestOptions, UpstreamError

logger = logging.getLogger(__name__)

# A few words: a shorter deadline than an answer's, with room for a reasoning model.
TIMEOUT_SECONDS = 120.0
MAX_CHARS = 60
QUESTION_CHARS = 2000  # of the first question, sent to the title model
ANSWER_CHARS = 1000  # of the start of its answer

INSTRUCTIONS = (
    "You name conversations. Reply with a title of two to six words that says what the "
    "conversation is about, in the language of the user's question. Reply with the title "
    "alone: no quotes, no markdown, no final period, no explanation."
)


def prompt(question: str, answer: str) -> list[dict[str, str]]:
    """What the title model is sent: the instructions, the question and the answer's start."""
    return [
        {"role": "system", "content": INSTRUCTIONS},
        {
            "role": "user",
            "content": "Write the title of this conversation.\n\n"
            f'The user asked:\n"""\n{question[:QUESTION_CHARS]}\n"""\n\n'
            f'The answer began:\n"""\n{answer[:ANSWER_CHARS]}\n"""',
        },
    ]


# -- cleaning ------------------------------------------------------------------------------

_THINKING = re.compile(r"<(think|thinking)>.*?</\1>", re.S | re.I)
_LABEL = re.compile(r"^(?:conversation\s+)?title\s*[:：]\s*", re.I)
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_LIST_MARK = re.compile(r"^(?:[-+•]\s+|\d{1,2}[.)]\s+)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# *emphasis* and _emphasis_, but not the * of "C*" or the _ of snake_case.
_EMPHASIS = (re.compile(r"(?<!\w)\*([^*]+)\*(?!\w)"), re.compile(r"(?<!\w)_([^_]+)_(?!\w)"))
# Markdown and quotes a model wraps a title in, taken off both ends.
_WRAPPERS = "\"'`*_#>~“”‘’«»„ "
_TRAILING = ".。:;,"


def _clean_line(line: str) -> str:
    line = _LINK.sub(r"\1", _CONTROL.sub(" ", line))
    line = line.replace("**", "").replace("__", "").replace("`", "")
    for emphasis in _EMPHASIS:
        line = emphasis.sub(r"\1", line)
    previous = None
    while line != previous:  # "**Title:** "Pasta."" takes several rounds
        previous = line
        line = _LABEL.sub("", _LIST_MARK.sub("", line.strip().strip(_WRAPPERS)))
        line = line.rstrip(_TRAILING)
    return " ".join(line.split())


def clean_title(text: str) -> str:
    """The first line of `text` that is something once cleaned, as plain text of at most
    MAX_CHARS: no markdown, quotes, "Title:" or final period. "" when nothing is left,
    which counts as a failure (the first words stay)."""
    text = _THINKING.sub("", text)
    line = next((cleaned for raw in text.splitlines() if (cleaned := _clean_line(raw))), "")
    if len(line) <= MAX_CHARS:
        return line
    cut = line[: MAX_CHARS - 1]
    space = cut.rfind(" ")
    if space >= MAX_CHARS // 2:  # at a word's end, unless that leaves too little
        cut = cut[:space]
    return cut.rstrip(" " + _TRAILING + "-–—") + "…"


# -- the database --------------------------------------------------------------------------


def wanted(conversation: Conversation, question: Message, answer: Message) -> bool:
    """Whether this answer, if it ends complete, asks for the conversation's title: an
    answer to a first message (the first one's, or a Retry or edit of it, if the first
    failed) while the title is still the first message's words."""
    return (
        question.parent_id is None
        and answer.purpose != Usage.Purpose.CONTINUE
        and conversation.title_source == Conversation.TitleSource.FIRST_WORDS
    )


@dataclass(frozen=True)
class Prepared:
    price: Price | None  # in force now, when the request is made


def prepare(user_id: int, conversation_id: int, model: str) -> Prepared | None:
    """The price for the request, or None when none is to be made: the user is gone,
    inactive or over budget, or the conversation is gone, renamed or asked for a title
    before."""
    user = get_user_model().objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        return None
    conversations = Conversation.objects.filter(
        pk=conversation_id, title_source=Conversation.TitleSource.FIRST_WORDS
    )
    if not conversations.exists():
        return None  # gone, renamed, or titled by an earlier answer
    if Usage.objects.filter(conversation_id=conversation_id, purpose=Usage.Purpose.TITLE).exists():
        return None  # asked once already (and failed): the first words stay
    status = budget_status(user)
    if status is not None and status.over:
        logger.info("conversation %s: no title request, its user is over budget", conversation_id)
        return None
    return Prepared(ModelPrice.price_for(model))


@transaction.atomic
def record(user_id: int, conversation_id: int, usage: dict[str, Any]) -> Usage:
    """Write the request's one ledger row and add it to its day, as Message.finish does
    for an answer: a user or conversation deleted meanwhile leaves it without the link."""
    # Locked as Conversation.delete() locks it: a deletion waits for this row or precedes it.
    kept = Conversation.objects.select_for_update(no_key=True).filter(pk=conversation_id).exists()
    owner = user_id if get_user_model().objects.filter(pk=user_id).exists() else None
    row = Usage(
        user_id=owner,
        conversation_id=conversation_id if kept else None,
        purpose=Usage.Purpose.TITLE,
        **usage,
    )
    row.price_and_cost()
    row.save()
    UsageDay.add(row)
    return row


def apply_title(conversation_id: int, title: str) -> bool:
    """Set the generated title unless the user has renamed the conversation: whether set."""
    rows = Conversation.objects.filter(pk=conversation_id).exclude(
        title_source=Conversation.TitleSource.USER
    )
    return rows.update(title=title, title_source=Conversation.TitleSource.GENERATED) > 0


async def announce(user_id: int, conversation_id: int, title: str) -> None:
    """Tell every open socket of the user, in every process (`conversation.title`)."""
    frame = frames.conversation_title(conversation_id, title)
    await channel_layer().group_send(user_group(user_id), frames.title_changed(frame))


announce_from_sync = async_to_sync(announce)


# -- the request ---------------------------------------------------------------------------


def _forget(request: TitleRequest, task: asyncio.Task[None]) -> None:
    SIDE_REQUESTS.discard(request)
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %s failed", task.get_name(), exc_info=task.exception())


class TitleRequest:
    """One title request, in its own task; shutdown ends it (chat.streams.interrupt_all)
    and waits for its ledger row."""

    def __init__(
        self, *, user_id: int, conversation_id: int, model: str, question: str, answer: str
    ) -> None:
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.model = model
        self.messages = prompt(question, answer)
        self.answer = Answer()
        self.task: asyncio.Task[None] | None = None
        self.end_state: str | None = None  # set by stop() before cancelling
        self._saving = False
        self.title = ""  # the cleaned title, once there is one

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(), name=f"title-{self.conversation_id}")
        SIDE_REQUESTS.add(self)
        self.task.add_done_callback(lambda task: _forget(self, task))
        return self.task

    def stop(self, state: str = Message.State.STOPPED) -> None:
        # Once the stream has ended, the ledger row must not be cut short.
        if self.task and not self.task.done() and self.end_state is None and not self._saving:
            self.end_state = state
            self.task.cancel()

    async def run(self) -> None:
        # Cancelled here (shutdown), no request was made: no row either.
        prepared = await database_sync_to_async(prepare)(
            self.user_id, self.conversation_id, self.model
        )
        if prepared is None:
            return
        started = time.monotonic()
        state: str = Message.State.COMPLETE
        try:
            upstream = upstream_from_settings()
            upstream.timeouts.total = min(upstream.timeouts.total, TIMEOUT_SECONDS)
            # No cache key: a title's prompt shares no prefix with the conversation's.
            options = RequestOptions(store=settings.XAI_STORE)
            async for _ in upstream.stream(self.answer, self.model, self.messages, options):
                pass  # the text gathers in self.answer
        except asyncio.CancelledError:
            if self.task is not None:
                self.task.uncancel()
            state = self.end_state or Message.State.INTERRUPTED
        except UpstreamError as exc:
            logger.info("conversation %s: title request failed: %s", self.conversation_id, exc)
            state = Message.State.ERROR
        except Exception:
            logger.exception("conversation %s: title request failed", self.conversation_id)
            state = Message.State.ERROR
        self._saving = True
        await self._record(self._usage(prepared, state, started))
        if state != Message.State.COMPLETE:
            return
        self.title = clean_title(self.answer.content)
        if not self.title:
            logger.info("conversation %s: the title model wrote no title", self.conversation_id)
            return
        try:
            if await database_sync_to_async(apply_title)(self.conversation_id, self.title):
                await announce(self.user_id, self.conversation_id, self.title)
        except Exception as exc:  # the ledger row is written; the first words stay or reload
            logger.warning("conversation %s: title not shown: %r", self.conversation_id, exc)

    def _usage(self, prepared: Prepared, state: str, started: float) -> dict[str, Any]:
        answer = self.answer
        usage = usage_for(answer, self.messages)
        usage.update(prepared.price.as_fields() if prepared.price else {})
        ttft = answer.first_token_at
        usage.update(
            api_style=api_style(),
            requested_model=self.model,
            model=(answer.model or self.model)[:100],
            outcome=state,
            finish_reason=answer.finish_reason[:50],
            response_id=answer.response_id[:200],
            system_fingerprint=answer.system_fingerprint[:100],
            ttft_ms=round((ttft - started) * 1000) if ttft else None,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        return usage

    async def _record(self, usage: dict[str, Any]) -> None:
        """Write the ledger row, trying again while the database fails (chat.streams'
        SavePolicy, for at most its patience); its figures go to the log if it cannot."""
        policy = SAVE_POLICY
        began = policy.clock()
        delay = policy.first_delay
        while True:
            try:
                await database_sync_to_async(record)(self.user_id, self.conversation_id, usage)
                return
            except TRANSIENT_DATABASE_ERRORS as exc:
                if policy.clock() - began < policy.patience:
                    logger.warning(
                        "title of conversation %s: ledger row not saved (%r), again in %.1f s",
                        self.conversation_id,
                        exc,
                        delay,
                    )
                    await policy.sleep(delay)
                    delay = min(delay * 2, policy.max_delay)
                    continue
            except Exception:
                logger.exception(
                    "title of conversation %s: ledger row failed", self.conversation_id
                )
            logger.error(
                "title request of conversation %s of user %s: ledger row not written: %s",
                self.conversation_id,
                self.user_id,
                json.dumps(usage, default=str, sort_keys=True),
            )
            return


def after_first_answer(run: AnswerRun) -> None:
    """AnswerRun.after_complete for a new conversation's first answer: ask for its title
    (unless CHAT_TITLES is off). The last turn sent is the question."""
    if not settings.CHAT_TITLES:
        return
    TitleRequest(
        user_id=run.user_id,
        conversation_id=run.conversation_id,
        model=settings.CHAT_TITLE_MODEL or run.model,
        question=run.history[-1]["content"] if run.history else "",
        answer=run.answer.content,
    ).start()
