"""Search over a user's conversations (chat.finder): their titles and every message's text,
with the database's own full-text search. Run on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.finder import find_conversations, fts5_query, marked_html, terms
from chat.models import Conversation, Message

HOSTILE_QUERIES = [
    '"',
    '"unterminated',
    "*",
    "carb*",
    "-",
    "-carbonara",
    "()",
    "(carbonara",
    "NEAR",
    "NEAR(a b)",
    "a AND OR NOT b",
    "title:carbonara",
    "^carbonara",
    "\x00carbonara",
    "'; DROP TABLE chat_message; --",
    "東京タワー",
    "café naïve",
    "🍝",
    "a" * 5000,
    "\\",
    "!&|:*",
    "<script>alert(1)</script>",
]


def test_a_query_is_split_into_terms_without_the_engines_syntax():
    assert terms("  roman   carbonara ") == ["roman", "carbonara"]
    assert terms('" * - ( ) NEAR') == ["NEAR"]
    assert terms("\x00bad\x1fword") == ["bad", "word"]
    assert terms("") == [] and terms("   ") == [] and terms("*-()") == []
    assert terms("東京 café") == ["東京", "café"]


def test_each_fts5_term_is_quoted_and_the_last_one_is_a_prefix():
    assert fts5_query("roman carb") == '"roman" "carb"*'
    assert fts5_query('say "hi"') == '"say" """hi"""*'
    assert fts5_query("NEAR(a b) OR cd") == '"NEAR(a" "b)" "OR" "cd"*'
    assert fts5_query("*") == ""
    assert fts5_query("python a") == '"python" "a"'  # one letter: no prefix


def test_a_snippet_is_escaped_and_only_marks_are_added():
    assert marked_html("a \x02<b>\x03 & c") == "a <mark>&lt;b&gt;</mark> &amp; c"
    # Markers a hostile text holds itself still make balanced marks and nothing else.
    assert marked_html("\x03x\x02y\x02z") == "x<mark>yz</mark>"
    assert marked_html('"><img src=x onerror=alert(1)>') == (
        "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
    )


def _conversation(user, title: str, *texts: str) -> Conversation:
    conversation = Conversation.objects.create(user=user, title=title)
    for i, text in enumerate(texts):
        role = Message.Role.USER if i % 2 == 0 else Message.Role.ASSISTANT
        conversation.append(role=role, content=text)
    return conversation


@pytest.mark.django_db
def test_it_finds_a_word_in_any_message_or_title_of_the_users_own_conversations(alice, bob):
    pasta = _conversation(alice, "Dinner", "What shall I cook?", "A Roman carbonara, surely.")
    about = _conversation(alice, "Carbonara history", "Who invented it?", "Nobody knows.")
    _conversation(alice, "Weather", "Is it raining?", "No.")
    bobs = _conversation(bob, "Bob's carbonara", "carbonara for bob", "carbonara again")

    hits = find_conversations(alice, "carbonara")
    assert {hit.conversation_id for hit in hits} == {pasta.id, about.id}
    by_id = {hit.conversation_id: hit for hit in hits}
    answer = pasta.messages.get(role=Message.Role.ASSISTANT)
    assert by_id[pasta.id].message_id == answer.id
    assert "<mark>carbonara</mark>" in by_id[pasta.id].snippet
    assert by_id[pasta.id].title == "Dinner"
    assert by_id[about.id].title == "<mark>Carbonara</mark> history"
    assert by_id[about.id].snippet == "" and by_id[about.id].message_id is None
    assert [hit.conversation_id for hit in find_conversations(bob, "carbonara")] == [bobs.id]
    assert find_conversations(alice, "invented")[0].conversation_id == about.id
    assert find_conversations(alice, "nothingmatchesthis") == []


@pytest.mark.django_db
def test_the_last_word_as_typed_is_a_prefix_on_either_database(alice):
    roman = _conversation(alice, "Rome", "Tell me of the Roman carbonara", "It is good")
    _conversation(alice, "Milan", "A Milanese risotto", "Saffron")
    assert [h.conversation_id for h in find_conversations(alice, "roman carbo")] == [roman.id]
    assert [h.conversation_id for h in find_conversations(alice, "CARB")] == [roman.id]
    hit = find_conversations(alice, "carbo")[0]
    assert "<mark>carbonara</mark>" in hit.snippet or "<mark>Carbonara</mark>" in hit.title
    # Only the last word: the others are whole words.
    assert find_conversations(alice, "rom carbonara") == []


@pytest.mark.django_db
def test_an_answer_of_megabytes_is_saved_and_its_start_found(alice):
    # 2.6 MB of distinct words, more than a PostgreSQL tsvector holds (1 MB): the message
    # must be saved whole all the same; search reads its first 100,000 characters there.
    text = "".join(f"w{i:07d} x{i:07d}{'abcdefghij'[i % 10] * 80} " for i in range(26_000))
    long = _conversation(alice, "Long", "Write a lot", text + " zzlastword")
    answer = long.messages.get(role=Message.Role.ASSISTANT)
    answer.refresh_from_db()
    assert len(answer.content) == len(text) + len(" zzlastword")
    assert [h.conversation_id for h in find_conversations(alice, "w0000042")] == [long.id]


@pytest.mark.django_db
def test_every_term_must_match_in_any_case_and_any_language(alice):
    roman = _conversation(alice, "Rome", "Tell me of the ROMAN carbonara", "It is good")
    _conversation(alice, "Milan", "A Milanese risotto", "Saffron")
    _conversation(alice, "Tokyo", "東京 に行きたい", "Café naïve 🍝")
    assert [h.conversation_id for h in find_conversations(alice, "roman CARBONARA")] == [roman.id]
    assert find_conversations(alice, "roman risotto") == []
    assert len(find_conversations(alice, "東京")) == 1
    assert len(find_conversations(alice, "naïve")) == 1


@pytest.mark.django_db
def test_a_hostile_message_text_is_escaped_in_its_snippet(client, alice):
    _conversation(alice, "<b>bold</b> title", "x", '<img src=x onerror=alert(1)> payload "\x02')
    client.force_login(alice)
    html = client.get("/conversations/search/", {"q": "payload"}).content.decode()
    assert "<img" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt; <mark>payload</mark>" in html
    html = client.get("/conversations/search/", {"q": "bold"}).content.decode()
    assert "&lt;b&gt;<mark>bold</mark>&lt;/b&gt; title" in html


@pytest.mark.django_db
def test_no_query_is_an_error_whatever_it_holds(client, alice):
    _conversation(alice, "Dinner", "What shall I cook?", "A Roman carbonara, surely.")
    client.force_login(alice)
    for query in HOSTILE_QUERIES + ["", "   "]:
        response = client.get("/conversations/search/", {"q": query})
        assert response.status_code == 200, query
    html = client.get("/conversations/search/", {"q": ""}).content.decode()
    assert "Type to search your conversations." in html
    html = client.get("/conversations/search/", {"q": "(carbonara"}).content.decode()
    assert "<mark>carbonara</mark>" in html


@pytest.mark.django_db
def test_the_results_follow_edits_and_deletions(alice):
    kept = _conversation(alice, "Kept", "about lasagne", "ok")
    gone = _conversation(alice, "Gone", "about lasagne too", "ok")
    answer = kept.messages.get(role=Message.Role.ASSISTANT)
    answer.content = "now about gnocchi"
    answer.save(update_fields=["content"])
    assert [h.conversation_id for h in find_conversations(alice, "gnocchi")] == [kept.id]
    gone.delete()
    assert [h.conversation_id for h in find_conversations(alice, "lasagne")] == [kept.id]
    kept.title = "Renamed to polenta"
    kept.save(update_fields=["title"])
    assert [h.conversation_id for h in find_conversations(alice, "polenta")] == [kept.id]
    assert find_conversations(alice, "kept") == []


@pytest.mark.django_db
def test_a_search_costs_the_same_queries_for_few_or_many_matches(alice):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            hits = find_conversations(alice, "ravioli")
        assert hits
        return len(captured)

    for i in range(3):
        _conversation(alice, f"Ravioli {i}", "ravioli?", "ravioli!")
    few = queries()
    for i in range(40):
        _conversation(alice, f"Ravioli {i}", "ravioli?", "ravioli!")
    assert queries() == few
    assert len(find_conversations(alice, "ravioli")) == 20


@pytest.mark.django_db
def test_the_search_page_links_to_the_conversation_at_its_message(client, alice, bob):
    pasta = _conversation(alice, "Dinner", "What shall I cook?", "A Roman carbonara.")
    answer = pasta.messages.get(role=Message.Role.ASSISTANT)
    client.force_login(alice)
    html = client.get("/conversations/search/", {"q": "carbonara"}).content.decode()
    assert f'href="/c/{pasta.id}/#message-{answer.id}"' in html
    client.force_login(bob)
    html = client.get("/conversations/search/", {"q": "carbonara"}).content.decode()
    assert "No conversation matches." in html and "Dinner" not in html


@pytest.mark.django_db
def test_the_full_text_indexes_exist_after_every_migration():
    """A later migration that remakes chat_message on SQLite (Django copies the table)
    would drop the triggers that keep the FTS5 table: this says so."""
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            names = {row[0] for row in cursor.fetchall()}
            assert {
                f"chat_{table}_fts_{event}"
                for table in ("message", "conversation")
                for event in ("insert", "update", "delete")
            } <= names
        else:
            cursor.execute("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%%_fts'")
            names = {row[0] for row in cursor.fetchall()}
            assert names == {"chat_message_content_fts", "chat_conversation_title_fts"}
