"""Starting an answer: what a `send` does in the database, without a socket.

The consumer validates the frame's fields, calls start_answer() in the database thread,
then sends the frames and starts the AnswerRun (docs/protocol.md, `send`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from chat import attachments, catalog, frames, prompts
from chat.billing import Price, fit_history, images_in
from chat.limits import limits_for, lock_user, refusal_for
from chat.models import Attachment, Conversation, Message, ModelPrice, SendKey, Usage
from chat.streams import worker_id
from chat.tree import Tree
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
    user_message: Message  # the message answered (for another answer, the one it had)
    answer: Message  # empty and streaming (a continued one holds the text it continues)
    history: list[dict[str, Any]]  # what the model sees, fitted to its context window
    dropped: int  # the oldest turns left out to fit
    price: Price | None  # in force now, when the request is made
    siblings: Siblings  # of the user's message and of the answer, for message.start
    options: RequestOptions = NO_OPTIONS  # the conversation's (chat.prompts.request_options)
    # The user's message's images, as message.start describes them (chat.attachments).
    user_attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ResentAnswer:
    """A `send` whose client_id started an answer already: nothing new was saved."""

    conversation: Conversation
    user_message: Message
    answer: Message  # as it was read: streaming, or ended
    siblings: Siblings
    user_attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Siblings:
    """The ids of a new message's siblings and of its answer's, themselves included."""

    user_message: list[int]
    answer: list[int]

    @classmethod
    def of(cls, tree: Tree, user_message: Message, answer: Message) -> Siblings:
        return cls(tree.siblings(user_message.pk), tree.siblings(answer.pk))


# What a model is asked when an answer it cut is continued (docs/protocol.md, `continue`).
CONTINUE_PROMPT = (
    "Your last message was cut off. Continue it from exactly where it stopped, without "
    "repeating anything and without any preamble."
)
# The answers Continue applies to: cut by the length limit, or ended early.
CONTINUABLE = (Message.State.STOPPED, Message.State.INTERRUPTED, Message.State.ERROR)


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
    *,
    parent_id: int | None = None,
    edit_of: int | None = None,
    conversation_settings: dict[str, Any] | None = None,  # (not `settings`: Django's)
    attachment_ids: list[int] | None = None,
) -> StartedAnswer | ResentAnswer:
    """Check the session and the user's limits, then save the message and an empty answer
    and read what the model will see; or raise Refused having saved nothing.

    `text` is a valid message and `model` a model name or None (the consumer checks the
    frame's fields). The model is the one asked for, else the conversation's while the
    upstream lists it, else the default (chat.catalog.model_for). The message follows `parent_id` (a message of the conversation),
    else the last message of its active path; an edit (`edit_of`: the user's message it
    replaces) is that message's sibling. A `client_id` the user sent within SendKey.KEPT
    gives the answer that send started (ResentAnswer), saving nothing and counting against
    no limit.
    `conversation_settings`: a new conversation's settings (chat.forms.settings_from_frame),
    unused for an existing one. `attachment_ids`: the user's pending uploads that go with
    the message (chat.attachments.claim); an edit also keeps the edited message's images.
    """

    listed = _listed_unless(model)

    def start() -> StartedAnswer | ResentAnswer:
        with transaction.atomic():
            if resent := _checked(user, session_key, client_id, conversation_id, text):
                return resent
            created = conversation_id is None
            if conversation_id is None:
                conversation = Conversation.objects.create(
                    user=user, title=Conversation.title_from(text), **(conversation_settings or {})
                )
                tree = Tree()
            else:
                conversation = _conversation(user, conversation_id)
                tree = conversation.tree()
            parent = _parent_for(conversation, tree, parent_id, edit_of)
            chosen = catalog.model_for(model, conversation.model, listed)
            carried = Attachment.objects.filter(message_id=edit_of).count() if edit_of else 0
            claimed = _claimed(user, attachment_ids or [], chosen, carried)
            user_message, answer = conversation.start_answer(
                text, chosen, worker_id(), parent_id=parent
            )
            linked = attachments.link(claimed, edit_of if carried else None, user_message)
            if client_id:
                SendKey.remember(user, client_id, user_message, answer)
            for message in (user_message, answer):
                tree.add(message.pk, message.parent_id, message.selected_at)
            # A new conversation's history is the message just saved: no need to read it back.
            if created and not claimed:
                history: list[dict[str, Any]] = [{"role": "user", "content": text}]
            else:
                history = conversation.history(tree.ancestors(user_message.pk))
            described = [attachments.describe(a) for a in linked]
            return _started(
                user, conversation, created, user_message, answer, history, tree, described
            )

    return _resent_on_race(start, user, client_id, conversation_id, text)


def answer_again(
    user: User,
    session_key: str | None,
    answer_id: int,
    purpose: str,
    model: str | None = None,
    client_id: str | None = None,
) -> StartedAnswer | ResentAnswer:
    """Another answer to the question of the answer `answer_id`, as its sibling:
    `Usage.Purpose.REGENERATE` (Regenerate, Retry; with `model` if given, else the
    conversation's while listed, else the default) or `Usage.Purpose.CONTINUE` (the answer's text and what the model adds
    to it: only for an answer cut by the length limit or ended early). Checked and saved as
    start_answer() does."""

    listed = _listed_unless(model)

    def start() -> StartedAnswer | ResentAnswer:
        with transaction.atomic():
            if resent := _checked(user, session_key, client_id, None, None):
                return resent
            earlier = (
                Message.objects.filter(
                    id=answer_id, role=Message.Role.ASSISTANT, conversation__user=user
                )
                .select_related("conversation", "parent")
                .first()
            )
            if earlier is None or earlier.parent is None:
                logger.warning("user %s asked again for answer %s", user.pk, answer_id)
                raise Refused("not_found", "No such answer.", message_id=answer_id)
            if earlier.state == Message.State.STREAMING:
                raise Refused("streaming", "That answer is still streaming.", message_id=answer_id)
            conversation = earlier.conversation
            prefix = ""
            if purpose == Usage.Purpose.CONTINUE:
                if not earlier.content or not (
                    earlier.finish_reason == "length" or earlier.state in CONTINUABLE
                ):
                    raise Refused(
                        "not_continuable",
                        "Only an answer that was cut off can be continued.",
                        message_id=answer_id,
                    )
                prefix = earlier.content
            chosen = catalog.model_for(model, conversation.model, listed)
            answer = conversation.add_answer(
                earlier.parent_id, chosen, worker_id(), purpose, prefix=prefix
            )
            question = earlier.parent
            if client_id:
                SendKey.remember(user, client_id, question, answer)
            tree = conversation.tree()  # (read after the new answer: it is in it)
            if prefix:
                history = conversation.history(tree.ancestors(earlier.pk))
                history.append({"role": "user", "content": CONTINUE_PROMPT})
            else:
                history = conversation.history(tree.ancestors(question.pk))
            described = attachments.described_of(question)
            return _started(user, conversation, False, question, answer, history, tree, described)

    return _resent_on_race(start, user, client_id, None, None)


def select_branch(user: User, message_id: int) -> tuple[int, list[int]]:
    """Make the message `message_id` the one of its siblings on the active path (with the
    continuation it had); its conversation's id and the new active path."""
    with transaction.atomic():
        message = Message.objects.filter(id=message_id, conversation__user=user).first()
        if message is None:
            logger.warning("user %s selected message %s", user.pk, message_id)
            raise Refused("not_found", "No such message.", message_id=message_id)
        message.selected_at = timezone.now()
        message.save(update_fields=["selected_at"])
        return message.conversation_id, message.conversation.tree().path()


def _checked(
    user: User,
    session_key: str | None,
    client_id: str | None,
    conversation_id: int | None,
    text: str | None,
) -> ResentAnswer | None:
    """Lock the user and check their session; the answer a client_id started already, if
    any; else check the limits. Within the transaction that saves the request."""
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
    return None


def _listed_unless(model: str | None) -> list[str] | None:
    """The upstream's model list when the frame names no model, for catalog.model_for():
    read before the transaction, as it may be fetched. None when a model is named, or when
    the cache cannot be read (the conversation's model is kept then)."""
    if model:
        return None
    try:
        return catalog.models_listed()
    except Exception as exc:
        logger.warning("could not read the model list: %r", exc)
        return None


def _resent_on_race(
    start: Callable[[], StartedAnswer | ResentAnswer],
    user: User,
    client_id: str | None,
    conversation_id: int | None,
    text: str | None,
) -> StartedAnswer | ResentAnswer:
    try:
        return start()
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
    user: User, client_id: str, conversation_id: int | None, text: str | None
) -> ResentAnswer | None:
    """The answer a request with this client_id started, if the user sent it before.
    `text` None: a request for another answer, which has no text of its own."""
    key = SendKey.find(user, client_id)
    if key is None:
        return None
    if key.answer is None or key.user_message is None:
        raise Refused("not_found", "That message's conversation was deleted.")
    if (text is not None and key.user_message.content != text) or conversation_id not in (
        None,
        key.answer.conversation_id,
    ):
        raise Refused("bad_frame", "That client_id was sent before with another message.")
    logger.info("user %s sent %s again: answer %s", user.pk, client_id, key.answer.pk)
    tree = key.answer.conversation.tree()
    siblings = Siblings.of(tree, key.user_message, key.answer)
    described = attachments.described_of(key.user_message)
    return ResentAnswer(key.answer.conversation, key.user_message, key.answer, siblings, described)


