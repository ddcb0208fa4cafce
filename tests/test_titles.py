"""Conversation titles: one more upstream request after a new conversation's first answer,
with its own ledger row, counted in budgets and reports; a user's rename always wins."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Callable
from decimal import Decimal

import pytest
from channels.db import database_sync_to_async
from django.test import Client

from chat.models import (
    Budget,
    Conversation,
    Message,
    ModelPrice,
    Usage,
    UsageDay,
    budget_status,
)
from chat.streams import RUNNING, SIDE_REQUESTS, interrupt_all
from chat.titles import clean_title, record
from tests.fake_upstream import Reply, chunk, json_reply, paced_stream, sse, usage_chunk

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = "How do Romans make carbonara without cream?"
FIRST_WORDS = Conversation.title_from(QUESTION)


def title_reply(text: str, prompt: int = 40, completion: int = 6) -> Reply:
    return Reply(body=sse(chunk(text), chunk(finish="stop"), usage_chunk(prompt, completion)))


@pytest.fixture
def titles_on(settings, upstream):
    settings.CHAT_TITLES = True
    settings.CHAT_TITLE_MODEL = ""
    settings.CHAT_DEFAULT_MODEL = "grok-4"
    return upstream


async def ask(socket, text: str = QUESTION, conversation_id: int | None = None):
    """Send `text`; the answer's end and its run's task, which ends once the answer is saved
    and its title request (if any) has started."""
    await socket.send(type="send", content=text, conversation_id=conversation_id, model=None)
    start, _ = await socket.until("message.start")
    run = RUNNING.get(start["message"]["id"])  # None: it has ended already
    end, _ = await socket.until("message.end")
    if run is not None and run.task is not None:
        await run.task
    return end


async def titles_settled() -> None:
    """Wait for the title requests of this process to end (those the answers started are
    all under way once ask() has returned)."""
    running = list(SIDE_REQUESTS)
    await asyncio.gather(*(request.task for request in running if request.task is not None))


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait for a condition that an event of the test brings about (a hang guard only)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@database_sync_to_async
def conversation(conversation_id: int) -> Conversation:
    return Conversation.objects.get(pk=conversation_id)


@database_sync_to_async
def title_rows() -> list[Usage]:
    return list(Usage.objects.filter(purpose=Usage.Purpose.TITLE))


@database_sync_to_async
def count(model) -> int:
    return model.objects.count()


@database_sync_to_async
def create(kind, **fields):
    return kind.objects.create(**fields)


# -- the request, its row and its frame ----------------------------------------------------


async def test_the_first_answer_brings_a_clean_title_to_every_tab_and_one_ledger_row(
    titles_on, alice, socket_for
):
    await create(ModelPrice, model="grok-4", prompt=Decimal("3"), completion=Decimal("15"))
    await create(Budget, user=alice, max_tokens=1_000_000)
    titles_on.queue(
        Reply(body=titles_on.default.body),  # the answer (a recorded grok-4-fast stream)
        title_reply('**Title:** "Roman carbonara, without cream."\nIt is a classic.'),
    )
    asking, other = await socket_for(alice), await socket_for(alice)
    end = await ask(asking)
    conversation_id = end["conversation_id"]

    frame, _ = await asking.until("conversation.title")
    assert frame == {
        "type": "conversation.title",
        "conversation_id": conversation_id,
        "title": "Roman carbonara, without cream",
    }
    # The other tab watches no conversation: the frame reaches the user's every socket.
    assert (await other.until("conversation.title"))[0] == frame
    await titles_settled()

    answer_request, title_request = titles_on.stream_requests()
    body = title_request.json()
    assert body["model"] == "grok-4"
    assert QUESTION in body["messages"][-1]["content"]
    assert answer_request.json()["messages"] == [{"role": "user", "content": QUESTION}]

    saved = await conversation(conversation_id)
    assert (saved.title, saved.title_source) == ("Roman carbonara, without cream", "generated")
    [row] = await title_rows()
    assert (row.user_id, row.conversation_id, row.message_id, row.answer_id) == (
        alice.pk,
        conversation_id,
        None,
        None,
    )
    assert (row.outcome, row.source, row.requested_model) == ("complete", "reported", "grok-4")
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (40, 6, 46)
    # Priced at request time: 40 * $3 + 6 * $15 per million.
    assert row.price_prompt == 30_000 and row.cost_in_usd_ticks == 40 * 30_000 + 6 * 150_000
    assert await count(Usage) == 2  # and the answer's own

    @database_sync_to_async
    def totals() -> tuple[dict[str, int], int]:
        status = budget_status(alice)
        assert status is not None
        return UsageDay.objects.filter(user=alice).sums(), status.tokens

    sums, budget_tokens = await totals()
    assert sums["requests"] == 2 and sums["title_requests"] == 1
    assert sums["title_cost_in_usd_ticks"] == row.cost_in_usd_ticks
    assert budget_tokens == sums["total_tokens"] == 296 + 46


@pytest.mark.parametrize(
    "reply, source, outcome",
    [
        (json_reply(500, {"error": "overloaded"}), "none", "error"),
        (json_reply(400, {"code": "bad", "error": "no such model"}), "none", "error"),
        (Reply(body=sse(chunk("Roman car"), done=False), end="drop"), "estimated", "error"),
        (title_reply('"**"'), "reported", "complete"),  # nothing left once cleaned
    ],
    ids=["500", "400", "cut", "empty"],
)
async def test_a_failed_title_request_keeps_the_first_words_and_has_one_row(
    titles_on, alice, socket_for, reply, source, outcome
):
    titles_on.queue(Reply(body=titles_on.default.body), reply)
    socket = await socket_for(alice)
    end = await ask(socket)
    await titles_settled()
    assert len(titles_on.stream_requests()) == 2

    saved = await conversation(end["conversation_id"])
    assert (saved.title, saved.title_source) == (FIRST_WORDS, "first_words")
    [row] = await title_rows()
    assert (row.source, row.outcome, row.conversation_id) == (source, outcome, saved.pk)
    if source == "estimated":  # the prompt as sent, and the text that came
        assert row.completion_tokens == 3 and row.prompt_tokens > 0
    if source == "none":
        assert row.total_tokens == 0
    assert await count(Usage) == 2
    await socket.comm.receive_nothing()  # no conversation.title


async def test_the_title_model_setting_picks_the_model(titles_on, alice, socket_for, settings):
    settings.CHAT_TITLE_MODEL = "grok-3-mini"
    titles_on.queue(Reply(body=titles_on.default.body), title_reply("Carbonara"))
    socket = await socket_for(alice)
    await ask(socket)
    await socket.until("conversation.title")
    await titles_settled()
    assert titles_on.stream_requests()[1].json()["model"] == "grok-3-mini"
    [row] = await title_rows()
    assert row.requested_model == "grok-3-mini"


# -- a rename wins ---------------------------------------------------------------------------


async def test_a_rename_made_while_the_title_is_asked_for_wins(titles_on, alice, socket_for):
    titles_on.queue(Reply(body=titles_on.default.body), paced_stream(["Roman ", "carbonara"]))
    asking, other = await socket_for(alice), await socket_for(alice)
    end = await ask(asking)
    conversation_id = end["conversation_id"]
    # The title request is under way: its first words are read, the rest waits on the test.
    await until(titles_on.read_to_the_gate)

    @database_sync_to_async
    def rename() -> int:
        client = Client()
        client.force_login(alice)
        return client.post(f"/c/{conversation_id}/rename/", {"title": "My pasta notes"}).status_code

    assert await rename() == 302
    renamed = {
        "type": "conversation.title",
        "conversation_id": conversation_id,
        "title": "My pasta notes",
    }
    assert (await asking.until("conversation.title"))[0] == renamed
    assert (await other.until("conversation.title"))[0] == renamed

    titles_on.next_piece()
    titles_on.next_piece()
    await titles_settled()
    saved = await conversation(conversation_id)
    assert (saved.title, saved.title_source) == ("My pasta notes", "user")
    [row] = await title_rows()
    assert row.outcome == "complete" and row.completion_tokens == 2  # asked for, and billed
    await asking.comm.receive_nothing()  # the late title is not sent
    await other.comm.receive_nothing()


# -- when there is no title request ------------------------------------------------------------


async def test_over_budget_there_is_no_title_request(titles_on, alice, socket_for):
    # Under the limit when sent; the answer's 296 tokens take alice over it.
    await create(Budget, user=alice, max_tokens=100)
    socket = await socket_for(alice)
    end = await ask(socket)
    await titles_settled()
    assert len(titles_on.stream_requests()) == 1
    saved = await conversation(end["conversation_id"])
    assert (saved.title, saved.title_source) == (FIRST_WORDS, "first_words")
    assert await title_rows() == []
    await socket.comm.receive_nothing()


async def test_with_titles_off_there_is_no_title_request(titles_on, alice, socket_for, settings):
    settings.CHAT_TITLES = False
    socket = await socket_for(alice)
    end = await ask(socket)
    await titles_settled()
    assert len(titles_on.stream_requests()) == 1
    assert (await conversation(end["conversation_id"])).title == FIRST_WORDS
    assert await title_rows() == []
    # Switched on, the next new conversation has one.
    settings.CHAT_TITLES = True
    titles_on.queue(Reply(body=titles_on.default.body), title_reply("Carbonara"))
    await ask(socket, "And cacio e pepe?")
    await socket.until("conversation.title")
    assert len(titles_on.stream_requests()) == 3 and len(await title_rows()) == 1


async def test_only_the_first_answer_asks_and_titles_are_not_messages(
    titles_on, alice, socket_for, settings
):
    # Two messages a minute: a title request counted as one would refuse the second.
    settings.CHAT_MAX_MESSAGES_PER_MINUTE = 2
    titles_on.queue(Reply(body=titles_on.default.body), title_reply("Carbonara"))
    socket = await socket_for(alice)
    end = await ask(socket)
    await socket.until("conversation.title")
    await titles_settled()

    second = await ask(socket, "And with guanciale?", end["conversation_id"])
    assert second["state"] == "complete"
    await titles_settled()
    assert len(titles_on.stream_requests()) == 3
    assert len(await title_rows()) == 1
    assert (await conversation(end["conversation_id"])).title == "Carbonara"


async def test_a_first_answer_that_failed_asks_for_no_title(titles_on, alice, socket_for):
    titles_on.queue(json_reply(500, {"error": "down"}))
    socket = await socket_for(alice)
    failed = await ask(socket)
    assert failed["state"] == "error"
    await titles_settled()
    assert len(titles_on.stream_requests()) == 1 and await title_rows() == []
    # A new conversation whose first answer is complete has one.
    titles_on.queue(Reply(body=titles_on.default.body), title_reply("Carbonara"))
    end = await ask(socket)
    frame, _ = await socket.until("conversation.title")
    assert frame["conversation_id"] == end["conversation_id"] != failed["conversation_id"]
    assert len(await title_rows()) == 1
    assert (await conversation(failed["conversation_id"])).title_source == "first_words"


# -- shutdown --------------------------------------------------------------------------------


async def test_shutdown_during_a_title_request_writes_its_row(titles_on, alice, socket_for):
    titles_on.queue(Reply(body=titles_on.default.body), paced_stream(["Roman ", "carbonara"]))
    socket = await socket_for(alice)
    end = await ask(socket)
    await until(titles_on.read_to_the_gate)
    [request] = SIDE_REQUESTS

    assert await interrupt_all() == 0  # no answer was running; the title request was
    assert request.task is not None and request.task.done() and not SIDE_REQUESTS
    [row] = await title_rows()
    assert (row.outcome, row.source) == ("interrupted", "estimated")
    assert row.completion_tokens == 2 and row.duration_ms is not None  # "Roman " arrived
    saved = await conversation(end["conversation_id"])
    assert (saved.title, saved.title_source) == (FIRST_WORDS, "first_words")
    day = await database_sync_to_async(UsageDay.objects.filter(user=alice).sums)()
    assert day["title_requests"] == 1 and day["requests"] == 2


# -- cleaning ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written, title",
    [
        ("Roman Carbonara", "Roman Carbonara"),
        ('"Roman Carbonara."', "Roman Carbonara"),
        ("**Title:** Roman *Carbonara*", "Roman Carbonara"),
        ("# Roman Carbonara\n\nA dish from Rome.", "Roman Carbonara"),
        ("Title:\n- Roman Carbonara", "Roman Carbonara"),
        ("<think>pasta, eggs...</think>\n`Roman Carbonara`", "Roman Carbonara"),
        ("«Carbonara romaine»", "Carbonara romaine"),
        ("Why is the sky blue?", "Why is the sky blue?"),
        ("A* search with snake_case names", "A* search with snake_case names"),
        ("[Roman Carbonara](https://example.com)", "Roman Carbonara"),
        ("  \n\n**  **\n", ""),
        ("", ""),
        ("word " * 30, ("word " * 11).strip() + "…"),
        ("x" * 80, "x" * 59 + "…"),
    ],
)
def test_a_title_is_cleaned_to_one_plain_short_line(written: str, title: str) -> None:
    assert clean_title(written) == title
    assert len(clean_title(written)) <= 60


# -- reports ---------------------------------------------------------------------------------


def test_title_requests_are_shown_in_the_reports_and_the_csv(client, alice, staff):
    chat = Conversation.objects.create(user=alice, title="Carbonara")
    usage = {
        "outcome": Message.State.COMPLETE,
        "source": Usage.Source.REPORTED,
        "model": "grok-4",
        "requested_model": "grok-4",
        "prompt_tokens": 40,
        "completion_tokens": 6,
        "total_tokens": 46,
        "reported_cost_ticks": 123_000,
    }
    record(alice.pk, chat.pk, usage)
    answer = Usage(user=alice, conversation=chat, outcome="complete", model="grok-4")
    answer.total_tokens, answer.reported_cost_ticks = 100, 1_000_000
    answer.price_and_cost()
    answer.save()
    UsageDay.add(answer)
    before = UsageDay.objects.sums()
    assert (before["requests"], before["title_requests"]) == (2, 1)
    assert before["title_cost_in_usd_ticks"] == 123_000
    # The rebuild from the ledger gives the same totals.
    UsageDay.rebuild()
    assert UsageDay.objects.sums() == before

    client.force_login(alice)
    page = client.get("/usage/").content.decode()
    assert '<dd id="usage-title-requests">1 request, $0.0000123</dd>' in page

    client.force_login(staff)
    report = client.get("/admin/usage/").content.decode()
    assert "1 of the requests made conversation titles, for $0.0000123." in report
    drill_down = client.get(f"/admin/usage/user/{alice.pk}/").content.decode()
    assert "1 of the requests made conversation titles" in drill_down
    exported = client.get("/admin/usage/?format=csv").content.decode()
    [header, row] = list(csv.reader(io.StringIO(exported)))
    line = dict(zip(header, row, strict=True))
    assert (line["requests"], line["title_requests"], line["title_cost_usd"]) == (
        "2",
        "1",
        "0.0000123",
    )
    everything = client.get("/admin/chat/usage/").content.decode()
    assert everything.count('class="field-purpose"') == 2 and "?purpose__exact=title" in everything
    titles = client.get("/admin/chat/usage/?purpose__exact=title").content.decode()
    assert titles.count('class="field-purpose"') == 1


async def test_a_retry_that_completes_a_failed_first_answer_asks_for_the_title_once(
    titles_on, alice, socket_for
):
    titles_on.queue(
        json_reply(500, {"error": "down"}),
        Reply(body=titles_on.default.body),
        title_reply("Carbonara"),
        Reply(body=titles_on.default.body),
    )
    socket = await socket_for(alice)
    failed = await ask(socket)
    await socket.send(type="regenerate", message_id=failed["message_id"])
    retried, _ = await socket.until("message.end")
    assert retried["state"] == "complete"
    title, _ = await socket.until("conversation.title")
    assert title["title"] == "Carbonara"
    await titles_settled()
    # Another version of that answer asks for no second title.
    await socket.send(type="regenerate", message_id=retried["message_id"])
    await socket.until("message.end")
    await titles_settled()
    assert len(titles_on.stream_requests()) == 4 and len(await title_rows()) == 1
