"""Scenario 4: database work per answer as the answer grows (10 to 10,000 chunks).

A worker process drives chat.consumers.ChatConsumer through a Channels
WebsocketCommunicator, with a real logged-in session, against the loopback upstream
(python -m bench.upstream), on a fresh SQLite file, and counts every SQL statement on every
thread and connection from the `send` frame to `message.end`. Each answer is in a new
conversation; the first answer of the day writes a couple more rows (the day's totals), so
one answer warms up first. Flat means the same statements for every size.

Streaming checkpoints (STREAM_CHECKPOINT_SECONDS, default 5 s) save the text so far once per
interval of streaming time, whatever the number of chunks; they are set far apart for the
size series so that its counts do not depend on the machine's speed, and measured apart
(full mode) on streams of fixed duration.
"""

from __future__ import annotations

import json
import sys
import tempfile

from bench import harness
from bench.harness import UpstreamProcess, ask_text, run_worker, summary, summary_losses

NAME = "4 dbwork"


def main(quick: bool = False) -> int:
    sizes = [10, 100, 1000] if quick else [10, 100, 1000, 10_000]
    if harness.OPTIONS["smoke"]:
        sizes = [10, 100]
    print(f"-- scenario 4: database work per answer of {sizes} chunks...", flush=True)
    upstream = UpstreamProcess(None)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dbwork-") as tmp:
            args = [str(s) for s in sizes] + ([] if quick else ["--checkpoints"])
            result = run_worker(
                "bench.dbwork",
                args,
                tmp,
                upstream.base_url,
                UPSTREAM_MAX_RETRIES="0",
                STREAM_CHECKPOINT_SECONDS="3600",
            )
    finally:
        upstream.close()
    harness.RESULTS["dbwork"] = result
    return _print(result)


def _print(r: dict) -> int:
    rows = r["answers"]
    print()
    print("Scenario 4: database work per answer (SQLite, from `send` to `message.end`)")
    header = (
        f"{'chunks':>7} {'delta frames':>12} {'seconds':>8} {'statements':>10} {'reads':>6} "
        f"{'writes':>6} {'other':>6}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        other = row["statements"] - row["reads"] - row["writes"]
        print(
            f"{row['chunks']:>7,} {row['frames']:>12,} {row['seconds']:>8.2f} "
            f"{row['statements']:>10} {row['reads']:>6} {row['writes']:>6} {other:>6}"
        )
    kinds = {tuple(row["write_kinds"]) for row in rows}
    for write_kinds in kinds:
        print(f"writes: {', '.join(write_kinds)}")
    print("other: savepoints and their releases (nested atomic blocks)")
    shapes = {(row["statements"], row["writes"]) for row in rows}
    flat = len(shapes) == 1
    errors = [e for row in rows for e in row["errors"]]
    print(f"flat: {'yes' if flat else 'NO'} (same statements and writes at every size)")
    for row in r.get("checkpoints", []):
        print(
            f"checkpoints every {row['interval']:g} s, a {row['seconds']:.1f} s stream of "
            f"{row['chunks']} chunks: {row['writes']} writes, of which "
            f"{row['checkpoint_writes']} checkpoint UPDATEs"
        )
    for error in errors:
        print(f"!! LOST, REORDERED OR FAILED: {error}")
    print()
    first, last = rows[0], rows[-1]
    summary(
        NAME,
        f"statements per answer, {first['chunks']:,} to {last['chunks']:,} chunks",
        " / ".join(str(row["statements"]) for row in rows)
        + f" ({' / '.join(str(row['writes']) for row in rows)} writes)",
        "flat",
        flat,
        timing=False,
    )
    summary_losses(NAME, errors)
    return (0 if flat else 1) + len(errors)


# -- the worker --------------------------------------------------------------------------


def _worker(sizes: list[int], checkpoints: bool) -> None:
    import asyncio
    import time

    import django

    django.setup()
    from importlib import import_module

    from channels.testing import WebsocketCommunicator
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.core.management import call_command
    from django.db.backends.utils import CursorWrapper

    from bench.harness import Received, check_order
    from chat.consumers import ChatConsumer

    call_command("migrate", verbosity=0)
    user = get_user_model().objects.create(username="bench")
    Store = import_module(settings.SESSION_ENGINE).SessionStore
    session = Store()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()

    statements: list[str] = []
    execute, executemany = CursorWrapper.execute, CursorWrapper.executemany

    def counted_execute(self, sql, params=None):
        statements.append(sql)
        return execute(self, sql, params)

    def counted_executemany(self, sql, param_list):
        statements.append(sql)
        return executemany(self, sql, param_list)

    CursorWrapper.execute = counted_execute
    CursorWrapper.executemany = counted_executemany

    def kind(sql: str) -> str:
        return sql.lstrip().split(None, 1)[0].upper()

    def table(sql: str) -> str:
        words = sql.replace('"', "").split()
        for key in ("INTO", "UPDATE", "FROM"):
            if key in (w.upper() for w in words):
                index = [w.upper() for w in words].index(key)
                return words[index + 1]
        return "?"

    async def answer(comm, n: int, rate: float = 0) -> dict:
        statements.clear()
        started = time.monotonic()
        await comm.send_json_to(
            {"type": "send", "content": ask_text(n, rate), "conversation_id": None}
        )
        got = Received(sent=started)
        while True:
            frame = await comm.receive_output(timeout=120)
            text = frame.get("text", "")
            if text.startswith('{"type": "delta"'):
                got.frames.append((time.monotonic(), text))
            elif text.startswith('{"type": "message.end"'):
                got.end = json.loads(text)
                break
        seconds = time.monotonic() - started
        done = list(statements)
        writes = [s for s in done if kind(s) in ("INSERT", "UPDATE", "DELETE")]
        problem = check_order(got.chunks(direct=False), n)
        errors = [problem] if problem else []
        if got.end.get("state") != "complete":
            errors.append(f"the answer ended {got.end.get('state')}")
        return {
            "chunks": n,
            "frames": len(got.frames),
            "seconds": seconds,
            "statements": len(done),
            "reads": sum(kind(s) == "SELECT" for s in done),
            "writes": len(writes),
            "write_kinds": [f"{kind(s)} {table(s)}" for s in writes],
            "errors": errors,
        }

    async def run() -> dict:
        comm = WebsocketCommunicator(ChatConsumer.as_asgi(), "/ws/chat/")
        comm.scope["user"] = user
        comm.scope["session"] = Store(session_key=session.session_key)
        connected, _ = await comm.connect()
        assert connected
        await answer(comm, 1)  # the first answer of the day also creates the day's totals
        rows = [await answer(comm, n) for n in sizes]
        checkpoint_rows = []
        if checkpoints:
            interval = 0.5
            settings.STREAM_CHECKPOINT_SECONDS = interval
            for seconds in (2.0, 4.0):
                row = await answer(comm, int(seconds * 20), rate=20)
                checkpoint_rows.append(
                    {
                        "interval": interval,
                        "seconds": row["seconds"],
                        "chunks": row["chunks"],
                        "writes": row["writes"],
                        "checkpoint_writes": sum(
                            1 for w in row["write_kinds"] if w == "UPDATE chat_message"
                        )
                        - 1,  # the final save of the answer is an UPDATE too
                    }
                )
        await comm.disconnect()
        return {"answers": rows, "checkpoints": checkpoint_rows}

    print(json.dumps(asyncio.run(run())))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    _worker([int(a) for a in arguments if a.isdigit()], "--checkpoints" in arguments)