def _claimed(user: User, ids: list[int], model: str, carried: int) -> list[Attachment]:
    try:
        return attachments.claim(user, ids, model, carried)
    except attachments.AttachmentError as exc:
        raise Refused(exc.code, exc.message) from None


def _conversation(user: User, conversation_id: int) -> Conversation:
    found = Conversation.objects.for_user(user).filter(id=conversation_id).first()
    if found is None:
        logger.warning("user %s wrote to conversation %s", user.pk, conversation_id)
        raise Refused("not_found", "No such conversation.", conversation_id=conversation_id)
    return found


def _parent_for(
    conversation: Conversation, tree: Tree, parent_id: int | None, edit_of: int | None
) -> int | None:
    """What a new message of `conversation` (whose `tree` this is) follows (see
    start_answer)."""
    if edit_of is not None:
        edited = conversation.messages.filter(id=edit_of, role=Message.Role.USER).first()
        if edited is None:
            raise Refused("not_found", "No such message to edit.", message_id=edit_of)
        return edited.parent_id
    if parent_id is not None:
        if parent_id not in tree:
            raise Refused("not_found", "No such message to follow.", message_id=parent_id)
        return parent_id
    return tree.leaf()


def _started(
    user: User,
    conversation: Conversation,
    created: bool,
    user_message: Message,
    answer: Message,
    history: list[dict[str, Any]],
    tree: Tree,
    described: list[dict[str, Any]],
) -> StartedAnswer:
    """`described`: the user's message's images, for message.start."""
    price = ModelPrice.price_for(answer.model)
    if images_in(history) and not attachments.images_allowed(answer.model):
        logger.info("answer %s: %s takes no images; sent without", answer.id, answer.model)
        history = attachments.without_images(history)
    history = prompts.with_system_prompt(history, prompts.system_prompt(user, conversation))
    history, dropped = fit_history(history, prompts.history_room(conversation))
    if dropped:
        logger.info("answer %s: %d oldest messages left out to fit", answer.id, dropped)
    siblings = Siblings.of(tree, user_message, answer)
    options = prompts.request_options(conversation)
    return StartedAnswer(
        conversation,
        created,
        user_message,
        answer,
        history,
        dropped,
        price,
        siblings,
        options,
        described,
    )
