"""The gateway's HTTP connections: uvicorn's h11 protocol with the guards uvicorn lacks.

uvicorn serves with httptools when it is installed, and neither it nor uvicorn limits a
request's header size or how long its headers may take. Measured on the gateway (no key
needed): a 300 MB header line grew it from 160 MB to 724 MB and stalled everyone else's
requests for seconds while it was read, and 20,000 connections that never finished their
headers took every file descriptor it had, its Kafka connections' included, until they
left. Here:

- h11 parses requests, refusing a header block over :data:`MAX_HEADER_BYTES` (400);
- a connection that has not finished a request's headers within :data:`HEADER_TIMEOUT_S`
  of connecting, or of its previous response, is closed;
- connections beyond the gateway's ``max_connections`` (and beyond what the process's
  file descriptor limit leaves for Kafka) are closed as they arrive.

A buffering proxy in front (nginx, Envoy) does the same and more; these hold without one.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
"""The largest request line and header block taken (h11's limit; nginx's default is 32 kB
in four 8 kB buffers)."""
HEADER_TIMEOUT_S = 10.0
"""How long a connection may take to send a request's headers (nginx's
``client_header_timeout`` is 60 s; a client sends its headers in one go)."""
FD_RESERVE = 128
"""File descriptors kept for everything but HTTP connections (Kafka, logs, the model)."""


def connection_cap(max_connections: int) -> int:
    """``max_connections``, lowered to what the soft file descriptor limit leaves after
    :data:`FD_RESERVE`.

    >>> connection_cap(10)
    10
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    return max(1, min(max_connections, soft - FD_RESERVE))


def guarded_h11(max_connections: int, header_timeout_s: float = HEADER_TIMEOUT_S) -> type[Any]:
    """uvicorn's h11 protocol, with at most ``max_connections`` connections open and
    ``header_timeout_s`` for each request's headers (uvicorn's ``http=`` takes it)."""

    class GuardedH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                log.warning(
                    "HTTP connection from %s closed: %d open already "
                    "(SHOTSTREAM_GATEWAY__MAX_CONNECTIONS)",
                    self.client[0] if self.client else "?",
                    max_connections,
                )
                transport.abort()
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._await_headers()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._await_headers()  # the next request on this connection

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            """Time the headers while the client is to send them (h11: IDLE); not while
            its body comes (the body limit times that) or its answer is computed."""
            if self.conn.their_state is not h11.IDLE or self.transport.is_closing():
                self._stop_timer()
            elif self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _stop_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return GuardedH11
