"""Every bad record gets its dead letter with a precise code; the worker keeps serving."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.broker import EmbeddedBroker
from streams.client import Answer, ShotstreamClient
from streams.processes import WorkerProcess
from tests.integration.conftest import client_settings, with_client

pytestmark = [pytest.mark.integration, pytest.mark.model]


def body(**kw: object) -> bytes:
    return json.dumps(kw).encode()


BAD = {
    "not-utf8": (b"\xff\xfe\x00garbage", "INPUT_NOT_UTF8"),
    "not-json": (b"{'input': nope", "INPUT_NOT_JSON"),
    "not-object": (b'["a", "b"]', "INPUT_NOT_OBJECT"),
    "tombstone": (None, "INPUT_MISSING"),
    "no-input": (body(labels=["a", "b"]), "INPUT_MISSING"),
    "empty-input": (body(input=[], labels=["a", "b"]), "INPUT_MISSING"),
    "no-labels": (body(input=["x"]), "INPUT_MISSING"),
    "257-labels": (
        body(input=["x"], labels=[f"l{i}" for i in range(257)]),
        "INPUT_LABEL_LIMIT_EXCEEDED",
    ),
    "1025-inputs": (body(input=["x"] * 1025, labels=["a"]), "INPUT_LIMIT_EXCEEDED"),
    "too-long": (body(input=["short", "word " * 9000], labels=["a"]), "INPUT_TOO_LONG"),
    "wrong-input-type": (body(input=[{"video": "x"}], labels=["a"]), "INPUT_INVALID"),
    "wrong-labels-type": (body(input=["x"], labels="a,b"), "INPUT_INVALID"),
    "unknown-model": (body(input=["x"], labels=["a"], model="gpt-17"), "MODEL_NOT_AVAILABLE"),
}


def test_bad_records_get_dead_letters_and_the_worker_stays_up(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    async def go(c: ShotstreamClient) -> tuple[dict[str, Answer], Answer]:
        topic = c.settings.topic("classify")
        futures = {}
        for name, (value, _code) in BAD.items():
            key = f"bad-{name}"
            futures[name] = c.expect(key)
            await c.produce(topic, value, key=key)
        good = await c.send(topic, {"input": ["still alive?"], "labels": ["yes", "no"]})
        answers = await asyncio.wait_for(asyncio.gather(*futures.values(), good), 120)
        return dict(zip(futures, answers[:-1], strict=True)), answers[-1]

    dead, good = with_client(client_settings(broker), go)
    for name, (value, code) in BAD.items():
        letter = dead[name]
        assert letter.topic.endswith("errors"), name
        assert letter["error"]["code"] == code, (name, letter["error"])
        assert letter["error"]["detail"]
        assert letter["request_id"] == f"bad-{name}"
        assert letter["source"]["topic"] == "shotstream.classify"
        assert isinstance(letter["source"]["offset"], int)
        if value is not None and name != "not-utf8":
            assert letter["payload"] == value.decode()
    assert dead["too-long"]["error"]["detail"].startswith("input[1]")
    assert dead["not-utf8"]["payload_encoding"] == "base64"
    assert "data" in good
    assert worker.proc is not None
    assert worker.proc.poll() is None


def test_an_answer_over_the_message_limit_is_a_dead_letter_and_the_partition_moves_on(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    """1,024 inputs x 256 labels is within the request limits, but its answer (~23 MB) is
    over the 16 MiB message limit: the request gets RESPONSE_TOO_LARGE, and its offset is
    committed, so the partition is not held behind it."""
    labels = [f"label {i:03d} " + "with a rather long description " * 2 for i in range(256)]
    big = {"input": [f"text {i}" for i in range(1024)], "labels": labels}

    async def go(c: ShotstreamClient) -> tuple[Answer, Answer, int]:
        topic = c.settings.topic("classify")
        letter = await asyncio.wait_for(await c.send(topic, big, key="huge"), 300)
        after = await asyncio.wait_for(
            await c.send(topic, {"input": ["small"], "labels": ["a", "b"]}, key="huge"), 60
        )
        tp = TopicPartition(topic, letter["source"]["partition"])
        # the group's committed offset, read without joining it
        group = AIOKafkaConsumer(
            bootstrap_servers=broker.address, group_id="shotstream", enable_auto_commit=False
        )
        await group.start()
        try:
            committed = -1
            for _ in range(300):  # the worker commits every second
                committed = await group.committed(tp) or -1
                if committed > letter["source"]["offset"]:
                    break
                await asyncio.sleep(0.1)
        finally:
            await group.stop()
        return letter, after, committed

    letter, after, committed = with_client(client_settings(broker), go)
    assert letter.topic.endswith("errors")
    assert letter["error"]["code"] == "RESPONSE_TOO_LARGE"
    assert "16,777,216-byte message limit" in letter["error"]["detail"]
    assert json.loads(letter["payload"])["labels"] == labels  # the request, whole
    assert after["data"][0]["prediction"] in ("a", "b")
    assert committed > letter["source"]["offset"]
    assert worker.proc is not None
    assert worker.proc.poll() is None


PRODUCE_RAW_HEADER_KEY = """
import asyncio, os, sys
from aiokafka import AIOKafkaProducer

class RawKey(str):  # encodes to bytes that are not UTF-8, as librdkafka clients may send
    def encode(self, encoding="utf-8", errors="strict"):
        return b"\\xff" + str.encode(self, encoding, errors)

