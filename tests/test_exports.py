"""Export (Markdown, JSON, all conversations) and import (this app's JSON, ChatGPT's
conversations.json) of conversations: chat.exports and chat.export_views."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from chat import exports
from chat.models import Budget, Conversation, Message, ModelPrice, Usage, UsageDay, budget_status

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).parent / "fixtures"


def _answer(conversation: Conversation, question: Message, text: str, tokens: int) -> Message:
    answer = conversation.add_answer(question.pk, "grok-4", "", Usage.Purpose.ANSWER)
    answer.finish(
        user_id=conversation.user_id,
        usage={
            "prompt_tokens": tokens,
            "completion_tokens": 5,
            "total_tokens": tokens + 5,
            "source": "reported",
            "requested_model": "grok-4",
        },
        state="complete",
        content=text,
        finish_reason="stop",
    )
    return answer


def branchy_conversation(user: Any, title: str = "Trams of Lisbon") -> Conversation:
    """q1 → a1 → (q2 edited into q2b) → a2b, and a2b regenerated as a2c (active):
    seven messages, four on the active path, each answer with its ledger row."""
    ModelPrice.objects.get_or_create(
        model="grok-4", defaults={"prompt": Decimal("3"), "completion": Decimal("15")}
    )
    conversation = Conversation.objects.create(user=user, title=title, model="grok-4")
    q1 = conversation.messages.create(role="user", content="Which tram goes to Alfama?")
    a1 = _answer(conversation, q1, "**Tram 28** goes there.", 100)
    q2 = conversation.messages.create(role="user", content="And to Belém?", parent=a1)
    _answer(conversation, q2, "Tram 15.", 120)
    q2b = conversation.messages.create(role="user", content="And to Belém, at night?", parent=a1)
    a2b = _answer(conversation, q2b, "Take bus 728.", 130)
    a2b.reasoning = "Night services differ."
    a2b.citations = [{"url": "https://www.carris.pt/", "title": "Carris"}]
    a2b.save()
    _answer(conversation, q2b, "Bus 728 runs at night.", 140)
    return conversation


def shape(conversation: Conversation) -> dict[str, Any]:
    """What an import must keep: the tree (each message's texts, role, model, state and
    the texts of its parent), the active path, title and model."""
    tree = conversation.tree()
    rows = {m.id: m for m in conversation.messages.all()}

    def node(message_id: int) -> tuple:
        m = rows[message_id]
        kids = tuple(node(child) for child in tree.children.get(message_id, []))
        return (m.role, m.content, m.reasoning, m.model, m.state, m.citations, kids)

    return {
        "title": conversation.title,
        "model": conversation.model,
        "roots": [node(root) for root in tree.children.get(None, [])],
        "active": [rows[i].content for i in tree.path()],
    }


def ledger() -> tuple[int, dict[str, int]]:
    return Usage.objects.count(), UsageDay.objects.sums()


def upload(client: Client, content: bytes | str, name: str = "export.json"):
    data = content.encode() if isinstance(content, str) else content
    return client.post("/import/", {"file": SimpleUploadedFile(name, data)})


def counts() -> tuple[int, int]:
    return Conversation.objects.count(), Message.objects.count()


# ---------------------------------------------------------------- export


def test_alice_exports_a_conversation_as_json_with_branches_usage_and_a_safe_filename(
    client, alice
):
    conversation = branchy_conversation(alice, title='Trams: "Lisbon" / Porto <2026>')
    client.force_login(alice)
    response = client.get(f"/c/{conversation.id}/export.json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="grokchat-{conversation.id}-trams-lisbon-porto-2026.json"'
    )
    document = json.loads(response.content)
    assert (document["format"], document["version"], document["user"]) == ("grokchat", 1, "alice")
    [data] = document["conversations"]
    assert data["title"] == 'Trams: "Lisbon" / Porto <2026>'
    assert len(data["messages"]) == 7
    by_id = {m["id"]: m for m in data["messages"]}
    assert [by_id[i]["content"] for i in data["active_path"]] == [
        "Which tram goes to Alfama?",
        "**Tram 28** goes there.",
        "And to Belém, at night?",
        "Bus 728 runs at night.",
    ]
    answers = [m for m in data["messages"] if m["role"] == "assistant"]
    assert [a["usage"]["total_tokens"] for a in answers] == [105, 125, 135, 145]
    first = answers[0]["usage"]
    assert first["model"] == "grok-4" and first["outcome"] == "complete"
    # 100 prompt tokens at $3/M and 5 completion tokens at $15/M.
    assert Decimal(first["cost_usd"]) == Decimal("0.000375")
    assert answers[2]["citations"] == [{"url": "https://www.carris.pt/", "title": "Carris"}]
    assert "output_items" not in answers[0]


def test_the_markdown_export_is_the_active_path_readable_with_sources_and_usage(client, alice):
    conversation = branchy_conversation(alice)
    # Make the night answer (with reasoning and a source) the active one again.
    a2b = conversation.messages.get(content="Take bus 728.")
    a2b.selected_at = a2b.selected_at + dt.timedelta(days=1)
    a2b.save()
    client.force_login(alice)
    response = client.get(f"/c/{conversation.id}/export.md")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == (
        f'attachment; filename="grokchat-{conversation.id}-trams-of-lisbon.md"'
    )
    text = response.content.decode()
    assert text.startswith("# Trams of Lisbon\n\n- Model: grok-4\n")
    assert "the conversation's active path only: 4 messages. The other 3 messages" in text
    assert text.count("## You") == 2 and text.count("## Grok") == 2
    assert "**Tram 28** goes there." in text  # the answer's Markdown as it is
    assert "<details><summary>Reasoning</summary>\n\nNight services differ.\n\n</details>" in text
    assert "1. [Carris](<https://www.carris.pt/>)" in text
    assert "*grok-4 · 135 tokens · $" in text
    assert "And to Belém?" not in text and "Tram 15." not in text  # another branch


@pytest.mark.parametrize("suffix", ["export.md", "export.json"])
def test_bob_gets_404_for_the_exports_of_alices_conversation(client, alice, bob, suffix):
    conversation = branchy_conversation(alice)
    client.force_login(bob)
    assert client.get(f"/c/{conversation.id}/{suffix}").status_code == 404
    anonymous = Client()
    assert anonymous.get(f"/c/{conversation.id}/{suffix}").status_code == 302


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume asynchronous")
def test_export_all_streams_every_conversation_of_alice_and_none_of_bobs(client, alice, bob):
    mine = [branchy_conversation(alice, f"Chat {i}") for i in range(3)]
    branchy_conversation(bob, "Bob's")
    client.force_login(alice)
    response = client.get("/export/")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith('attachment; filename="grokchat-alice-')
    document = json.loads(b"".join(response))
    assert [c["id"] for c in document["conversations"]] == [c.id for c in mine]
    assert all(len(c["messages"]) == 7 for c in document["conversations"])
    assert Client().get("/export/").status_code == 302


def test_export_all_costs_the_same_queries_for_3_and_for_40_conversations(alice, bob):
    def queries(user: Any, batch: int) -> tuple[int, int]:
        with CaptureQueriesContext(connection) as ctx:
            document = json.loads("".join(exports.all_conversations_json(user, batch)))
        return len(ctx.captured_queries), len(document["conversations"])

    for i in range(3):
        branchy_conversation(alice, f"Alice {i}")
    for i in range(40):
        branchy_conversation(bob, f"Bob {i}")
    # One batch of each: a query for the batch, one each for messages, images and usage,
    # and one that finds no more.
    assert queries(alice, 50) == (5, 3)
    assert queries(bob, 50) == (5, 40)
    # Batches of 10: four queries a batch, however many conversations are in it.
    assert queries(bob, 10) == (4 * 4 + 1, 40)


# ---------------------------------------------------------------- import


def test_export_then_import_gives_the_same_tree_marked_imported_and_not_billed(client, alice):
    conversation = branchy_conversation(alice)
    client.force_login(alice)
    exported = client.get(f"/c/{conversation.id}/export.json").content
    before = ledger()

    response = upload(client, exported)
    copy = Conversation.objects.exclude(pk=conversation.pk).get()
    assert response.status_code == 302 and response["Location"] == f"/c/{copy.id}/"
    assert shape(copy) == shape(conversation)
    assert copy.imported_from == "grokchat" and copy.imported_at is not None
    assert copy.created_at == conversation.created_at
    assert ledger() == before  # no ledger row, no day counted
    assert not Usage.objects.filter(conversation=copy).exists()
    page = client.get(f"/c/{copy.id}/").content.decode()
    assert 'id="imported-note"' in page and "Imported from a Grok Chat export on" in page
    assert 'id="imported-note"' not in client.get(f"/c/{conversation.id}/").content.decode()

    # The same file again: another copy (an import never merges into existing rows).
    assert upload(client, exported).status_code == 302
    assert Conversation.objects.filter(imported_from="grokchat").count() == 2


def test_the_chatgpt_export_is_imported_with_its_branches_and_its_current_path_active(
    client, alice
):
    client.force_login(alice)
    response = upload(client, (FIXTURES / "chatgpt_conversations.json").read_bytes())
    assert response.status_code == 302 and response["Location"] == "/settings/"
    flash = client.get("/settings/").content.decode()
    assert "Imported 2 conversations from ChatGPT." in flash
    lisbon = Conversation.objects.get(title="A day in Lisbon")
    assert lisbon.imported_from == "chatgpt" and lisbon.model == "o3"
    assert lisbon.created_at == dt.datetime.fromtimestamp(1718000000.123, dt.UTC)
    tree = lisbon.tree()
    rows = {m.id: m for m in lisbon.messages.all()}
    # System, hidden context, reasoning, the tool call and its output are left out; the
    # answer that went on after the tool call is one answer, as ChatGPT shows it.
    assert [(rows[i].role, rows[i].content) for i in tree.path()] == [
        ("user", "Plan a day in Lisbon for me."),
        ("assistant", "**Morning:** Belém.\n\n**Afternoon:** Alfama, by tram 28."),
        ("user", "[image 1024×768: not imported]\n\nWhich tram is this?"),
        ("assistant", "Let me check the route number.\n\nIt is **tram 28**, the one to Alfama."),
    ]
    assert len(rows) == 6
    edited = tree.siblings(tree.path()[2])
    assert [rows[i].content for i in edited] == [
        "And what about Porto?",
        "[image 1024×768: not imported]\n\nWhich tram is this?",
    ]
    porto = rows[edited[0]]
    assert [rows[i].content for i in tree.path_from(porto.id)] == [
        "Porto is three hours north by train."
    ]
    assert rows[tree.path()[1]].model == "gpt-4o"

    # current_node names the older answer: it stays the one shown.
    sorting = Conversation.objects.get(title="Sorting in Python")
    path = sorting.tree().path()
    assert [m.content for m in Message.objects.filter(id__in=path)] == [
        "How do I sort a list of dicts by a key?",
        "Use `sorted(rows, key=...)`.",
    ]
    assert sorting.messages.count() == 3
    assert ledger() == (0, UsageDay.objects.none().sums())


def test_imports_never_count_against_a_budget(client, alice):
    Budget.objects.create(user=alice, max_tokens=10)
    client.force_login(alice)
    assert upload(client, (FIXTURES / "chatgpt_conversations.json").read_bytes()).status_code == 302
    status = budget_status(alice)
    assert status is not None and status.tokens == 0 and not status.over
    assert not Usage.objects.exists() and not UsageDay.objects.exists()


def test_bob_importing_alices_export_gets_new_rows_and_alices_stay_as_they_were(client, alice, bob):
    conversation = branchy_conversation(alice)
    alice_before = shape(conversation)
    client.force_login(alice)
    exported = client.get(f"/c/{conversation.id}/export.json").content
    client.force_login(bob)
    assert upload(client, exported).status_code == 302
    copy = Conversation.objects.get(user=bob)
    assert copy.pk != conversation.pk
    assert not set(copy.messages.values_list("id", flat=True)) & set(
        conversation.messages.values_list("id", flat=True)
    )
    assert shape(copy) == alice_before
    assert shape(Conversation.objects.get(pk=conversation.pk)) == alice_before
    assert conversation.messages.count() == 7


def _grokchat(messages: Any, **conversation: Any) -> str:
    return json.dumps(
        {
            "format": "grokchat",
            "version": 1,
            "conversations": [{"title": "T", **conversation, "messages": messages}],
        }
    )


USER = {"id": 1, "parent": None, "role": "user", "content": "hi"}
ANSWER = {"id": 2, "parent": 1, "role": "assistant", "content": "hello"}


def test_an_answer_exported_while_streaming_is_imported_interrupted_and_never_billed(client, alice):
    client.force_login(alice)
    streaming = {**ANSWER, "state": "streaming"}
    assert upload(client, _grokchat([USER, streaming])).status_code == 302
    answer = Message.objects.get(role="assistant")
    assert answer.state == "interrupted" and answer.worker == ""
    assert Message.objects.orphans("any", lambda pid: False, answer.created_at).count() == 0


def test_an_over_long_title_is_cut_to_200_characters(client, alice):
    client.force_login(alice)
    assert upload(client, _grokchat([USER], title="word " * 100)).status_code == 302
    assert Conversation.objects.get().title == ("word " * 40).strip()  # 199 characters


def _chatgpt(mapping: dict[str, Any], current: str | None = None) -> str:
    return json.dumps([{"title": "C", "mapping": mapping, "current_node": current}])


def _node(parent: str | None, text: str = "x", role: str = "user") -> dict[str, Any]:
    message = {"author": {"role": role}, "content": {"content_type": "text", "parts": [text]}}
    return {"message": message, "parent": parent, "children": []}


HOSTILE = {
    "not json": (b"hello, this is not JSON", "The file is not valid JSON"),
    "not utf-8": (b'{"format": "grokchat\xff"}', "The file is not valid JSON"),
    "wrong shape": ('{"hello": 1}', "This is not an export this app reads"),
    "unknown version": (
        '{"format": "grokchat", "version": 2, "conversations": []}',
        "it is version 2 of the format; this app reads version 1.",
    ),
    "another format": ('{"format": "other", "version": 1}', "its format is 'other'"),
    "no conversations": (
        '{"format": "grokchat", "version": 1, "conversations": []}',
        "it holds no conversations",
    ),
    "messages not a list": (_grokchat("oops"), '"messages" must be a list, not text.'),
    "content a number": (
        _grokchat([{**USER, "content": 5}]),
        'message 1: "content" must be text, not a number.',
    ),
    "role unknown": (
        _grokchat([{**USER, "role": "system"}]),
        '"role" must be one of user, assistant',
    ),
    "parent missing": (
        _grokchat([USER, {**ANSWER, "parent": 99}]),
        "\"parent\" '99' is not the id of an earlier message",
    ),
    "parent later (a cycle)": (
        _grokchat([{**USER, "parent": 2}, {**ANSWER, "parent": 1}]),
        "so no cycle is possible",
    ),
    "duplicate id": (_grokchat([USER, {**ANSWER, "id": 1}]), "is given to another message"),
    "lone surrogate": (
        _grokchat([{**USER, "content": "bad \ud800 half"}]),
        "lone surrogate (U+D800",
    ),
    "nul": (_grokchat([{**USER, "content": "a\x00b"}]), "NUL character (U+0000) at character 2"),
    "nan": (
        '{"format": "grokchat", "version": 1, "conversations": [{"title": NaN}]}',
        "it holds NaN, which JSON does not allow",
    ),
    "bad date": (_grokchat([USER], created_at="yesterday"), '"created_at" must be a date'),
    "bad settings": (
        _grokchat([USER], settings={"temperature": 9}),
        "its settings are not valid here: temperature:",
    ),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "chatgpt cycle": (
        _chatgpt({"a": _node("b"), "b": _node("a")}),
        "parents go round in a cycle",
    ),
    "chatgpt missing parent": (
        _chatgpt({"a": _node("nowhere")}),
        "its \"parent\" 'nowhere' is not a node of this conversation",
    ),
    "chatgpt mapping not an object": (
        json.dumps([{"title": "C", "mapping": []}]),
        '"mapping" must be an object, not a list',
    ),
    "chatgpt current node unknown": (_chatgpt({"a": _node(None)}, "zz"), '"current_node"'),
    "chatgpt parts not text": (
        json.dumps(
            [
                {
                    "mapping": {
                        "a": {
                            "message": {
                                "author": {"role": "user"},
                                "content": {"content_type": "text", "parts": [5]},
                            },
                            "parent": None,
                        }
                    }
                }
            ]
        ),
        "a content part must be text or an object, not a number",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_a_bad_or_hostile_file_gets_a_clear_error_and_changes_nothing(client, alice, case):
    content, error = HOSTILE[case]
    existing = branchy_conversation(alice)
    before = (counts(), ledger(), shape(existing))
    client.force_login(alice)
    response = upload(client, content)
    assert response.status_code == 400
    page = response.content.decode()
    assert 'id="import-errors"' in page and "Not imported:" in page
    assert "Nothing was changed." in page
    assert error in response.context["import_form"].errors["file"][0]
    assert (counts(), ledger(), shape(existing)) == before


def test_files_over_the_size_cap_are_refused_before_they_are_read(client, alice, settings):
    settings.CHAT_IMPORT_MAX_BYTES = 1000
    client.force_login(alice)
    response = upload(client, _grokchat([USER], title="x" * 2000))
    assert response.status_code == 400
    assert "The file is too large: 2," in response.context["import_form"].errors["file"][0]
    # Larger than the cap and a form's worth: refused from its Content-Length alone.
    response = upload(client, b"x" * (1000 + 70 * 1024))
    assert response.status_code == 413
    assert b"the most this site imports is 1,000 bytes" in response.content
    assert counts() == (0, 0)


def test_too_many_conversations_or_messages_are_refused(client, alice, settings):
    client.force_login(alice)
    settings.CHAT_IMPORT_MAX_CONVERSATIONS = 1
    response = upload(client, (FIXTURES / "chatgpt_conversations.json").read_bytes())
    assert response.status_code == 400
    assert (
        "it holds 2 conversations; the most this site imports at once is 1."
        in (response.context["import_form"].errors["file"][0])
    )
    settings.CHAT_IMPORT_MAX_CONVERSATIONS = 10
    settings.CHAT_IMPORT_MAX_MESSAGES = 3
    response = upload(client, _grokchat([USER, ANSWER, {**USER, "id": 3}, {**USER, "id": 4}]))
    assert response.status_code == 400
    assert "more than 3 messages" in response.context["import_form"].errors["file"][0]
    assert counts() == (0, 0)


def test_a_bad_last_conversation_leaves_the_good_ones_before_it_unwritten(client, alice):
    client.force_login(alice)
    good = {"title": "Good", "messages": [USER, ANSWER]}
    bad = {"title": "Bad", "messages": [USER, {**ANSWER, "parent": 7}]}
    document = {"format": "grokchat", "version": 1, "conversations": [good, good, bad]}
    response = upload(client, json.dumps(document))
    assert response.status_code == 400
    assert "Conversation 3 ('Bad'), message 2" in response.context["import_form"].errors["file"][0]
    assert counts() == (0, 0)


def test_an_import_that_fails_while_writing_writes_nothing(alice, monkeypatch):
    parsed = exports.parse((FIXTURES / "chatgpt_conversations.json").read_bytes())
    bulk_create = Message.objects.bulk_create
    calls = []

    def fail_on_the_third_level(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the database went away")
        return bulk_create(*args, **kwargs)

    monkeypatch.setattr(Message.objects, "bulk_create", fail_on_the_third_level)
    with pytest.raises(RuntimeError):
        exports.save(alice, parsed)
    assert len(calls) == 3
    assert counts() == (0, 0)


def test_import_needs_a_login_and_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    response = upload(client, _grokchat([USER]))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    client.force_login(alice)
    assert upload(client, _grokchat([USER])).status_code == 403
    assert client.get("/import/").status_code == 405
    assert counts() == (0, 0)


def test_the_settings_page_has_the_export_link_and_the_import_form(client, alice):
    client.force_login(alice)
    page = client.get("/settings/").content.decode()
    assert (
        '<a id="export-all-link" href="/export/" download>Export all conversations (JSON)</a>'
        in page
    )
    assert 'enctype="multipart/form-data"' in page and 'type="file" name="file"' in page
    conversation = branchy_conversation(alice)
    page = client.get(f"/c/{conversation.id}/").content.decode()
    assert f'href="/c/{conversation.id}/export.md" download>Markdown</a>' in page
    assert f'href="/c/{conversation.id}/export.json" download>JSON</a>' in page
