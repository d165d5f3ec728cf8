"""ASGI middleware of the HTTP gateway: request ids and a body size limit.

Both run before FastAPI parses anything, so an oversized body costs only what was read
of it, and every answer (errors included) carries the ``X-Request-Id`` it was given.
"""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse
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


class BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` before anything parses them.

    ``Content-Length`` is checked first; a chunked body is counted as it streams.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._detail())
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


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
