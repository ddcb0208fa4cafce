"""The page reconnects by itself once the server is back, in headless Chromium."""

from __future__ import annotations

import signal

from playwright.sync_api import Page, expect

from tests.browser import log_in, needs_chromium, wait_ready
from tests.fake_upstream import FakeUpstream, paced_stream, slow_stream
from tests.live import RedisServer, app_env, daphne_process, free_port, prepare_database

pytestmark = needs_chromium


def test_the_page_reconnects_when_the_server_comes_back_and_learns_how_the_answer_ended(
    page: Page,
    fake_upstream_server: FakeUpstream,
    tmp_path,
) -> None:
    env = app_env(tmp_path, fake_upstream_server.base_url)
    prepare_database(env)
    port = free_port()
    fake_upstream_server.queue(slow_stream(count=400, delay=0.02, text="tick "))
    with daphne_process(env, tmp_path / "first.log", port=port) as (url, process):
        log_in(page, url, "alice", "alice-password-1")
        wait_ready(page)
        page.fill("#prompt", "Count while I restart the server")
        page.keyboard.press("Enter")
        answer = page.locator("article.message[data-role=assistant]").last
        expect(answer.locator(".content")).to_contain_text("tick")
        process.send_signal(signal.SIGTERM)  # a deploy: the answer ends as interrupted
        expect(answer).to_have_attribute("data-state", "interrupted")
        process.wait(15)
    status = page.locator("#connection-status")
    expect(status).to_have_attribute("data-state", "reconnecting")
    expect(status).to_contain_text("Reconnecting")

    with daphne_process(env, tmp_path / "second.log", port=port):
        # The page reconnects on its own, with backoff (at most 10 s between tries).
        wait_ready(page, timeout=30)
        page.fill("#prompt", "Are you back?")
        page.keyboard.press("Enter")
        last = page.locator("article.message[data-role=assistant]").last
        expect(last).to_have_attribute("data-state", "complete")
        expect(last.locator(".content")).to_contain_text("Olá")


def test_the_page_rides_out_a_redis_restart_and_shows_the_whole_answer_that_streamed_through_it(
    page: Page,
    fake_upstream_server: FakeUpstream,
    tmp_path,
) -> None:
    texts = ["Before ", "the ", "restart ", "and ", "after ", "it."]
    fake_upstream_server.queue(paced_stream(texts))
    with RedisServer(tmp_path) as redis:
        env = app_env(tmp_path, fake_upstream_server.base_url, REDIS_URL=redis.url)
        prepare_database(env)
        with daphne_process(env, tmp_path / "daphne.log") as (url, _process):
            log_in(page, url, "alice", "alice-password-1")
            wait_ready(page)
            page.fill("#prompt", "Talk through the Redis restart")
            page.keyboard.press("Enter")
            answer = page.locator("article.message[data-role=assistant]").last
            expect(answer.locator(".content")).to_have_text("Before")

            redis.stop()
            status = page.locator("#connection-status")
            expect(status).to_have_attribute("data-state", "reconnecting", timeout=60_000)
            redis.start()
            wait_ready(page, timeout=60)  # it reconnects by itself, with backoff
            for _ in texts:
                fake_upstream_server.next_piece()
            expect(answer).to_have_attribute("data-state", "complete", timeout=60_000)
            expect(answer.locator(".content")).to_have_text("".join(texts))
