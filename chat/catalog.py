"""The upstream's model list and list prices, cached, with the prices kept in ModelPrice."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.cache import cache

from chat.models import ModelPrice
from chat.upstream import Catalog, fetch_catalog, redact

logger = logging.getLogger(__name__)
# {"models": [ids], "capabilities": {id: the list's `capabilities` object},
#  "input_modalities": {id: the list's `input_modalities`}}
CACHE_KEY = "upstream-catalog"


def models_offered() -> list[str]:
    """The upstream's model ids, cached; the configured default is always offered.

    Fetching the list also stores xAI's list prices, so they stay as fresh as the list,
    and caches what it says of each model's capabilities (listed_capabilities()).
    """
    listed = cache.get(CACHE_KEY)
    if listed is None:
        listed = _cached_form(Catalog([], {}))
        if settings.XAI_API_KEY:
            try:
                listed = _cached_form(_fetch_and_store())
            except Exception as exc:
                logger.warning("could not list the upstream's models: %s", failure_text(exc))
        # Cache a failure briefly so a down upstream doesn't slow every page.
        timeout = settings.UPSTREAM_MODELS_CACHE_SECONDS if listed["models"] else 30
        cache.set(CACHE_KEY, listed, timeout)
    models: list[str] = listed["models"]
    if settings.CHAT_DEFAULT_MODEL not in models:
        models = [settings.CHAT_DEFAULT_MODEL, *models]
    return models


def listed_capabilities() -> dict[str, dict[str, Any]]:
    """Each model's `capabilities` as the cached list gives them, without fetching it: {}
    when the list is not cached (each chat page load fetches it again) or says nothing."""
    try:
        listed = cache.get(CACHE_KEY)
    except Exception as exc:  # Redis down: the answer goes on, by the rules alone
        logger.warning("could not read the cached model list: %r", exc)
        return {}
    return listed["capabilities"] if isinstance(listed, dict) else {}


def listed_input_modalities() -> dict[str, list[str]]:
    """Each model's `input_modalities` as the cached list gives them (xAI's
    `/language-models`), without fetching it: {} when it is not cached or says nothing."""
    try:
        listed = cache.get(CACHE_KEY)
    except Exception as exc:  # Redis down: the callers fall back on the settings
        logger.warning("could not read the cached model list: %r", exc)
        return {}
    modalities = listed.get("input_modalities") if isinstance(listed, dict) else None
    return modalities if isinstance(modalities, dict) else {}


def accepts_images(model: str, listed: dict[str, list[str]] | None = None) -> bool | None:
    """Whether `model` takes images, as the list's `input_modalities` say (`listed`: those
    of listed_input_modalities(), else read now); None where it says nothing."""
    kinds = (listed_input_modalities() if listed is None else listed).get(model)
    return None if kinds is None else "image" in kinds


def failure_text(exc: Exception) -> str:
    """What went wrong, fit for a page, a command's output or the log: never the key."""
    return redact(str(exc) or type(exc).__name__, settings.XAI_API_KEY)


def sync_prices() -> int:
    """Fetch the list now and store xAI's prices; the number of prices stored."""
    if not settings.XAI_API_KEY:
        raise RuntimeError("No xAI API key is configured.")
    catalog = fetch_catalog(settings.XAI_BASE_URL, settings.XAI_API_KEY)
    cache.set(CACHE_KEY, _cached_form(catalog), settings.UPSTREAM_MODELS_CACHE_SECONDS)
    return ModelPrice.update_from_xai(catalog.prices)


def _cached_form(catalog: Catalog) -> dict[str, Any]:
    return {
        "models": catalog.models,
        "capabilities": catalog.capabilities,
        "input_modalities": catalog.input_modalities,
    }


def _fetch_and_store() -> Catalog:
    catalog = fetch_catalog(settings.XAI_BASE_URL, settings.XAI_API_KEY)
    if catalog.prices:
        ModelPrice.update_from_xai(catalog.prices)
    return catalog
