"""Conversations as trees: edit, regenerate, retry, continue and switching branches, over
the websocket with the loopback upstream (what the model is sent is its recorded body)."""

from __future__ import annotations

import datetime as dt

import pytest
from channels.db import database_sync_to_async
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat.models import Conversation, Message, Usage
from chat.services import CONTINUE_PROMPT
from chat.tree import Tree
from tests.fake_upstream import Reply, chunk, json_reply, sse, usage_chunk

pytestmark = pytest.mark.django_db(transaction=True)


def answer_of(text: str, finish: str = "stop") -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish=finish), usage_chunk(10, 5)))


async def ask(socket, **frame) -> tuple[dict, dict, list[dict]]:
    """Send a frame that starts an answer: its message.start and message.end, and every
    frame in between."""
    await socket.send(**frame)
    start, before = await socket.until("message.start")
    end, after = await socket.until("message.end")
    return start, end, before + after


@database_sync_to_async
def active_path(conversation_id: int) -> list[tuple[str, str]]:
    conversation = Conversation.objects.get(id=conversation_id)
    path = conversation.tree().path()
    rows = {m.id: m for m in Message.objects.filter(id__in=path)}
    return [(rows[i].role, rows[i].content) for i in path]


@database_sync_to_async
def ledger_purposes(conversation_id: int) -> list[str]:
    rows = Usage.objects.filter(conversation_id=conversation_id).order_by("id")
    return list(rows.values_list("purpose", flat=True))


def sent_messages(upstream, index: int = -1) -> list[dict]:
    return upstream.stream_requests()[index].json()["messages"]


async def test_editing_a_message_branches_and_sends_only_the_new_branch(
    upstream, alice, socket_for
):
    upstream.queue(answer_of("one"), answer_of("two"), answer_of("one again"))
    socket = await socket_for(alice)
    first, _, _ = await ask(socket, type="send", content="first", conversation_id=None)
    conversation_id = first["conversation_id"]
    await ask(socket, type="send", content="second", conversation_id=conversation_id)

    edited_id = first["user_message"]["id"]
    start, end, _ = await ask(
        socket,
        type="edit",
        conversation_id=conversation_id,
        message_id=edited_id,
        content="first, edited",
    )

    new_id = start["user_message"]["id"]
    assert start["user_message"]["parent_id"] is None
    assert start["user_message"]["siblings"] == [edited_id, new_id]
    assert start["message"]["siblings"] == [start["message"]["id"]]
    assert end["state"] == "complete"
    # Only the edited message: neither the first branch's answers nor its second turn.
    assert sent_messages(upstream) == [{"role": "user", "content": "first, edited"}]
    assert await active_path(conversation_id) == [
        ("user", "first, edited"),
        ("assistant", "one again"),
    ]
    assert await ledger_purposes(conversation_id) == ["answer", "answer", "answer"]


async def test_regenerating_an_answer_adds_a_sibling_with_the_model_asked_for(
    upstream, alice, socket_for
):
    upstream.queue(answer_of("first answer"), answer_of("second answer"))
    socket = await socket_for(alice)
    first, _, _ = await ask(
        socket, type="send", content="question", conversation_id=None, model="grok-4"
    )
    old_answer = first["message"]["id"]

    start, end, frames = await ask(
        socket, type="regenerate", message_id=old_answer, model="grok-3-mini"
    )

    assert start["user_message"]["id"] == first["user_message"]["id"]
    assert start["message"]["siblings"] == [old_answer, start["message"]["id"]]
    assert start["message"]["purpose"] == "regenerate"
    assert end["state"] == "complete"
    body = upstream.stream_requests()[-1].json()
    assert body["model"] == "grok-3-mini"
    assert body["messages"] == [{"role": "user", "content": "question"}]
    assert "".join(f["content"] for f in frames if f["type"] == "delta") == "second answer"
    assert await active_path(first["conversation_id"]) == [
        ("user", "question"),
        ("assistant", "second answer"),
    ]
    assert await ledger_purposes(first["conversation_id"]) == ["answer", "regenerate"]
    # The conversation's own model is still the one its messages were sent with.
    conversation = await database_sync_to_async(Conversation.objects.get)(
        id=first["conversation_id"]
    )
    assert conversation.model == "grok-4"


