"""Starting an answer: what a `send` does in the database, without a socket.

The consumer validates the frame's fields, calls start_answer() in the database thread,
then sends the frames and starts the AnswerRun (docs/protocol.md, `send`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import SESSION_KEY
from django.db import transaction

from chat import frames
from chat.billing import Price, fit_history
from chat.limits import limits_for, lock_user, refusal_for
from chat.models import Conversation, Message, ModelPrice
from chat.streams import worker_id

if TYPE_CHECKING:
    from django.contrib.auth.models import User

logger = logging.getLogger(__name__)
SessionStore = import_module(settings.SESSION_ENGINE).SessionStore


class Refused(Exception):
    """A frame refused: `code` and `message` as in the `error` frame, `extra` its optional
    fields (docs/protocol.md, `error`). A refused `send` has saved nothing."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


@dataclass(frozen=True)
class StartedAnswer:
    conversation: Conversation
    created: bool  # a new conversation: the browser gets a `conversation` frame
    user_message: Message
    answer: Message  # empty and streaming; its `model` is the model asked for
    history: list[dict[str, str]]  # what the model sees, fitted to its context window
    dropped: int  # the oldest turns left out to fit
    price: Price | None  # in force now, when the request is made


def check_session(user: User, session_key: str | None) -> None:
    """Refuse unless the session a socket was opened with is still logged in as `user`. (A
    backstop for a logout whose group message was lost: each request checks the store.)"""
    if not session_key:
        return  # a socket authenticated without a session (tests)
    # A logged-out or expired session loads as empty.
    if SessionStore(session_key=session_key).get(SESSION_KEY) != str(user.pk):
        raise Refused(frames.LOGGED_OUT_CODE, frames.LOGGED_OUT_MESSAGE)


def start_answer(
    user: User,
    session_key: str | None,
    conversation_id: int | None,
    text: str,
    model: str | None,
) -> StartedAnswer:
    """Check the session and the user's limits, then save the message and an empty answer
    and read what the model will see; or raise Refused having saved nothing.

    `text` is a valid message and `model` a model name or None (the consumer checks the
    frame's fields). The model is the one asked for, else the conversation's, else
    CHAT_DEFAULT_MODEL.
    """
    with transaction.atomic():
        check_session(user, session_key)
        lock_user(user)
        refusal = refusal_for(user, limits_for(user))
        if refusal is not None:
            logger.info("user %s refused: %s", user.pk, refusal.code)
            extra = {"retry_after": refusal.retry_after} if refusal.retry_after else {}
            raise Refused(refusal.code, refusal.message, **extra)
        created = conversation_id is None
        if conversation_id is None:
            conversation = Conversation.objects.create(
                user=user, title=Conversation.title_from(text)
            )
        else:
            found = Conversation.objects.for_user(user).filter(id=conversation_id).first()
            if found is None:
                logger.warning("user %s wrote to conversation %s", user.pk, conversation_id)
                raise Refused("not_found", "No such conversation.", conversation_id=conversation_id)
            conversation = found
        model = model or conversation.model or settings.CHAT_DEFAULT_MODEL
        user_message, answer = conversation.start_answer(text, model, worker_id())
        price = ModelPrice.price_for(model)
        # A new conversation's history is the message just saved: no need to read it back.
        history = [{"role": "user", "content": text}] if created else conversation.history()
    room = settings.CHAT_CONTEXT_TOKENS - settings.CHAT_ANSWER_RESERVE_TOKENS
    history, dropped = fit_history(history, max(room, 1))
    if dropped:
        logger.info("answer %s: %d oldest messages left out to fit", answer.id, dropped)
    return StartedAnswer(conversation, created, user_message, answer, history, dropped, price)
