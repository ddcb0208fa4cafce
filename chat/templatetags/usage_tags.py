"""The budget notice on the chat page: two queries, whatever the size of the ledger."""

from __future__ import annotations

from django import template

from chat.models import budget_status
from chat.reports import budget_words

register = template.Library()


@register.simple_tag
def budget_notice(user) -> str:
    """'You have used 85% of your monthly budget.' from 80% on, else ''."""
    if not getattr(user, "is_authenticated", False):
        return ""
    status = budget_status(user)
    if status is None or not (status.near or status.over):
        return ""
    return budget_words(status)
