"""The README's screenshots: `python -m bench.screenshots [--out DIR]`.

Starts the app in Daphne on a fresh SQLite database with the loopback fake upstream
(tests/live.py, tests/fake_upstream.py), seeds alice's conversations (tests/devices.py: a
question and an answer with a code block, a list and a table), and has Debian's Chromium
take the chat page at 390x844 (a phone, touch) and 1280x800, each in the light and the
dark theme (the browser's colour scheme; her theme is "system"), and at 390 with the
drawer open: docs/screenshots/chat-{390,1280}-{light,dark}.png, chat-390-drawer-{light,dark}.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect, sync_playwright

from tests.browser import CHROMIUM, CHROMIUM_ARGS, log_in, wait_ready, wait_until
from tests.devices import LAPTOP, PHONE, SEED, device_page
from tests.fake_upstream import FakeUpstream
from tests.live import ROOT, live_app

OUT = ROOT / "docs" / "screenshots"


def shoot(page: Page, path: Path) -> None:
    # No caret, no animation, no pending web font: the same pixels on every run.
    page.evaluate("document.fonts.ready.then(() => true)")
    page.screenshot(path=str(path), animations="disabled", caret="hide")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", flush=True)


def open_conversation(page: Page, live: str) -> None:
    log_in(page, live, "alice", "alice-password-1")
    href = page.locator("#conversation-list a").first.get_attribute("href")
    page.goto(live + str(href))
    wait_ready(page)
    expect(page.locator(".code-block .hljs-keyword").first).to_be_attached()
    page.locator("#prompt").blur()
    # The newest message at the bottom, as the page scrolls it on load.
    wait_until(
        page,
        "(m => m.scrollTop + m.clientHeight >= m.scrollHeight - 1)(document.getElementById('messages'))",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.screenshots")
    parser.add_argument("--out", type=Path, default=OUT, help="directory (docs/screenshots)")
    out: Path = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    devices: dict[str, dict[str, Any]] = {"390": PHONE, "1280": LAPTOP}
    upstream = FakeUpstream()
    try:
        with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp:
            # SQLite and the in-memory channel layer, whatever this shell has set.
            app = live_app(Path(tmp), upstream.base_url, setup=SEED, DATABASE_URL="", REDIS_URL="")
            with app as live, sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for width, device in devices.items():
                    for scheme in ("light", "dark"):
                        with device_page(browser, device, color_scheme=scheme) as page:
                            open_conversation(page, live)
                            shoot(page, out / f"chat-{width}-{scheme}.png")
                            if width == "390":
                                page.locator("#sidebar-toggle").click()
                                wait_until(
                                    page,
                                    "document.getElementById('sidebar').getBoundingClientRect().left === 0",
                                )
                                shoot(page, out / f"chat-390-drawer-{scheme}.png")
                browser.close()
    finally:
        upstream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
