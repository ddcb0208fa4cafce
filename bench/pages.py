"""Scenario 5: the chat pages over a long conversation and a long sidebar.

A worker process fills a fresh SQLite database with bulk_create: users with 10, 1,000 and
10,000 conversations, and for the last of them conversations of 10, 100 and 2,000 messages
on their active path (every other one an answer of about 1,200 characters with its usage
row, half of them with about 400 characters of reasoning); the 2,000-message one also has
50 branches (50 answers regenerated, each old version with a follow-up question and its
answer on its own branch: 150 more messages). It then times GET of the index page (the sidebar shows
the newest 200 conversations) and of each conversation page with Django's test Client,
middleware and template included, and counts the queries of each page with
CaptureQueriesContext. Constant means the same count at every size.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from bench import harness
from bench.harness import UpstreamProcess, run_worker, summary

NAME = "5 pages"
TARGET_MS = 150


def main(quick: bool = False) -> int:
    messages = [10, 200] if quick else [10, 100, 2000]
    conversations = [10, 300] if quick else [10, 1000, 10_000]
    repeat = 5 if quick else 20
    if harness.OPTIONS["smoke"]:
        messages, conversations, repeat = [10, 40], [10, 40], 2
    print(
        f"-- scenario 5: pages of {messages} messages, sidebars over {conversations} "
        "conversations...",
        flush=True,
    )
    upstream = UpstreamProcess(None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
            env = {"DJANGO_ALLOWED_HOSTS": "testserver"}
            if harness.OPTIONS.get("profile_dir"):
                env["BENCH_PROFILE_DIR"] = str(Path(harness.OPTIONS["profile_dir"]).resolve())
            spec = json.dumps(
                {"messages": messages, "conversations": conversations, "repeat": repeat}
            )
            result = run_worker("bench.pages", [spec], tmp, upstream.base_url, **env)
    finally:
        upstream.close()
    harness.RESULTS["pages"] = result
    if harness.OPTIONS.get("profile_dir"):
        for name in ("pages-index", "pages-conversation"):
            path = Path(harness.OPTIONS["profile_dir"]) / f"{name}.summary.txt"
            if path.exists():
                harness.PROFILES[name] = path.read_text()
                print(harness.PROFILES[name])
    return _print(result)


def _print(r: dict) -> int:
    print()
    print(f"Scenario 5: chat pages, server time over {r['repeat']} requests (SQLite)")
    header = f"{'page':<44} {'p50 ms':>7} {'p99 ms':>7} {'queries':>7} {'KiB':>6}"
    print(header)
    print("-" * len(header))
    for row in r["pages"]:
        print(
            f"{row['page']:<44} {row['p50_ms']:>7.1f} {row['p99_ms']:>7.1f} "
            f"{row['queries']:>7} {row['kib']:>6.0f}"
        )
    failures = 0
    for group in ("index", "conversation"):
        rows = [row for row in r["pages"] if row["group"] == group]
        counts = [row["queries"] for row in rows]
        flat = len(set(counts)) == 1
        failures += not flat
        worst = rows[-1]
        print(f"{group} page: queries {'constant' if flat else 'NOT CONSTANT'} ({counts})")
        summary(
            NAME,
            f"{group} page, {worst['size']:,} {'conversations' if group == 'index' else 'messages'}",
            f"p50 {worst['p50_ms']:.0f} ms, p99 {worst['p99_ms']:.0f} ms",
            f"<= {TARGET_MS} ms",
            worst["p99_ms"] <= TARGET_MS,
        )
        summary(
            NAME,
            f"{group} page queries as it grows",
            " / ".join(map(str, counts)),
            "constant",
            flat,
            timing=False,
        )
    print(f"target: <= {TARGET_MS} ms server time, constant queries")
    print()
    return failures


# -- the worker --------------------------------------------------------------------------

ANSWER = (
    "Here is what I found.\n\n"
    + "## A heading\n\n"
    + "Some **bold** text, a [link](https://example.com) and `code`. " * 12
    + "\n\n```python\nfor i in range(10):\n    print(i)\n```\n\n"
    + "- a point\n- another point\n" * 4
)[:1200]
REASONING = ("Thinking about the question step by step. " * 10)[:400]
QUESTION = ("What about this question, asked in a few words more than needed? " * 2)[:120]


def _worker(spec: dict) -> None:
    import datetime as dt
    import statistics
    import time

    import django

    from bench.profile import profiled

    harness.OPTIONS["profile_dir"] = os.environ.get("BENCH_PROFILE_DIR")
    django.setup()
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from chat.models import Conversation, Message, Usage

    call_command("migrate", verbosity=0)
    User = get_user_model()
    now = timezone.now()

    def conversations_for(user, count: int) -> list[Conversation]:
        rows = [
            Conversation(
                user=user,
                title=f"Conversation number {i} about something",
                model="grok-4",
                created_at=now - dt.timedelta(minutes=count - i),
                updated_at=now - dt.timedelta(minutes=count - i),
            )
            for i in range(count)
        ]
        return Conversation.objects.bulk_create(rows, batch_size=2000)

    def message(conversation: Conversation, i: int, **fields) -> Message:
        if i % 2 == 0:
            return Message(conversation=conversation, role="user", content=QUESTION, **fields)
        return Message(
            conversation=conversation,
            role="assistant",
            content=ANSWER,
            reasoning=REASONING if i % 4 == 1 else "",
            state="complete",
            model="grok-4",
            finish_reason="stop",
            ttft_ms=400,
            duration_ms=3000,
            **fields,
        )

    def fill(conversation: Conversation, count: int, branches: int = 0) -> None:
        # One message after the other on the active path (bulk_create sets the ids, in order).
        rows = Message.objects.bulk_create(
            [message(conversation, i) for i in range(count)], batch_size=1000
        )
        for parent, row in zip(rows, rows[1:], strict=False):
            row.parent_id = parent.pk
        Message.objects.bulk_update(rows[1:], ["parent"], batch_size=1000)
        # Each branch: an older version of an answer, with a question and answer after it.
        old = now - dt.timedelta(days=1)
        forks = [rows[i] for i in range(1, count, 2)][:: max(1, count // 2 // max(branches, 1))]
        for fork in forks[:branches]:
            version = message(conversation, 1, parent_id=fork.parent_id, selected_at=old)
            version.save()
            question = message(conversation, 2, parent=version)
            question.save()
            message(conversation, 3, parent=question).save()
        answers = conversation.messages.filter(role="assistant")
        Usage.objects.bulk_create(
            [
                Usage(
                    user_id=conversation.user_id,
                    conversation=conversation,
                    message=answer,
                    outcome="complete",
                    model="grok-4",
                    source="reported",
                    prompt_tokens=1000,
                    completion_tokens=300,
                    total_tokens=1300,
                    cost_in_usd_ticks=123456,
                    cost_source="reported",
                )
                for answer in answers
            ],
            batch_size=1000,
        )

    sidebar_users = {}
    for count in spec["conversations"]:
        user = User.objects.create(username=f"user{count}")
        conversations_for(user, count)
        sidebar_users[count] = user
    big = sidebar_users[max(sidebar_users)]
    long_conversations = {}
    for count in spec["messages"]:
        conversation = Conversation.objects.create(
            user=big, title=f"{count} messages", model="grok-4", updated_at=now
        )
        fill(conversation, count, branches=50 if count == max(spec["messages"]) else 0)
        long_conversations[count] = conversation
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")

    def measure(client: Client, url: str, profile: str = "") -> dict:
        client.get(url)  # warm: templates, the model list
        samples, queries, size = [], 0, 0
        with profiled(os.getpid() if profile else 0, profile):
            for _ in range(spec["repeat"]):
                with CaptureQueriesContext(connection) as captured:
                    started = time.perf_counter()
                    response = client.get(url)
                    samples.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (url, response.status_code)
                queries, size = len(captured), len(response.content)
        ordered = sorted(samples)
        return {
            "p50_ms": statistics.median(ordered),
            "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
            "queries": queries,
            "kib": size / 1024,
        }

    pages = []
    for count, user in sidebar_users.items():
        client = Client()
        client.force_login(user)
        pages.append(
            {
                "group": "index",
                "size": count,
                "page": f"index, sidebar over {count:,} conversations",
                **measure(client, "/", "pages-index" if count == max(sidebar_users) else ""),
            }
        )
    client = Client()
    client.force_login(big)
    for count, conversation in long_conversations.items():
        pages.append(
            {
                "group": "conversation",
                "size": count,
                "page": f"conversation of {count:,} messages"
                + (", 50 branches" if count == max(long_conversations) else ""),
                **measure(
                    client,
                    f"/c/{conversation.id}/",
                    "pages-conversation" if count == max(long_conversations) else "",
                ),
            }
        )
    print(json.dumps({"repeat": spec["repeat"], "pages": pages}))


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