async def test_retry_after_an_error_answers_again_and_the_failed_turn_is_never_sent(
    upstream, alice, socket_for
):
    upstream.queue(
        json_reply(400, {"code": "bad", "error": "no such thing"}),
        answer_of("it worked"),
        answer_of("fine"),
    )
    socket = await socket_for(alice)
    failed_start, failed_end, _ = await ask(
        socket, type="send", content="try this", conversation_id=None
    )
    assert failed_end["state"] == "error"
    conversation_id = failed_start["conversation_id"]

    start, end, _ = await ask(socket, type="regenerate", message_id=failed_end["message_id"])
    assert end["state"] == "complete"
    assert start["message"]["siblings"] == [failed_end["message_id"], end["message_id"]]
    assert sent_messages(upstream) == [{"role": "user", "content": "try this"}]

    await ask(socket, type="send", content="next", conversation_id=conversation_id)
    assert sent_messages(upstream) == [
        {"role": "user", "content": "try this"},
        {"role": "assistant", "content": "it worked"},
        {"role": "user", "content": "next"},
    ]
    assert await ledger_purposes(conversation_id) == ["answer", "regenerate", "answer"]


async def test_a_turn_that_failed_is_left_out_of_what_later_turns_send(upstream, alice, socket_for):
    upstream.queue(json_reply(500, {"error": "down"}), answer_of("ok"))
    socket = await socket_for(alice)
    failed, _, _ = await ask(socket, type="send", content="lost question", conversation_id=None)
    await ask(
        socket, type="send", content="new question", conversation_id=failed["conversation_id"]
    )
    assert sent_messages(upstream) == [{"role": "user", "content": "new question"}]


async def test_continue_after_length_appends_to_the_cut_text_in_a_sibling(
    upstream, alice, socket_for
):
    upstream.queue(answer_of("The beginning", finish="length"), answer_of(" and the end."))
    socket = await socket_for(alice)
    first, cut, _ = await ask(socket, type="send", content="tell me", conversation_id=None)
    assert cut["finish_reason"] == "length"

    start, end, frames = await ask(socket, type="continue", message_id=cut["message_id"])

    assert start["message"]["content"] == "The beginning"
    assert start["message"]["purpose"] == "continue"
    assert start["message"]["siblings"] == [cut["message_id"], end["message_id"]]
    # The deltas carry only what the model added; the saved answer is the whole.
    assert "".join(f["content"] for f in frames if f["type"] == "delta") == " and the end."
    assert sent_messages(upstream) == [
        {"role": "user", "content": "tell me"},
        {"role": "assistant", "content": "The beginning"},
        {"role": "user", "content": CONTINUE_PROMPT},
    ]
    assert await active_path(first["conversation_id"]) == [
        ("user", "tell me"),
        ("assistant", "The beginning and the end."),
    ]
    assert await ledger_purposes(first["conversation_id"]) == ["answer", "continue"]
    [row] = await database_sync_to_async(list)(Usage.objects.filter(purpose="continue"))
    assert row.prompt_tokens == 10 and row.completion_tokens == 5


async def test_a_complete_answer_cannot_be_continued_and_nothing_is_sent(
    upstream, alice, socket_for
):
    socket = await socket_for(alice)
    _, end, _ = await ask(socket, type="send", content="hi", conversation_id=None)
    await socket.send(type="continue", message_id=end["message_id"])
    error, _ = await socket.until("error")
    assert error["code"] == "not_continuable"
    assert len(upstream.stream_requests()) == 1


async def test_bob_cannot_regenerate_switch_or_edit_in_alices_conversation(
    upstream, alice, bob, socket_for
):
    alices = await socket_for(alice)
    start, end, _ = await ask(alices, type="send", content="mine", conversation_id=None)
    bobs = await socket_for(bob)
    for frame in (
        {"type": "regenerate", "message_id": end["message_id"]},
        {"type": "continue", "message_id": end["message_id"]},
        {"type": "switch", "message_id": end["message_id"]},
        {
            "type": "edit",
            "conversation_id": start["conversation_id"],
            "message_id": start["user_message"]["id"],
            "content": "theirs",
        },
    ):
        await bobs.send(**frame)
        error, _ = await bobs.until("error")
        assert error["code"] == "not_found", frame
    assert len(upstream.stream_requests()) == 1


