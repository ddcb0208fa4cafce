"""Channels' in-memory layer, for one process without Redis."""

from __future__ import annotations

import time

from channels.layers import InMemoryChannelLayer as _InMemoryChannelLayer


class InMemoryChannelLayer(_InMemoryChannelLayer):
    """Cleans expired messages once a second instead of on every send and receive.

    Channels' own walks every channel and every group membership each time, which grows
    with the number of open sockets and made it the largest cost of 1,000 streams
    (docs/benchmarks.md). Expiry is a safety net here: nothing waits on it.
    """

    CLEAN_EVERY_SECONDS = 1.0
    _cleaned_at = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._cleaned_at >= self.CLEAN_EVERY_SECONDS:
            self._cleaned_at = now
            super()._clean_expired()
