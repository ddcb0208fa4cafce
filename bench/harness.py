"""What the relay scenarios share: the processes, the two kinds of client, the arithmetic.

Three processes take part in a relay measurement:

- the loopback upstream (`python -m bench.upstream`), streaming numbered, time-stamped chunks;
- the app under Daphne (tests.live.daphne_process), on a fresh SQLite file with the
  in-memory channel layer, as `make run` serves it (with --services: a fresh PostgreSQL
  database and Redis, as in production);
- this process, the client: websockets speaking docs/protocol.md to the app (the relay),
  and httpx reading the very same kind of stream from the upstream (the direct reference).

On a machine with two cores or more, Daphne is pinned to a core of its own and the client
and upstream share another (`--no-pin` leaves them to the scheduler): one Daphne process
runs Python on one core at a time, and the load generator then neither steals from it nor
is slowed by it. While a direct reference runs Daphne idles, and the client may use every
core. Each chunk carries the upstream's CLOCK_MONOTONIC at the moment it was
written; the client stamps it again on receipt, so a chunk's delivery delay is the same
measurement through the relay and directly, taken in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.live import app_env, daphne_process, manage, migrate_database  # noqa: E402

# -- options shared by every scenario (set by bench.__main__) ---------------------------

OPTIONS: dict[str, Any] = {
    "pin": True,
    "quick": False,
    "smoke": False,
    "profile_dir": None,
    "services": False,
}
# --services: the relay scenarios on PostgreSQL and Redis, as in production.
PG_URL = "postgres://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/13"
# Rows of the closing summary: (scenario, figure, value, target, verdict).
SUMMARY: list[tuple[str, str, str, str, str]] = []
# Every scenario's figures, written as JSON with --json.
RESULTS: dict[str, Any] = {}
# Profile summaries by name (--profile).
PROFILES: dict[str, str] = {}


def have_psutil() -> bool:
    return find_spec("psutil") is not None


def summary(
    scenario: str,
    figure: str,
    value: str,
    target: str = "",
    held: bool | None = None,
    timing: bool = True,
) -> None:
    """A row of the closing table. Timing targets get no verdict in quick mode, whose sizes
    are not the targets' sizes."""
    if timing and OPTIONS.get("quick"):
        held = None
        target = f"({target} at full size)" if target else ""
    verdict = "" if held is None else ("held" if held else "MISSED")
    SUMMARY.append((scenario, figure, value, target, verdict))


def summary_losses(scenario: str, errors: list[str]) -> None:
    """The closing table's row for what every scenario checks: nothing lost or reordered."""
    summary(
        scenario,
        "chunks lost or reordered, answers failed",
        "none" if not errors else f"{len(errors)} problems (above)",
        "none",
        not errors,
        timing=False,
    )


def load() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    plan = cpu_plan()
    stores = (
        "relay on PostgreSQL + Redis"
        if OPTIONS.get("services")
        else "relay on SQLite + in-memory channel layer"
    )
    pinning = (
        f"Daphne on CPU {sorted(plan[0])}, client and upstream on {sorted(plan[1])}"
        if plan
        else "no CPU pinning"
    )
    return (
        f"machine: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}; "
        f"{pinning}; {stores}; load average {load()}"
    )


# -- arithmetic --------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; nan when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# -- file descriptors and CPUs -----------------------------------------------------------


