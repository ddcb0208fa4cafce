"""An answer's sources as the page shows them: numbered chips (chat.search.source_chip)."""

from __future__ import annotations

from typing import Any

from django import template

from chat.search import Source, source_chip

register = template.Library()


@register.filter
def source_chips(citations: Any) -> list[Source]:
    """A saved answer's `citations`, as chips numbered from 1."""
    if not isinstance(citations, list):
        return []
    return [source_chip(number, citation) for number, citation in enumerate(citations, 1)]
