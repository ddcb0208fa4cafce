"""Where Daphne's time goes: py-spy on the Daphne process while a relay run is measured.

`python -m bench sweep ttft throughput --profile DIR` samples the Daphne process with
py-spy (100 Hz, without pausing it, every thread) during the relay run of each scenario's
largest level, writes py-spy's raw stacks to DIR, and prints the functions that took the
most samples: by self time (the frame running when sampled), by package, and inclusive
time of the app's own functions and the libraries' entry points. Idle threads are not
sampled, so shares are of the process's busy time (which may exceed one core when the
database thread runs SQLite without the GIL).

    python -m bench.profile FILE    summarises a raw file again
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bench import harness

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    candidate = Path(sys.executable).with_name("py-spy")
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def profiled(pid: int, name: str) -> Iterator[None]:
    """Sample `pid` with py-spy while the block runs, if --profile asked for it."""
    directory = harness.OPTIONS.get("profile_dir")
    tool = py_spy()
    if not directory or not pid:
        yield
        return
    if tool is None:
        print("!! --profile: py-spy is not installed (pip install py-spy)", flush=True)
        yield
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    out = Path(directory) / f"{name}.txt"
    process = subprocess.Popen(
        [
            tool,
            "record",
            "--pid",
            str(pid),
            "--rate",
            "100",
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    if out.exists():
        text = summarise(out)
        (Path(directory) / f"{name}.summary.txt").write_text(text)
        harness.PROFILES[name] = text
        print(text, flush=True)


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "lib/python3.":
                file = "stdlib/" + file.split("/", 1)[-1]
    return file


def _package(file: str) -> str:
    short = _short(file)
    if short.startswith("stdlib/"):
        parts = short.split("/")
        return "stdlib " + (parts[1].removesuffix(".py") if len(parts) > 1 else "")
    return short.split("/", 1)[0].removesuffix(".py")


def _frames(stack: str) -> list[tuple[str, str]]:
    out = []
    for frame in stack.split(";"):
        match = FRAME.match(frame.strip())
        if match:
            out.append((match["func"], match["file"]))
    return out


# What a sample was doing: the first rule to match a frame, from the running frame outwards.
ACTIVITIES = (
    ("_clean_expired", "channel layer: InMemoryChannelLayer._clean_expired"),
    ("get_new_connection", "database: opening connections"),
    ("BaseDatabaseWrapper.connect", "database: opening connections"),
    ("BaseDatabaseWrapper._close", "database: closing connections"),
    ("BaseDatabaseWrapper.close", "database: closing connections"),
    ("django/db/", "database: queries (ORM and SQLite)"),
    ("channels/layers.py", "channel layer: the rest (group_send, receive, copies, tasks)"),
    ("django/template", "templates"),
    ("send_json", "websocket frames out (channels, Daphne, autobahn, Twisted)"),
    ("channels/generic/websocket.py", "websocket frames out (channels, Daphne, autobahn, Twisted)"),
    ("daphne/", "Daphne, autobahn and Twisted (frames in and out, connections)"),
    ("autobahn/", "Daphne, autobahn and Twisted (frames in and out, connections)"),
    ("twisted/", "Daphne, autobahn and Twisted (frames in and out, connections)"),
    ("httpx_sse/", "upstream: HTTP read and SSE parse (httpx, httpcore, h11, anyio)"),
    ("httpcore/", "upstream: HTTP read and SSE parse (httpx, httpcore, h11, anyio)"),
    ("httpx/", "upstream: HTTP read and SSE parse (httpx, httpcore, h11, anyio)"),
    ("h11/", "upstream: HTTP read and SSE parse (httpx, httpcore, h11, anyio)"),
    ("anyio/", "upstream: HTTP read and SSE parse (httpx, httpcore, h11, anyio)"),
    ("asyncio/timeouts.py", "asyncio.timeout_at around each upstream read"),
    ("chat/upstream.py", "app: chat/upstream.py"),
    ("chat/streams.py", "app: chat/streams.py"),
    ("chat/consumers.py", "app: chat/consumers.py"),
    ("django/", "Django (request handling, middleware)"),
    ("channels/", "channels (consumer dispatch)"),
    ("asgiref/", "asgiref (sync_to_async hand-offs)"),
)


# Frames under every sample of a thread: they say nothing of what it was doing.
ROOTS = {
    "_run_module_as_main",
    "_run_code",
    "<module>",
    "CommandLineInterface.entrypoint",
    "CommandLineInterface.run",
    "Server.run",
    "AsyncioSelectorReactor.run",
    "BaseEventLoop.run_forever",
    "BaseEventLoop._run_once",
    "Handle._run",
    "Context.run",
    "_worker",
    "Thread.run",
    "Thread._bootstrap_inner",
    "Thread._bootstrap",
}


def activity(frames: list[tuple[str, str]], thread: str) -> str:
    for func, file in reversed(frames):
        if func in ROOTS:
            continue
        where = f"{func} {file}"
        for key, label in ACTIVITIES:
            if key in where:
                return label
    if thread.startswith("ThreadPoolExecutor"):
        return "database thread: waiting for work, hand-offs"
    return "the rest: event loop (selectors, callbacks, wake-ups) and other"


def summarise(path: Path, top: int = 22) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    activities: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        head, _, _ = stack.partition(";")
        name = head.partition("): ")[2].strip() or head.strip()
        activities[activity(_frames(stack), name)] += n
        if name == "MainThread":
            name = "MainThread (the event loop)"
        elif name.startswith("ThreadPoolExecutor"):
            name = f"{name} (sync_to_async: the database)"
        threads[name] += n
        frames = _frames(stack)
        if not frames:
            continue
        func, file = frames[-1]
        self_time[f"{func} ({_short(file)})"] += n
        packages[_package(file)] += n
        seen = set()
        for func, file in frames:
            key = f"{func} ({_short(file)})"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
    if not total:
        return f"{path.name}: no samples\n"

    def share(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    lines = [f"Profile {path.name}: {total} samples of busy threads"]
    if threads:
        lines.append(
            "  by thread: " + ", ".join(f"{k} {share(v)}" for k, v in threads.most_common())
        )
    lines.append("  by activity (what the running frame was part of):")
    lines += [f"    {share(n)}  {name}" for name, n in activities.most_common()]
    lines.append("  self time by package:")
    lines += [f"    {share(n)}  {name}" for name, n in packages.most_common(12)]
    lines.append("  self time by function:")
    lines += [f"    {share(n)}  {name}" for name, n in self_time.most_common(top)]
    lines.append("  inclusive time (the app's functions and library entry points):")
    interesting = [
        (name, n)
        for name, n in inclusive.most_common()
        if name.split("(")[-1].startswith(("chat/", "channels/", "daphne/", "autobahn/"))
        or any(
            key in name
            for key in (
                "database_sync_to_async",
                "sync_to_async",
                "httpx",
                "httpcore",
                "httpx_sse",
                "json/",
                "django/db",
                "django/template",
            )
        )
    ]
    lines += [f"    {share(n)}  {name}" for name, n in interesting[: top + 10]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(summarise(Path(sys.argv[1])))
