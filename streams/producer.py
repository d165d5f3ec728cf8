"""Answers leave through one batching producer, and are acknowledged before their request.

faust's own producer writes the table changelogs; on the embedded broker it must send one
record per batch (see ``streams/app.py``). Answers do not have that constraint, so they
go through their own aiokafka producer that lingers a few milliseconds and batches: one
produce request carries many answers instead of one each.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaProducer

from streams.settings import Settings

log = logging.getLogger(__name__)

_RETRY_PAUSES_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class OutputProducer:
    """Started lazily in the running loop; ``send`` returns once the broker has the record."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            async with self._lock:
                if self._producer is None:
                    producer = AIOKafkaProducer(
                        bootstrap_servers=",".join(self.settings.brokers),
                        acks="all",
                        linger_ms=self.settings.kafka.output_linger_ms,
                        request_timeout_ms=int(self.settings.kafka.request_timeout_s * 1000),
                    )
                    await producer.start()
                    self._producer = producer
        return self._producer

    async def send(self, topic: str, key: str | None, value: bytes) -> None:
        """Produce and wait for the broker's ack, retrying transient failures."""
        producer = await self._started()
        raw_key = key.encode("utf-8") if key is not None else None
        for attempt, pause in enumerate((*_RETRY_PAUSES_S, None)):
            try:
                await producer.send_and_wait(topic, value, key=raw_key)
                return
            except Exception:
                if pause is None:
                    raise
                log.warning(
                    "send to %s failed (attempt %d); retrying", topic, attempt + 1, exc_info=True
                )
                await asyncio.sleep(pause)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()
