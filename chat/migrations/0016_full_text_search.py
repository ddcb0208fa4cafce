"""Full-text search (chat.finder): the database's own engine, nothing else to run.

SQLite: FTS5 external-content tables over chat_message(content) and chat_conversation(title),
kept by triggers on insert, update and delete (a deleted conversation's messages go with
the cascade), and filled from the rows that exist. Prefix indexes of 2 to 4 characters
make a search as you type ("pyth*") one doclist to read, not the merge of every word it
starts (a common prefix took 400 ms over 100,000 messages without them). A later migration
that remakes either table on SQLite (Django copies it to alter it) drops their triggers:
it must make them again (tests/test_finder.py checks that they exist).

PostgreSQL: the messages' tsvector in a stored generated column, chat_message.search_vector
(not a field of the model: the database keeps it), with a GIN index; the titles, short, a
GIN expression index on the expression Django's SearchVector("title", config="simple")
writes. Why a stored column for the messages, not an expression index: for a word in most
messages the planner rightly walks the newest messages instead of the index, and with an
expression it had to compute to_tsvector() again for every message it read (5 s for one
search over 100,000 messages; docs/benchmarks.md, "Issue 16: search"). 'simple' config:
lower-cases only, no stemming or stop words of one language, so it works for every one.
Only a message's first 100,000 characters are indexed there: a tsvector holds at most 1 MB
(a longer one is an error, and the message could not be saved at all); 100,000 characters
of distinct four-byte words make about 520 KB. Adding the column rewrites chat_message once."""

from django.db import migrations

SQLITE_FORWARD = [
    "CREATE VIRTUAL TABLE chat_message_fts USING fts5("
    " content, content='chat_message', content_rowid='id',"
    " tokenize='unicode61 remove_diacritics 2', prefix='2 3 4')",
    "CREATE TRIGGER chat_message_fts_insert AFTER INSERT ON chat_message BEGIN"
    " INSERT INTO chat_message_fts(rowid, content) VALUES (new.id, new.content); END",
    "CREATE TRIGGER chat_message_fts_delete AFTER DELETE ON chat_message BEGIN"
    " INSERT INTO chat_message_fts(chat_message_fts, rowid, content)"
    " VALUES ('delete', old.id, old.content); END",
    # Only when the text changes: a streaming answer's other columns change often.
    "CREATE TRIGGER chat_message_fts_update AFTER UPDATE OF content ON chat_message BEGIN"
    " INSERT INTO chat_message_fts(chat_message_fts, rowid, content)"
    " VALUES ('delete', old.id, old.content);"
    " INSERT INTO chat_message_fts(rowid, content) VALUES (new.id, new.content); END",
    "INSERT INTO chat_message_fts(chat_message_fts) VALUES ('rebuild')",
    "CREATE VIRTUAL TABLE chat_conversation_fts USING fts5("
    " title, content='chat_conversation', content_rowid='id',"
    " tokenize='unicode61 remove_diacritics 2', prefix='2 3 4')",
    "CREATE TRIGGER chat_conversation_fts_insert AFTER INSERT ON chat_conversation BEGIN"
    " INSERT INTO chat_conversation_fts(rowid, title) VALUES (new.id, new.title); END",
    "CREATE TRIGGER chat_conversation_fts_delete AFTER DELETE ON chat_conversation BEGIN"
    " INSERT INTO chat_conversation_fts(chat_conversation_fts, rowid, title)"
    " VALUES ('delete', old.id, old.title); END",
    "CREATE TRIGGER chat_conversation_fts_update AFTER UPDATE OF title ON chat_conversation BEGIN"
    " INSERT INTO chat_conversation_fts(chat_conversation_fts, rowid, title)"
    " VALUES ('delete', old.id, old.title);"
    " INSERT INTO chat_conversation_fts(rowid, title) VALUES (new.id, new.title); END",
    "INSERT INTO chat_conversation_fts(chat_conversation_fts) VALUES ('rebuild')",
]
SQLITE_BACKWARD = [
    "DROP TRIGGER chat_conversation_fts_update",
    "DROP TRIGGER chat_conversation_fts_delete",
    "DROP TRIGGER chat_conversation_fts_insert",
    "DROP TABLE chat_conversation_fts",
    "DROP TRIGGER chat_message_fts_update",
    "DROP TRIGGER chat_message_fts_delete",
    "DROP TRIGGER chat_message_fts_insert",
    "DROP TABLE chat_message_fts",
]
POSTGRESQL_FORWARD = [
    "ALTER TABLE chat_message ADD COLUMN search_vector tsvector GENERATED ALWAYS AS"
    " (to_tsvector('simple'::regconfig, left(COALESCE(content, ''), 100000))) STORED",
    "CREATE INDEX chat_message_content_fts ON chat_message USING gin (search_vector)",
    "CREATE INDEX chat_conversation_title_fts ON chat_conversation"
    " USING gin (to_tsvector('simple'::regconfig, COALESCE(title, '')))",
]
POSTGRESQL_BACKWARD = [
    "DROP INDEX chat_conversation_title_fts",
    "DROP INDEX chat_message_content_fts",
    "ALTER TABLE chat_message DROP COLUMN search_vector",
]


def _run(statements: dict[str, list[str]]):
    def run(apps, schema_editor) -> None:
        for sql in statements.get(schema_editor.connection.vendor, []):
            schema_editor.execute(sql)

    return run


class Migration(migrations.Migration):
    dependencies = [
        ("chat", "0015_theme_and_imports"),
    ]

    operations = [
        migrations.RunPython(
            _run({"sqlite": SQLITE_FORWARD, "postgresql": POSTGRESQL_FORWARD}),
            _run({"sqlite": SQLITE_BACKWARD, "postgresql": POSTGRESQL_BACKWARD}),
        ),
    ]
