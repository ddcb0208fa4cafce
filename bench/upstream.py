"""A loopback upstream that speaks xAI's streaming chat completions, in its own process.

    python -m bench.upstream [--port N] [--cpu K]

prints `PORT <n>` on its first line of output, then serves until killed. Each streaming
request says what it wants in its last user message (the relay forwards it verbatim):

    bench n=5000 rate=0        5,000 chunks, written as fast as the socket takes them
    bench n=200 rate=20        200 chunks, one every 50 ms from the moment of the request

Every chunk's content is `<seq>:<us> `, where `us` is time.monotonic() in microseconds at
the moment the chunk was written. CLOCK_MONOTONIC is one clock for the whole machine on
Linux, so a client in another process gets each chunk's delivery delay as its own
time.monotonic() minus `us`, and can check that no chunk was lost, doubled or reordered.
The stream ends like xAI's: a finish_reason chunk, a usage chunk, then `[DONE]`.

It answers `GET /v1/models` (two models) and `/v1/language-models` (404), as the app
asks for its model picker.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import time

MODELS = json.dumps(
    {
        "object": "list",
        "data": [
            {"id": "grok-4", "object": "model", "owned_by": "xai", "created": 1},
            {"id": "grok-3-mini", "object": "model", "owned_by": "xai", "created": 1},
        ],
    }
).encode()
NOT_FOUND = json.dumps({"code": "not found", "error": "No handler found on route."}).encode()
PARAMS = re.compile(r"\b(n|rate)=([0-9.]+)")
DRAIN_EVERY = 64  # instant streams yield to the loop every this many chunks

_HEAD = b'data: {"id":"bench","object":"chat.completion.chunk","created":1,"model":"grok-bench","choices":[{"index":0,"delta":{"content":"'
_TAIL = b'"}}],"system_fingerprint":"fp_bench"}\n\n'


def _tail_events(n: int) -> bytes:
    finish = {
        "id": "bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "grok-bench",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    usage = {
        "id": "bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "grok-bench",
        "choices": [],
        "usage": {"prompt_tokens": 10, "completion_tokens": n, "total_tokens": 10 + n},
    }
    events = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (finish, usage))
    return events + b"data: [DONE]\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def chunk_event(seq: int) -> bytes:
    """One SSE event carrying chunk `seq` and the moment it is written."""
    stamp = time.monotonic_ns() // 1000
    return _http_chunk(b"%s%d:%d %s" % (_HEAD, seq, stamp, _TAIL))


def params(body: bytes) -> tuple[int, float]:
    """(chunks, chunks per second; 0 = instant) from the request's last user message."""
    try:
        messages = json.loads(body).get("messages") or []
        text = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
    except (ValueError, StopIteration, KeyError, TypeError, AttributeError):
        text = ""
    found = dict(PARAMS.findall(text))
    return int(found.get("n", 5)), float(found.get("rate", 0))


async def stream(writer: asyncio.StreamWriter, n: int, rate: float) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    if rate <= 0:
        for seq in range(n):
            writer.write(chunk_event(seq))
            if seq % DRAIN_EVERY == DRAIN_EVERY - 1:
                await writer.drain()
    else:
        loop = asyncio.get_running_loop()
        start, interval = loop.time(), 1.0 / rate
        for seq in range(n):
            delay = start + seq * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            writer.write(chunk_event(seq))
            await writer.drain()
    writer.write(_http_chunk(_tail_events(n)) + b"0\r\n\r\n")
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if method == "POST":
                await stream(writer, *params(body))
                continue
            status, payload = (
                (b"200 OK", MODELS)
                if path.endswith("/v1/models")
                else (b"404 Not Found", NOT_FOUND)
            )
            writer.write(
                b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (status, len(payload), payload)
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def serve(port: int) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096, limit=2**20)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, action="append", help="pin to these CPUs")
    args = parser.parse_args()
    if args.cpu and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(args.cpu))
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
