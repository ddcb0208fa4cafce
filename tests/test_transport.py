"""The app's upstream client (`shared_client`, httpx's own transport) against real loopback
servers: TLS with a CA it trusts and one it does not, one connection reused for answer
after answer, a keep-alive connection the server closed, and a proxy from the
environment."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

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


async def answer_with_the_apps_client(url: str) -> Answer:
    client = shared_client()
    try:
        return await ask(Upstream(url, "key", client=client, max_retries=0))
    finally:
        await client.aclose()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback servers are reached directly, whatever proxy the machine has set."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    return context


def trust(ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA bundle the app's client loads, as an operator sets it (httpx reads it)."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))


async def stream_reply(body: bytes, reader, writer) -> bool:
    writer.write(response(event_stream("Olá", " over TLS!")))
    await writer.drain()
    return True


async def test_it_streams_over_tls(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(ca, tmp_path, monkeypatch)
    async with http_server(stream_reply, server_context(ca)) as url:
        answer = await answer_with_the_apps_client(url)
    assert answer.content == "Olá over TLS!"


async def test_it_refuses_a_certificate_it_does_not_trust(
    ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trust(trustme.CA(), tmp_path, monkeypatch)
    async with http_server(stream_reply, server_context(ca)) as url:
        with pytest.raises(UpstreamError) as caught:
            await answer_with_the_apps_client(url)
    assert "Could not connect" in caught.value.message


async def test_it_opens_a_new_connection_when_the_server_closed_the_idle_one() -> None:
    closed = asyncio.Event()
    peers: list[object] = []

    async def answer_then_hang_up(body: bytes, reader, writer) -> bool:
        peers.append(writer.get_extra_info("peername"))
        writer.write(response(event_stream("again")))
        await writer.drain()
        writer.close()  # after each answer, without saying so in a header
        await writer.wait_closed()
        closed.set()
        return False

    async with http_server(answer_then_hang_up) as url:
        client = shared_client()
        try:
            upstream = Upstream(url, "key", client=client, max_retries=0)
            for _ in range(3):
                assert (await ask(upstream)).content == "again"
                await closed.wait()  # the idle connection in the pool is now a closed one
                closed.clear()
        finally:
            await client.aclose()
    assert len(set(peers)) == 3


async def test_answers_one_after_another_reuse_one_connection() -> None:
    peers: list[object] = []

    async def keep_alive(body: bytes, reader, writer) -> bool:
        peers.append(writer.get_extra_info("peername"))
        # The body goes on after [DONE]: the client reads that tail to keep the connection.
        writer.write(response(event_stream("same") + b": bye\n\n"))
        await writer.drain()
        return True

    async with http_server(keep_alive) as url:
        client = shared_client()
        try:
            upstream = Upstream(url, "key", client=client, max_retries=0)
            for _ in range(3):
                assert (await ask(upstream)).content == "same"
        finally:
            await client.aclose()
    assert len(peers) == 3 and len(set(peers)) == 1


async def test_the_apps_client_still_goes_through_a_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    heads: list[bytes] = []
    async with http_server(stream_reply, heads=heads) as proxy:
        for name in ("NO_PROXY", "no_proxy"):
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
