"""Starting an answer (chat.services.start_answer) called directly, without a socket."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from chat.billing import Price
from chat.models import Budget, Conversation, Message, ModelPrice, UsageDay
from chat.services import Refused, StartedAnswer, start_answer
from tests.sessions import SessionStore, logged_in_session

pytestmark = pytest.mark.django_db


@pytest.fixture
def session_of() -> Callable[[User], str]:
    return logged_in_session


def saved() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


def ask(
    user: User,
    session_key: str | None,
    text: str = "hello",
    conversation_id: int | None = None,
    model: str | None = None,
) -> StartedAnswer:
    return start_answer(user, session_key, conversation_id, text, model)


def refused(user: User, session_key: str | None, **kwargs) -> Refused:
    before = saved()
    with pytest.raises(Refused) as refusal:
        ask(user, session_key, **kwargs)
    assert saved() == before, "a refused send saved something"
    return refusal.value


def test_a_new_conversation_is_created_with_its_title(alice, session_of):
    text = "What is the tallest mountain of   Portugal, and how high is it exactly, in metres?"
    started = ask(alice, session_of(alice), text=text)
    assert started.created
    conversation = Conversation.objects.get()
    assert conversation == started.conversation and conversation.user == alice
    # The title is the text's words, cut at 60 characters.
    assert conversation.title == "What is the tallest mountain of Portugal, and how high is it…"
    assert list(conversation.messages.values_list("role", "content", "state")) == [
        ("user", text, "complete"),
        ("assistant", "", "streaming"),
    ]
    assert (started.user_message.content, started.answer.state) == (text, "streaming")
    assert started.history == [{"role": "user", "content": text}] and started.dropped == 0


def test_a_second_message_continues_the_conversation_with_its_history(alice, session_of):
    key = session_of(alice)
    first = ask(alice, key, text="first")
    Message.objects.filter(id=first.answer.id).update(content="Olá!", state="complete")
    second = ask(alice, key, text="second", conversation_id=first.conversation.id)
    assert not second.created and second.conversation.id == first.conversation.id
    assert second.history == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "Olá!"},
        {"role": "user", "content": "second"},
    ]
    assert Conversation.objects.count() == 1


def test_bob_cannot_write_to_alices_conversation(alice, bob, session_of):
    mine = ask(alice, session_of(alice), text="mine")
    refusal = refused(bob, session_of(bob), text="yours?", conversation_id=mine.conversation.id)
    assert (refusal.code, refusal.extra) == ("not_found", {"conversation_id": mine.conversation.id})
    assert list(Message.objects.values_list("content", flat=True).order_by("id")) == ["mine", ""]


def test_a_staff_user_cannot_write_to_alices_conversation_either(alice, staff, session_of):
    mine = ask(alice, session_of(alice), text="mine")
    refusal = refused(staff, session_of(staff), conversation_id=mine.conversation.id)
    assert refusal.code == "not_found"


def test_a_logged_out_session_is_refused_and_nothing_is_saved(alice, session_of):
    key = session_of(alice)
    SessionStore(session_key=key).delete()  # what logging out does to the session
    refusal = refused(alice, key)
    assert refusal.code == "logged_out"


def test_a_session_of_another_user_is_refused(alice, bob, session_of):
    assert refused(alice, session_of(bob)).code == "logged_out"


def test_a_session_from_before_a_password_change_is_refused(alice, session_of):
    key = session_of(alice)
    alice.set_password("a-new-password-2")
    alice.save()
    assert refused(alice, key).code == "logged_out"


def test_a_session_signed_with_a_rotated_secret_key_still_counts(alice, session_of, settings):
    key = session_of(alice)
    # SECRET_KEY_FALLBACKS keeps sessions made with the old key logged in, pages and sockets.
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-secret-key-" + "x" * 40
    assert ask(alice, key).answer.state == Message.State.STREAMING


def test_a_user_over_budget_is_refused_with_nothing_saved(alice, session_of):
    Budget.objects.create(user=alice, period="day", max_tokens=300)
    UsageDay.objects.create(day=timezone.localdate(), user=alice, model="grok-4", total_tokens=300)
    refusal = refused(alice, session_of(alice), text="one more")
    assert refusal.code == "over_budget" and "300 of 300 tokens" in refusal.message
    assert refusal.extra == {}


def test_another_users_usage_does_not_count_against_the_budget(alice, bob, session_of):
    Budget.objects.create(user=None, period="day", max_tokens=300)
    UsageDay.objects.create(day=timezone.localdate(), user=bob, model="grok-4", total_tokens=300)
    assert ask(alice, session_of(alice)).created
    assert refused(bob, session_of(bob)).code == "over_budget"


def test_a_user_over_the_message_rate_is_refused_with_when_to_retry(alice, session_of):
    Budget.objects.create(user=alice, max_messages_per_minute=2)
    key = session_of(alice)
    ask(alice, key)
    ask(alice, key)
    refusal = refused(alice, key)
    assert refusal.code == "rate_limited" and "2 messages a minute" in refusal.message
    assert 1 <= refusal.extra["retry_after"] <= 61


def test_a_user_at_the_stream_limit_is_refused(alice, session_of):
    Budget.objects.create(user=alice, max_concurrent_streams=1)
    key = session_of(alice)
    ask(alice, key)  # its answer is still streaming
    refusal = refused(alice, key)
    assert refusal.code == "too_many_streams" and "the limit is 1" in refusal.message


def test_the_model_is_the_frames_then_the_conversations_then_the_default(
    alice, session_of, settings
):
    settings.CHAT_DEFAULT_MODEL = "grok-default"
    settings.CHAT_MAX_CONCURRENT_ANSWERS = 0  # its four answers are left streaming
    key = session_of(alice)
    assert ask(alice, key).answer.model == "grok-default"
    chosen = ask(alice, key, model="grok-3-mini")
    assert chosen.answer.model == chosen.conversation.model == "grok-3-mini"
    conversation_id = chosen.conversation.id
    # No model in the frame: the conversation's, not the default.
    assert ask(alice, key, conversation_id=conversation_id).answer.model == "grok-3-mini"
    # A model in the frame wins, and becomes the conversation's.
    assert ask(alice, key, conversation_id=conversation_id, model="grok-4").answer.model == "grok-4"
    assert Conversation.objects.get(id=conversation_id).model == "grok-4"


def test_the_price_is_fixed_when_the_answer_starts(alice, session_of):
    key = session_of(alice)
    assert ask(alice, key, model="grok-unpriced").price is None
    price = ModelPrice.objects.create(
        model="grok-4", prompt=Decimal("3"), cached_prompt=Decimal("0.75"), completion="15"
    )
    first = ask(alice, key, model="grok-4")
    price.completion = Decimal("30")
    price.save()
    second = ask(alice, key, model="grok-4")
    # Ticks per token: $1 per million tokens is 10,000 ticks a token.
    assert first.price == Price(prompt=30_000, cached_prompt=7_500, completion=150_000)
    assert second.price == Price(prompt=30_000, cached_prompt=7_500, completion=300_000)


def test_the_history_is_fitted_to_the_context_window_and_the_dropped_counted(
    alice, session_of, settings
):
    settings.CHAT_CONTEXT_TOKENS = 1000
    settings.CHAT_ANSWER_RESERVE_TOKENS = 200  # 800 tokens, about 3,200 characters
    key = session_of(alice)
    first = ask(alice, key, text="a" * 1600)
    Message.objects.filter(id=first.answer.id).update(content="ok", state="complete")
    conversation_id = first.conversation.id
    second = ask(alice, key, text="b" * 1200, conversation_id=conversation_id)
    assert second.dropped == 0 and len(second.history) == 3
    Message.objects.filter(id=second.answer.id).update(content="fine", state="complete")
    third = ask(alice, key, text="c" * 1600, conversation_id=conversation_id)
    # The first question no longer fits; its answer goes with it (never start on an answer).
    assert [turn["content"][:1] for turn in third.history] == ["b", "f", "c"]
    assert third.dropped == 2
    # Everything is still saved: the fitting only changes what the model sees.
    assert Message.objects.filter(conversation_id=conversation_id).count() == 6
