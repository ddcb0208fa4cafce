"""Many answers at once on the default SQLite database, under Daphne."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.fake_upstream import FakeUpstream, Reply, transcript
from tests.live import app_env, daphne, manage, prepare_database, session_cookie
from tests.test_processes import _connect, _frames_until

STREAMS = 20


@pytest.fixture
def live(fake_upstream_server: FakeUpstream, tmp_path) -> Iterator[tuple[str, dict, object]]:
    fake_upstream_server.reset()
    # One user's twenty answers at once, each in its own tab: over the default limits.
    no_limits = {
        "CHAT_MAX_CONCURRENT_ANSWERS": "0",
        "CHAT_MAX_MESSAGES_PER_MINUTE": "0",
        "CHAT_MAX_SOCKETS_PER_USER": "0",
    }
    env = app_env(tmp_path, fake_upstream_server.base_url, **no_limits)
    prepare_database(env)
    log = tmp_path / "daphne.log"
    with daphne(env, log) as url:
        yield url, env, log


async def test_twenty_answers_finishing_together_are_all_saved(
    live, fake_upstream_server: FakeUpstream
) -> None:
    url, env, log = live
    # Every request waits a moment before its answer, so all twenty end at about once.
    fake_upstream_server.default = Reply(
        body=transcript("fantasy-xai-grok-4-fast-2.sse"), first_delay=1.0
    )
    cookie = session_cookie(url, "alice", "alice-password-1")

    async def one(index: int) -> dict:
        async with _connect(url, cookie) as ws:
            await ws.send(
                json.dumps(
                    {"type": "send", "content": f"question {index}", "conversation_id": None}
                )
            )
            end, _ = await _frames_until(ws, "message.end", timeout=30)
            return end

    ends = await asyncio.gather(*(one(i) for i in range(STREAMS)))
    assert [end["state"] for end in ends] == ["complete"] * STREAMS
    assert all(end["usage"]["total_tokens"] == 296 for end in ends)
    counts = manage(
        env,
        "shell",
        "-c",
        "from chat.models import Message, Usage, UsageDay;"
        "print(Message.objects.filter(role='assistant', state='complete').count(), Usage.objects.count(),"
        " UsageDay.objects.get().requests)",
    )
    assert counts.strip().splitlines()[-1].split() == [str(STREAMS)] * 3
    assert "database is locked" not in log.read_text()
