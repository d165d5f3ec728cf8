"""Consumer lag of a worker's own partitions, as Kafka tells it.

A partition's lag is how many of its records lie past what the consumer group committed:
the requests not answered yet, and those answered since the last commit (a commit each
``SHOTSTREAM_KAFKA__COMMIT_INTERVAL_S``). It is what a Kafka lag exporter reports for
the group; each worker reports the partitions it holds, so summing over workers counts
each partition once. A backlog shows here before it shows in the answers' latency, which
is only known once a request is answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.broker import Security, request_timeout, stop_consumer

log = logging.getLogger(__name__)

LAG_INTERVAL_S = 15.0
"""How often a worker reads its lag (Prometheus's usual scrape interval)."""


def records_behind(
    ends: Mapping[TopicPartition, int],
    starts: Mapping[TopicPartition, int],
    committed: Mapping[TopicPartition, int],
) -> dict[TopicPartition, int]:
    """Records per partition past the group's committed offset. A partition the group has
    committed nothing on (``-1`` or missing) or committed before the log's start (records
    deleted by retention) is read from its start, as the workers do (``earliest``).

    >>> tp = TopicPartition("t", 0)
    >>> records_behind({tp: 10}, {tp: 0}, {tp: 4}), records_behind({tp: 10}, {tp: 3}, {tp: -1})
    ({TopicPartition(topic='t', partition=0): 6}, {TopicPartition(topic='t', partition=0): 7})
    """
    return {
        tp: max(0, end - max(committed.get(tp, -1), starts.get(tp, 0))) for tp, end in ends.items()
    }


class LagReader:
    """Reads a consumer group's lag on given partitions: the group's committed offsets
    (OffsetFetch, as an admin) and the partitions' start and end offsets (ListOffsets).
    Its clients are made on first use and again after a failure."""

    def __init__(
        self,
        brokers: str,
        group_id: str,
        *,
        security: Security | None = None,
        timeout_s: float = LAG_INTERVAL_S,
    ) -> None:
        self._brokers = brokers
        self._group_id = group_id
        self._security = dict(security or {})
        self._timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, int]:
        """Records behind on each of ``partitions`` (see :func:`records_behind`); raises
        when Kafka does not answer within the reader's timeout."""
        if not partitions:
            return {}
        try:
            return await asyncio.wait_for(self._read(list(partitions)), self._timeout_s)
        except BaseException:
            await self.stop()  # made anew next time: a broker may have moved
            raise

    async def _read(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        admin, consumer = await self._clients()
        committed = await admin.list_consumer_group_offsets(self._group_id, partitions=tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return records_behind(ends, starts, {tp: meta.offset for tp, meta in committed.items()})

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        timeout = request_timeout(self._timeout_s)
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._brokers, **timeout, **self._security
            )
            await admin.start()
            self._admin = admin
        if self._consumer is None:  # no group: it only asks for offsets
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._brokers,
                enable_auto_commit=False,
                **timeout,
                **self._security,
            )
            await consumer.start()
            self._consumer = consumer
        return self._admin, self._consumer

    async def stop(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if consumer is not None:
            await stop_consumer(consumer)