def raise_fd_limit(want: int = 65536) -> int:
    """Raise this process's open-file limit (children inherit it); the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cpu_plan() -> tuple[set[int], set[int]] | None:
    """(the app's CPUs, the load generator's CPUs), or None to leave them to the scheduler."""
    if not OPTIONS.get("pin") or not hasattr(os, "sched_getaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def pin_process(pid: int, cpus: set[int]) -> None:
    """Pin every thread of `pid` (threads made later inherit it from their parent)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def pinned_self(cpus: set[int] | None) -> Iterator[None]:
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@contextlib.contextmanager
def client_anywhere() -> Iterator[None]:
    """While a direct reference runs Daphne idles: the client may use every core then, so
    that the reference is not slowed by sharing the upstream's core."""
    plan = cpu_plan()
    if plan is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, plan[0] | plan[1])
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class CpuMeter:
    """CPU seconds and peak resident memory of some processes between start() and stop()."""

    def __init__(self, pids: dict[str, int], sample_every: float = 0.25) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.sample_every = sample_every
        self.peak_rss: dict[str, int] = {}
        self.cpu: dict[str, float] = {}
        self.wall = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self, name: str) -> int:
        return self.procs[name].memory_info().rss

    def _cpu_now(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            times = proc.cpu_times()
            out[name] = times.user + times.system
        return out

    def start(self) -> None:
        self._cpu0 = self._cpu_now()
        self._t0 = time.monotonic()
        self.peak_rss = {name: self.rss(name) for name in self.procs}
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.sample_every):
            for name in self.procs:
                with contextlib.suppress(Exception):
                    self.peak_rss[name] = max(self.peak_rss[name], self.rss(name))

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.wall = time.monotonic() - self._t0
        now = self._cpu_now()
        self.cpu = {name: now[name] - self._cpu0[name] for name in self.procs}

    def percent(self, name: str) -> float:
        """CPU used by `name`, in % of one core, over the measured wall time."""
        return 100 * self.cpu[name] / self.wall if self.wall else 0.0


# -- the loopback upstream ---------------------------------------------------------------


class UpstreamProcess:
    def __init__(self, cpus: set[int] | None) -> None:
        command = [sys.executable, "-m", "bench.upstream"]
        for cpu in sorted(cpus or ()):
            command += ["--cpu", str(cpu)]
        self.process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the loopback upstream did not start: {line!r}")
        self.port = int(line.split()[1])
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.pid = self.process.pid

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()


# -- the app -----------------------------------------------------------------------------

SESSIONS_SCRIPT = """
import json
from importlib import import_module
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import get_user_model
Store = import_module(settings.SESSION_ENGINE).SessionStore
keys = []
for i in range({users}):
    user = get_user_model().objects.create(username=f"bench{{i:04d}}")
    session = Store()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    keys.append(session.session_key)
print(json.dumps(keys))
"""


# The benchmarks measure the relay: up to 1,000 streams of 20 users, far over the limits
# each user has by default.
NO_USER_LIMITS = {
    "CHAT_MAX_CONCURRENT_ANSWERS": "0",
    "CHAT_MAX_MESSAGES_PER_MINUTE": "0",
    "CHAT_MAX_SOCKETS_PER_USER": "0",
}


@dataclass
class App:
    """A migrated database with users logged in, and the environment to serve it."""

    tmp: Path
    env: dict[str, str]
    cookies: list[str]
    url: str = ""
    pid: int = 0
    starts: int = 0

    @classmethod
    def prepare(cls, tmp: Path, upstream: UpstreamProcess, users: int = 20, **extra) -> App:
        env = app_env(
            tmp,
            upstream.base_url,
            UPSTREAM_CONNECT_TIMEOUT="30",
            UPSTREAM_FIRST_TOKEN_TIMEOUT="120",
            UPSTREAM_IDLE_TIMEOUT="120",
            UPSTREAM_TOTAL_TIMEOUT="600",
            DJANGO_LOG_LEVEL="WARNING",
            **{**NO_USER_LIMITS, **extra},
        )
        for name in ("DATABASE_URL", "REDIS_URL"):
            if name not in extra:
                env.pop(name, None)
        migrate_database(env)  # a copy of a migrated template: migrate takes seconds
        out = manage(env, "shell", "-c", SESSIONS_SCRIPT.format(users=users))
        keys = json.loads(out.strip().splitlines()[-1])
        return cls(tmp=tmp, env=env, cookies=[f"sessionid={key}" for key in keys])

    def saved_answer(self, message_id: int) -> tuple[str, str] | None:
        """(content, state) of an answer as the app saved it."""
        sql = "SELECT content, state FROM chat_message WHERE id = %s"
        url = self.env.get("DATABASE_URL", "")
        if url.startswith("postgres"):
            import psycopg

            with psycopg.connect(url.replace("postgres://", "postgresql://", 1)) as db:
                return db.execute(sql, (message_id,)).fetchone()
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.env["SQLITE_PATH"])) as db:
            return db.execute(sql.replace("%s", "?"), (message_id,)).fetchone()

    @contextlib.contextmanager
    def serve(self, cpus: set[int] | None) -> Iterator[App]:
        """Daphne on this database, pinned to `cpus`; a fresh process each time."""
        self.starts += 1
        log = self.tmp / f"daphne-{self.starts}.log"
        with daphne_process(self.env, log) as (url, process):
            if cpus:
                pin_process(process.pid, cpus)
            self.url, self.pid = url, process.pid
            try:
                yield self
            finally:
                self.url, self.pid = "", 0


