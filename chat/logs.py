"""The server's log format (settings.LOGGING): every line goes out without the API key."""

from __future__ import annotations

import logging

from django.conf import settings

from chat.upstream import redact


class RedactingFormatter(logging.Formatter):
    """Our own code redacts what it logs; a library may still quote the key, in a message
    or a traceback (httpcore's DEBUG trace of a header it refused does), so every line is
    redacted once more as it is written."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), settings.XAI_API_KEY)
