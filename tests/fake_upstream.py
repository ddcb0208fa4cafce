"""A real HTTP server on loopback that speaks xAI's streaming API, for tests.

It runs in its own thread with its own event loop, so sync tests, async tests and
separate processes (Daphne under a browser) can all use it. Each request takes the next
queued reply (or the default) and is recorded, so tests can check what was sent upstream.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Copied from the team's shared recordings with their SOURCES.md (provenance and licence).
TRANSCRIPTS = Path(__file__).resolve().parent / "fixtures" / "upstream"


def transcript(name: str) -> bytes:
    return (TRANSCRIPTS / name).read_bytes()


def sse(*events: Any, done: bool = True) -> bytes:
    """An event stream body from JSON-able chunks."""
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def chunk(content: str = "", reasoning: str = "", finish: str | None = None, **extra: Any) -> dict:
    delta: dict[str, Any] = {}
    if content:
        delta["content"] = content
    if reasoning:
        delta["reasoning_content"] = reasoning
    choice: dict[str, Any] = {"index": 0, "delta": delta}
    if finish:
        choice["finish_reason"] = finish
    return {
        "id": "resp-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "grok-test-resolved",
        "choices": [choice],
        "system_fingerprint": "fp_test",
        **extra,
    }


def usage_chunk(prompt: int, completion: int, reasoning: int = 0, cached: int = 0) -> dict:
    return {
        "id": "resp-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "grok-test-resolved",
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion + reasoning,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        },
        "system_fingerprint": "fp_test",
    }


@dataclass
class Reply:
    """What the server answers to one request.

    body: bytes written in pieces (`pieces`: "random" sizes from 1 byte up, "whole", or a
    list of byte strings); `delay` seconds between pieces; `paced`: each piece after the
    first waits for a `FakeUpstream.next_piece()` of the test; `end`: "close" (a proper
    end), "drop" (cut the connection without ending the chunked body) or "stall" (keep it
    open and silent until the test ends).
    """

    status: int = 200
    body: bytes = b""
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    pieces: str | list[bytes] = "whole"
    delay: float = 0.0
    first_delay: float = 0.0
    end: str = "close"
    crlf: bool = False
    paced: bool = False


def json_reply(status: int, body: Any, **headers: str) -> Reply:
    return Reply(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def slow_stream(count: int = 400, delay: float = 0.05, text: str = "tick ") -> Reply:
    """An answer that takes count * delay seconds: something to stop or walk away from."""
    pieces = [b"data: " + json.dumps(chunk(text)).encode() + b"\n\n" for _ in range(count)]
    pieces.append(b"data: " + json.dumps(chunk(finish="stop")).encode() + b"\n\n")
    pieces.append(b"data: " + json.dumps(usage_chunk(10, count)).encode() + b"\n\n")
    pieces.append(b"data: [DONE]\n\n")
    return Reply(pieces=pieces, delay=delay)


def paced_stream(texts: list[str]) -> Reply:
    """An answer whose first text comes at once and each next one (then its end, with the
    usage report) on a `FakeUpstream.next_piece()` of the test: len(texts) calls in all."""
    pieces = [sse(chunk(text), done=False) for text in texts]
    pieces.append(sse(chunk(finish="stop"), usage_chunk(12, len(texts))))
    return Reply(pieces=pieces, paced=True)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    reply: Reply | None = None  # what the server answered
    sent: bytearray = field(default_factory=bytearray)  # the body bytes it wrote

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def streamed(self) -> bool:
        """Whether the server answered with a stream (a request the upstream bills)."""
        reply = self.reply
        return (
            reply is not None
            and reply.status == 200
            and reply.content_type.startswith("text/event-stream")
        )


DEFAULT_MODELS = {
    "object": "list",
    "data": [
        {"id": "grok-4", "object": "model", "owned_by": "xai", "created": 1},
        {"id": "grok-3-mini", "object": "model", "owned_by": "xai", "created": 1},
    ],
}


class FakeUpstream:
    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.default: Reply = Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse"))
        self.requests: list[Request] = []
        self.models: Any = DEFAULT_MODELS
        self.language_models: Any = None  # xAI's richer list; None answers 404
        self.open_streams = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._stalls: list[asyncio.Future[None]] = []
        self._gates: deque[asyncio.Future[None]] = deque()  # paced replies waiting
        self._paces = 0  # next_piece() calls no paced reply waited for yet
        self._held: list[asyncio.StreamWriter] = []  # paced replies' writers, waiting
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self._thread.start()
        started.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=2**20)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def reset(self) -> None:
        self.replies.clear()
        self.requests.clear()
        self.models = DEFAULT_MODELS
        self.language_models = None
        self.default = Reply(body=transcript("fantasy-xai-grok-4-fast-2.sse"))

        def release() -> None:
            for stall in self._stalls:
                if not stall.done():
                    stall.set_result(None)
            self._stalls.clear()
            self._gates.clear()
            self._paces = 0

        self._loop.call_soon_threadsafe(release)

    def next_piece(self) -> None:
        """Let a paced reply (`Reply.paced`) send its next piece."""

        def grant() -> None:
            if self._gates:
                self._gates.popleft().set_result(None)
            else:
                self._paces += 1

        self._loop.call_soon_threadsafe(grant)

    async def _paced(self, writer: asyncio.StreamWriter) -> None:
        if self._paces:
            self._paces -= 1
            return
        gate = self._loop.create_future()
        self._gates.append(gate)
        self._stalls.append(gate)  # reset() releases it too
        self._held.append(writer)
        try:
            await gate
        finally:
            self._held.remove(writer)

    def read_to_the_gate(self) -> bool:
        """Whether a paced reply waits for next_piece() and its client has read every
        byte sent before: nothing in this server's buffers nor in the kernel's, both ways."""

        async def check() -> bool:
            return bool(self._held) and all(
                not w.transport.get_write_buffer_size() for w in self._held
            )

        if not asyncio.run_coroutine_threadsafe(check(), self._loop).result(10):
            return False
        port = f"{self.port:04X}"
        with open("/proc/net/tcp") as table:  # the kernel's queues of each TCP socket
            for line in table.readlines()[1:]:
                _, local, remote, _, queues = line.split()[:5]
                if (
                    port in (local.split(":")[1], remote.split(":")[1])
                    and queues != "00000000:00000000"
                ):
                    return False
        return True

    def stream_requests(self) -> list[Request]:
        return [r for r in self.requests if r.method == "POST"]

    def close(self) -> None:
        self.reset()
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = b""
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                request = Request(method, path, headers, body)
                self.requests.append(request)
                if method == "GET" and path.endswith("/language-models"):
                    if self.language_models is None:
                        reply = json_reply(
                            404,
                            {
                                "code": "Some requested entity was not found",
                                "error": "No handler found on route.",
                            },
                        )
                    else:
                        reply = json_reply(200, self.language_models)
                elif method == "GET" and path.endswith("/models"):
                    reply = json_reply(200, self.models)
                else:
                    reply = self.replies.popleft() if self.replies else self.default
                request.reply = reply
                keep = await self._answer(writer, reply, request.sent)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, reply: Reply, sent: bytearray) -> bool:
        reason = {200: "OK"}.get(reply.status, "Error")
        head = [f"HTTP/1.1 {reply.status} {reason}", f"Content-Type: {reply.content_type}"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        streaming = reply.content_type.startswith("text/event-stream")
        if not streaming:
            head.append(f"Content-Length: {len(reply.body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + reply.body)
            await writer.drain()
            return True
        head.append("Transfer-Encoding: chunked")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        self.open_streams += 1
        try:
            if reply.first_delay:
                await asyncio.sleep(reply.first_delay)
            for index, piece in enumerate(self._pieces(reply)):
                if index and reply.delay:
                    await asyncio.sleep(reply.delay)
                if index and reply.paced:
                    await self._paced(writer)
                writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                await writer.drain()
                sent += piece
            if reply.end == "drop":
                writer.transport.abort()
                return False
            if reply.end == "stall":
                stall = self._loop.create_future()
                self._stalls.append(stall)
                await stall
                return False
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        finally:
            self.open_streams -= 1

    @staticmethod
    def _pieces(reply: Reply) -> list[bytes]:
        body = reply.body.replace(b"\n", b"\r\n") if reply.crlf else reply.body
        if isinstance(reply.pieces, list):
            return reply.pieces
        if reply.pieces == "whole":
            return [body] if body else []
        pieces, i = [], 0
        while i < len(body):
            left = len(body) - i
            size = random.choice((1, random.randint(1, 16), random.randint(1, 1024), left))
            size = max(1, min(size, left))
            pieces.append(body[i : i + size])
            i += size
        return pieces