async def main():
    producer = AIOKafkaProducer(bootstrap_servers=sys.argv[1])
    await producer.start()
    try:
        await producer.send_and_wait(
            sys.argv[2], sys.argv[3].encode(), key=b"raw-header-key",
            headers=[(RawKey("authorization"), b"Bearer x")],
        )
    finally:
        await producer.stop()

asyncio.run(main())
"""


def test_a_header_key_that_is_not_utf8_is_answered_and_the_worker_stays_up(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    """Kafka header keys are bytes; librdkafka clients write any. aiokafka's reader gave up
    on such a record: the worker's consumer crashed, and so did every worker taking the
    partition over. Now the record is read (the key escaped, so it is no authorization
    header) and answered, and the records after it are too."""
    import subprocess
    import sys

    async def go(c: ShotstreamClient) -> tuple[Answer, Answer]:
        topic = c.settings.topic("classify")
        raw = c.expect("raw-header-key")
        value = json.dumps({"request_id": "raw-header-key", "input": ["x"], "labels": ["a", "b"]})
        await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", PRODUCE_RAW_HEADER_KEY, broker.address, topic, value],
            env={**os.environ, "AIOKAFKA_NO_EXTENSIONS": "1"},
            check=True,
            timeout=60,
        )
        after = await c.send(topic, {"input": ["still alive?"], "labels": ["yes", "no"]})
        return await asyncio.wait_for(raw, 60), await asyncio.wait_for(after, 60)

    raw, after = with_client(client_settings(broker), go)
    assert raw.topic.endswith("predictions"), raw
    assert raw["data"][0]["prediction"] in ("a", "b")
    assert after.topic.endswith("predictions"), after
    assert worker.proc is not None
    assert worker.proc.poll() is None


def corrupt_gzip_batch() -> bytes:
    """A v2 record batch with a sound CRC whose gzip data is garbage: what a broken client
    could write (Tansu stores it; Apache Kafka checks compressed data on produce)."""
    import struct
    import time

    from aiokafka.record.util import calc_crc32c

    now = int(time.time() * 1000)
    # attributes (gzip), last offset delta, first and max timestamp, producer id, epoch,
    # base sequence, record count; then the "compressed" records
    after_crc = struct.pack(">hiqqqhii", 1, 0, now, now, -1, -1, -1, 1)
    after_crc += b"\x1f\x8b\x08\x00garbage-not-deflate"
    head = struct.pack(">qiibI", 0, 9 + len(after_crc), -1, 2, calc_crc32c(after_crc))
    return head + after_crc


async def produce_raw(address: str, topic: str, partition: int, batch: bytes) -> int:
    """Produce ``batch`` as it is; its base offset."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.protocol.produce import ProduceRequest

    client = AIOKafkaClient(bootstrap_servers=address)
    await client.bootstrap()
    try:
        await client._metadata_update(client.cluster, [topic])
        leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        request = ProduceRequest(
            transactional_id=None,
            required_acks=-1,
            timeout=10000,
            topics=[(topic, [(partition, batch)])],
        )
        response = await client.send(leader, request)
        _topic, partitions = response.topics[0]
        _partition, error, offset, *_ = partitions[0]
        assert error == 0, response
        return int(offset)
    finally:
        await client.close()


def test_compressed_records_are_answered_and_an_unreadable_batch_gets_dead_letters(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    """A snappy, lz4 or zstd record crashed the worker on every restart (aiokafka decodes
    them only with cramjam, which was not installed), and so did a batch it could not
    read: the whole group went down on one record. Each codec is now read, and a batch
    that cannot be read gets a RECORD_UNREADABLE dead letter per record while the
    partition goes on (the records after it, on partition 0 too, are answered)."""
    from aiokafka import AIOKafkaProducer

    async def send(topic: str, key: str, codec: str | None = None) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.address, compression_type=codec)
        await producer.start()
        try:
            value = body(input=["hello there"], labels=["greeting", "complaint"])
            await producer.send_and_wait(topic, value, key=key.encode(), partition=0)
        finally:
            await producer.stop()

    async def go(c: ShotstreamClient) -> tuple[list[Answer], int, dict[str, Any]]:
        topic = c.settings.topic("classify")
        waiting = []
        for codec in ("gzip", "snappy", "lz4", "zstd"):
            waiting.append(c.expect(f"codec-{codec}"))
            await send(topic, f"codec-{codec}", codec)
        corrupt = await produce_raw(broker.address, topic, 0, corrupt_gzip_batch())
        waiting.append(c.expect("after-corrupt"))
        await send(topic, "after-corrupt")
        answers = await asyncio.wait_for(asyncio.gather(*waiting), 120)
        letter = await letter_for(broker.address, c.settings.topic("errors"), topic, corrupt)
        return answers, corrupt, letter

    answers, corrupt, letter = with_client(client_settings(broker), go)
    for answer in answers:
        assert "data" in answer, answer
    assert letter["error"]["code"] == "RECORD_UNREADABLE", letter
    assert "could not be read" in letter["error"]["detail"]
    assert letter["source"] == {"topic": "shotstream.classify", "partition": 0, "offset": corrupt}
    assert worker.proc is not None
    assert worker.proc.poll() is None


async def letter_for(address: str, errors: str, topic: str, offset: int) -> dict[str, Any]:
    """The dead letter on ``errors`` for ``topic``'s partition 0 record at ``offset``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=address, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(errors, p) for p in consumer.partitions_for_topic(errors)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        async with asyncio.timeout(60):
            while True:
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    for record in records:
                        letter = json.loads(record.value)
                        source = letter.get("source", {})
                        if source == {"topic": topic, "partition": 0, "offset": offset}:
                            return dict(letter)
    finally:
        await consumer.stop()
