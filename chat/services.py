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
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.db import IntegrityError, transaction
from django.utils.crypto import constant_time_compare

from chat import frames, prompts
from chat.billing import Price, fit_history
from chat.limits import limits_for, lock_user, refusal_for
from chat.models import Conversation, Message, ModelPrice, SendKey
from chat.streams import worker_id
from chat.upstream import NO_OPTIONS, RequestOptions

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
    options: RequestOptions = NO_OPTIONS  # the conversation's (chat.prompts.request_options)


@dataclass(frozen=True)
class ResentAnswer:
    """A `send` whose client_id started an answer already: nothing new was saved."""

    conversation: Conversation
    user_message: Message
    answer: Message  # as it was read: streaming, or ended


_READ = object()  # check_session() reads the user's row itself


def check_session(user: User, session_key: str | None, current: Any = _READ) -> None:
    """Refuse unless `user` is still active and the session a socket was opened with is
    still logged in as them, with the password they logged in with. (Each request reads
    the database: a backstop for a group message that was lost, and for changes made
    without a save, such as a queryset's update().) `current`: the user's row, if the
    caller has just read it."""
    if current is _READ:
        current = get_user_model().objects.filter(pk=user.pk).first()
    if current is None or not current.is_active:
        raise Refused(frames.LOGGED_OUT_CODE, frames.LOGGED_OUT_MESSAGE)
    if not session_key:
        return  # a socket authenticated without a session (tests)
    # A logged-out or expired session loads as empty.
    session = SessionStore(session_key=session_key)
    if session.get(SESSION_KEY) != str(user.pk) or not _same_password(
        session.get(HASH_SESSION_KEY), current
    ):
        raise Refused(frames.LOGGED_OUT_CODE, frames.LOGGED_OUT_MESSAGE)


def _same_password(session_hash: str | None, user: User) -> bool:
    """Whether a session's auth hash is the user's, as django.contrib.auth.get_user() checks
    it for a page (a password change gives the user a new hash, so it logs out every other
    session); a hash made with a key of SECRET_KEY_FALLBACKS still counts."""
    if not session_hash:
        return False
    return constant_time_compare(session_hash, user.get_session_auth_hash()) or any(
        constant_time_compare(session_hash, fallback)
        for fallback in user.get_session_auth_fallback_hash()
    )


def start_answer(
    user: User,
    session_key: str | None,
    conversation_id: int | None,
    text: str,
    model: str | None,
    client_id: str | None = None,
    settings: dict[str, Any] | None = None,
) -> StartedAnswer | ResentAnswer:
    """Check the session and the user's limits, then save the message and an empty answer
    and read what the model will see; or raise Refused having saved nothing.

    `text` is a valid message and `model` a model name or None (the consumer checks the
    frame's fields). The model is the one asked for, else the conversation's, else
    CHAT_DEFAULT_MODEL. A `client_id` the user sent within SendKey.KEPT gives the answer
    that send started (ResentAnswer), saving nothing and counting against no limit.
    `settings`: a new conversation's settings (chat.forms.settings_from_frame), unused
    for an existing one.
    """
    try:
        return _start_answer(user, session_key, conversation_id, text, model, client_id, settings)
    except IntegrityError:
        # The same client_id raced in from another thread or process, and won.
        if client_id is None:
            raise
        with transaction.atomic():
            resent = resent_answer(user, client_id, conversation_id, text)
        if resent is None:
            raise
        return resent


def resent_answer(
    user: User, client_id: str, conversation_id: int | None, text: str
) -> ResentAnswer | None:
    key = SendKey.find(user, client_id)
    if key is None:
        return None
    if key.answer is None or key.user_message is None:
        raise Refused("not_found", "That message's conversation was deleted.")
    if key.user_message.content != text or conversation_id not in (
        None,
        key.answer.conversation_id,
    ):
        raise Refused("bad_frame", "That client_id was sent before with another message.")
    logger.info("user %s sent %s again: answer %s", user.pk, client_id, key.answer.pk)
    return ResentAnswer(key.answer.conversation, key.user_message, key.answer)


def _start_answer(
    user: User,
    session_key: str | None,
    conversation_id: int | None,
    text: str,
    model: str | None,
    client_id: str | None,
    conversation_settings: dict[str, Any] | None = None,  # (not `settings`: Django's)
) -> StartedAnswer | ResentAnswer:
    with transaction.atomic():
        # Serialise one user's sends so that two at once can't both pass the limits.
        check_session(user, session_key, lock_user(user))
        # After the lock, which a racing send of this id held until it committed.
        if client_id and (resent := resent_answer(user, client_id, conversation_id, text)):
            return resent
        refusal = refusal_for(user, limits_for(user))
        if refusal is not None:
            logger.info("user %s refused: %s", user.pk, refusal.code)
            extra = {"retry_after": refusal.retry_after} if refusal.retry_after else {}
            raise Refused(refusal.code, refusal.message, **extra)
        created = conversation_id is None
        if conversation_id is None:
            conversation = Conversation.objects.create(
                user=user, title=Conversation.title_from(text), **(conversation_settings or {})
            )
        else:
            found = Conversation.objects.for_user(user).filter(id=conversation_id).first()
            if found is None:
                logger.warning("user %s wrote to conversation %s", user.pk, conversation_id)
                raise Refused("not_found", "No such conversation.", conversation_id=conversation_id)
            conversation = found
        model = model or conversation.model or settings.CHAT_DEFAULT_MODEL
        user_message, answer = conversation.start_answer(text, model, worker_id())
        if client_id:
            SendKey.remember(user, client_id, user_message, answer)
        price = ModelPrice.price_for(model)
        # A new conversation's history is the message just saved: no need to read it back.
        history = [{"role": "user", "content": text}] if created else conversation.history()
        history = prompts.with_system_prompt(history, prompts.system_prompt(user, conversation))
    history, dropped = fit_history(history, prompts.history_room(conversation))
    if dropped:
        logger.info("answer %s: %d oldest messages left out to fit", answer.id, dropped)
    options = prompts.request_options(conversation)
    return StartedAnswer(
        conversation, created, user_message, answer, history, dropped, price, options
    )