@contextlib.contextmanager
def relay_rig(users: int = 20, **extra: str) -> Iterator[tuple[UpstreamProcess, App, Any]]:
    """The upstream and a prepared app (not yet served); yields (upstream, app, app CPUs).

    The client's garbage collector is off meanwhile (scenarios call quiet() between runs):
    a full collection over the arrival records of a large run pauses the client for tens of
    milliseconds, which would show up as delivery delay of the relay and the reference.
    """
    raise_fd_limit()
    plan = cpu_plan()
    app_cpus, load_cpus = plan if plan else (None, None)
    if OPTIONS.get("services"):
        # A fresh PostgreSQL database (dropped at exit) and a Redis prefix of its own.
        extra = {"DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL, **extra}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp, pinned_self(load_cpus):
        upstream = UpstreamProcess(load_cpus)
        gc.disable()
        try:
            app = App.prepare(Path(tmp), upstream, users=users, **extra)
            yield upstream, app, app_cpus
        except BaseException:
            kept = Path(tempfile.mkdtemp(prefix="bench-logs-"))
            for log in Path(tmp).glob("*.log"):
                shutil.copy(log, kept / log.name)
            print(f"!! the run failed: Daphne's logs are kept in {kept}", flush=True)
            raise
        finally:
            gc.enable()
            upstream.close()


def app_errors(app: App) -> str:
    """The exceptions in Daphne's logs, counted, with a copy of the logs kept for reading."""
    kept = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    counts: Counter[str] = Counter()
    for log in app.tmp.glob("*.log"):
        shutil.copy(log, kept / log.name)
        for line in log.read_text(errors="replace").splitlines():
            if EXCEPTION_LINE.match(line):
                counts[line.strip()[:160]] += 1
    top = "; ".join(f"{n} x {line}" for line, n in counts.most_common(3))
    return f"Daphne's logs (kept in {kept}): {top or 'no exception logged'}"


EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\w*: ")


def split_failures(results: list, kind: str, app: App | None, errors: list[str]) -> list:
    """The results that are not exceptions; the exceptions become one error line."""
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        first = failed[0]
        where = f"; {app_errors(app)}" if app is not None else ""
        errors.append(
            f"{kind}: {len(failed)} of {len(results)} answers failed "
            f"({type(first).__name__}: {first}){where}"
        )
    return [r for r in results if not isinstance(r, BaseException)]


def quiet() -> None:
    """Collect the client's garbage now, between measurements."""
    gc.collect()


# -- streams and what arrived ------------------------------------------------------------


@dataclass
class Received:
    """One answer as a client saw it: when it asked, and each message with its arrival."""

    sent: float
    frames: list[tuple[float, str]] = field(default_factory=list)
    end: dict[str, Any] | None = None
    conversation_id: int | None = None
    message_id: int | None = None

    def chunks(self, direct: bool) -> list[tuple[int, float, float]]:
        """(seq, upstream write time, arrival time) of every chunk, in arrival order."""
        out = []
        for arrived, raw in self.frames:
            obj = json.loads(raw)
            if direct:
                choices = obj.get("choices") or []
                text = (choices[0].get("delta") or {}).get("content") or "" if choices else ""
            else:
                text = obj["content"]
            for token in text.split():
                seq, _, stamp = token.partition(":")
                out.append((int(seq), int(stamp) / 1e6, arrived))
        return out


def check_order(chunks: list[tuple[int, float, float]], expected: int) -> str | None:
    """Why these chunks are not exactly 0..expected-1 in order, or None."""
    seqs = [c[0] for c in chunks]
    if seqs == list(range(expected)):
        return None
    missing = expected - len(set(seqs))
    return (
        f"{len(seqs)} chunks arrived for {expected}: {missing} missing, "
        f"{len(seqs) - len(set(seqs))} doubled, in order: {seqs == sorted(seqs)}"
    )


def ask_text(n: int, rate: float = 0) -> str:
    return f"bench n={n} rate={rate:g}"


ANSWER_TIMEOUT = 120.0  # seconds: the longest relay run seen took 45 s


class Tab:
    """A browser tab: one websocket to /ws/chat/ with a logged-in session."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.conversation_id: int | None = None

    @classmethod
    async def open(cls, url: str, cookie: str) -> Tab:
        from websockets.asyncio.client import connect

        ws = await connect(
            url.replace("http://", "ws://") + "/ws/chat/",
            origin=url,
            additional_headers={"Cookie": cookie},
            compression=None,
            proxy=None,
            ping_interval=None,
            max_size=None,
            max_queue=None,
            open_timeout=60,
        )
        return cls(ws)

    async def ask(self, text: str, new: bool = False) -> Received:
        """Send `text` (in this tab's conversation unless `new`), read up to message.end.

        An answer that has not ended within ANSWER_TIMEOUT raises TimeoutError: counted as a
        failure (the app lost it), it does not hang the run.
        """
        frame = {
            "type": "send",
            "content": text,
            "conversation_id": None if new else self.conversation_id,
        }
        payload = json.dumps(frame)
        received = Received(sent=time.monotonic())
        async with asyncio.timeout(ANSWER_TIMEOUT):
            await self.ws.send(payload)
            frames = received.frames
            while True:
                raw = await self.ws.recv()
                arrived = time.monotonic()
                if raw.startswith('{"type": "delta"'):
                    frames.append((arrived, raw))
                elif raw.startswith('{"type": "message.end"'):
                    received.end = json.loads(raw)
                    return received
                else:
                    obj = json.loads(raw)
                    if obj["type"] == "conversation":
                        self.conversation_id = obj["conversation"]["id"]
                    elif obj["type"] == "message.start":
                        received.conversation_id = obj["conversation_id"]
                        received.message_id = obj["message"]["id"]
                    elif obj["type"] == "error":
                        raise RuntimeError(f"the app refused a send: {obj}")

    async def close(self) -> None:
        await self.ws.close()


async def open_tabs(url: str, cookies: list[str], count: int, at_once: int = 50) -> list[Tab]:
    gate = asyncio.Semaphore(at_once)

    async def one(i: int) -> Tab:
        async with gate:
            return await Tab.open(url, cookies[i % len(cookies)])

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def close_tabs(tabs: list[Tab]) -> None:
    await asyncio.gather(*(tab.close() for tab in tabs), return_exceptions=True)


def direct_client(connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=30, read=None, write=30, pool=60),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        trust_env=False,
    )


async def direct(client: httpx.AsyncClient, base_url: str, text: str) -> Received:
    """The reference: the same stream read straight from the upstream with httpx."""
    from httpx_sse import EventSource

    body = {
        "model": "grok-4",
        "messages": [{"role": "user", "content": text}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": "Bearer xai-bench", "Accept": "text/event-stream"}
    received = Received(sent=time.monotonic())
    frames = received.frames
    async with (
        asyncio.timeout(ANSWER_TIMEOUT),
        client.stream(
            "POST", base_url + "/chat/completions", json=body, headers=headers
        ) as response,
    ):
        async for event in EventSource(response).aiter_sse():
            arrived = time.monotonic()
            data = event.data
            if data.startswith("[DONE]"):
                received.end = {"state": "complete"}
                break
            if '"content":"' in data:
                frames.append((arrived, data))
    return received


def run_worker(module: str, args: list[str], db_dir: str, upstream_url: str, **env: str) -> dict:
    """Run `python -m <module> <args>` on a fresh SQLite file in `db_dir`, with this
    process's environment less the app's settings; its last stdout line, as JSON."""
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "XAI_", "UPSTREAM_", "DATABASE_URL", "REDIS_"))
    }
    full_env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DJANGO_SECRET_KEY="bench-not-secret-" + "x" * 40,
        SQLITE_PATH=f"{db_dir}/db.sqlite3",
        XAI_BASE_URL=upstream_url,
        XAI_API_KEY="xai-bench-key",
        DJANGO_LOG_LEVEL="WARNING",
        **env,
    )
    # The worker's own migrate then has nothing to do: it would take seconds.
    migrate_database(full_env)
    out = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if out.returncode != 0:
        print(out.stdout, out.stderr)
        raise RuntimeError(f"the {module} worker failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_json(path: str) -> None:
    Path(path).write_text(json.dumps(RESULTS, indent=2, default=str) + "\n")
