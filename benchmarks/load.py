"""The load generator: produce classify requests, time each answer as it arrives.

One :class:`LoadClient` serves one topic prefix (a worker's, or a peer's). It listens
on the prefix's ``predictions`` and ``errors`` topics from their current end *before*
it produces anything, and stamps each answer with the time its fetch returned. The
embedded broker may report an end offset lower than the truth (notes/embedded-broker.md),
which only replays old answers: anything whose ``request_id`` is not expected is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from streams.records import DEADLINE_HEADER

Request = tuple[str, bytes]
"""``(request_id, encoded JSON body)``; bodies are encoded before any clock starts."""

T = TypeVar("T")


RAW_STREAMS = (1, 2)
"""Compute streams the raw embedder is timed with: one stream with all of torch's threads,
and two with half each (what a CPU worker runs by default, ``streams.worker.plan_compute``)."""


def config_name(batch: int, streams: int) -> str:
    """``"32"``: batches of 32 on one stream; ``"32x2"``: on two streams at once."""
    return str(batch) if streams == 1 else f"{batch}x{streams}"


@contextlib.contextmanager
def torch_threads_for(streams: int) -> Iterator[None]:
    """torch's threads split among ``streams`` by the worker's own ``plan_compute``;
    restored after."""
    import torch

    from streams.settings import Settings
    from streams.worker import plan_compute

    before = torch.get_num_threads()
    plan_compute(Settings(batching={"compute_streams": streams}), "cpu")
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_batches(
    run: Callable[[list[T]], object], batches: Sequence[list[T]], streams: int
) -> float:
    """Seconds ``run`` takes over ``batches`` with ``streams`` threads taking them in turn
    (a worker's compute streams), torch's threads split among them."""
    with torch_threads_for(streams):
        start = time.perf_counter()
        if streams == 1:
            for batch in batches:
                run(batch)
        else:
            with ThreadPoolExecutor(streams) as pool:
                list(pool.map(run, batches))
        return time.perf_counter() - start


def best_batch_rate(
    run: Callable[[list[T]], object],
    items: Sequence[T],
    batches: Sequence[int] = (16, 32, 64),
    streams: Sequence[int] = RAW_STREAMS,
) -> tuple[dict[str, float], str]:
    """Items per second of ``run`` over ``items`` in chunks of each batch size on each
    number of streams (after one warm-up chunk), by ``config_name``, and the fastest."""
    run(list(items[: batches[0]]))
    rates = {}
    for count in streams:
        for batch in batches:
            chunks = [list(items[i : i + batch]) for i in range(0, len(items), batch)]
            rates[config_name(batch, count)] = len(items) / run_batches(run, chunks, count)
    return rates, max(rates, key=lambda b: rates[b])


def make_requests(
    tag: str, texts: Sequence[str], labels: Sequence[str], model: str
) -> list[Request]:
    """One request per text: ``{"request_id", "model", "labels", "input": [text]}``."""
    out: list[Request] = []
    for i, text in enumerate(texts):
        rid = f"{tag}-{i:05d}"
        body = {"request_id": rid, "model": model, "labels": list(labels), "input": [text]}
        out.append((rid, json.dumps(body, ensure_ascii=False).encode()))
    return out


@dataclass
class RunResult:
    """Send and receive times (``time.perf_counter``) of one batch of requests."""

    name: str
    sent: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    """Answers that came on the errors topic (dead letters)."""
    codes: dict[str, str] = field(default_factory=dict)
    """The error code of each dead-lettered answer, by request id."""
    batching: dict[str, Any] = field(default_factory=dict)
    """The worker's model calls meanwhile (``benchmarks.scrape.batch_stats``), if known."""

    @property
    def requests(self) -> int:
        return len(self.sent)

    @property
    def seconds(self) -> float:
        """First send → last answer."""
        if not self.received:
            return float("nan")
        return max(self.received.values()) - min(self.sent.values())

    @property
    def throughput(self) -> float:
        """Answers per second over :attr:`seconds`."""
        return len(self.received) / self.seconds if self.received else 0.0

    def latencies_ms(self) -> list[float]:
        return sorted(1000 * (t - self.sent[rid]) for rid, t in self.received.items())

    def percentiles_ms(self) -> dict[str, float]:
        lat = self.latencies_ms()
        if not lat:
            return {}
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99)}

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "answered": len(self.received),
            "errors": self.errors,
            "seconds": self.seconds,
            "throughput": self.throughput,
            "worker_batching": self.batching or None,
        }

    def complaints(self) -> list[str]:
        """What went wrong, if anything (unanswered requests, dead letters)."""
        out = []
        if len(self.received) < self.requests:
            out.append(f"{self.name}: {self.requests - len(self.received)} requests unanswered")
        if self.errors:
            out.append(f"{self.name}: {self.errors} answers were dead letters")
        return out


@dataclass
class _Run:
    result: RunResult
    done: asyncio.Event
    bar: tqdm


