"""The app as people run it: Daphne in its own process, on a fresh SQLite file (or a fresh
PostgreSQL database), each a copy of a migrated template made once per test session."""

from __future__ import annotations

import atexit
import hashlib
import importlib.metadata
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
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
    name = f"live_{uuid.uuid4().hex[:12]}"
    _create_postgres_database(url, name, None)
    return f"{url.rpartition('/')[0]}/{name}"


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
    """A fresh database with the migrations applied and alice (and a staff user)."""
    _copy_template(env, _template(env, "alice+staff" if staff else "alice"))


def migrate_database(env: dict[str, str]) -> None:
    """A fresh database with the migrations applied and no user (as `manage.py migrate`)."""
    _copy_template(env, _template(env, ""))


# A live app's database is a copy of a template that this process made once: migrate and a
# shell take seconds, a copy does not. Where SQLite templates are kept: the session's
# temporary directory (tests/conftest.py), or a directory of this process's own, removed
# at exit (the benchmarks).
TEMPLATE_DIR: Path | None = None
# (database server, settings, migrations, users) -> template file or database name.
_TEMPLATES: dict[tuple[str, ...], str] = {}
USERS_SCRIPT = {
    "alice": "from django.contrib.auth.models import User;"
    "User.objects.create_user('alice', password='alice-password-1')",
    "alice+staff": "from django.contrib.auth.models import User;"
    "User.objects.create_user('alice', password='alice-password-1');"
    "User.objects.create_superuser('staff', password='staff-password-1')",
}


def _migrations_digest() -> str:
    """Changes whenever a migration does, so that a template is never stale."""
    digest = hashlib.sha256()
    for package in ("django", "django-axes"):
        digest.update(f"{package}=={importlib.metadata.version(package)};".encode())
    for path in sorted((ROOT / "chat" / "migrations").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _template(env: dict[str, str], users: str) -> str:
    """The template for `env`'s kind of database: migrated, with `users` ("": none)."""
    url = env.get("DATABASE_URL", "")
    server = url.rpartition("/")[0] if url.startswith("postgres") else "sqlite"
    # The settings decide how passwords are hashed, not the tables.
    settings = env.get("DJANGO_SETTINGS_MODULE", "") if users else ""
    key = (server, settings, _migrations_digest(), users)
    if key in _TEMPLATES:
        return _TEMPLATES[key]
    # Kept only once complete: a failed command leaves no template behind to be copied.
    if users:
        template = _new_template(env, key[2], users, _template(env, ""))
        manage(_template_env(env, template), "shell", "-c", USERS_SCRIPT[users])
    else:
        template = _new_template(env, key[2], "migrated", None)
        manage(_template_env(env, template), "migrate", "--noinput")
    _TEMPLATES[key] = template
    return template


def _copy_template(env: dict[str, str], template: str) -> None:
    """The database of `env` made a copy of `template` (on PostgreSQL the empty database
    that app_env() made is dropped and made again from the template)."""
    url = env.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        _copy_postgres_database(url, template)
    else:
        _copy_sqlite_database(Path(template), Path(env["SQLITE_PATH"]))


def _new_template(env: dict[str, str], digest: str, name: str, source: str | None) -> str:
    """A new template database (a copy of `source`, or empty): its file or name."""
    url = env.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        database = f"template_{digest}_{name.replace('+', '_')}_{uuid.uuid4().hex[:8]}"
        _create_postgres_database(url, database, source)
        return database
    directory = _template_dir()
    path = directory / f"{digest}-{name}.sqlite3"
    if source is not None:
        _copy_sqlite_database(Path(source), path)
    return str(path)


def _template_env(env: dict[str, str], template: str) -> dict[str, str]:
    url = env.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        return {**env, "DATABASE_URL": f"{url.rpartition('/')[0]}/{template}"}
    return {**env, "SQLITE_PATH": template}


def _template_dir() -> Path:
    global TEMPLATE_DIR
    if TEMPLATE_DIR is None:
        TEMPLATE_DIR = Path(tempfile.mkdtemp(prefix="grokchat-templates-"))
        atexit.register(shutil.rmtree, TEMPLATE_DIR, ignore_errors=True)
    TEMPLATE_DIR.mkdir(parents=True, exist_ok=True)
    return TEMPLATE_DIR


def _copy_sqlite_database(source: Path, target: Path) -> None:
    # SQLite's online backup: a consistent copy, whatever its WAL file holds.
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _admin_url(url: str) -> str:
    return url.rpartition("/")[0].replace("postgres://", "postgresql://", 1) + "/postgres"


def _create_postgres_database(url: str, name: str, template: str | None) -> None:
    """CREATE DATABASE `name` (from `template`), dropped when the tests end. PostgreSQL
    copies a template only while no session is connected to it: it waits up to five
    seconds for the sessions of the commands that just filled it to end."""
    import psycopg

    admin = _admin_url(url)
    sql = f"CREATE DATABASE {name}" + (f" TEMPLATE {template}" if template else "")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(sql)

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    atexit.register(drop)


def _copy_postgres_database(url: str, template: str) -> None:
    """The database `url` names, empty and unused yet, made again as a copy of `template`."""
    import psycopg

    base, _, name = url.rpartition("/")
    with psycopg.connect(_admin_url(url), autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {name}")
        connection.execute(f"CREATE DATABASE {name} TEMPLATE {template}")


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
