"""The upstream client's sockets (chat/transport.py) against real loopback servers: TLS,
keep-alive connections the server closed, timeouts, refused connections, and bodies far
larger than the read buffer in both directions. (tests/test_upstream.py runs every stream
test on these sockets and on httpx's own.)"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trustme

from chat.transport import HIGH_WATER, AsyncioTransport
from chat.upstream import Answer, Upstream, UpstreamError, shared_client

Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
MESSAGES = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def http_server(
    handler: Handler, ssl_context: ssl.SSLContext | None = None, heads: list[bytes] | None = None
) -> AsyncIterator[str]:
    """A loopback HTTP/1.1 server; `handler(body, reader, writer)` answers each request and
    says whether to keep the connection open. Request heads are kept in `heads`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if heads is not None:
                    heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                if not await handler(body, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    scheme = "https" if ssl_context else "http"
    try:
        yield f"{scheme}://localhost:{port}/v1"
    finally:
        server.close()


def event_stream(*texts: str) -> bytes:
    events = [
        {"choices": [{"index": 0, "delta": {"content": text}}], "model": "grok-test"}
        for text in texts
    ]
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


def response(body: bytes, content_type: str = "text/event-stream") -> bytes:
    head = f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def ask(upstream: Upstream) -> Answer:
    answer = Answer()
    async for _ in upstream.stream(answer, "grok-test", MESSAGES):
        pass
    return answer


async def answer_with(url: str, transport: httpx.AsyncBaseTransport) -> Answer:
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        return await ask(Upstream(url, "key", client=client, max_retries=0))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def stream_reply(body: bytes, reader, writer) -> bool:
    writer.write(response(event_stream("Olá", " over TLS!")))
    await writer.drain()
    return True


async def test_it_streams_over_tls(ca: trustme.CA) -> None:
    async with http_server(stream_reply, server_context(ca)) as url:
        answer = await answer_with(url, AsyncioTransport(verify=client_context(ca)))
    assert answer.content == "Olá over TLS!"


async def test_it_refuses_a_certificate_it_does_not_trust(ca: trustme.CA) -> None:
    async with http_server(stream_reply, server_context(ca)) as url:
        with pytest.raises(UpstreamError) as caught:
            await answer_with(url, AsyncioTransport(verify=client_context(trustme.CA())))
    assert "Could not connect" in caught.value.message


async def test_it_opens_a_new_connection_when_the_server_closed_the_idle_one() -> None:
    async def answer_then_hang_up(body: bytes, reader, writer) -> bool:
        writer.write(response(event_stream("again")))
        await writer.drain()
        return False  # close the connection after each answer, without saying so

    async with http_server(answer_then_hang_up) as url:
        transport = AsyncioTransport()
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            upstream = Upstream(url, "key", client=client, max_retries=0)
            for _ in range(3):
                await asyncio.sleep(0.1)  # the close reaches the idle connection
                assert (await ask(upstream)).content == "again"


async def test_answers_one_after_another_reuse_one_connection() -> None:
    peers: list[object] = []

    async def keep_alive(body: bytes, reader, writer) -> bool:
        peers.append(writer.get_extra_info("peername"))
        writer.write(response(event_stream("same")))
        await writer.drain()
        return True

    async with http_server(keep_alive) as url:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
            upstream = Upstream(url, "key", client=client, max_retries=0)
            for _ in range(3):
                await ask(upstream)
    assert len(peers) == 3 and len(set(peers)) == 1


async def test_it_times_out_a_read_and_a_connect_and_reports_a_refusal() -> None:
    async def stall(body: bytes, reader, writer) -> bool:
        await asyncio.sleep(5)
        return False

    async with http_server(stall) as url:
        timeout = httpx.Timeout(5, read=0.2)
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=timeout) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.get(url + "/models")

    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=5) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/v1/models")


async def test_it_moves_bodies_many_times_its_buffer_both_ways_intact() -> None:
    size = 20 * HIGH_WATER
    received: list[int] = []

    async def echo_size(body: bytes, reader, writer) -> bool:
        received.append(len(body))
        payload = bytes(range(256)) * (size // 256)
        writer.write(response(payload, "application/octet-stream"))
        await writer.drain()
        return True

    async with http_server(echo_size) as url:
        async with httpx.AsyncClient(transport=AsyncioTransport(), timeout=10) as client:
            async with client.stream("POST", url, content=b"x" * size) as reply:
                got = bytearray()
                async for piece in reply.aiter_raw():
                    got += piece
                    if len(got) < size // 2:
                        await asyncio.sleep(0.001)  # a slow reader: the buffer fills up
    assert received == [size]
    assert bytes(got) == bytes(range(256)) * (size // 256)


async def test_the_apps_client_still_goes_through_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heads: list[bytes] = []
    async with http_server(stream_reply, heads=heads) as proxy:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.removesuffix("/v1"))
        client = shared_client()
        try:
            upstream = Upstream("http://upstream.invalid/v1", "key", client=client, max_retries=0)
            answer = await ask(upstream)
        finally:
            await client.aclose()
    assert answer.content == "Olá over TLS!"  # the proxy's reply (the helper's text)
    assert heads[0].startswith(b"POST http://upstream.invalid/v1/chat/completions HTTP/1.1")
