"""The upstream's model list and list prices, cached, with the prices kept in ModelPrice."""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.cache import cache

from chat.models import ModelPrice
from chat.upstream import fetch_catalog, redact

logger = logging.getLogger(__name__)
CACHE_KEY = "upstream-models"


def models_offered() -> list[str]:
    """The upstream's model ids, cached; the configured default is always offered.

    Fetching the list also stores xAI's list prices, so they stay as fresh as the list.
    """
    models = cache.get(CACHE_KEY)
    if models is None:
        models = []
        if settings.XAI_API_KEY:
            try:
                models = _fetch_and_store()
            except Exception as exc:
                logger.warning("could not list the upstream's models: %s", failure_text(exc))
        # Cache a failure briefly so a down upstream doesn't slow every page.
        timeout = settings.UPSTREAM_MODELS_CACHE_SECONDS if models else 30
        cache.set(CACHE_KEY, models, timeout)
    if settings.CHAT_DEFAULT_MODEL not in models:
        models = [settings.CHAT_DEFAULT_MODEL, *models]
    return models


def failure_text(exc: Exception) -> str:
    """What went wrong, fit for a page, a command's output or the log: never the key."""
    return redact(str(exc) or type(exc).__name__, settings.XAI_API_KEY)


def sync_prices() -> int:
    """Fetch the list now and store xAI's prices; the number of prices stored."""
    if not settings.XAI_API_KEY:
        raise RuntimeError("No xAI API key is configured.")
    catalog = fetch_catalog(settings.XAI_BASE_URL, settings.XAI_API_KEY)
    cache.set(CACHE_KEY, catalog.models, settings.UPSTREAM_MODELS_CACHE_SECONDS)
    return ModelPrice.update_from_xai(catalog.prices)


def _fetch_and_store() -> list[str]:
    catalog = fetch_catalog(settings.XAI_BASE_URL, settings.XAI_API_KEY)
    if catalog.prices:
        ModelPrice.update_from_xai(catalog.prices)
    return catalog.models
