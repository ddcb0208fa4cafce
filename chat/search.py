"""Web search and X search: xAI's server-side tools, which only its Responses API offers.

The composer's two toggles ask for them with a `send`, `edit` or `regenerate` (its `search`
field, docs/protocol.md); the site's settings (admin, "Site settings") can turn either off
and restrict web search to some domains and X search to some handles; the request then
carries `{"type": "web_search", ...}` / `{"type": "x_search", ...}` in its `tools`. The
sources an answer cites are saved with it and shown as numbered chips under it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from chat.upstream import Citation

RESPONSES_ONLY = "Web and X search need xAI's Responses API."
# docs.x.ai, tools/web-search: allowed_domains and excluded_domains take at most 5 each and
# cannot be set together.
MAX_DOMAINS = 5
# docs.x.ai, tools/x-search: allowed_x_handles or excluded_x_handles, not both, written
# without the @; at most 10 (the newest page says 20, earlier ones and xAI's Vercel SDK 10).
MAX_HANDLES = 10
# What an answer keeps of its sources: they travel in message.end and watching.recent,
# which must stay far below the 1 MiB a websocket message may have.
MAX_SOURCES = 100
MAX_URL_CHARS = 1000
MAX_TITLE_CHARS = 300

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"(?:{_LABEL}\.)+{_LABEL}")
HANDLE = re.compile(r"[A-Za-z0-9_]{1,15}")  # X's own rule for a username
ENTRY_SEPARATORS = re.compile(r"[\s,]+")


def unavailable_reason() -> str:
    """Why search cannot be offered now ("" when it can)."""
    from chat.capabilities import responses_api  # (it reads the model list: chat.models)

    return "" if responses_api() else RESPONSES_ONLY


@dataclass(frozen=True)
class SearchChoice:
    """The toggles a request was sent with."""

    web: bool = False
    x: bool = False

    @property
    def any(self) -> bool:
        return self.web or self.x


NO_SEARCH = SearchChoice()


def parse_choice(value: Any) -> SearchChoice:
    """A frame's `search` ({"web": bool, "x": bool}, either may be left out; null: none);
    ValueError with a readable message for anything else."""
    if value is None:
        return NO_SEARCH
    if not isinstance(value, dict):
        raise ValueError("The field 'search' must be an object such as {\"web\": true}.")
    unknown = sorted(str(key)[:20] for key in value if key not in ("web", "x"))
    if unknown:
        raise ValueError(f"The field 'search' takes 'web' and 'x', not {', '.join(unknown)}.")
    for key in ("web", "x"):
        if not isinstance(value.get(key, False), bool):
            raise ValueError(f"search.{key} must be true or false.")
    return SearchChoice(web=value.get("web", False), x=value.get("x", False))


# -- site settings: lists of domains and handles -----------------------------------------


def entries(text: str) -> list[str]:
    """The entries of a list setting: one per line, or separated by commas or spaces."""
    return [entry for entry in ENTRY_SEPARATORS.split(text or "") if entry]


def clean_domains(text: str) -> list[str]:
    """The domains of a setting, lower-cased; ValidationError naming what is wrong."""
    found = [entry.lower().rstrip(".") for entry in entries(text)]
    bad = [entry for entry in found if not DOMAIN.fullmatch(entry) or entry.isdigit()]
    if bad:
        raise ValidationError(
            "Write domains such as example.com or docs.python.org, without https:// or a "
            f"path: not {', '.join(bad[:5])}."
        )
    if len(found) > MAX_DOMAINS:
        raise ValidationError(f"xAI takes at most {MAX_DOMAINS} domains; {len(found)} given.")
    return list(dict.fromkeys(found))


def clean_handles(text: str) -> list[str]:
    """The X handles of a setting, without their @; ValidationError naming what is wrong."""
    found = [entry.removeprefix("@") for entry in entries(text)]
    bad = [entry for entry in found if not HANDLE.fullmatch(entry)]
    if bad:
        raise ValidationError(
            "Write X handles such as xai or @xai (letters, digits and _, at most 15): "
            f"not {', '.join(bad[:5])}."
        )
    if len(found) > MAX_HANDLES:
        raise ValidationError(f"xAI takes at most {MAX_HANDLES} handles; {len(found)} given.")
    return list(dict.fromkeys(found))


def validate_domains(text: str) -> None:
    clean_domains(text)


def validate_handles(text: str) -> None:
    clean_handles(text)


def web_search_tool(allowed: str, excluded: str) -> dict[str, Any]:
    """The request's web_search tool, with the site's domain filter if it has one."""
    tool: dict[str, Any] = {"type": "web_search"}
    if domains := clean_domains(allowed):
        tool["allowed_domains"] = domains
    elif domains := clean_domains(excluded):
        tool["excluded_domains"] = domains
    return tool


def x_search_tool(allowed: str, excluded: str) -> dict[str, Any]:
    """The request's x_search tool, with the site's handle filter if it has one."""
    tool: dict[str, Any] = {"type": "x_search"}
    if handles := clean_handles(allowed):
        tool["allowed_x_handles"] = handles
    elif handles := clean_handles(excluded):
        tool["excluded_x_handles"] = handles
    return tool


# -- sources: what an answer cites --------------------------------------------------------


def answer_sources(cited: list[Citation], seen: list[str]) -> list[Citation]:
    """What an answer keeps as its sources: those it cites inline (url_citation), in
    order, then the other URLs the search looked at (the response's `citations`), each
    once; at most MAX_SOURCES, URLs of at most MAX_URL_CHARS, titles cut short."""
    sources: list[Citation] = []
    urls: set[str] = set()
    for citation in [*cited, *({"url": url} for url in seen)]:
        url = citation.get("url")
        if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS or url in urls:
            continue
        urls.add(url)
        source: Citation = {"url": url}
        title = citation.get("title")
        if isinstance(title, str) and title:
            source["title"] = title[:MAX_TITLE_CHARS]
        sources.append(source)
        if len(sources) == MAX_SOURCES:
            break
    return sources


# Browsers drop these from anywhere in a URL, and these from its ends, before reading it.
URL_DROPPED = re.compile(r"[\t\n\r]")
URL_TRIMMED = "".join(map(chr, range(0x21)))
WEB_URL = re.compile(r"https?://", re.IGNORECASE)


@dataclass(frozen=True)
class Source:
    """One source chip: its number, the link (empty when the URL is not http(s), which is
    then shown as text), the domain or text shown, and the link's title."""

    number: int
    href: str
    label: str
    title: str


def source_chip(number: int, citation: Any) -> Source:
    """How the page shows a saved citation (static/js/chat.js sourceChip does the same)."""
    url = citation.get("url") if isinstance(citation, dict) else None
    url = url if isinstance(url, str) else ""
    title = citation.get("title") if isinstance(citation, dict) else None
    title = title if isinstance(title, str) and title else url
    cleaned = URL_DROPPED.sub("", url).strip(URL_TRIMMED)
    host = ""
    if WEB_URL.match(cleaned):
        try:
            host = urlsplit(cleaned).hostname or ""
        except ValueError:  # a malformed URL such as http://[::1
            host = ""
    if not host:
        return Source(number, "", url[:80], title)
    return Source(number, cleaned, host.removeprefix("www."), title)
