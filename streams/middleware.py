"""ASGI middleware of the HTTP gateway: request ids, a body size limit and a check of the
headers before the body.

They run before FastAPI parses anything, so an oversized body costs only what was read of
it, a request refused for its headers (no key) none of it, and every answer (errors
included) carries the ``X-Request-Id`` it was given.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestIds:
    """ASGI middleware: a fresh ``request_id`` per HTTP request (``request.state``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["request_id"] = f"http-{uuid.uuid4()}"
        await self.app(scope, receive, send)


class HeadersFirst:
    """ASGI middleware: answer a request from its headers alone when ``refusal`` has an
    answer for it (a route that needs a key, and none valid), before its body is read: a
    caller without a key cannot make the gateway hold a body (64 MiB) while it trickles in.

    A body left unread closes the connection after the answer (read as the next request,
    it would still cost its transfer).
    """

    def __init__(self, app: ASGIApp, refusal: Callable[[Scope], Response | None]) -> None:
        self.app = app
        self.refusal = refusal

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = self.refusal(scope) if scope["type"] == "http" else None
        if response is None:
            await self.app(scope, receive, send)
            return
        if _has_body(scope):
            response.headers["Connection"] = "close"
        await response(scope, _no_receive, send)


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers", ()))
    return b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` before anything parses them, and
    bodies that stall: ``408`` once no part of one arrives for ``chunk_timeout_s``.

    ``Content-Length`` is checked first; a chunked body is counted as it streams. Either
    refusal drops what was read of the body and closes the connection.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, chunk_timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.chunk_timeout_s = chunk_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen = 0
        complete = False

        async def counted() -> Message:
            nonlocal seen, complete
            if complete:  # after the body: waiting for a disconnect may take any time
                return await receive()
            try:  # a timeout scope, not wait_for: no task made per chunk
                async with asyncio.timeout(self.chunk_timeout_s):
                    message = await receive()
            except TimeoutError:
                detail = f"no part of the request body came for {self.chunk_timeout_s:g} s"
                raise HTTPException(408, detail, _CLOSE) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail(), _CLOSE)
            return message

        await self.app(scope, counted, send)

    def _detail(self) -> str:
        return f"request body over {self.max_bytes:,} bytes"

    async def _refuse(self, scope: Scope, send: Send) -> None:
        rid = scope.get("state", {}).get("request_id", "")
        response = JSONResponse(
            {"detail": self._detail(), "code": "REQUEST_TOO_LARGE", "request_id": rid},
            status_code=413,
            headers={"Connection": "close", "X-Request-Id": rid},
        )
        await response(scope, _no_receive, send)


_CLOSE = {"Connection": "close"}
"""The rest of a refused body is not read: the connection ends with the answer."""


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
