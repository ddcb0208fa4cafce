"""What a conversation's settings add to each of its requests: the system prompt, the
request options, and the one-line summary the chat page shows of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import OuterRef, Subquery

from chat.forms import SETTINGS_FIELDS
from chat.models import Conversation, SiteSettings, UserSettings
from chat.upstream import RequestOptions

if TYPE_CHECKING:
    from django.contrib.auth.models import User


def system_prompt(user: User, conversation: Conversation) -> str:
    """The site's default system prompt, then the user's custom instructions, then the
    conversation's own system prompt; the blank ones left out (one query)."""
    site = SiteSettings.objects.filter(pk=1).values("default_system_prompt")
    own = UserSettings.objects.filter(user=OuterRef("pk")).values("custom_instructions")
    row = (
        get_user_model()
        .objects.filter(pk=user.pk)
        .values_list(Subquery(site), Subquery(own))
        .first()
    )
    parts = (*(row or ()), conversation.system_prompt)
    return "\n\n".join(part.strip() for part in parts if part and part.strip())


def with_system_prompt(history: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    """`history` with `prompt` as its first turn, of role system (the Responses API sends
    it as `instructions`, Anthropic's as `system`: chat.upstream)."""
    return [{"role": "system", "content": prompt}, *history] if prompt else history


def request_options(conversation: Conversation) -> RequestOptions:
    return RequestOptions(
        temperature=conversation.temperature,
        top_p=conversation.top_p,
        max_output_tokens=conversation.max_output_tokens,
        reasoning_effort=conversation.reasoning_effort or None,
    )


def history_room(conversation: Conversation) -> int:
    """Tokens the history may take: the context window less room for the answer, which is
    the conversation's max output tokens where that is more than the reserve."""
    answer = max(settings.CHAT_ANSWER_RESERVE_TOKENS, conversation.max_output_tokens or 0)
    return max(settings.CHAT_CONTEXT_TOKENS - answer, 1)


def conversation_settings(conversation: Conversation) -> dict[str, Any]:
    """The settings as POST /c/<id>/settings/ answers them: each field, and `summary`."""
    values = {name: getattr(conversation, name) for name in SETTINGS_FIELDS}
    return {**values, "summary": settings_summary(values)}


def settings_summary(values: dict[str, Any]) -> str:
    """ "System prompt · temp 0.7 · top_p 0.9 · max 1,000 tokens · effort high": what is
    set, in one line ("Default settings" when nothing is). static/js/chat.js writes the
    same line for a new chat's panel (settingsSummary): keep the two alike."""
    parts = []
    if values.get("system_prompt"):
        parts.append("System prompt")
    if values.get("temperature") is not None:
        parts.append(f"temp {_number(values['temperature'])}")
    if values.get("top_p") is not None:
        parts.append(f"top_p {_number(values['top_p'])}")
    if values.get("max_output_tokens") is not None:
        parts.append(f"max {values['max_output_tokens']:,} tokens")
    if values.get("reasoning_effort"):
        parts.append(f"effort {values['reasoning_effort']}")
    return " · ".join(parts) or "Default settings"


def _number(value: float) -> str:
    """As JavaScript's String() writes it: 1 for 1.0, 0.7 for 0.7."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))
