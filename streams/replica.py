"""A read replica of every few-shot classifier, on every worker.

Classifiers are *written* by the worker that owns their partition of the train topic
(a faust table in RocksDB, with a changelog topic). Classify requests are keyed by
request_id, so they land on any worker: each worker therefore follows the table's
changelog topic from the beginning (all partitions, no consumer group) and keeps the
latest record per classifier in memory. Reads are local and cheap; they lag the writer
by the replication delay (milliseconds), and an unknown id is called unknown only once
the changelog has been read to where it ended when asked (:meth:`ClassifierReplica.wait_for`),
so a classifier is usable as soon as its creation is answered.

A delete is read at once on the worker that made it (:meth:`ClassifierReplica.forget`):
the record goes, and its older changelog records still on the way cannot bring it back
before the changelog's own tombstone arrives. Other workers see the delete when the
tombstone reaches them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from state.records import ClassifierRecord, Lineage, decode_record, is_older
from streams.broker import Security, follow, request_timeout, stop_consumer
from streams.lenient_records import install as read_undecodable_header_keys

log = logging.getLogger(__name__)

FORGET_S = 60.0
"""How long a local delete outranks the changelog if its tombstone never arrives."""

DELETED_MEMORY_S = 3600.0
"""How long a deleted classifier stays recognisable after its delete was read: a write of
it after its tombstone (from a worker that lost the partition mid-request and resumed
after the new owner deleted it) is stale, not the classifier back."""

read_undecodable_header_keys()  # a record from a foreign client must not end the reader


class ClassifierReplica:
    """Latest record per classifier id, from the changelog topic."""

    def __init__(
        self,
        brokers: str,
        topic: str,
        *,
        fetch_max_wait_ms: int = 25,
        request_timeout_s: float | None = None,
        security: Security | None = None,
        listing_only: bool = False,
    ) -> None:
        self.brokers = brokers
        self.listing_only = listing_only
        """Keep what a listing shows, not the weights and learner state (gateways and the
        CLI list; only workers score): a 16-class classifier with grown prototypes takes
        107 kB decoded, 3.9 kB without them."""
        self.topic = topic
        self.security = security or {}
        """How to reach the brokers (:func:`streams.broker.kafka_security`)."""
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.request_timeout_s = request_timeout_s
        """How long a request to Kafka may take (``caught_up``'s offset query among them)
        before it fails with ``KafkaTimeoutError``; aiokafka's 40 s when ``None``."""
        self.records: dict[str, ClassifierRecord] = {}
        self.partitions: dict[str, int] = {}
        """The changelog partition each record was read from (the train partition whose
        worker owns the classifier)."""
        self._consumer: AIOKafkaConsumer | None = None
        self.reached = False
        """Whether Kafka answered (the consumer started); the topic may be missing still."""
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._deleted: dict[str, tuple[set[Any], float]] = {}
        """Ids whose classifier was deleted, oldest first: the identities (owner,
        created_at; one made again has another) of the classifiers deleted under it, and
        when the last delete was read."""
        self._forgotten: dict[str, tuple[int, float]] = {}
        """Ids deleted by this process, until the changelog's tombstones for them arrive:
        how many deletes are on the way, and when the last was made."""
        self.on_stale: Callable[[str, int], None] | None = None
        """Called with a classifier id and its partition after a stale write of it was
        skipped (the train handler writes the classifier's state again where it owns it)."""
        self.loaded = asyncio.Event()
        """Set once the changelog has been read up to where it ended when ``start`` began
        (a replica fed by hand sets it itself): before that, an unknown id may be one
        still to be read, and ``owned_by`` may count too few."""
        self._loader: asyncio.Task[None] | None = None
        self._read: dict[int, int] = {}
        """Per partition, the offset after the last record read."""
        self._next_ends: asyncio.Future[dict[int, int]] | None = None
        """The changelog's end offsets from the next query (one that starts after its
        callers asked): see :meth:`_ends_from_now`."""
        self._ends_lock = asyncio.Lock()
        self._queries: set[asyncio.Task[None]] = set()

    @property
    def following(self) -> bool:
        """Whether the changelog is being followed (started and not ended)."""
        return self._task is not None and not self._task.done()

    async def start(self, timeout_s: float = 30.0) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.brokers,
            enable_auto_commit=False,
            fetch_max_wait_ms=self.fetch_max_wait_ms,
            auto_offset_reset="earliest",
            **request_timeout(self.request_timeout_s),
            **self.security,
        )
        try:
            await self._assign(consumer, timeout_s)
        except BaseException:  # nothing left open (aiokafka warns of unclosed consumers)
            await stop_consumer(consumer)
            raise
        self._consumer = consumer
        self._task = asyncio.create_task(
            follow(consumer, self._on_record, f"the classifier changelog {self.topic}")
        )
        self._loader = asyncio.create_task(self._load())

    async def _assign(self, consumer: AIOKafkaConsumer, timeout_s: float) -> None:
        """Start ``consumer`` on every partition of the changelog, from the beginning."""
        await consumer.start()
        self.reached = True
        deadline = time.monotonic() + timeout_s
        partitions: set[int] | None = None
        while not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"changelog topic {self.topic} does not exist")
                await asyncio.sleep(0.2)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)

    async def _load(self) -> None:
        started = time.monotonic()
        while True:
            try:
                await self.caught_up(timeout_s=30.0)
                break
            except Exception as exc:  # lagging (TimeoutError) or Kafka away: keep trying
                log.warning(
                    "still reading the classifier changelog %s (%d classifiers, %.0f s, %s): "
                    "few-shot requests wait for it",
                    self.topic,
                    len(self.records),
                    time.monotonic() - started,
                    type(exc).__name__,
                )
                await asyncio.sleep(1.0)
        self.loaded.set()
        log.info(
            "read the classifier changelog %s: %d classifiers in %.1f s",
            self.topic,
            len(self.records),
            time.monotonic() - started,
        )

    def _on_record(self, message: Any) -> None:
        self._read[message.partition] = message.offset + 1  # waiters run after this returns
        if message.key:
            key = message.key.decode("utf-8", "replace")
            self.apply(key, message.value, offset=message.offset, partition=message.partition)
        else:
            self._notify()  # a waiter for the changelog's end may be done

    def apply(
        self, key: str, value: bytes | None, *, offset: int = -1, partition: int = -1
    ) -> None:
        """One changelog record: the classifier's latest state, or a tombstone (``None``);
        waiters are told either way (one for the changelog's end may be done)."""
        try:
            self._apply(key, value, offset, partition)
        finally:
            self._notify()

    def _apply(self, key: str, value: bytes | None, offset: int, partition: int) -> None:
        forgotten = self._forgotten.get(key)
        if forgotten is not None and time.monotonic() - forgotten[1] >= FORGET_S:
            del self._forgotten[key]  # its tombstones never came
            forgotten = None
        if value is None:
            self._remember_deleted(key)
            if forgotten is not None:
                # one delete's tombstone: a later delete here (after a re-create) still
                # hides the writes before its own tombstone
                if forgotten[0] > 1:
                    self._forgotten[key] = (forgotten[0] - 1, forgotten[1])
                else:
                    del self._forgotten[key]
        else:
            if forgotten is not None:
                return  # an older write of a classifier deleted here; its tombstone follows
            try:
                record = decode_record(value)
                if key in self.records and is_older(record.lineage, self.records[key].lineage):
                    # a write older than one read before it: from a worker that lost the
                    # partition while still working (see is_older); not a rollback
                    log.warning(
                        "skipped a stale write of classifier %s at offset %d (version %d after %d)",
                        key,
                        offset,
                        record.version,
                        self.records[key].version,
                    )
                    self._stale(key, partition)
                    return
                if self.was_deleted(key, record.lineage):
                    # the same: a write of it after its delete, which would bring it back
                    log.warning(
                        "skipped a stale write of classifier %s at offset %d (version %d, "
                        "after its delete)",
                        key,
                        offset,
                        record.version,
                    )
                    self._stale(key, partition)
                    return
                if self.listing_only:
                    record = replace(
                        record,
                        weights=np.zeros((0, record.dim), dtype=np.float32),
                        hyper={},
                        applied={},
                    )
                self.records[key] = record
                if partition >= 0:
                    self.partitions[key] = partition
            except Exception:  # RecordFormatError, or anything a foreign record provokes
                # not served at all: its last readable version may say public where the
                # owner has just made it private (a newer format during a rolling upgrade)
                log.exception("unreadable classifier record %s at offset %d", key, offset)
                self.records.pop(key, None)
                self.partitions.pop(key, None)

    def _stale(self, key: str, partition: int) -> None:
        if self.on_stale is not None and partition >= 0:
            try:
                self.on_stale(key, partition)
            except Exception:  # never the replica's end
                log.exception("could not restate classifier %s", key)

    def _remember_deleted(self, key: str, lineage: Lineage | None = None) -> None:
        """``key``'s classifier (the one of ``lineage``, and the one read) is deleted: drop
        it, and know it again if a stale write of it comes (for :data:`DELETED_MEMORY_S`;
        older memories go as new ones come)."""
        gone = self.records.pop(key, None)
        self.partitions.pop(key, None)
        now = time.monotonic()
        before = self._deleted.pop(key, None)  # back at the end: the dict stays oldest first
        known = before[0] if before is not None and now - before[1] < DELETED_MEMORY_S else set()
        known.update(x[0] for x in (lineage, None if gone is None else gone.lineage) if x)
        if known:
            self._deleted[key] = (known, now)
        while self._deleted and self._expired(next(iter(self._deleted))):
            del self._deleted[next(iter(self._deleted))]

    def _expired(self, key: str) -> bool:
        deleted = self._deleted.get(key)
        return deleted is None or time.monotonic() - deleted[1] >= DELETED_MEMORY_S

    def was_deleted(self, classifier_id: str, lineage: Lineage | None = None) -> bool:
        """Whether a classifier under ``classifier_id`` (the one of ``lineage``, if given)
        was deleted within :data:`DELETED_MEMORY_S`. One made again under the id is
        another classifier (its owner and creation time differ)."""
        if self._expired(classifier_id):
            return False
        return lineage is None or lineage[0] in self._deleted[classifier_id][0]

    def forget(self, classifier_id: str, lineage: Lineage | None = None) -> None:
        """This process just deleted ``classifier_id`` (the classifier of ``lineage``,
        from its own table: the replica may not have read it yet): read it as gone from
        now on."""
        self._remember_deleted(classifier_id, lineage)
        pending = self._forgotten.get(classifier_id, (0, 0.0))[0]
        self._forgotten[classifier_id] = (pending + 1, time.monotonic())
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def caught_up(self, timeout_s: float = 30.0) -> None:
        """Wait until every partition has been read to its end (as the broker reports it)."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("replica not started")
        tps = list(consumer.assignment())
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while True:
            positions = [await consumer.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica of {self.topic} did not catch up")
            await asyncio.sleep(0.05)

    def get(self, classifier_id: str) -> ClassifierRecord | None:
        return self.records.get(classifier_id)

    async def wait_for(
        self, classifier_id: str, timeout_s: float, min_version: int = 0
    ) -> ClassifierRecord | None:
        """The record once it exists (and has ``min_version``); None once the changelog
        has been read to where it ended when asked without it, or after the timeout.

        Whatever was written before this call (a train request answered before the
        classify request that asks was produced: an answer waits for its changelog write)
        is then read, so an unknown id is called unknown after one end-offset query and
        the reading up to it, not after the whole timeout (which bounds the wait when
        Kafka is slow or away, or the replica is not reading)."""

        def there() -> bool:
            record = self.records.get(classifier_id)
            return record is not None and record.version >= min_version

        if there():
            return self.records.get(classifier_id)
        deadline = time.monotonic() + timeout_s
        ends: dict[int, int] | None = None
        if self.following:
            try:
                ends = await asyncio.wait_for(self._ends_from_now(), timeout_s)
            except Exception as exc:  # TimeoutError, KafkaError: the timeout alone decides
                log.debug("no changelog end offsets (%r): waiting out the timeout", exc)

        def done() -> bool:
            return there() or (
                ends is not None and all(self._read.get(p, 0) >= e for p, e in ends.items())
            )

        await self._until(done, deadline - time.monotonic())
        return self.records.get(classifier_id) if there() else None

    async def _ends_from_now(self) -> dict[int, int]:
        """The changelog's end offsets, from a query that starts after this call: one
        already under way may have been answered before a write this caller must see.
        Callers that ask while a query runs share the next one (one at a time)."""
        future = self._next_ends
        if future is None:
            future = self._next_ends = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._query_ends(future))
            self._queries.add(task)
            task.add_done_callback(self._queries.discard)
        return await asyncio.shield(future)

    async def _query_ends(self, future: asyncio.Future[dict[int, int]]) -> None:
        """Answer ``future`` with the end offsets, or with the error that stopped the
        query (a stop cancelling it too: its callers then wait as without offsets)."""
        try:
            async with self._ends_lock:
                if self._next_ends is future:
                    self._next_ends = None  # callers from now on need a later query
                consumer = self._consumer
                if consumer is None:
                    raise RuntimeError("replica not started")
                ends = await consumer.end_offsets(list(consumer.assignment()))
                future.set_result({tp.partition: offset for tp, offset in ends.items()})
        except BaseException as exc:
            if self._next_ends is future:
                self._next_ends = None
            if not future.done():
                stopped = not isinstance(exc, Exception)  # cancelled: the replica stops
                future.set_exception(RuntimeError("the replica stopped") if stopped else exc)
                future.exception()  # retrieved: no "never retrieved" warning without waiters
            if not isinstance(exc, Exception):
                raise

    async def wait_gone(self, classifier_id: str, timeout_s: float) -> bool:
        """Whether the record is gone (deleted) within the timeout."""
        return await self._until(lambda: classifier_id not in self.records, timeout_s)

    async def _until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        """Whether ``condition`` holds within the timeout, checked at every change."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return True

    def owned_by(self, owner: str) -> list[ClassifierRecord]:
        return [r for r in self.records.values() if r.owner == owner]

    async def stop(self) -> None:
        for query in list(self._queries):
            query.cancel()
        if self._loader is not None:
            self._loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loader
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await stop_consumer(self._consumer)
