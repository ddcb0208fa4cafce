"""A cache whose clock the test moves: expiry (the login lockout's) without real sleeps."""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache


class ClockCache(BaseCache):
    """Django's cache API over a dict; entries expire when `advance` moves past their time."""

    def __init__(self, location: str, params: dict[str, Any]) -> None:
        super().__init__(params)
        self.now = 0.0
        self.entries: dict[str, tuple[Any, float | None]] = {}

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def expiry(self, timeout: Any) -> float | None:
        # Not get_backend_timeout(): that one counts from the real clock.
        seconds = self.default_timeout if timeout is DEFAULT_TIMEOUT else timeout
        return None if seconds is None else self.now + seconds

    def live(self, key: str) -> bool:
        if key not in self.entries:
            return False
        expires = self.entries[key][1]
        if expires is not None and expires <= self.now:
            del self.entries[key]
            return False
        return True

    def add(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version=None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        if self.live(key):
            return False
        self.entries[key] = (value, self.expiry(timeout))
        return True

    def get(self, key: str, default: Any = None, version=None) -> Any:
        key = self.make_and_validate_key(key, version=version)
        return self.entries[key][0] if self.live(key) else default

    def set(self, key: str, value: Any, timeout: Any = DEFAULT_TIMEOUT, version=None) -> None:
        key = self.make_and_validate_key(key, version=version)
        self.entries[key] = (value, self.expiry(timeout))

    def touch(self, key: str, timeout: Any = DEFAULT_TIMEOUT, version=None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        if not self.live(key):
            return False
        self.entries[key] = (self.entries[key][0], self.expiry(timeout))
        return True

    def incr(self, key: str, delta: int = 1, version=None) -> int:
        # Unlike BaseCache.incr (a get and a set), keeps the entry's expiry, as Redis does.
        key = self.make_and_validate_key(key, version=version)
        if not self.live(key):
            raise ValueError(f"Key {key!r} not found")
        value, expires = self.entries[key]
        self.entries[key] = (value + delta, expires)
        return value + delta

    def delete(self, key: str, version=None) -> bool:
        key = self.make_and_validate_key(key, version=version)
        return self.entries.pop(key, None) is not None

    def has_key(self, key: str, version=None) -> bool:
        return self.live(self.make_and_validate_key(key, version=version))

    def clear(self) -> None:
        self.entries.clear()
