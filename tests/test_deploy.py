"""The Docker files, kept right by construction: no Docker engine runs here, so what can
be run (the image's start command and health check) runs, and the rest is checked against
the settings."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.live import ROOT, free_port

SETTINGS = (ROOT / "chatsite" / "settings.py").read_text()
# The names settings.py reads from the environment: os.getenv("X") and env*("X", ...).
SETTINGS_NAMES = set(re.findall(r"(?:getenv|env[a-z]*)\(\s*\"([A-Z][A-Z0-9_]+)\"", SETTINGS))
START_SCRIPT_NAMES = {"MIGRATE_AT_START", "PORT", "BIND_ADDRESS"}
# Where `make run` serves (Makefile), from .env or the environment.
MAKE_RUN_NAMES = {"HOST", "PORT"}
COMPOSE_NAMES = {"CHAT_DOMAIN", "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD"}


def _env_example() -> dict[str, str]:
    names = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"^#?\s*([A-Z][A-Z0-9_]+)=(.*)$", line)
        if match:
            names[match[1]] = match[2]
    return names


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_settings_read_the_names_we_think_they_read():
    assert {"DJANGO_SECRET_KEY", "XAI_API_KEY", "DATABASE_URL", "REDIS_URL"} <= SETTINGS_NAMES
    assert "XAI_API_STYLE" in SETTINGS


def test_every_name_in_the_env_example_is_read_by_someone():
    known = SETTINGS_NAMES | START_SCRIPT_NAMES | MAKE_RUN_NAMES | COMPOSE_NAMES | {"XAI_API_STYLE"}
    assert set(_env_example()) - known == set()


def test_every_setting_is_in_the_env_example_or_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = {name for name in SETTINGS_NAMES if name not in _env_example() and name not in readme}
    assert missing == set()


def test_the_compose_file_gives_the_app_only_names_it_reads():
    services = _compose()["services"]
    for name in ("app", "migrate"):
        environment = services[name]["environment"]
        assert set(environment) <= SETTINGS_NAMES | START_SCRIPT_NAMES, name
        assert services[name]["env_file"] == ".env"
    used = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert used <= set(_env_example()), used - set(_env_example())


def test_the_compose_file_runs_two_app_processes_behind_a_proxy_with_pg_and_redis():
    compose = _compose()
    services = compose["services"]
    assert services["app"]["deploy"]["replicas"] == 2
    assert services["app"]["environment"]["MIGRATE_AT_START"] == "false"
    assert services["app"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["app"]["environment"]["DATABASE_URL"].startswith("postgres://")
    assert services["app"]["environment"]["REDIS_URL"].startswith("redis://redis:")
    assert any(v.startswith("pgdata:") for v in services["db"]["volumes"])
    assert any(v.startswith("redisdata:") for v in services["redis"]["volumes"])
    assert {"pgdata", "redisdata"} <= set(compose["volumes"])
    [caddyfile] = [v for v in services["proxy"]["volumes"] if "Caddyfile" in v]
    caddy = (ROOT / caddyfile.split(":")[0]).read_text()
    assert "reverse_proxy" in caddy and "health_uri /healthz" in caddy
    assert "name app" in caddy and "port 8000" in caddy


def test_the_dockerfile_is_multi_stage_non_root_and_migrates_only_at_start():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) == 2
    [user] = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert user not in ("root", "0")
    runs = " ".join(re.findall(r"^RUN (.+?)(?<!\\)$", dockerfile, re.M | re.S))
    assert "collectstatic" in runs and "migrate" not in runs
    assert 'CMD ["/app/docker/start.sh"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "docker/healthcheck.py" in dockerfile
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (ROOT / source).exists(), source
    assert os.access(ROOT / "docker" / "start.sh", os.X_OK)


def test_the_dockerfiles_dependency_list_is_the_projects():
    # The builder stage installs what this prints: the pinned runtime dependencies.
    [command] = re.findall(r'/venv/bin/python -c "(.+?)" >', (ROOT / "Dockerfile").read_text())
    out = subprocess.run(
        [sys.executable, "-c", command.replace("\\n", "\n").replace("'\n'", "'\\n'")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "Django==5.2.19" in out or any(line.lower().startswith("django==") for line in out)
    assert any(line.startswith("daphne==") for line in out)
    assert not any(line.startswith(("pytest", "playwright")) for line in out)


@pytest.fixture
def started(tmp_path):
    """docker/start.sh as the image runs it, on loopback, behind a pretend TLS proxy."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "XAI_", "REDIS"))}
    env.pop("DATABASE_URL", None)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        PORT=str(port),
        BIND_ADDRESS="127.0.0.1",
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY="start-script-test-" + "k" * 40,
        DJANGO_ALLOWED_HOSTS="chat.example.com",
        DJANGO_SECURE_PROXY_SSL_HEADER="true",
    )
    log = open(tmp_path / "start.log", "wb")
    process = subprocess.Popen(
        [str(ROOT / "docker" / "start.sh")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield port, env, process, tmp_path / "start.log"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(15)
        log.close()


def _healthcheck(env: dict[str, str]) -> int:
    script = ROOT / "docker" / "healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True).returncode


def test_the_start_command_migrates_serves_and_passes_the_health_check(started):
    port, env, process, log = started
    deadline = time.monotonic() + 60
    while _healthcheck(env) != 0:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    text = log.read_text()
    assert "Applying chat.0001_initial... OK" in text
    # A plain request from outside the proxy is sent to https; the health check is not.
    response = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": "chat.example.com"})
    assert response.status_code == 301
    assert response.headers["location"] == "https://chat.example.com/healthz"
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    assert _healthcheck(env) == 1
