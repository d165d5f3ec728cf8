"""The gateway's HTTP connection guards (streams.http_server) on a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from streams.http_server import MAX_HEADER_BYTES, guarded_h11

REQUEST = b"GET / HTTP/1.1\r\nHost: gw\r\n\r\n"


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


def serving(
    check: Callable[[int], Awaitable[Any]],
    max_connections: int = 100,
    header_timeout_s: float = 0.3,
) -> Any:
    """Run ``check(port)`` against a server with the guards, as the gateway runs it."""

    async def go() -> Any:
        config = uvicorn.Config(
            _ok,
            host="127.0.0.1",
            port=0,
            lifespan="off",
            log_level="warning",
            http=guarded_h11(max_connections, header_timeout_s),
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve())
        await server.ready.wait()
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            return await check(port)
        finally:
            server.should_exit = True
            await task

    return asyncio.run(go())


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection (the test's own limit: 5 s)."""
    return await asyncio.wait_for(reader.read(), 5)


def test_requests_are_served_and_kept_alive() -> None:
    async def check(port: int) -> list[bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answers = []
        for _ in range(2):
            writer.write(REQUEST)
            answers.append(await reader.readuntil(b"ok"))
        writer.close()
        return answers

    assert all(a.startswith(b"HTTP/1.1 200") for a in serving(check))


def test_a_header_block_over_the_limit_is_refused_not_buffered() -> None:
    """With httptools, uvicorn read a 300 MB header line whole (the gateway grew by
    560 MB and stalled every other request while it did)."""

    async def check(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 1))
        answer = await _closed(reader)
        writer.close()
        return answer

    assert serving(check).startswith(b"HTTP/1.1 400")


def test_headers_that_never_end_close_the_connection() -> None:
    """Connections that never finished their headers were held for good: 20,000 of them
    took every file descriptor of the gateway. Timed from connecting, from the previous
    response, and with no byte sent at all."""

    async def check(port: int) -> list[bytes]:
        got = []
        for first in (b"", b"GET / HTTP/1.1\r\nHost: gw\r\n", REQUEST + b"GET / HTTP/1.1\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(first)
            got.append(await _closed(reader))
            writer.close()
        return got

    silent, partial, second = serving(check)
    assert (silent, partial) == (b"", b"")
    assert second.startswith(b"HTTP/1.1 200")
    assert second.endswith(b"ok")  # then closed


def test_connections_beyond_the_cap_are_closed_on_arrival() -> None:
    async def check(port: int) -> tuple[bytes, bytes]:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        refused = await _closed(reader)
        writer.close()
        held_reader, held_writer = held[0]
        held_writer.write(REQUEST)  # the ones in are served
        served = await held_reader.readuntil(b"ok")
        for _, w in held:
            w.close()
        return refused, served

    refused, served = serving(check, max_connections=2, header_timeout_s=60)
    assert refused == b""
    assert served.startswith(b"HTTP/1.1 200")
