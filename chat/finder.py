"""Full-text search over a user's conversations: their titles and the text of every message,
with the database's own engine (no extra service). On SQLite, FTS5 tables kept by triggers;
on PostgreSQL, GIN indexes on to_tsvector('simple', ...) (the messages' in a stored column)
queried through django.contrib.postgres.search. Both made by migration 0016_full_text_search.

`find_conversations()` is the one entry point; the vendor-specific parts stay in here.
(chat/search.py is something else: xAI's web and X search tools.)"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.contrib.postgres.search import (
    CombinedSearchQuery,
    SearchHeadline,
    SearchQuery,
    SearchVector,
    SearchVectorField,
)
from django.db import connection
from django.db.models import Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Replace
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from chat.models import Conversation, Message

RESULTS = 20
# Matching messages read, newest first, to find RESULTS distinct conversations: a user with
# more matches than this in fewer conversations sees fewer results (the newest ones).
MESSAGES_SCANNED = 100
MAX_QUERY_CHARS = 200
SNIPPET_WORDS = 16
# Bytes that mark where a match starts and ends in the engine's snippet. Everything else is
# escaped; a message that contains these bytes itself can at worst highlight more text.
START, STOP = "\x02", "\x03"
# 'simple': lower-cases and nothing else, so it works for every language (no stemming or
# stop words of one language: a French or Japanese message is found as it is written).
PG_CONFIG = "simple"
# ts_headline() drops what its parser reads as an HTML tag ("<b>", "<div class=x>"), which
# in a chat is often code the user wrote: it reads a fullwidth "＜" instead of each "<" and
# the snippet gets "<" back, then escaped (a message's own "＜" shows as "<" there).
LESS_THAN = "\uff1c"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WORD = re.compile(r"\w")
_PLAIN_WORD = re.compile(r"[^\W_]+")  # letters and digits, in any script


@dataclass(frozen=True)
class Hit:
    conversation_id: int
    title: SafeString  # HTML: escaped, with <mark> around the matches
    snippet: SafeString  # empty when only the title matched
    message_id: int | None


def terms(query: str) -> list[str]:
    """The user's query as terms: split on white space, control characters dropped, and
    chunks without a letter or digit (`*`, `-`, `(`, a lone quote) left out."""
    cleaned = _CONTROL.sub(" ", query[:MAX_QUERY_CHARS])
    return [chunk for chunk in cleaned.split() if _WORD.search(chunk)]


def fts5_query(query: str) -> str:
    """An FTS5 MATCH expression that finds rows with every term, the last one of two
    characters or more as a prefix (the user is still typing it). Each term is a quoted string, so FTS5 reads none of its
    own syntax (AND, NEAR, `*`, `-`, parentheses, column filters) in what the user typed."""
    found = terms(query)
    quoted = ['"' + term.replace('"', '""') + '"' for term in found]
    # One letter is not a prefix worth it: it would read most of the index (migration
    # 0016 keeps prefix indexes of 2 to 4 characters).
    if found and len(found[-1]) >= 2:
        quoted[-1] += "*"
    return " ".join(quoted)


def marked_html(text: str) -> SafeString:
    """The engine's snippet as HTML: every character escaped, START/STOP turned into
    <mark>/</mark>, always balanced whatever the text contains."""
    parts: list[str] = []
    open_mark = False
    for piece in re.split(f"([{START}{STOP}])", text):
        if piece == START and not open_mark:
            parts.append("<mark>")
            open_mark = True
        elif piece == STOP and open_mark:
            parts.append("</mark>")
            open_mark = False
        elif piece not in (START, STOP):
            parts.append(str(escape(piece)))
    if open_mark:
        parts.append("</mark>")
    return mark_safe("".join(parts))  # noqa: S308 -- every piece escaped above


def find_conversations(user, query: str, limit: int = RESULTS) -> list[Hit]:
    """The user's conversations whose title or any message matches `query`, those with the
    newest matching message first (title matches by the conversation's last activity),
    each with a highlighted snippet of its newest matching message. Four queries whatever
    the number of matches; an empty or unusable query finds nothing."""
    if not terms(query):
        return []
    if connection.vendor == "postgresql":
        return _find_postgresql(user, query, limit)
    if connection.vendor == "sqlite":
        return _find_sqlite(user, query, limit)
    raise NotImplementedError(f"no full-text search on {connection.vendor}")


def _pick(message_rows: list[tuple[int, int]], title_ids: list[int], limit: int) -> list[int]:
    """Conversation ids in result order: one per conversation, newest message match first,
    then conversations matched by their title alone."""
    order: list[int] = []
    for conversation_id, _ in message_rows:
        if conversation_id not in order:
            order.append(conversation_id)
    order += [i for i in title_ids if i not in order]
    return order[:limit]


def _newest_messages(message_rows: list[tuple[int, int]], chosen: list[int]) -> dict[int, int]:
    newest: dict[int, int] = {}
    for conversation_id, message_id in message_rows:
        if conversation_id in chosen:
            newest.setdefault(conversation_id, message_id)
    return newest


def _hits(
    chosen: list[int],
    titles: dict[int, str],
    newest: dict[int, int],
    snippets: dict[int, str],
) -> list[Hit]:
    hits = []
    for conversation_id in chosen:
        message_id = newest.get(conversation_id)
        snippet = snippets.get(message_id, "") if message_id is not None else ""
        hits.append(
            Hit(
                conversation_id=conversation_id,
                title=marked_html(titles[conversation_id]),
                snippet=marked_html(snippet) if snippet else mark_safe(""),
                message_id=message_id,
            )
        )
    return hits


def _find_sqlite(user, query: str, limit: int) -> list[Hit]:
    match = fts5_query(query)
    with connection.cursor() as cursor:
        # FTS5 gives its matches in rowid order at no cost: newest message first.
        cursor.execute(
            "SELECT m.conversation_id, m.id FROM chat_message_fts"
            " JOIN chat_message m ON m.id = chat_message_fts.rowid"
            " JOIN chat_conversation c ON c.id = m.conversation_id"
            " WHERE chat_message_fts MATCH %s AND c.user_id = %s"
            " ORDER BY chat_message_fts.rowid DESC LIMIT %s",
            [match, user.pk, MESSAGES_SCANNED],
        )
        message_rows = [(row[0], row[1]) for row in cursor.fetchall()]
        cursor.execute(
            "SELECT c.id FROM chat_conversation_fts"
            " JOIN chat_conversation c ON c.id = chat_conversation_fts.rowid"
            " WHERE chat_conversation_fts MATCH %s AND c.user_id = %s"
            " ORDER BY c.updated_at DESC, c.id DESC LIMIT %s",
            [match, user.pk, limit],
        )
        title_ids = [row[0] for row in cursor.fetchall()]
        chosen = _pick(message_rows, title_ids, limit)
        if not chosen:
            return []
        newest = _newest_messages(message_rows, chosen)
        marks = ", ".join(["%s"] * len(chosen))
        # Every chosen title, highlighted where it matches (the others as they are).
        cursor.execute(
            "SELECT c.id, COALESCE(f.title, c.title) FROM chat_conversation c LEFT JOIN"
            " (SELECT rowid, highlight(chat_conversation_fts, 0, %s, %s) AS title"
            "  FROM chat_conversation_fts WHERE chat_conversation_fts MATCH %s) f"
            f" ON f.rowid = c.id WHERE c.id IN ({marks})",
            [START, STOP, match, *chosen],
        )
        titles = dict(cursor.fetchall())
        snippets: dict[int, str] = {}
        if newest:
            marks = ", ".join(["%s"] * len(newest))
            cursor.execute(
                "SELECT rowid, snippet(chat_message_fts, 0, %s, %s, '…', %s)"
                " FROM chat_message_fts WHERE chat_message_fts MATCH %s"
                f" AND rowid IN ({marks})",
                [START, STOP, SNIPPET_WORDS, match, *newest.values()],
            )
            snippets = dict(cursor.fetchall())
    return _hits(chosen, titles, newest, snippets)


def pg_query(query: str) -> SearchQuery | CombinedSearchQuery:
    """What the user typed as a PostgreSQL tsquery: websearch_to_tsquery reads any text
    without an error (quotes make a phrase, `-` a NOT, `or` an OR; the rest is words), and
    a last word of letters and digits alone, of two or more, is also a prefix, as on SQLite
    (the user is still typing it). Such a word needs no quoting in to_tsquery's syntax."""
    text = _CONTROL.sub(" ", query[:MAX_QUERY_CHARS])  # PostgreSQL text holds no NUL
    found = terms(text)
    last = found[-1] if found else ""
    if len(last) < 2 or not _PLAIN_WORD.fullmatch(last):
        return SearchQuery(text, search_type="websearch", config=PG_CONFIG)
    prefix = SearchQuery(f"{last.lower()}:*", search_type="raw", config=PG_CONFIG)
    rest = text[: text.rindex(last)]
    if not terms(rest):
        return prefix
    return SearchQuery(rest, search_type="websearch", config=PG_CONFIG) & prefix


def _find_postgresql(user, query: str, limit: int) -> list[Hit]:
    tsquery = pg_query(query)
    # Migration 0016's stored column (not a model field), and for the titles the same
    # expression as its index, so that the GIN indexes are used.
    stored = RawSQL('"chat_message"."search_vector"', [], output_field=SearchVectorField())
    message_rows = list(
        Message.objects.annotate(document=stored)
        .filter(document=tsquery, conversation__user=user)
        .order_by("-id")
        .values_list("conversation_id", "id")[:MESSAGES_SCANNED]
    )
    title_ids = list(
        Conversation.objects.for_user(user)
        .annotate(document=SearchVector("title", config=PG_CONFIG))
        .filter(document=tsquery)
        .order_by("-updated_at", "-id")
        .values_list("id", flat=True)[:limit]
    )
    chosen = _pick(message_rows, title_ids, limit)
    if not chosen:
        return []
    newest = _newest_messages(message_rows, chosen)
    titles = dict(
        Conversation.objects.filter(id__in=chosen)
        .annotate(
            marked=SearchHeadline(
                "title",
                tsquery,
                config=PG_CONFIG,
                start_sel=START,
                stop_sel=STOP,
                highlight_all=True,
            )
        )
        .values_list("id", "marked")
    )
    snippets = dict(
        Message.objects.filter(id__in=newest.values())
        .annotate(
            marked=SearchHeadline(
                Replace("content", Value("<"), Value(LESS_THAN)),
                tsquery,
                max_words=SNIPPET_WORDS,
                min_words=max(1, SNIPPET_WORDS // 2),
                config=PG_CONFIG,
                start_sel=START,
                stop_sel=STOP,
            )
        )
        .values_list("id", "marked")
    )
    snippets = {i: text.replace(LESS_THAN, "<") for i, text in snippets.items()}
    return _hits(chosen, titles, newest, snippets)
