"""The API key as the environment gives it: stripped of the whitespace a CRLF `.env` file
leaves, refused at start with a control character inside, and never quoted by an error
(httpx's LocalProtocolError quotes the whole header) in a log, a page, a frame or the
output of a command."""

from __future__ import annotations

import io
import json
import logging
import secrets
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.core.management import CommandError, call_command
from django.test import Client

from chat.models import Message, ModelPrice
from tests.fake_upstream import FakeUpstream
from tests.live import migrate_database
from tests.test_security import clean_env, run_manage

KEY = "xai-TESTKEY-0123456789abcdef"
TELLTALE = "TESTKEY"  # any piece of the key that shows is a leak


def assert_no_key(text: str, where: str) -> None:
    at = text.find(TELLTALE)
    assert at < 0, f"the API key shows in {where}: ...{text[max(0, at - 120) : at + 60]}..."


def app_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        SQLITE_PATH=str(tmp_path / "db.sqlite3"),
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        **extra,
    )


def cut_in_two(key: str, separator: str) -> str:
    """The key with `separator` inside it, so that neither half holds TELLTALE whole."""
    middle = KEY.index(TELLTALE) + 4
    return key[:middle] + separator + key[middle:]


# -- at start, in a fresh process as the app starts ---------------------------------------


def test_a_key_with_a_trailing_cr_lf_or_space_is_stripped_and_works(
    tmp_path: Path, server: FakeUpstream
):
    env = app_env(tmp_path, XAI_BASE_URL=server.base_url)
    migrate_database(env)
    for given in (KEY + "\r\n", KEY + "\r", KEY + "\n", KEY + " ", f" \t{KEY}\t \r\n"):
        server.reset()
        result = run_manage({**env, "XAI_API_KEY": given}, "sync_prices")
        assert result.returncode == 0, (given, result.stdout + result.stderr)
        assert "model prices stored" in result.stdout
        assert server.requests, "nothing reached the upstream"
        assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}


@pytest.mark.parametrize("inside", ["\n", "\r", "\x01", "\x1b", "\x7f", "\t", " ", "\u2028"])
def test_a_key_with_a_control_character_inside_stops_the_app_with_a_clear_error(
    tmp_path: Path, inside: str
):
    result = run_manage(app_env(tmp_path, XAI_API_KEY=cut_in_two(KEY, inside)), "check")
    assert result.returncode != 0
    assert "ImproperlyConfigured: XAI_API_KEY" in result.stderr, result.stderr
    # The error says where the bad character is, never what the key is.
    assert f"character {KEY.index(TELLTALE) + 5} of {len(KEY) + 1}" in result.stderr
    output = result.stdout + result.stderr
    for half in cut_in_two(KEY, "|").split("|"):
        assert half not in output, output


# -- a key that still reaches httpx with a CR LF (set otherwise than by the environment) ----


@pytest.fixture
def crlf_key(upstream: FakeUpstream, settings) -> str:
    """The key as a CRLF .env file gave it before settings stripped it: httpx refuses to send
    it with a LocalProtocolError whose text quotes the whole Authorization header."""
    settings.XAI_API_KEY = KEY + "\r\n"
    return settings.XAI_API_KEY


@pytest.fixture
def every_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record at DEBUG, but httpx's and httpcore's at the WARNING settings.LOGGING
    gives them: httpcore's DEBUG trace quotes the exception verbatim, which only the
    server's log format redacts (the last test here)."""
    caplog.set_level(logging.DEBUG)
    for noisy in ("django", "channels", "asyncio", "chat", "daphne"):
        caplog.set_level(logging.DEBUG, logger=noisy)
    return caplog


@pytest.mark.django_db(transaction=True)
async def test_a_protocol_error_quoting_the_key_stays_out_of_the_log_frames_and_database(
    crlf_key: str, upstream: FakeUpstream, alice, socket_for, every_log
):
    socket = await socket_for(alice)
    await socket.send(type="send", content="hello", conversation_id=None)
    end, frames = await socket.until("message.end")
    assert end["state"] == "error" and end["error"], end
    assert_no_key(every_log.text, "the log")
    assert_no_key(json.dumps(frames), "a websocket frame")
    assert "LocalProtocolError" in every_log.text  # the failure is logged, the key is not
    message = await database_sync_to_async(Message.objects.get)(pk=end["message_id"])
    assert_no_key(message.error, "the saved answer")
    assert upstream.stream_requests() == []  # httpx refused to send it


@pytest.mark.django_db
def test_the_admin_action_that_fetches_prices_never_shows_the_key(crlf_key: str, staff, every_log):
    price = ModelPrice.objects.create(model="grok-3-mini", prompt=1, completion=1)
    client = Client()
    client.force_login(staff)
    response = client.post(
        "/admin/chat/modelprice/",
        {"action": "fetch_from_xai", "_selected_action": [price.pk], "index": 0},
        follow=True,
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert_no_key(page, "the admin's page")
    assert_no_key(client.get("/").content.decode(), "the chat page")
    assert_no_key(every_log.text, "the log")
    assert "Could not fetch prices" in page
    assert "LocalProtocolError" in page  # what went wrong, for the admin


@pytest.mark.django_db
def test_manage_py_sync_prices_never_prints_the_key(crlf_key: str, every_log):
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("sync_prices", stdout=out, stderr=err)
    for where, text in [
        ("the command's error", str(failed.value)),
        ("its output", out.getvalue() + err.getvalue()),
        ("the log", every_log.text),
    ]:
        assert_no_key(text, where)
    assert str(failed.value).startswith("Could not fetch prices")
    assert "LocalProtocolError" in str(failed.value)


def test_the_servers_log_lines_go_out_without_the_key_whoever_logged_it(settings):
    # The last line of defence: whatever a library logs (a traceback included), the
    # handler in settings.LOGGING writes it redacted.
    settings.XAI_API_KEY = KEY
    [handler] = [h for h in logging.getLogger().handlers if type(h) is logging.StreamHandler]
    try:
        raise ValueError(f"Illegal header value {('Bearer ' + KEY + chr(13)).encode()!r}")
    except ValueError as exc:
        record = logging.LogRecord(
            "some.library",
            logging.ERROR,
            __file__,
            1,
            "it said %s",
            (KEY,),
            (ValueError, exc, None),
        )
    line = handler.format(record)
    assert "it said [redacted]" in line and "Illegal header value" in line
    assert_no_key(line, "a log line")
