"""The app as people run it: Daphne in its own process, on a fresh SQLite file."""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def manage(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def app_env(tmp: Path, upstream_base_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "XAI_", "UPSTREAM_"))
    }
    env.update(
        DJANGO_SECRET_KEY="test-secret-key-for-live-server-only",
        DJANGO_DEBUG="false",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        SQLITE_PATH=str(tmp / "db.sqlite3"),
        XAI_BASE_URL=upstream_base_url,
        XAI_API_KEY="xai-live-test-key-0123456789",
        UPSTREAM_MAX_RETRIES="0",
        PYTHONUNBUFFERED="1",
        # Off unless a test turns them on: a title request takes an upstream reply.
        CHAT_TITLES="false",
        DJANGO_SETTINGS_MODULE="tests.live_settings",
    )
    env.update(extra)
    # Each live app gets its own database and Redis prefix, even on shared servers.
    if env.get("DATABASE_URL", "").startswith("postgres"):
        env["DATABASE_URL"] = fresh_postgres_database(env["DATABASE_URL"])
    if env.get("REDIS_URL") and "REDIS_PREFIX" not in extra:
        env["REDIS_PREFIX"] = f"test-{uuid.uuid4().hex[:12]}"
    return env


def fresh_postgres_database(url: str) -> str:
    """A new, empty database beside the one `url` names, dropped when the tests end."""
    import psycopg

    name = f"live_{uuid.uuid4().hex[:12]}"
    base, _, _ = url.rpartition("/")
    admin = base.replace("postgres://", "postgresql://", 1) + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    atexit.register(drop)
    return f"{base}/{name}"


def postgres_url() -> str | None:
    """A database URL on the local PostgreSQL server, if it answers."""
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return "postgres://postgres@127.0.0.1:5432/postgres"
    except OSError:
        return None


@contextmanager
def daphne(env: dict[str, str], log: Path) -> Iterator[str]:
    with daphne_process(env, log) as (url, _process):
        yield url


@contextmanager
def daphne_process(
    env: dict[str, str], log: Path, port: int | None = None, options: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Daphne in its own process, answering /healthz; the URL and the process.
    `options` are more of Daphne's command-line options."""
    port = port or free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                *options,
                "chatsite.asgi:application",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"daphne did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def prepare_database(env: dict[str, str], *, staff: bool = False) -> None:
    """Migrate a fresh database and create alice (and a staff user)."""
    manage(env, "migrate", "--noinput")
    script = "from django.contrib.auth.models import User;"
    script += "User.objects.create_user('alice', password='alice-password-1');"
    if staff:
        script += "User.objects.create_superuser('staff', password='staff-password-1')"
    manage(env, "shell", "-c", script)


@contextmanager
def live_app(
    tmp: Path, upstream_base_url: str, *, staff: bool = False, setup: str = "", **extra: str
) -> Iterator[str]:
    """The app in Daphne on a fresh database with alice (and a staff user), talking to
    `upstream_base_url`: its URL. `setup`: a script for `manage.py shell` to run first;
    `extra`: more of its environment."""
    env = app_env(tmp, upstream_base_url, **extra)
    prepare_database(env, staff=staff)
    if setup:
        manage(env, "shell", "-c", setup)
    with daphne(env, tmp / "daphne.log") as url:
        yield url


def session_cookie(url: str, username: str, password: str) -> str:
    """Log in through the login form; the Cookie header of that session."""
    with httpx.Client(base_url=url) as client:
        client.get("/accounts/login/")
        response = client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302, response.text
        return f"sessionid={client.cookies['sessionid']}"


def answer_text(frames: list[dict]) -> str:
    """An answer's text as a tab shows it: the last snapshot, then the deltas after it."""
    out = ""
    for frame in frames:
        if frame["type"] == "snapshot":
            out = frame["content"]
        elif frame["type"] == "delta":
            out += frame["content"]
    return out


class RedisServer:
    """A redis-server of the test's own on a free port, which the test may stop and start
    again on the same port (as a restart of Redis in production). Nothing is persisted:
    a restarted Redis has forgotten every key, as after a crash without a snapshot."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.dir = tmp / "redis"
        self.dir.mkdir(exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port)]
            + ["--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60  # a hang guard, not a deadline
        while True:
            try:
                self.command("PING")
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stops it and waits until it has exited: its port refuses connections."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None

    def command(self, *args: str) -> object:
        with redis.Redis.from_url(self.url, socket_timeout=60) as client:
            return client.execute_command(*args)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
