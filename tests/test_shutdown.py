"""Stopping the server: SIGTERM saves answers as interrupted; after SIGKILL the next start does."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest

from tests.fake_upstream import FakeUpstream, paced_stream, slow_stream
from tests.live import app_env, daphne_process, manage, prepare_database, session_cookie
from tests.test_processes import _connect, _frames_until

LEDGER = """
import json
from chat.models import Message
rows = [
    {"state": m.state, "content": m.content, "error": m.error,
     "usage": None if not hasattr(m, "usage") else
        {"outcome": m.usage.outcome, "source": m.usage.source,
         "completion_tokens": m.usage.completion_tokens, "prompt_tokens": m.usage.prompt_tokens}}
    for m in Message.objects.filter(role="assistant").select_related("usage").order_by("id")
]
print(json.dumps(rows))
"""


def _answers(env: dict[str, str]) -> list[dict]:
    return json.loads(manage(env, "shell", "-c", LEDGER).strip().splitlines()[-1])


@pytest.fixture
def env(fake_upstream_server: FakeUpstream, tmp_path) -> dict[str, str]:
    fake_upstream_server.reset()
    env = app_env(
        tmp_path,
        fake_upstream_server.base_url,
        STREAM_CHECKPOINT_SECONDS="0.2",
        PYTHONFAULTHANDLER="1",
    )
    prepare_database(env)
    return env


async def _start_answer(url: str, cookie: str):
    ws = await _connect(url, cookie)
    await ws.send(json.dumps({"type": "send", "content": "count slowly", "conversation_id": None}))
    start, _ = await _frames_until(ws, "message.start")
    await _frames_until(ws, "delta")
    return ws, start


async def test_sigterm_saves_the_partial_answer_as_interrupted_and_tells_the_browser(
    env: dict[str, str], fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    fake_upstream_server.queue(slow_stream(count=400, delay=0.02, text="tick "))
    with daphne_process(env, tmp_path / "daphne.log") as (url, process):
        ws, start = await _start_answer(url, session_cookie(url, "alice", "alice-password-1"))
        text = ""
        while text.count("tick") < 2:  # some of the answer has been said, however slow
            delta, _ = await _frames_until(ws, "delta")
            text += delta["content"]
        process.send_signal(signal.SIGTERM)
        end, _ = await _frames_until(ws, "message.end", timeout=15)
        assert end["state"] == "interrupted"
        assert end["message_id"] == start["message"]["id"]
        assert end["usage"]["source"] == "estimated"
        assert await asyncio.to_thread(process.wait, 15) == 0
    [answer] = _answers(env)
    assert answer["state"] == "interrupted" and answer["content"].startswith("tick tick")
    assert answer["usage"]["outcome"] == "interrupted"
    assert answer["usage"]["source"] == "estimated"
    assert answer["usage"]["completion_tokens"] == (len(answer["content"]) + 3) // 4


async def test_after_sigkill_the_next_start_marks_the_answer_interrupted(
    env: dict[str, str], fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    # Paced: a piece each time the test looks, so the answer cannot end before the kill
    # (it did, with a stream on a timer, on a busy machine), yet a checkpoint comes.
    fake_upstream_server.queue(paced_stream(["tick "] * 200))
    with daphne_process(env, tmp_path / "first.log") as (url, process):
        cookie = session_cookie(url, "alice", "alice-password-1")
        ws, start = await _start_answer(url, cookie)
        # Until a checkpoint has saved some of the text.
        for _ in range(120):
            fake_upstream_server.next_piece()
            [saved] = await asyncio.to_thread(_answers, env)
            if saved["content"]:
                break
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait, 10)
        await ws.close()
    [left] = _answers(env)
    assert left["state"] == "streaming" and left["usage"] is None, left
    assert left["content"].startswith("tick "), "the checkpoint saved what was said"

    with daphne_process(env, tmp_path / "second.log") as (url, _):
        [answer] = _answers(env)
        assert answer["state"] == "interrupted" and answer["content"].startswith(left["content"])
        assert answer["usage"]["outcome"] == "interrupted"
        assert answer["usage"]["source"] == "estimated"
        assert answer["usage"]["completion_tokens"] >= (len(left["content"]) + 3) // 4 > 0
        # A tab that comes back learns how the answer ended.
        async with _connect(url, cookie) as ws:
            conversation_id = start["conversation_id"]
            await ws.send(json.dumps({"type": "watch", "conversation_id": conversation_id}))
            watching, _ = await _frames_until(ws, "watching")
            [recent] = watching["recent"]
            assert recent["state"] == "interrupted" and recent["content"] == answer["content"]