async def test_switching_a_branch_shows_it_in_every_tab_and_the_next_message_follows_it(
    upstream, alice, socket_for
):
    upstream.queue(
        answer_of("A1"), answer_of("A2"), answer_of("B1"), answer_of("A3"), answer_of("x")
    )
    socket = await socket_for(alice)
    first, _, _ = await ask(socket, type="send", content="Q1", conversation_id=None)
    conversation_id = first["conversation_id"]
    await ask(socket, type="send", content="Q2", conversation_id=conversation_id)
    edit, _, _ = await ask(
        socket,
        type="edit",
        conversation_id=conversation_id,
        message_id=first["user_message"]["id"],
        content="Q1b",
    )
    other_tab = await socket_for(alice)
    await other_tab.send(type="watch", conversation_id=conversation_id)
    await other_tab.until("watching")

    # Back to the first version: its whole continuation (Q2 and its answer) comes back.
    await socket.send(type="switch", message_id=first["user_message"]["id"])
    for tab in (socket, other_tab):
        branch, _ = await tab.until("branch")
        assert branch["conversation_id"] == conversation_id
        assert branch["message_id"] == first["user_message"]["id"]
    assert await active_path(conversation_id) == [
        ("user", "Q1"),
        ("assistant", "A1"),
        ("user", "Q2"),
        ("assistant", "A2"),
    ]
    await ask(socket, type="send", content="Q3", conversation_id=conversation_id)
    assert [m["content"] for m in sent_messages(upstream)] == ["Q1", "A1", "Q2", "A2", "Q3"]

    # The page (a reload) shows the same path, with the versions of the first message.
    client = Client()
    await database_sync_to_async(client.force_login)(alice)
    html = (await database_sync_to_async(client.get)(f"/c/{conversation_id}/")).content.decode()
    assert "Q3" in html and "Q1b" not in html and "B1" not in html
    siblings = f"[{first['user_message']['id']}, {edit['user_message']['id']}]"
    assert f'data-siblings="{siblings}"' in html


async def test_sending_after_a_message_of_another_branch_follows_that_message(
    upstream, alice, socket_for
):
    upstream.queue(answer_of("A1"), answer_of("A2"), answer_of("A1b"))
    socket = await socket_for(alice)
    first, first_end, _ = await ask(socket, type="send", content="Q1", conversation_id=None)
    conversation_id = first["conversation_id"]
    await ask(socket, type="send", content="Q2", conversation_id=conversation_id)
    # A tab that still shows only Q1 and its answer sends after that answer: a branch.
    start, _, _ = await ask(
        socket,
        type="send",
        content="Q2b",
        conversation_id=conversation_id,
        parent_id=first_end["message_id"],
    )
    assert start["user_message"]["parent_id"] == first_end["message_id"]
    assert len(start["user_message"]["siblings"]) == 2
    assert [m["content"] for m in sent_messages(upstream)] == ["Q1", "A1", "Q2b"]


def test_the_active_path_follows_the_latest_selection_at_each_fork():
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def at(seconds: int) -> dt.datetime:
        return t0 + dt.timedelta(seconds=seconds)

    # 1 -> 2 -> 3 ; 2 -> 4 (a regenerated answer, newer) ; 1b (5) an edit of 1, older select
    tree = Tree.of(
        [(1, None, at(0)), (2, 1, at(1)), (3, 2, at(2)), (4, 1, at(3)), (5, None, at(-1))]
    )
    assert tree.path() == [1, 4]
    assert tree.siblings(2) == [2, 4] and tree.siblings(1) == [1, 5]
    assert tree.ancestors(3) == [1, 2, 3]
    assert tree.leaf() == 4
    # Selecting 2 again brings back its own continuation.
    tree.selected_at[2] = at(10)
    assert tree.path() == [1, 2, 3]
    assert Tree.of([]).path() == [] and Tree.of([]).leaf() is None


def test_a_page_of_a_branchy_conversation_costs_the_same_queries_as_a_small_one(alice):
    client = Client()
    client.force_login(alice)
    small = Conversation.objects.create(user=alice)
    small.append(role="user", content="q")
    big = Conversation.objects.create(user=alice)
    question = None
    for i in range(60):
        question = big.append(role="user", content=f"q{i}")
        for j in range(3):  # three versions of each answer
            big.messages.create(role="assistant", content=f"a{i}.{j}", parent=question)
    client.get(f"/c/{small.id}/")  # warm the session and the model list

    def queries(conversation: Conversation) -> int:
        with CaptureQueriesContext(connection) as ctx:
            assert client.get(f"/c/{conversation.id}/").status_code == 200
        return len(ctx.captured_queries)

    assert queries(big) == queries(small)
    html = client.get(f"/c/{big.id}/").content.decode()
    assert "a59.2" in html and "a59.1" not in html and "q0" in html
    assert html.count("data-siblings=") == 60
