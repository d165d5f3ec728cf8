"""Answers leave through one batching producer, and are acknowledged before their request.

faust's own producer writes the table changelogs; on the embedded broker it must send one
record per batch (see ``streams/app.py``). Answers do not have that constraint, so they
go through their own aiokafka producer that lingers a few milliseconds and batches: one
produce request carries many answers instead of one each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError

from streams.broker import kafka_security
from streams.errors import OversizeRecordError
from streams.observer import Observer
from streams.settings import Settings

log = logging.getLogger(__name__)

_RETRY_PAUSES_S = (0.1, 0.5, 1.0, 2.0, 5.0)
"""Pauses between attempts; the last one repeats for as long as the broker fails."""

RETRY_LOG_EVERY_S = 30.0
"""Failed sends are logged at most this often per topic and error."""

TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
"""What aiokafka raises for a record over its own or the broker's size limit."""


def record_size(value: bytes, key: bytes | None, limit: int, what: str) -> int:
    """The bytes a record takes (value and key); :class:`OversizeRecordError` over ``limit``,
    before any broker sees it."""
    size = len(value) + len(key or b"")
    if size > limit:
        raise OversizeRecordError(size, limit, "SHOTSTREAM_KAFKA__MAX_MESSAGE_BYTES", what)
    return size


class ProducerStoppedError(RuntimeError):
    """``send`` after ``stop``: nothing can be delivered any more."""


class OutputProducer:
    """Started lazily in the running loop; ``send`` returns once the broker has the record."""

    def __init__(self, settings: Settings, observer: Observer | None = None) -> None:
        self.settings = settings
        self.observer = observer or Observer()
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._stopped = False
        self._logged: dict[tuple[str, str], float] = {}
        self._failed: dict[tuple[str, str], int] = {}

    async def _started(self) -> AIOKafkaProducer:
        if self._stopped:
            raise ProducerStoppedError("the output producer was stopped (shutting down)")
        if self._producer is None:
            async with self._lock:
                if self._stopped:  # stopped while this send waited for another's start
                    raise ProducerStoppedError("the output producer was stopped")
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=",".join(self.settings.brokers),
                        acks="all",
                        max_request_size=self.settings.kafka.max_message_bytes,
                        linger_ms=self.settings.kafka.output_linger_ms,
                        request_timeout_ms=int(self.settings.kafka.request_timeout_s * 1000),
                        **kafka_security(self.settings.kafka),
                    )
                    try:
                        await producer.start()
                    except BaseException:
                        await producer.stop()  # its half-open connections and tasks
                        raise
                    if self._stopped:  # stop() came while it started: nobody else would
                        await producer.stop()
                        raise ProducerStoppedError("the output producer was stopped")
                    self._producer = producer
        return self._producer

    async def send(
        self,
        topic: str,
        key: str | None,
        value: bytes,
        *,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Produce (with ``headers``) and wait for the broker's ack.

        A record over the size limit raises :class:`OversizeRecordError` at once (the
        caller answers with a dead letter instead). Any other failure is retried until the
        broker takes the record: an answer is never given up while the broker is away, so
        its request is never acknowledged without one. Each failed attempt is told to the
        observer (``shotstream_produce_retries``), so a permanent failure such as a denied
        topic shows on the dashboard, not only in the log.
        """
        limit = self.settings.kafka.max_message_bytes
        raw_key = key.encode("utf-8") if key is not None else None
        size = record_size(value, raw_key, limit, "the answer")
        attempt = 0
        while True:
            try:
                # a first start is retried like a send: the broker may be away right then.
                # ProducerStoppedError is not caught: once stopped, the request stays
                # unacknowledged and is redelivered to the next worker
                producer = await self._started()
                await producer.send_and_wait(
                    topic, value, key=raw_key, headers=list(headers) or None
                )
                if attempt:
                    self._recovered(topic)
                return
            except TOO_LARGE as exc:  # the broker's or the topic's limit is lower
                reason = f"the broker refused it: {exc}"
                raise OversizeRecordError(size, limit, reason) from exc
            except ProducerStoppedError:
                raise
            except Exception as exc:
                pause = _RETRY_PAUSES_S[min(attempt, len(_RETRY_PAUSES_S) - 1)]
                attempt += 1
                self.observer.on_produce_retry(topic, type(exc).__name__)
                self._log_retry(topic, exc)
                await asyncio.sleep(pause)

    def _recovered(self, topic: str) -> None:
        """The broker takes answers to ``topic`` again: said once, and the next failure
        is logged in full."""
        ended = [what for what in self._logged if what[0] == topic]
        for what in ended:
            del self._logged[what]
            self._failed.pop(what, None)
        if ended:
            log.warning("answers to %s are taken by the broker again", topic)

    def _log_retry(self, topic: str, exc: Exception) -> None:
        """One line per topic and error each :data:`RETRY_LOG_EVERY_S` (the first with its
        traceback), not one per answer and attempt: hundreds of answers in flight while
        the broker is away would flood the log (the counter has every attempt)."""
        what = (topic, type(exc).__name__)
        now = time.monotonic()
        last = self._logged.get(what)
        self._failed[what] = self._failed.get(what, 0) + 1
        if last is not None and now - last < RETRY_LOG_EVERY_S:
            return
        self._logged[what] = now
        failed, self._failed[what] = self._failed[what], 0
        log.warning(
            "answers to %s not taken by the broker (%s: %s): %d failed attempts%s; retrying "
            "until it takes them",
            topic,
            what[1],
            exc,
            failed,
            "" if last is None else f" in the last {now - last:.0f} s",
            exc_info=last is None,
        )

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Deliver what is pending for up to ``timeout_s``, then close. Records still
        pending (the broker away) belong to requests that are not acknowledged."""
        self._stopped = True
        producer, self._producer = self._producer, None
        if producer is not None:
            try:  # aiokafka's stop waits for every pending record, as long as that takes
                await asyncio.wait_for(producer.stop(), timeout_s)
            except TimeoutError:
                log.warning("answers unsent after %g s; their requests come again", timeout_s)
