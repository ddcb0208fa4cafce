"""Phones, laptops and colour schemes for the browser tests of layout and theme
(tests/test_mobile_browser.py, tests/test_theme_browser.py) and bench/screenshots.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page

PHONE: dict[str, Any] = {
    "viewport": {"width": 390, "height": 844},
    "device_scale_factor": 2,
    "is_mobile": True,
    "has_touch": True,
}
LAPTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}

ANSWER = (Path(__file__).resolve().parent / "fixtures" / "screens" / "answer.md").read_text()
QUESTION = "How do I sort a list of pairs by their second item?"
TITLES = ["Sorting pairs in Python", "A weekend in Lisbon", "Sourdough starter"]

# For `live_app(setup=...)`: bob, and for alice and bob three conversations, the newest
# one (first in the sidebar) a question and ANSWER (a code block, a list and a table).
SEED = f"""
from django.contrib.auth.models import User
from chat.models import Conversation
User.objects.create_user('bob', password='bob-password-1')
for user in User.objects.filter(username__in=['alice', 'bob']):
    for title in {list(reversed(TITLES))!r}:
        c = Conversation.objects.create(user=user, title=title, model='grok-4')
        c.append(role='user', content={QUESTION!r})
        c.append(role='assistant', content={ANSWER!r}, model='grok-4')
"""


@contextmanager
def device_page(browser: Browser, device: dict[str, Any], **options: Any) -> Iterator[Page]:
    """A page in a fresh context of `device` (PHONE, LAPTOP) with more context `options`
    (color_scheme, java_script_enabled); fails on any uncaught error in the page."""
    context = browser.new_context(**device, **options)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    assert errors == [], errors


def page_scrolls_sideways(page: Page) -> bool:
    """Whether the document is wider than the window (a phone would scroll it sideways)."""
    return page.evaluate(
        "document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )
