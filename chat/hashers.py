"""Password hashing in a queue of its own, so that a burst of logins leaves CPU for answers.

A login costs about 0.2 s of CPU (PBKDF2, 1,000,000 rounds). Django runs each HTTP request
on a thread of its own, so 40 logins in 8 s were dozens of threads hashing at once, each
getting as much CPU as the event loop and the thread the sockets' database work runs on,
and each holding a pooled database connection meanwhile (docs/benchmarks.md, scenario 7).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.contrib.auth import hashers
from django.db import connection

NICENESS = 10  # added to the hashing threads' nice value: answers first, logins after

_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _lower_priority() -> None:
    # On Linux a nice value belongs to one thread, and only the hashing threads yield.
    if sys.platform.startswith("linux"):
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICENESS)
        except OSError:
            pass


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def hashing_threads() -> ThreadPoolExecutor:
    """The process's PASSWORD_HASHING_THREADS threads that hash passwords, in turn."""
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                max_workers=settings.PASSWORD_HASHING_THREADS,
                thread_name_prefix="password-hashing",
                initializer=_lower_priority,
            )
        return _executor


class PBKDF2PasswordHasher(hashers.PBKDF2PasswordHasher):
    """Django's default hasher (the same algorithm and hashes), run by hashing_threads().
    Every check, new password and dummy hash for an unknown username goes through encode()."""

    def encode(self, password: str, salt: str, iterations: int | None = None) -> str:
        # Waiting its turn, a login holds no pooled connection: a burst would empty the pool.
        # (An event loop's thread holds none: Django refuses database calls there.)
        if not connection.in_atomic_block and not _in_event_loop():
            connection.close()
        return hashing_threads().submit(super().encode, password, salt, iterations).result()
