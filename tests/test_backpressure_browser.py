"""The page acknowledges what it reads (docs/protocol.md, "Flow control"), in headless
Chromium against Daphne: it keeps its socket through a long answer, and gets the answer
back when its socket was closed for falling behind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, WebSocket, WebSocketRoute, expect

from tests.browser import log_in, needs_chromium, wait_ready, wait_until
from tests.fake_upstream import FakeUpstream, Reply, chunk, sse, usage_chunk
from tests.live import app_env, daphne, prepare_database

pytestmark = needs_chromium

CAP = 1024 * 1024
PIECE_CHARS = 8192
PER_ACK = 8  # pieces of an ack's worth: the page acknowledges every 64 KiB


@dataclass
class Live:
    url: str
    log: Path


@pytest.fixture(scope="module")
def live(fake_upstream_server: FakeUpstream, tmp_path_factory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    env = app_env(tmp, fake_upstream_server.base_url, CHAT_SOCKET_BUFFER_BYTES=str(CAP))
    prepare_database(env)
    with daphne(env, tmp / "daphne.log") as url:
        yield Live(url, tmp / "daphne.log")


def long_answer(pieces: int) -> tuple[str, list[bytes]]:
    """An answer in `pieces` chunks and an end; its text and its events."""
    parts = [f"{i:05d} ".ljust(PIECE_CHARS, "abcdefghij"[i % 10]) for i in range(pieces)]
    events = [sse(chunk(part), done=False) for part in parts]
    events.append(sse(chunk(finish="stop"), usage_chunk(9, pieces * PIECE_CHARS // 4)))
    return "".join(parts), events


def is_ack(payload: str | bytes) -> bool:
    return json.loads(payload)["type"] == "ack"


def shows_complete(page: Page, text: str) -> None:
    answer = page.locator("article.message[data-role=assistant]").last
    expect(answer).to_have_attribute("data-state", "complete", timeout=60_000)
    assert answer.locator(".content").inner_text().strip() == text


def test_a_page_acknowledges_what_it_reads_and_keeps_its_socket_through_a_long_answer(
    page: Page, live: Live, fake_upstream_server: FakeUpstream
) -> None:
    sockets: list[WebSocket] = []
    page.on("websocket", lambda socket: sockets.append(socket))
    text, events = long_answer(pieces=1 + 32 * PER_ACK)  # 2 MiB, twice the cap
    # As a model does, the upstream is slower than the network: the next 64 KiB come once
    # the page has acknowledged the last (without acks the socket would close at 1 MiB).
    fake_upstream_server.queue(Reply(pieces=events, paced=True))
    log_in(page, live.url, "alice", "alice-password-1")
    wait_ready(page)
    [socket] = sockets
    page.fill("#prompt", "Tell me everything")
    page.keyboard.press("Enter")
    for _ in range(32):
        with socket.expect_event("framesent", predicate=is_ack, timeout=60_000):
            for _ in range(PER_ACK):
                fake_upstream_server.next_piece()
    fake_upstream_server.next_piece()  # the end

    shows_complete(page, text)
    assert len(sockets) == 1 and not socket.is_closed()
    expect(page.locator("#connection-status")).to_have_attribute("data-state", "connected")


def test_a_page_closed_for_falling_behind_reconnects_and_gets_the_whole_answer(
    page: Page, live: Live, fake_upstream_server: FakeUpstream
) -> None:
    closed: list[int | None] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        if closed:
            return  # the page's second socket: everything passes both ways

        def from_page(message: str | bytes) -> None:
            if not is_ack(message):  # the first socket's acks never reach the server
                server.send(message)

        def from_server(code: int | None, reason: str | None) -> None:
            closed.append(code)
            ws.close(code=code, reason=reason)

        ws.on_message(from_page)
        server.on_close(from_server)

    page.route_web_socket("**/ws/chat/", route)
    text, events = long_answer(pieces=2 * CAP // PIECE_CHARS + 1)
    # All of the answer but its end flows at once; the end waits for the page to be back.
    fake_upstream_server.queue(Reply(pieces=events, paced=True))
    for _ in events[1:-1]:
        fake_upstream_server.next_piece()
    log_in(page, live.url, "alice", "alice-password-1")
    wait_ready(page)
    page.fill("#prompt", "Tell me everything")
    page.keyboard.press("Enter")

    wait_until(page, "document.querySelector('#connection-status').dataset.state !== 'connected'")
    assert "bytes sent and not acknowledged" in live.log.read_text()
    # 4408, or 1006 when the page was too busy showing what it had to read the close frame
    # within the second Daphne waits for the closing handshake before it drops the socket.
    assert closed in ([4408], [1006])
    wait_ready(page, timeout=30)  # reconnected: a snapshot brought the text so far
    fake_upstream_server.next_piece()
    shows_complete(page, text)
    expect(page.locator("#prompt")).to_have_value("")
