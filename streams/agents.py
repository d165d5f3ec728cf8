"""Kafka agents: requests in, responses or dead letters out, nothing lost.

A worker serves up to ``batching.max_in_flight`` requests at once so that their inputs
share the micro-batcher's model calls. Requests finish out of order, but offsets are
acknowledged per partition strictly in order (:class:`InOrderAcks`): a committed offset
never passes a request whose answer has not been produced. A crash therefore replays
unanswered requests (at-least-once; duplicates carry the same ``request_id``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, cast

import faust

from streams.errors import RequestError, to_request_error
from streams.observer import Observer
from streams.producer import OutputProducer
from streams.records import dead_letter, decode_json_object, parse_classify, request_id_of
from streams.service import ClassifyService
from streams.settings import Settings

log = logging.getLogger(__name__)


def encode(value: dict[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class InOrderAcks:
    """Acknowledge events of each partition in offset order, whatever order they finish."""

    def __init__(self) -> None:
        self._pending: dict[Any, deque[list[Any]]] = {}

    def track(self, event: faust.EventT[Any]) -> list[Any]:
        entry = [event, False]
        self._pending.setdefault(event.message.tp, deque()).append(entry)
        return entry

    def done(self, entry: list[Any]) -> None:
        entry[1] = True
        queue = self._pending[entry[0].message.tp]
        while queue and queue[0][1]:
            queue.popleft()[0].ack()

    @property
    def in_flight(self) -> int:
        return sum(len(q) for q in self._pending.values())


class RequestAgent:
    """Runs ``handle`` for each event of a stream, concurrently, with in-order acks."""

    def __init__(
        self,
        handle: Callable[[faust.EventT[Any]], Awaitable[None]],
        *,
        max_in_flight: int,
    ) -> None:
        self._handle = handle
        self._slots = asyncio.Semaphore(max_in_flight)
        self._acks = InOrderAcks()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, stream: faust.StreamT[Any]) -> None:
        # noack: events are acknowledged by InOrderAcks once answered, not on iteration
        events: AsyncIterable[faust.EventT[Any]] = (
            cast("faust.Stream[Any]", stream).noack().events()
        )
        async for event in events:
            await self._slots.acquire()
            entry = self._acks.track(event)
            task = asyncio.ensure_future(self._run(event, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, event: faust.EventT[Any], entry: list[Any]) -> None:
        try:
            await self._handle(event)
        except Exception:  # the handler answers every error itself; this is a last resort
            log.exception("unhandled error for %s; it will be redelivered", event.message.tp)
            return  # not acked: the offset is not committed past it
        finally:
            self._slots.release()
        self._acks.done(entry)


class ClassifyHandler:
    """One classify record → one prediction record or one dead letter."""

    kind_zero_shot = "zero-shot"
    kind_few_shot = "few-shot"

    def __init__(
        self,
        settings: Settings,
        service: ClassifyService,
        output: OutputProducer,
        observer: Observer,
    ) -> None:
        self.settings = settings
        self.service = service
        self.output = output
        self.predictions = settings.topic("predictions")
        self.errors = settings.topic("errors")
        self.observer = observer

    async def __call__(self, event: faust.EventT[Any]) -> None:
        message = event.message
        raw = message.value
        request_id: str | None = None
        try:
            body = decode_json_object(raw)
            request_id = request_id_of(body, message.key)
            request = parse_classify(body, self.settings.limits, request_id=request_id)
            kind = self.kind_few_shot if request.classifier_id else self.kind_zero_shot
            self.observer.on_request(message.topic, kind, len(request.inputs))
            response = await self.service.classify(request)
        except Exception as exc:
            error = to_request_error(exc)
            if not isinstance(exc, RequestError):
                log.exception("request %s failed", request_id)
            if request_id is None and message.key is not None:
                request_id = bytes(message.key).decode("utf-8", "replace")
            await self.send_dead_letter(event, request_id, error)
            return
        await self.output.send(self.predictions, request_id, encode(response))
        latency = time.time() - message.timestamp if message.timestamp else None
        self.observer.on_response(message.topic, kind, len(request.inputs), latency)

    async def send_dead_letter(
        self, event: faust.EventT[Any], request_id: str | None, error: RequestError
    ) -> None:
        message = event.message
        record = dead_letter(
            request_id=request_id,
            error=error,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            payload=message.value if isinstance(message.value, bytes) else None,
        )
        await self.output.send(self.errors, request_id, encode(record))
        self.observer.on_dead_letter(message.topic, str(error.code))
