"""Exit 0 when PostgreSQL and Redis answer on loopback, else say which does not (for make)."""

from __future__ import annotations

import socket
import sys


def answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


missing = [
    f"{name} does not answer on 127.0.0.1:{port}"
    for name, port in (("PostgreSQL", 5432), ("Redis", 6379))
    if not answers("127.0.0.1", port)
]
for line in missing:
    print(f"!! {line}")
sys.exit(1 if missing else 0)
