"""Scenario: the admin usage report and the budget check over a large ledger.

For each database (SQLite, and PostgreSQL when it answers on 127.0.0.1:5432) a worker
process fills a fresh database with N ledger rows spread over 90 days, 50 users and 4
models (in SQL, in the database), rebuilds the daily totals from them, then times the
pages admins and users open and the check made before every upstream request.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.harness import OPTIONS, summary

ROOT = Path(__file__).resolve().parent.parent
USERS, MODELS, DAYS = 50, ("grok-4", "grok-4-fast", "grok-3-mini", "grok-code-fast-1"), 90
PG_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def main(quick: bool = False) -> int:
    rows = 20_000 if quick else 1_000_000
    repeat = 5 if quick else 20
    if OPTIONS["smoke"]:
        rows, repeat = 2_000, 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(_run_worker("SQLite", {"SQLITE_PATH": f"{tmp}/bench.sqlite3"}, rows, repeat))
    if _port_open("127.0.0.1", 5432):
        name = f"bench_chat_{os.getpid()}"
        _psql(f"CREATE DATABASE {name}")
        try:
            url = f"postgres://postgres@127.0.0.1:5432/{name}"
            results.append(_run_worker("PostgreSQL", {"DATABASE_URL": url}, rows, repeat))
        finally:
            _psql(f"DROP DATABASE IF EXISTS {name}")
    else:
        print("!! PostgreSQL does not answer on 127.0.0.1:5432: its row is skipped", flush=True)
    _print(results, rows)
    for result in results:
        timing = result["pages"].get("admin report, 90 days", {})
        if isinstance(timing.get("queries"), int):
            summary(
                "6 report",
                f"admin report, 90 days, {rows:,} rows, {result['database']}",
                f"p50 {timing['p50_ms']:.0f} ms, p99 {timing['p99_ms']:.0f} ms, "
                f"{timing['queries']} queries",
            )
    return 0


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _psql(sql: str) -> None:
    import psycopg

    with psycopg.connect(
        PG_ADMIN_URL.replace("postgres://", "postgresql://"), autocommit=True
    ) as c:
        c.execute(sql)


def _run_worker(label: str, env: dict[str, str], rows: int, repeat: int) -> dict:
    print(f"-- {label}: filling {rows:,} ledger rows...", flush=True)
    full_env = {
        **os.environ,
        "DJANGO_ALLOWED_HOSTS": "testserver",
        "DJANGO_SECRET_KEY": "bench-not-secret-" + "x" * 40,
        **env,
    }
    full_env.pop("DATABASE_URL", None) if "DATABASE_URL" not in env else None
    out = subprocess.run(
        [sys.executable, "-m", "bench.report", str(rows), str(repeat)],
        cwd=ROOT,
        env=full_env,
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["database"] = label
    return result


def _print(results: list[dict], rows: int) -> None:
    print()
    print(
        f"Usage report over {rows:,} ledger rows ({USERS} users, {len(MODELS)} models, {DAYS} days)"
    )
    header = f"{'database':<11} {'fill s':>7} {'rebuild s':>9}  {'page':<34} {'p50 ms':>7} {'p99 ms':>7} {'queries':>7}"
    print(header)
    print("-" * len(header))
    for result in results:
        first = True
        for page, timing in result["pages"].items():
            lead = (
                f"{result['database']:<11} {result['fill_s']:>7.1f} {result['rebuild_s']:>9.1f}"
                if first
                else " " * 29
            )
            print(
                f"{lead}  {page:<34} {timing['p50_ms']:>7.1f} {timing['p99_ms']:>7.1f} "
                f"{timing['queries']:>7}"
            )
            first = False
    print()


# -- the worker: runs in its own process with the database chosen by its environment ---


def _worker(rows: int, repeat: int) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model

    from chat.models import Budget, UsageDay

    User = get_user_model()
    users = [User(username=f"user{i:02d}") for i in range(USERS)]
    User.objects.bulk_create(users)
    staff = User.objects.create_user("staff", is_staff=True, is_superuser=True)
    first_user = User.objects.order_by("id").first()
    Budget.objects.create(user=None, period="month", max_tokens=10**9)

    started = time.perf_counter()
    _fill(connection, rows, first_user.id)
    fill_s = time.perf_counter() - started
    started = time.perf_counter()
    UsageDay.rebuild()
    rebuild_s = time.perf_counter() - started
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    else:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    admin, user = Client(), Client()
    admin.force_login(staff)
    user.force_login(first_user)
    pages = {
        # The report is the UsageDay changelist: the last 30 days unless ?period= says more.
        "admin report, 30 days": (admin, "/admin/usage/"),
        "admin report, 90 days": (admin, "/admin/usage/?period=90"),
        "admin report CSV, 90 days": (admin, "/admin/usage/?period=90&format=csv"),
        "admin drill-down, one user": (admin, f"/admin/usage/user/{first_user.id}/"),
        "user's Usage page": (user, "/usage/"),
    }
    timings: dict[str, dict] = {}
    for name, (client, url) in pages.items():
        samples = []
        queries = 0
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as captured:
                started = time.perf_counter()
                response = client.get(url)
                if hasattr(response, "streaming_content"):
                    b"".join(response.streaming_content)
                samples.append((time.perf_counter() - started) * 1000)
            queries = len(captured)
        if response.status_code != 200:
            timings[name] = {
                "p50_ms": 0.0,
                "p99_ms": 0.0,
                "queries": f"HTTP {response.status_code}",
            }
            continue
        timings[name] = {**_stats(samples), "queries": queries}

    from chat.limits import limits_for, refusal_for

    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        refusal_for(first_user, limits_for(first_user))
        samples.append((time.perf_counter() - started) * 1000)
    timings["budget check before a send"] = {**_stats(samples), "queries": "-"}
    print(json.dumps({"fill_s": fill_s, "rebuild_s": rebuild_s, "pages": timings}))


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(ordered), "p99_ms": p99}


COLUMNS = (
    "user_id, created_at, api_style, requested_model, model, response_id, system_fingerprint, "
    "finish_reason, outcome, source, prompt_tokens, cached_prompt_tokens, completion_tokens, "
    "reasoning_tokens, total_tokens, reported_cost_ticks, cost_in_usd_ticks, cost_source, purpose"
)


def _fill(connection, rows: int, first_user_id: int) -> None:
    """Insert `rows` ledger rows in the database itself (no Python loop over rows)."""
    models_case = " ".join(f"WHEN {i} THEN '{m}'" for i, m in enumerate(MODELS))
    select = f"""
        SELECT {first_user_id} + (i % {USERS}), {{created_at}}, 'chat_completions',
               CASE (i / {USERS}) % {len(MODELS)} {models_case} END,
               CASE (i / {USERS}) % {len(MODELS)} {models_case} END,
               '', '', 'stop',
               CASE WHEN i % 50 = 0 THEN 'error' ELSE 'complete' END,
               CASE WHEN i % 50 = 0 THEN 'estimated' ELSE 'reported' END,
               100 + i % 900, i % 100, 20 + i % 400, i % 300,
               100 + i % 900 + 20 + i % 400 + i % 300,
               (100 + i % 900) * 2000 + (20 + i % 400 + i % 300) * 5000,
               (100 + i % 900) * 2000 + (20 + i % 400 + i % 300) * 5000,
               'reported', 'answer'
    """
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            created = f"now() - make_interval(days => i % {DAYS}, secs => (i * 7) % 86400)"
            cursor.execute(
                f"INSERT INTO chat_usage ({COLUMNS}) "
                + select.format(created_at=created)
                + f" FROM generate_series(0, {rows - 1}) AS i"
            )
        else:
            created = (
                f"strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (i % {DAYS}) || ' days', "
                f"'-' || ((i * 7) % 86400) || ' seconds')"
            )
            cursor.execute(
                f"WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n "
                f"WHERE i < {rows - 1}) INSERT INTO chat_usage ({COLUMNS}) "
                + select.format(created_at=created)
                + " FROM n"
            )


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]))
