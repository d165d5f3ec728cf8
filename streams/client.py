"""A small producer/consumer client: send requests, wait for their answers.

Answers are matched by ``request_id`` on the predictions and errors topics; the client
reads from the topics' current end, so it starts listening before it produces.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.auth import header_value
from streams.broker import follow, kafka_security, request_timeout, stop_consumer
from streams.errors import RETRY_AFTER_HEADER, OversizeRecordError
from streams.lenient_records import install as read_undecodable_header_keys
from streams.producer import TOO_LARGE, record_size
from streams.settings import EMBEDDED_FETCH_MAX_WAIT_MS, Settings

read_undecodable_header_keys()  # a record from a foreign client must not end the reader


log = logging.getLogger(__name__)

PARTITION_CHECK_S = 30.0
"""How often a client looks for partitions added to the answer topics."""


class GatewayStartError(Exception):
    """Kafka did not answer, or no worker had made the topics, within
    ``gateway.startup_timeout_s``: said in one line (the CLI exits 4)."""


def retry_after_of(headers: Sequence[tuple[str, bytes | None]] | None) -> int | None:
    """Whole seconds in a record's :data:`~streams.errors.RETRY_AFTER_HEADER`; ``None``
    without a valid one (a record from elsewhere may carry anything)."""
    text = (header_value(headers, RETRY_AFTER_HEADER) or b"").decode("ascii", "replace")
    seconds = int(text) if text.isdigit() and len(text) <= 9 else 0
    return seconds or None


class Answer(dict[str, Any]):
    """A response body; ``topic`` says whether it was a prediction or a dead letter, and
    ``retry_after_s`` when a refused request may pass (its dead letter's
    :data:`~streams.errors.RETRY_AFTER_HEADER`), where the worker said."""

    def __init__(
        self, topic: str, body: dict[str, Any], *, retry_after_s: int | None = None
    ) -> None:
        super().__init__(body)
        self.topic = topic
        self.retry_after_s = retry_after_s

    @property
    def is_error(self) -> bool:
        return "error" in self


class ShotstreamClient:
    """Produce classify requests and collect their answers.

    >>> # async with ShotstreamClient(settings) as c:
    >>> #     answer = await c.classify(["hello"], labels=["greeting", "question"])
    """

    def __init__(
        self,
        settings: Settings,
        *,
        answer_topics: Sequence[str] | None = None,
        produce_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.produce_timeout_s = produce_timeout_s
        """How long the broker may take to take a record (aiokafka's 40 s when ``None``):
        after it the producer drops the record and the send fails."""
        self._answer_topics = list(
            answer_topics or [settings.topic(t) for t in ("predictions", "train-results", "errors")]
        )
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._waiting: dict[str, asyncio.Future[Answer]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.reached = False
        """Whether Kafka answered (the producer started); the topics may be missing still."""

    async def __aenter__(self) -> ShotstreamClient:
        try:
            return await self._start()
        except BaseException:  # nothing left open (aiokafka warns of unclosed clients)
            await self.__aexit__()
            raise

    async def _start(self) -> ShotstreamClient:
        brokers = ",".join(self.settings.brokers)
        security = kafka_security(self.settings.kafka)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=brokers,
            acks="all",
            max_request_size=self.settings.kafka.max_message_bytes,
            **request_timeout(self.produce_timeout_s),
            **security,
        )
        await self._producer.start()
        self.reached = True
        # No group: assign every partition and start at the end. The embedded broker's
        # end offset can be *lower* than the real one (notes/embedded-broker.md), which
        # only replays a few old answers here: they are ignored by request_id.
        # the embedded broker holds a fetch for about half its max wait even when answers
        # arrive meanwhile: keep the wait short there (streams/app.py)
        wait_ms = EMBEDDED_FETCH_MAX_WAIT_MS if self.settings.embedded_broker else 500
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=brokers,
            enable_auto_commit=False,
            fetch_max_wait_ms=wait_ms,
            **security,
        )
        await self._consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in self._answer_topics
            for p in sorted(await _partitions(self._consumer, topic))
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve positions now, before anything is produced
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(follow(self._consumer, self._answer, "answers"))
        self._watcher = asyncio.create_task(self._watch_partitions(self._consumer, partitions))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in (self._reader, self._watcher):
            if task:
                task.cancel()
        if self._consumer:
            await stop_consumer(self._consumer)
        if self._producer:
            await self._producer.stop()

    async def _watch_partitions(
        self, consumer: AIOKafkaConsumer, assigned: list[TopicPartition]
    ) -> None:
        """Read the answer topics' new partitions too: with partitions added to a topic
        after start, every answer keyed to one of them was never read (a gateway answered
        those requests 504 until restarted). Checked every :data:`PARTITION_CHECK_S`; a
        new partition is read from its beginning, so answers already there are found."""
        known = set(assigned)
        while True:
            await asyncio.sleep(PARTITION_CHECK_S)
            try:
                await consumer._client.force_metadata_update()
            except Exception as exc:  # Kafka away: the next check tries again
                log.debug("answer partitions not checked: %r", exc)
                continue
            new = [
                TopicPartition(topic, p)
                for topic in self._answer_topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
                if TopicPartition(topic, p) not in known
            ]
            if not new:
                continue
            positions = {tp: await consumer.position(tp) for tp in known}
            consumer.assign([*known, *new])  # positions are forgotten: set again, at once
            for tp, offset in positions.items():
                consumer.seek(tp, offset)
            await consumer.seek_to_beginning(*new)
            known.update(new)
            log.warning(
                "answer topics have new partitions %s: reading them too",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in new),
            )

    @property
    def reading(self) -> bool:
        """Whether answers are being read (the reader started and has not ended)."""
        return self._reader is not None and not self._reader.done()

    def _answer(self, record: Any) -> None:
        """Resolve the waiting request a record answers; skip anything else."""
        try:
            body = json.loads(record.value)
        except (TypeError, ValueError, RecursionError):  # not ours, or nested too deeply
            return
        rid = body.get("request_id") if isinstance(body, dict) else None
        future = self._waiting.get(str(rid)) if rid is not None else None
        if future is not None and not future.done():
            future.set_result(
                Answer(record.topic, body, retry_after_s=retry_after_of(record.headers))
            )

    def expect(self, request_id: str) -> asyncio.Future[Answer]:
        """A future for the answer (prediction or dead letter) to ``request_id``."""
        future = self._waiting.get(request_id)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            self._waiting[request_id] = future
            future.add_done_callback(lambda _f: self._waiting.pop(request_id, None))
        return future

    async def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: str | None,
        headers: Iterable[tuple[str, bytes]] = (),
        partition: int | None = None,
    ) -> None:
        """Produce one raw record (to ``partition``, or the key's) and wait for the ack."""
        assert self._producer is not None  # noqa: S101
        await self._producer.send_and_wait(
            topic,
            value,
            key=key.encode() if key is not None else None,
            headers=list(headers),
            partition=partition,
        )

    async def send(
        self,
        topic: str,
        body: dict[str, Any],
        *,
        key: str | None = None,
        headers: Iterable[tuple[str, bytes]] = (),
    ) -> asyncio.Future[Answer]:
        """Produce ``body``; return a future for the answer with its ``request_id``.

        Raises ``UnicodeEncodeError`` for a string with a lone surrogate (not Unicode),
        :class:`OversizeRecordError` for a body over ``kafka.max_message_bytes``, and the
        producer's error if the broker does not take it; no answer is awaited then.
        """
        rid = str(body.setdefault("request_id", str(uuid.uuid4())))
        value = json.dumps(body, ensure_ascii=False).encode()
        limit = self.settings.kafka.max_message_bytes
        size = record_size(value, (key or rid).encode(), limit, "the request")
        future = self.expect(rid)
        try:
            await self.produce(topic, value, key=key or rid, headers=headers)
        except BaseException as exc:
            self._waiting.pop(rid, None)
            future.cancel()
            if isinstance(exc, TOO_LARGE):  # the topic's or the broker's limit is lower
                reason = f"the broker refused it: {type(exc).__name__}"
                raise OversizeRecordError(size, limit, reason, "the request") from exc
            raise
        return future

    async def classify(
        self,
        inputs: list[Any],
        *,
        labels: list[str] | dict[str, list[str]] | None = None,
        model: str | None = None,
        classifier_id: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
    ) -> Answer:
        """Zero-shot (labels) or few-shot (classifier_id + api_key) classification."""
        body: dict[str, Any] = {"input": inputs}
        if labels is not None:
            body["labels"] = labels
        if model is not None:
            body["model"] = model
        if classifier_id is not None:
            body["classifier_id"] = classifier_id
        future = await self.send(self.settings.topic("classify"), body, headers=_auth(api_key))
        return await asyncio.wait_for(future, timeout_s)

    async def train(
        self,
        examples: list[dict[str, str]],
        *,
        classifier_id: str,
        api_key: str | None,
        model: str | None = None,
        access: str | None = None,
        num_iters: int | None = None,
        timeout_s: float = 60.0,
    ) -> Answer:
        """Send labelled examples (``{"text", "label"}``) to the train topic."""
        body: dict[str, Any] = {"classifier_id": classifier_id, "input": examples}
        for name, value in (("model", model), ("access", access), ("num_iters", num_iters)):
            if value is not None:
                body[name] = value
        future = await self.send(
            self.settings.topic("train"), body, key=classifier_id, headers=_auth(api_key)
        )
        return await asyncio.wait_for(future, timeout_s)

    async def delete(
        self, classifier_id: str, *, api_key: str | None, timeout_s: float = 60.0
    ) -> Answer:
        body = {"classifier_id": classifier_id, "action": "delete"}
        future = await self.send(
            self.settings.topic("train"), body, key=classifier_id, headers=_auth(api_key)
        )
        return await asyncio.wait_for(future, timeout_s)


def _auth(api_key: str | None) -> list[tuple[str, bytes]]:
    return [("authorization", f"Bearer {api_key}".encode())] if api_key else []


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    for _ in range(50):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return set(parts)
        await consumer._client.force_metadata_update()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} not found")
