"""Kafka agents: requests in, responses or dead letters out, nothing lost.

A worker serves up to ``batching.max_in_flight`` requests at once so that their inputs
share the micro-batcher's model calls. Requests finish out of order, but offsets are
acknowledged per partition strictly in order (:class:`InOrderAcks`): a committed offset
never passes a request whose answer has not been produced. A crash therefore replays
unanswered requests (at-least-once; duplicates carry the same ``request_id``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, cast

import faust
import orjson

from streams.auth import KeyRing, header_value, owner_or_refusal
from streams.errors import (
    ErrorCode,
    OversizeRecordError,
    RequestError,
    retry_after_headers,
    to_request_error,
)
from streams.observer import Observer
from streams.producer import OutputProducer
from streams.records import (
    before_deadline,
    dead_letter,
    deadline_of,
    decode_json_object,
    parse_classify,
    refuse_late,
    request_id_of,
)
from streams.service import ClassifyService
from streams.settings import Settings
from streams.usage import UsageCounter

log = logging.getLogger(__name__)


def latency_of(message: Any) -> float | None:
    """Seconds from a request record's timestamp to now (``None``: it has none)."""
    return time.time() - message.timestamp if message.timestamp else None


def encode(value: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON (orjson: a 256-label answer in 10 µs instead of 240 µs)."""
    return orjson.dumps(value)


class InOrderAcks:
    """Acknowledge events of each partition in offset order, whatever order they finish."""

    def __init__(self) -> None:
        self._pending: dict[Any, deque[list[Any]]] = {}
        self._holes: dict[Any, int] = {}
        """Per partition, the lowest offset :meth:`forget` dropped unanswered: nothing past
        it is acknowledged until it is delivered again (faust's commit would step over
        an offset it never saw acknowledged)."""
        self.acknowledged: dict[Any, int] = {}
        """Per partition, the last offset acknowledged, every one before it too (see
        :meth:`ShotstreamApp._consumer_wait_empty`); cleared by whoever commits it."""

    def track(self, event: faust.EventT[Any]) -> list[Any]:
        message = event.message
        hole = self._holes.get(message.tp)
        if hole is not None and message.offset <= hole:
            del self._holes[message.tp]  # delivered again from the hole on
        entry = [event, False, time.monotonic()]  # the event, answered, when taken
        self._pending.setdefault(message.tp, deque()).append(entry)
        return entry

    def done(self, entry: list[Any]) -> None:
        entry[1] = True
        tp = entry[0].message.tp
        queue = self._pending[tp]
        hole = self._holes.get(tp)
        while queue and queue[0][1]:
            event = queue.popleft()[0]
            if hole is None or event.message.offset < hole:
                event.ack()
                self.acknowledged[tp] = event.message.offset

    @property
    def in_flight(self) -> int:
        """Events taken and not acknowledged yet (answered ones waiting for an earlier one
        of their partition among them)."""
        return sum(len(q) for q in self._pending.values())

    def oldest_s(self) -> float:
        """How long the oldest event not acknowledged yet has been pending (0 when none):
        each partition's first is its oldest."""
        taken = [queue[0][2] for queue in self._pending.values() if queue]
        return time.monotonic() - min(taken) if taken else 0.0

    def reassigned(self, assigned: set[Any]) -> None:
        """A rebalance gave this worker ``assigned``: the holes of partitions it no longer
        has go. Another worker answers and commits past them; were such a partition to
        come back, it would come from that commit, never from the hole, and nothing on it
        would be acknowledged again."""
        for tp in set(self._holes) - assigned:
            del self._holes[tp]
        for tp in set(self.acknowledged) - assigned:
            del self.acknowledged[tp]  # committed by another worker from now on

    def drop(self, entry: list[Any]) -> None:
        """Give up on one pending event, unacknowledged (its request could not be answered
        at all): later events of its partition are acknowledged no further than before it
        until it is delivered again, as after :meth:`forget`."""
        tp = entry[0].message.tp
        queue = self._pending.get(tp)
        if queue is None or entry not in queue:
            return
        offset = entry[0].message.offset
        self._holes[tp] = min(offset, self._holes.get(tp, offset))
        queue.remove(entry)
        if queue and queue[0][1]:
            self.done(queue[0])  # what waited behind it may now go, up to the hole

    def forget(self) -> None:
        """Drop every pending event, unacknowledged (after their requests were cancelled:
        the offsets are not committed past them and Kafka redelivers them)."""
        for tp, queue in self._pending.items():
            if queue:
                lowest = min(entry[0].message.offset for entry in queue)
                self._holes[tp] = min(lowest, self._holes.get(tp, lowest))
        self._pending.clear()


class Turn:
    """A request's place in its partition's order.

    Handlers run concurrently; ``async with turn:`` runs a block only after the same block
    of every earlier request of the partition has finished (or its request has ended),
    so state changes apply in offset order while the slow parts (embedding) overlap.
    """

    def __init__(self, previous: asyncio.Future[None] | None, mine: asyncio.Future[None]) -> None:
        self._previous = previous
        self._mine = mine

    async def __aenter__(self) -> Turn:
        if self._previous is not None:
            await asyncio.shield(self._previous)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.finish()

    def finish(self) -> None:
        """End this turn, or, if the previous one has not ended yet (this request failed
        before it got its turn), end it right after that one: a later request never
        overtakes an earlier one that is still waiting or inside its block."""
        if self._mine.done():
            return
        if self._previous is None or self._previous.done():
            self._mine.set_result(None)
        else:
            self._previous.add_done_callback(lambda _previous: self.finish())


Handler = Callable[[faust.EventT[Any], Turn], Awaitable[None]]


class RequestAgent:
    """Runs ``handle`` for each event of a stream, concurrently, with in-order acks."""

    def __init__(
        self, handle: Handler, *, max_in_flight: int, observer: Observer | None = None
    ) -> None:
        self._handle = handle
        self._observer = observer or Observer()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._acks = InOrderAcks()
        self._turns: dict[Any, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = 0
        """Drains running (a stop may begin during a rebalance's drain)."""

    async def __call__(self, stream: faust.StreamT[Any]) -> None:
        # noack: events are acknowledged by InOrderAcks once answered, not on iteration
        events: AsyncIterable[faust.EventT[Any]] = (
            cast("faust.Stream[Any]", stream).noack().events()
        )
        loop = asyncio.get_running_loop()
        async for event in events:
            await self._slots.acquire()
            if self._draining:  # taken before the drain began: Kafka delivers it again
                self._slots.release()
                continue
            entry = self._acks.track(event)
            tp = event.message.tp
            mine: asyncio.Future[None] = loop.create_future()
            turn = Turn(self._turns.get(tp), mine)
            self._turns[tp] = mine
            task = asyncio.ensure_future(self._run(event, entry, turn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the requests in flight, then cancel the rest.

        A cancelled request gets no answer and no dead letter and stays unacknowledged
        (events after it in its partition too, even when answered), so Kafka redelivers it:
        at-least-once, as after a crash. Returns how many were cancelled."""
        self._draining += 1  # an event taken meanwhile is left to be delivered again
        try:
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=timeout_s)
            late = set(self._tasks)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
                self._acks.forget()
                self._turns.clear()
            return len(late)
        finally:
            self._draining -= 1

    async def _run(self, event: faust.EventT[Any], entry: list[Any], turn: Turn) -> None:
        try:
            await self._handle(event, turn)
        except (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # the handler answers every error itself; this is a last
            # resort, also for what is not an Exception (a Rust tokenizer's panic is a
            # BaseException): missed, the record stayed pending and its partition's
            # commits stopped without a word
            message = event.message
            log.exception(
                "no answer and no dead letter for %s offset %d (a bug): it is not "
                "acknowledged, so this partition's commits stay before it until Kafka "
                "delivers it again (the next rebalance or restart)",
                message.tp,
                message.offset,
            )
            self._observer.on_unanswered(message.topic)
            self._acks.drop(entry)  # the answers after it go on; the offset is not passed
            return
        finally:
            turn.finish()
            self._slots.release()
        self._acks.done(entry)

    def in_flight(self) -> int:
        """Records taken and not acknowledged yet."""
        return self._acks.in_flight

    def oldest_s(self) -> float:
        """Seconds the oldest record not acknowledged yet has been pending (0 when none)."""
        return self._acks.oldest_s()

    def reassigned(self, assigned: set[Any]) -> None:
        """Partitions were assigned (see :meth:`InOrderAcks.reassigned`)."""
        self._acks.reassigned(assigned)

    def take_acknowledged(self) -> dict[Any, int]:
        """The last offset acknowledged per partition since the previous call."""
        taken, self._acks.acknowledged = self._acks.acknowledged, {}
        return taken


class ClassifyHandler:
    """One classify record → one prediction record or one dead letter."""

    kind_zero_shot = "zero-shot"
    kind_few_shot = "few-shot"

    def __init__(
        self,
        settings: Settings,
        service: ClassifyService,
        keys: KeyRing,
        output: OutputProducer,
        observer: Observer,
        usage: UsageCounter | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.keys = keys
        self.output = output
        self.usage = usage
        self.predictions = settings.topic("predictions")
        self.errors = settings.topic("errors")
        self.observer = observer

    async def __call__(self, event: faust.EventT[Any], turn: Turn | None = None) -> None:
        message = event.message
        raw = message.value
        request_id: str | None = None
        try:
            body = decode_json_object(raw, message.headers)
            request_id = request_id_of(body, message.key)
            request = parse_classify(body, self.settings.limits, request_id=request_id)
            kind = self.kind_few_shot if request.classifier_id else self.kind_zero_shot
            self.observer.on_request(message.topic, kind, len(request.inputs))
            deadline = deadline_of(message.headers)
            refuse_late(deadline)  # a backlog is shed, not computed
            owner = None
            if request.classifier_id is not None:
                owner = owner_or_refusal(
                    self.keys, header_value(message.headers, "authorization"), "few-shot"
                )
            response = await before_deadline(self.service.classify(request, owner), deadline)
            await self.output.send(self.predictions, request_id, encode(response))
            if request.classifier_id is not None and self.usage is not None:
                self.usage.count(request.classifier_id)
        except Exception as exc:  # every failure becomes a dead letter
            await send_dead_letter(self.output, self.errors, self.observer, event, request_id, exc)
            return
        self.observer.on_response(message.topic, kind, len(request.inputs), latency_of(message))


def _utf8_or_none(key: bytes | None) -> str | None:
    """A record key as text; ``None`` if it is not UTF-8 (its letter is then keyed by its
    topic, partition and offset, not by an id with U+FFFD its producer never sent)."""
    try:
        return None if key is None else bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None


async def send_dead_letter(
    output: OutputProducer,
    topic: str,
    observer: Observer,
    event: faust.EventT[Any],
    request_id: str | None,
    exc: Exception,
) -> None:
    """Answer a failed record with its dead letter (the record key stands in for a
    request_id the body did not yield). Unexpected errors are logged with a traceback.

    Never raises for a letter it cannot deliver: that would hold the partition behind this
    record forever. A letter over the size limit loses its payload (cut, then dropped);
    ``request_id`` and ``detail`` are capped, since either can be as large as the record."""
    message = event.message
    error = to_request_error(exc)
    if error.code == ErrorCode.INTERNAL_ERROR:  # a bug: its traceback
        log.exception("request %s on %s failed", request_id, message.topic, exc_info=exc)
    if request_id is None:
        request_id = error.request_id or _utf8_or_none(message.key)
    request_id = _capped(request_id, MAX_LETTER_ID_CHARS)
    headers = retry_after_headers(error)
    error = RequestError(error.code, _capped(error.detail, MAX_LETTER_DETAIL_CHARS) or "")
    payload = message.value if isinstance(message.value, bytes) else None
    # keyed, also when the request had no id: a compacted errors topic refuses keyless records
    key = request_id or f"{message.topic}:{message.partition}:{message.offset}"

    def letter(keep: int | None) -> bytes:
        return encode(
            dead_letter(
                request_id=request_id,
                error=error,
                topic=message.topic,
                partition=message.partition,
                offset=message.offset,
                payload=payload,
                keep=keep,
            )
        )

    # A payload that would take the dead letter over the size limit is cut (the record
    # says how long it was); ``source`` still locates the original.
    budget = output.settings.kafka.max_message_bytes - len(key.encode()) - 1024
    value = letter(None)
    if len(value) > budget and payload:
        bare = len(letter(0))
        per_byte = (len(value) - bare) / len(payload)  # JSON escaping, base64: >= 1
        keep = int((budget - bare) / per_byte)
        for _ in range(4):  # escaping is uneven along the payload: shrink, a few times
            value = letter(max(keep, 0))
            if len(value) <= budget or keep <= 0:
                break
            keep = int(keep * budget / len(value) * 0.9)
    for attempt in (value, letter(0)):
        try:
            await output.send(topic, key, attempt, headers=headers)
            break
        except OversizeRecordError as too_large:  # the broker's own limit is lower
            last = too_large
    else:  # not even without its payload (a broker limit under ~60 kB): counted apart
        log.error(
            "dead letter for %s@%d:%d (%s) not delivered: %s",
            message.topic,
            message.partition,
            message.offset,
            error.code,
            last,
        )
        observer.on_unanswered(message.topic)
        return
    observer.on_dead_letter(message.topic, str(error.code))


MAX_LETTER_ID_CHARS = 1024
"""A dead letter's ``request_id`` (and key) is cut to this many characters."""
MAX_LETTER_DETAIL_CHARS = 8192
"""A dead letter's ``error.detail`` is cut to this many characters."""


def _capped(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters, saying so.

    >>> _capped("abcdef", 4), _capped("abc", 4), _capped(None, 4)
    ('abcd… (6 characters)', 'abc', None)
    """
    if text is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"
