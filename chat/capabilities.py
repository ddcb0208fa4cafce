"""What each model accepts of the request options, in one place.

A parameter a model refuses fails the whole request (xAI answers 400 "Model X does not
support parameter reasoningEffort"), so allowed_options() drops it before each request.
What the upstream's model list says of a model wins (xAI's `/language-models` items may
carry `capabilities.reasoning_effort`); failing that, the rules below decide.

xAI's reasoning models also refuse presence_penalty, frequency_penalty and stop: the app
never sends them (upstream.RequestOptions has no such fields), so nothing here drops them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from chat.catalog import listed_capabilities
from chat.upstream import RequestOptions, resolve_api_style

logger = logging.getLogger(__name__)


def api_style() -> str:
    """The API style the app speaks: XAI_API_STYLE, with "auto" resolved for XAI_BASE_URL
    (chat.upstream.resolve_api_style). Read the style through this, nowhere else."""
    return resolve_api_style(settings.XAI_API_STYLE, settings.XAI_BASE_URL)


def responses_api() -> bool:
    """Whether the app speaks the Responses API, which some features need (web and X
    search, encrypted reasoning sent back)."""
    return api_style() == "responses"


# The efforts a conversation may ask for (chat.forms.ConversationSettingsForm).
EFFORTS = ("none", "low", "medium", "high")

# Models known to accept an effort, by name prefix (aliases such as grok-3-mini-latest and
# dated versions included), with the efforts each takes. Every other model is taken to
# refuse one: xAI's grok-4, grok-4-fast, grok-4.20 and grok-code models answer 400 to it
# (checked against api.x.ai in May 2026, NousResearch/hermes-agent PR 23435; efforts from
# docs.x.ai, "reasoning": grok-3-mini low/high, grok-4.3 none to high).
EFFORT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grok-3-mini", ("low", "high")),
    ("grok-4.3", ("none", "low", "medium", "high")),
    ("grok-4.20-multi-agent", ("low", "medium", "high")),
)

# The highest temperature each API style takes, where it is lower than the form's 2:
# Anthropic's Messages API takes 0 to 1. A higher setting is sent as this.
TEMPERATURE_MAX = {"anthropic_messages": 1.0}


@dataclass(frozen=True)
class ModelCapabilities:
    efforts: tuple[str, ...]  # the reasoning efforts it accepts, in EFFORTS' order
    source: str  # "list": the upstream's model list said so; "rules": EFFORT_RULES


def capabilities_of(model: str, listed: dict[str, Any] | None = None) -> ModelCapabilities:
    """`model`'s capabilities: as its `capabilities` object in the model list (`listed`)
    says, where it says, else by the rules."""
    efforts = listed_efforts(listed)
    if efforts is not None:
        return ModelCapabilities(efforts, "list")
    for prefix, known in EFFORT_RULES:
        if model.startswith(prefix):
            return ModelCapabilities(known, "rules")
    return ModelCapabilities((), "rules")


def listed_efforts(listed: dict[str, Any] | None) -> tuple[str, ...] | None:
    """The efforts a list item's `capabilities.reasoning_effort` allows: a list of them,
    or true (any) or false (none); None where it says nothing we can read."""
    if not isinstance(listed, dict) or "reasoning_effort" not in listed:
        return None
    value = listed["reasoning_effort"]
    if isinstance(value, bool):
        return EFFORTS if value else ()
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(effort for effort in EFFORTS if effort in value)
    return None


def model_capabilities(model: str) -> ModelCapabilities:
    return capabilities_of(model, listed_capabilities().get(model))


def efforts_by_model(models: list[str]) -> dict[str, list[str]]:
    """The efforts each of `models` accepts, for the chat page's settings panel."""
    listed = listed_capabilities()
    return {model: list(capabilities_of(model, listed.get(model)).efforts) for model in models}


def allowed_options(model: str, options: RequestOptions) -> RequestOptions:
    """`options` less what `model` (over the configured API style) refuses."""
    changes: dict[str, Any] = {}
    effort = options.reasoning_effort
    if effort and effort not in model_capabilities(model).efforts:
        changes["reasoning_effort"] = None
    highest = TEMPERATURE_MAX.get(api_style())
    if highest is not None and options.temperature is not None and options.temperature > highest:
        changes["temperature"] = highest
    if not changes:
        return options
    logger.info("options for %s: %s left out or capped (%s)", model, ", ".join(changes), options)
    return dataclasses.replace(options, **changes)
