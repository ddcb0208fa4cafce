"""`make run` as a user runs it, in a copy of the project with a .env file: where it
listens (HOST, PORT) and what reaches the settings, the real environment winning."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import ROOT, free_port

VENV = Path(sys.prefix)

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or not (VENV / "bin" / "dotenv").exists(),
    reason="needs make and the venv's dotenv (make install)",
)


def _project_copy(tmp: Path, dotenv: str) -> Path:
    """The project as `make run` sees it, with this .env: chatsite/ is copied, not linked,
    because settings.py puts staticfiles/ and data/ beside its real path."""
    project = tmp / "project"
    project.mkdir()
    for name in ("Makefile", "manage.py", "pyproject.toml"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "chatsite", project / "chatsite")
    for name in ("chat", "static", "templates"):
        (project / name).symlink_to(ROOT / name)
    (project / ".env").write_text(dotenv)
    return project


def _environment(**extra: str) -> dict[str, str]:
    # What the tests run with must not decide this: only .env and `extra` configure the app.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "XAI_", "UPSTREAM_", "CHAT_"))
        and k not in ("DATABASE_URL", "REDIS_URL", "SQLITE_PATH", "HOST", "PORT")
    }
    env.update(extra)
    return env


def _make(project: Path, *args: str) -> list[str]:
    # This venv, as installed: -o keeps make from installing it again.
    return ["make", "-C", str(project), f"VENV={VENV}", "-o", f"{VENV}/.installed", *args]


@pytest.fixture
def dotenv(tmp_path: Path) -> Iterator[str]:
    yield "\n".join(
        [
            "# as .env.example has them",
            "HOST=127.0.0.2",
            f"PORT={free_port()}",
            "DJANGO_ALLOWED_HOSTS=127.0.0.2",
            "DJANGO_SECRET_KEY=from-the-dotenv-file-0123456789-abcdefghijklmnopqrstuvwxyz",
            f"SQLITE_PATH={tmp_path / 'db.sqlite3'}",
            "XAI_API_KEY=xai-from-the-dotenv-file",
            "CHAT_MAX_IMAGES=2",
            "",
        ]
    )


def test_make_run_listens_on_host_from_the_dotenv_file_and_the_port_the_environment_sets(
    tmp_path: Path, dotenv: str
):
    project = _project_copy(tmp_path, dotenv)
    port = free_port()
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        # Its own process group: make, the shell and Daphne stop together.
        process = subprocess.Popen(
            _make(project, "run"),
            env=_environment(PORT=str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.2:{port}/healthz"
        deadline = time.monotonic() + 90
        while True:
            try:
                response = httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # 200: the host is one .env allows (DJANGO_ALLOWED_HOSTS reached the settings).
        assert response.status_code == 200, response.text
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
        output = log.read_text()
        assert f"open http://127.0.0.2:{port}/ and create the first admin account" in output
        # The key came from .env: no warning that it is missing.
        assert "XAI_API_KEY is not set" not in output
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


SHOW_SETTINGS = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.XAI_API_KEY, s.SECRET_KEY[:16], s.ALLOWED_HOSTS, s.CHAT_MAX_IMAGES)"
)


def test_the_settings_read_the_dotenv_file_and_a_real_variable_wins_over_it(
    tmp_path: Path, dotenv: str
):
    project = _project_copy(tmp_path, dotenv)
    # A target of our own with the Makefile's own DOTENV prefix, as `make run` uses it.
    target = f"show: ; $(DOTENV) $(BIN)/python -c '{SHOW_SETTINGS}'"
    env = _environment(DJANGO_SETTINGS_MODULE="chatsite.settings", CHAT_MAX_IMAGES="3")
    result = subprocess.run(
        _make(project, "--no-print-directory", f"--eval={target}", "show"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.split("\n")[-2] == "xai-from-the-dotenv-file from-the-dotenv- ['127.0.0.2'] 3"
    )


def test_without_a_dotenv_file_make_run_uses_the_environment_alone(tmp_path: Path):
    project = _project_copy(tmp_path, "")
    (project / ".env").unlink()
    target = f"show: ; $(DOTENV) $(BIN)/python -c '{SHOW_SETTINGS}'"
    env = _environment(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        XAI_API_KEY="xai-from-the-environment",
        DJANGO_SECRET_KEY="from-the-environment-0123456789",
    )
    result = subprocess.run(
        _make(project, "--no-print-directory", f"--eval={target}", "show"),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2].startswith(
        "xai-from-the-environment from-the-environ ['127.0.0.1', 'localhost']"
    )
