"""A send whose socket dropped before its answer began is sent again, and answered once."""

from __future__ import annotations

import json

from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream
from tests.live import app_env, daphne, prepare_database
from tests.test_resend import TICKS, paced_answer

pytestmark = needs_chromium


def test_a_send_whose_socket_drops_before_message_start_ends_with_exactly_one_answer(
    page: Page, fake_upstream_server: FakeUpstream, tmp_path
) -> None:
    env = app_env(tmp_path, fake_upstream_server.base_url)
    prepare_database(env)
    fake_upstream_server.queue(paced_answer())
    routes: list[WebSocketRoute] = []
    sent: list[dict] = []
    dropped: list[str] = []  # the type of the frame that never reached the page

    def route(ws: WebSocketRoute) -> None:
        """The page's sockets, through the test: the first drops as the server answers
        its first send, the way a network hiccup would; later ones pass everything."""
        server = ws.connect_to_server()
        routes.append(ws)
        if len(routes) > 1:
            return

        def to_server(message: str | bytes) -> None:
            sent.append(json.loads(message))
            server.send(message)

        def to_page(message: str | bytes) -> None:
            if not any(frame["type"] == "send" for frame in sent):
                ws.send(message)
            elif not dropped:
                dropped.append(json.loads(message)["type"])
                ws.close(code=4000, reason="dropped by the test")
                server.close()

        ws.on_message(to_server)
        server.on_message(to_page)

    page.route_web_socket("**/ws/chat/", route)
    with daphne(env, tmp_path / "daphne.log") as url:
        log_in(page, url, "alice", "alice-password-1")
        wait_ready(page)
        page.fill("#prompt", "Count for me")
        page.keyboard.press("Enter")
        answers = page.locator("article.message[data-role=assistant]")
        # Hang guards of a minute, not deadlines: the page reconnects after 0.5 s.
        expect(answers.locator(".content")).to_have_text("tick", timeout=60_000)
        for _ in range(TICKS + 2):
            fake_upstream_server.next_piece()
        expect(answers).to_have_attribute("data-state", "complete", timeout=60_000)
        expect(answers.locator(".content")).to_have_text(("tick " * TICKS).strip())
        expect(page.locator("article.message[data-role=user]")).to_have_count(1)
        expect(page.locator("#prompt")).to_have_value("")
        assert len(routes) == 2 and dropped == ["conversation"]
        [first] = [frame for frame in sent if frame["type"] == "send"]
        assert first["client_id"]
        assert len(fake_upstream_server.stream_requests()) == 1

        page.reload()
        wait_ready(page)
        expect(page.locator("article.message[data-role=assistant]")).to_have_count(1)
        expect(page.locator("article.message[data-role=user]")).to_have_count(1)
        expect(page.locator("#conversation-list li")).to_have_count(1)
