"""Export and import at size (chat.exports): `python -m bench.exports [--quick]`.

On a fresh SQLite database (in a temporary directory), a user with N conversations of 20
messages each (every other one an answer of about 1,200 characters with its ledger row):
the all-conversations export is read through, timing it and counting its queries, then
read through again under tracemalloc for the peak of Python's allocations while it runs
(which should stay that of one batch whatever N is). Then a ChatGPT conversations.json of
N conversations (20 shown messages each, under a hidden system node) is imported (parsed
and saved), timed. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def _setup(tmp: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    os.environ["SQLITE_PATH"] = str(tmp / "db.sqlite3")
    os.environ.pop("DATABASE_URL", None)
    os.environ.pop("REDIS_URL", None)
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-exports-secret")
    # The largest file here (4,000 conversations) is past the default cap of 50 MiB.
    os.environ["CHAT_IMPORT_MAX_BYTES"] = str(1024 * 1024 * 1024)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _fill(user, conversations: int) -> None:
    from django.utils import timezone

    from chat.models import Conversation, Message, Usage

    answer = ("The answer, in some detail. " * 43)[:1200]
    made = Conversation.objects.bulk_create(
        [Conversation(user=user, title=f"Chat {i}", model="grok-4") for i in range(conversations)]
    )
    now = timezone.now()
    for start in range(0, len(made), 200):
        rows = []
        for conversation in made[start : start + 200]:
            for turn in range(20):
                role = "user" if turn % 2 == 0 else "assistant"
                text = f"Question {turn}?" if role == "user" else answer
                rows.append(Message(conversation=conversation, role=role, content=text))
        Message.objects.bulk_create(rows, batch_size=1000)
    # A path per conversation: each message after the one before it.
    ids = list(
        Message.objects.filter(conversation__user=user)
        .order_by("conversation_id", "id")
        .values_list("id", "conversation_id")
    )
    linked = []
    for (previous, c1), (current, c2) in zip(ids, ids[1:], strict=False):
        if c1 == c2:
            linked.append(Message(id=current, parent_id=previous))
    Message.objects.bulk_update(linked, ["parent"], batch_size=1000)
    usage = [
        Usage(
            user=user,
            conversation_id=conversation_id,
            message_id=message_id,
            answer_id=message_id,
            outcome="complete",
            model="grok-4",
            source="reported",
            prompt_tokens=1000,
            completion_tokens=300,
            total_tokens=1300,
            created_at=now,
        )
        for message_id, conversation_id in Message.objects.filter(
            conversation__user=user, role="assistant"
        ).values_list("id", "conversation_id")
    ]
    Usage.objects.bulk_create(usage, batch_size=1000)


def _chatgpt_file(conversations: int) -> bytes:
    items = []
    for i in range(conversations):
        mapping = {"root": {"id": "root", "message": None, "parent": None, "children": []}}
        parent = "root"
        mapping["sys"] = {
            "id": "sys",
            "parent": parent,
            "children": [],
            "message": {
                "author": {"role": "system"},
                "content": {"content_type": "text", "parts": [""]},
                "metadata": {"is_visually_hidden_from_conversation": True},
            },
        }
        parent = "sys"
        for turn in range(20):
            role = "user" if turn % 2 == 0 else "assistant"
            key = f"n{turn}"
            mapping[key] = {
                "id": key,
                "parent": parent,
                "children": [],
                "message": {
                    "author": {"role": role},
                    "create_time": 1700000000 + turn,
                    "content": {"content_type": "text", "parts": [f"{role} text {turn} " * 60]},
                    "metadata": {"model_slug": "gpt-4o"} if role == "assistant" else {},
                    "recipient": "all",
                },
            }
            parent = key
        items.append(
            {
                "title": f"Chat {i}",
                "create_time": 1700000000,
                "mapping": mapping,
                "current_node": parent,
            }
        )
    return json.dumps(items).encode()


def _timed(fn):
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _peak(fn) -> int:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="numbers of conversations, comma-separated")
    args = parser.parse_args(argv)
    sizes = [50, 200] if args.quick else [100, 1000, 4000]
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-exports-") as tmp:
        _setup(Path(tmp))
        from django.contrib.auth import get_user_model
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from chat import exports

        User = get_user_model()
        print(
            "| conversations | messages | export: seconds | MiB | queries | peak MiB "
            "| import ChatGPT: file MiB | seconds | ms a message |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for size in sizes:
            user = User.objects.create_user(f"user{size}")
            _fill(user, size)

            def export(user=user) -> tuple[int, int]:
                with CaptureQueriesContext(connection) as ctx:
                    pieces = exports.all_conversations_json(user)
                    total = sum(len(piece.encode()) for piece in pieces)
                return total, len(ctx.captured_queries)

            (size_bytes, queries), export_s = _timed(export)
            export_peak = _peak(export)
            data = _chatgpt_file(size)
            importer = User.objects.create_user(f"importer{size}")
            _, import_s = _timed(lambda: exports.import_file(importer, data))  # noqa: B023
            print(
                f"| {size:,} | {size * 20:,} | {export_s:.2f} | {size_bytes / 2**20:.1f} "
                f"| {queries} | {export_peak / 2**20:.1f} | {len(data) / 2**20:.1f} "
                f"| {import_s:.2f} | {import_s * 1000 / (size * 20):.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
