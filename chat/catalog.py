"""The upstream's model list and list prices, cached, with the prices kept in ModelPrice;
which model is the default, and which one an answer uses."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.cache import cache

from chat.models import ModelPrice
from chat.upstream import Catalog, fetch_catalog, redact

logger = logging.getLogger(__name__)
# {"models": [ids], "capabilities": {id: the list's `capabilities` object},
#  "input_modalities": {id: the list's `input_modalities`}, "source": "/language-models"}
CACHE_KEY = "upstream-catalog"


def models_listed() -> list[str] | None:
    """The upstream's model ids with their aliases, alphabetically, cached; None when no
    list was obtained (no key, the upstream down, or a list that names no model).

    Fetching the list also stores xAI's list prices, so they stay as fresh as the list,
    and caches what it says of each model's capabilities (listed_capabilities()) and
    input modalities (accepts_images()).
    """
    listed = cache.get(CACHE_KEY)
    if listed is None:
        listed = _cached_form(Catalog([], {}))
        if settings.XAI_API_KEY:
            try:
                listed = _cached_form(_fetch_and_store())
            except Exception as exc:
                logger.warning(
                    "could not list the upstream's models: %s; offering CHAT_DEFAULT_MODEL "
                    "%s alone",
                    failure_text(exc),
                    settings.CHAT_DEFAULT_MODEL,
                )
        _cache(listed)
    models: list[str] = listed["models"]
    return models or None


def models_offered() -> list[str]:
    """The models the picker offers: the upstream's list, or CHAT_DEFAULT_MODEL alone
    when none was obtained. A default the list does not name is not offered."""
    return models_listed() or [settings.CHAT_DEFAULT_MODEL]


def default_model() -> str:
    """CHAT_DEFAULT_MODEL if the upstream lists it, else the first model it lists
    (alphabetically), else (no list obtained) CHAT_DEFAULT_MODEL."""
    return default_among(models_listed())


def default_among(listed: list[str] | None) -> str:
    """default_model() for the list `listed` (None: none obtained)."""
    if not listed or settings.CHAT_DEFAULT_MODEL in listed:
        return settings.CHAT_DEFAULT_MODEL
    return listed[0]


def is_offered(model: str, listed: list[str] | None) -> bool:
    """Whether `model` is still offered: the list names it, or no list was obtained (the
    app cannot tell a model gone then, and keeps using it)."""
    return listed is None or model in listed


def model_for(asked: str | None, current: str | None, listed: list[str] | None) -> str:
    """The model an answer uses: the one asked for; else the conversation's (`current`)
    while it is offered; else the default. `listed`: models_listed()'s answer."""
    if asked:
        return asked
    if current and is_offered(current, listed):
        return current
    return default_among(listed)


def listed_capabilities() -> dict[str, dict[str, Any]]:
    """Each model's `capabilities` as the cached list gives them, without fetching it: {}
    when the list is not cached (each chat page load fetches it again) or says nothing."""
    listed = _cached()
    return (listed.get("capabilities") or {}) if listed else {}


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
    catalog = _fetch()
    _cache(_cached_form(catalog))
    return ModelPrice.update_from_xai(catalog.prices)


def _cached() -> dict[str, Any] | None:
    try:
        listed = cache.get(CACHE_KEY)
    except Exception as exc:  # Redis down: the answer goes on, by the rules alone
        logger.warning("could not read the cached model list: %r", exc)
        return None
    return listed if isinstance(listed, dict) else None


def _cache(listed: dict[str, Any]) -> None:
    # Cache a failure briefly so a down upstream doesn't slow every page.
    timeout = settings.UPSTREAM_MODELS_CACHE_SECONDS if listed["models"] else 30
    cache.set(CACHE_KEY, listed, timeout)


def _cached_form(catalog: Catalog) -> dict[str, Any]:
    return {
        "models": catalog.models,
        "capabilities": catalog.capabilities,
        "input_modalities": catalog.input_modalities,
        "source": catalog.source,
    }


def _fetch() -> Catalog:
    """The upstream's list, fetched now; what was found goes to the log."""
    catalog = fetch_catalog(settings.XAI_BASE_URL, settings.XAI_API_KEY)
    where = settings.XAI_BASE_URL.rstrip("/") + catalog.source
    configured = settings.CHAT_DEFAULT_MODEL
    if not catalog.models:
        logger.warning(
            "the upstream's model list (%s) names no model: offering CHAT_DEFAULT_MODEL %s alone",
            where,
            configured,
        )
    elif configured in catalog.models:
        logger.info(
            "model list from %s: %d models; default %s (CHAT_DEFAULT_MODEL)",
            where,
            len(catalog.models),
            configured,
        )
    else:
        logger.info(
            "model list from %s: %d models; default %s, the first listed alphabetically "
            "(CHAT_DEFAULT_MODEL %s is not listed)",
            where,
            len(catalog.models),
            default_among(catalog.models),
            configured,
        )
    return catalog


def _fetch_and_store() -> Catalog:
    catalog = _fetch()
    if catalog.prices:
        ModelPrice.update_from_xai(catalog.prices)
    return catalog
