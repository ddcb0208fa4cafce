"""axe-core (tests/vendor/axe-4.14.1.min.js, MPL-2.0, from npm) run in a Playwright page.

The source goes in through page.evaluate(), which the page's Content-Security-Policy does
not govern (an added <script> tag would be refused, rightly).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

AXE = Path(__file__).resolve().parent / "vendor" / "axe-4.14.1.min.js"
SEVERE = ("serious", "critical")


@cache
def _source() -> str:
    return AXE.read_text(encoding="utf-8")


def violations(page: Page, impacts: tuple[str, ...] = SEVERE) -> list[dict[str, Any]]:
    """axe's violations of the page as it is now, of the given impacts, each with the
    selectors of the nodes at fault (what a failed assertion should print)."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(_source() + "\n;0")
    found = page.evaluate(
        "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
    )
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [node["target"] for node in v["nodes"]][:10],
        }
        for v in found
        if v["impact"] in impacts
    ]