class LoadClient:
    """Producer + answer collector for the topics under ``prefix``.

    Parameters
    ----------
    brokers
        ``host:port`` of the broker.
    prefix
        Topic prefix: requests go to ``<prefix>classify``.
    stall_s
        Give up waiting when no answer came for this long.
    """

    def __init__(
        self,
        brokers: str,
        prefix: str,
        *,
        stall_s: float = 120.0,
        request_topic: str = "classify",
        answer_topics: Sequence[str] = ("predictions", "errors"),
        headers: Sequence[tuple[str, bytes]] = (),
        deadline_s: float | None = None,
    ) -> None:
        self.brokers = brokers
        self.prefix = prefix
        self.stall_s = stall_s
        self.request_topic = request_topic
        self.answer_topics = tuple(answer_topics)
        self.headers = list(headers)
        self.deadline_s = deadline_s
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._run: _Run | None = None

    async def __aenter__(self) -> LoadClient:
        # linger: let records of a burst share produce requests, as a busy client's would
        from streams.settings import Settings

        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.brokers,
            linger_ms=5,
            acks="all",
            max_request_size=Settings().kafka.max_message_bytes,  # photos: MBs of base64
        )
        await self._producer.start()
        # a short fetch wait: the embedded broker holds a fetch for about half of it even
        # when records arrive meanwhile, which would add up to 250 ms (aiokafka's default
        # 500 ms) to every answer's measured time
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.brokers, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        await self._consumer.start()
        partitions = [
            TopicPartition(topic, p)
            for topic in (f"{self.prefix}{t}" for t in self.answer_topics)
            for p in await _partitions(self._consumer, topic)
        ]
        self._consumer.assign(partitions)
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the positions now, before anything is produced
            await self._consumer.position(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()

    async def burst(self, requests: Sequence[Request], desc: str) -> RunResult:
        """Produce every request as fast as possible; wait for all answers."""
        producer, run = self._begin(requests, desc)
        topic = f"{self.prefix}{self.request_topic}"
        pending = []
        for rid, value in requests:
            run.result.sent[rid] = time.perf_counter()
            key, headers = self._key(rid, value), self._headers()
            pending.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*pending)
        return await self._finish(run)

    async def paced(self, requests: Sequence[Request], rate: float, desc: str) -> RunResult:
        """Produce at ``rate`` requests per second (an open loop); wait for all answers."""
        producer, run = self._begin(requests, desc)
        topic = f"{self.prefix}{self.request_topic}"
        pending = []
        start = time.perf_counter()
        for i, (rid, value) in enumerate(requests):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            run.result.sent[rid] = time.perf_counter()
            key, headers = self._key(rid, value), self._headers()
            pending.append(await producer.send(topic, value, key=key, headers=headers))
        await asyncio.gather(*pending)
        return await self._finish(run)

    # -- internals ----------------------------------------------------------------------

    def _headers(self) -> list[tuple[str, bytes]]:
        """The fixed headers, and a ``shotstream-deadline`` ``deadline_s`` from now (the
        gateway's reply timeout does the same)."""
        if self.deadline_s is None:
            return self.headers
        return [*self.headers, (DEADLINE_HEADER, f"{time.time() + self.deadline_s:.3f}".encode())]

    def _key(self, rid: str, value: bytes) -> bytes:
        """Train records are keyed by classifier id, everything else by request id."""
        if self.request_topic == "train":
            cid = json.loads(value).get("classifier_id")
            if cid:
                return str(cid).encode()
        return rid.encode()

    def _begin(self, requests: Sequence[Request], desc: str) -> tuple[AIOKafkaProducer, _Run]:
        assert self._producer is not None, "use LoadClient as an async context manager"
        bar = tqdm(total=len(requests), desc=desc, unit="ans", leave=False, dynamic_ncols=True)
        result = RunResult(desc)
        result.sent.update({rid: float("nan") for rid, _ in requests})
        self._run = _Run(result, asyncio.Event(), bar)
        return self._producer, self._run

    async def _finish(self, run: _Run) -> RunResult:
        seen, last_progress = -1, time.monotonic()
        while not run.done.is_set():
            if len(run.result.received) != seen:
                seen, last_progress = len(run.result.received), time.monotonic()
            elif time.monotonic() - last_progress > self.stall_s:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), timeout=1.0)
        run.bar.close()
        self._run = None
        return run.result

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            run = self._run
            if run is None:
                continue
            result = run.result
            for records in batches.values():
                for record in records:
                    rid, code = _answer_of(record.value)
                    if rid is None or rid not in result.sent or rid in result.received:
                        continue  # a replayed answer of an earlier run
                    result.received[rid] = now
                    if record.topic.endswith("errors"):
                        result.errors += 1
                        result.codes[rid] = code or "?"
                    run.bar.update()
            if len(result.received) == len(result.sent):
                run.done.set()


def _answer_of(value: bytes | None) -> tuple[str | None, str | None]:
    """An answer's ``request_id`` and, for a dead letter, its ``error.code``."""
    try:
        body = orjson.loads(value or b"")  # what a consumer app would use: json is 10x slower
    except ValueError:
        return None, None
    if not isinstance(body, dict):
        return None, None
    rid, error = body.get("request_id"), body.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return (None if rid is None else str(rid)), (None if code is None else str(code))


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    for _ in range(100):
        await consumer.topics()  # a metadata refresh
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"topic {topic} not found")


async def warm_then_burst(
    brokers: str,
    prefix: str,
    warm: Sequence[Request],
    run: Sequence[Request],
    desc: str,
    **client: Any,
) -> dict[str, Any]:
    """One :class:`LoadClient`: the ``warm`` burst, then the measured ``run`` burst's summary."""
    async with LoadClient(brokers, prefix, **client) as load:
        await load.burst(warm, "warm")
        result = await load.burst(run, desc)
    return result.summary()
