"""Decoding `text/event-stream` (Server-Sent Events), incrementally, from bytes.

The rules are the WHATWG HTML standard's ("Interpreting an event stream"): lines end
with CRLF, LF or CR; a blank line dispatches the event; `data` lines are joined with LF;
one space after the colon is dropped; lines starting with a colon are comments; an event
without data is not dispatched; an unfinished event at the end of the stream is dropped.

It works on whole network reads rather than line by line, so an upstream that sends a
thousand events in one read costs one call here, not a thousand trips through generators.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class EventDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self._event = b""
        self._last_id = ""
        self._retry: int | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk` (the bytes of one read), in order."""
        if (  # the usual read: one whole `data:` event and nothing else
            chunk.startswith(b"data: ")
            and chunk.endswith(b"\n\n")
            and chunk.count(b"\n") == 2
            and b"\r" not in chunk
            and self._started
            and not (self._buffer or self._data or self._event)
        ):
            data = chunk[6:-2].decode("utf-8", "replace")
            return [Event(data, "message", self._last_id, self._retry)]
        buffer = self._buffer + chunk if self._buffer else chunk
        if not self._started and buffer:
            if len(buffer) < 3 and b"\xef\xbb\xbf".startswith(buffer):
                self._buffer = buffer  # wait: this could still be a byte order mark
                return []
            self._started = True
            if buffer.startswith(b"\xef\xbb\xbf"):
                buffer = buffer[3:]
        if b"\r" in buffer:
            # A CR at the end may be the first half of a CRLF: keep it for the next read.
            held = buffer.endswith(b"\r")
            if held:
                buffer = buffer[:-1]
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer += b"\r"
        end = buffer.rfind(b"\n")
        if end < 0:
            self._buffer = buffer
            return []
        self._buffer = buffer[end + 1 :]
        events: list[Event] = []
        for line in buffer[:end].split(b"\n"):
            if not line:
                if self._data:
                    events.append(self._dispatch())
                else:
                    self._event = b""
                continue
            name, colon, value = line.partition(b":")
            if not name:
                continue  # a comment, such as a keepalive
            if colon and value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
            elif name == b"id":
                if b"\0" not in value:
                    self._last_id = value.decode("utf-8", "replace")
            elif name == b"retry" and value.isdigit():
                self._retry = int(value)
        return events

    def end(self) -> list[Event]:
        """At the end of the stream: a CR held back by the last read ended a line."""
        if self._buffer.endswith(b"\r"):
            return self.feed(b"\n")  # joins it into one CRLF
        return []

    def _dispatch(self) -> Event:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = Event(
            data=data.decode("utf-8", "replace"),
            event=self._event.decode("utf-8", "replace") or "message",
            id=self._last_id,
            retry=self._retry,
        )
        self._data = []
        self._event = b""
        return event
