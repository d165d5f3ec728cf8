"""The client (the gateway's and the CLI's) on the real embedded broker, no worker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from streams import client as client_module
from streams.broker import EmbeddedBroker, ensure_topics
from streams.client import ShotstreamClient
from tests.integration.conftest import client_settings

pytestmark = [pytest.mark.integration]


def test_answers_on_a_partition_added_after_start_are_read(
    broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client assigned the answer topics' partitions once, at start: after partitions
    were added to a topic, every answer keyed to a new one was never read, and a gateway
    answered those requests 504 until restarted. (The embedded broker cannot add
    partitions, so the topic has two and the client is made to see one at start.)"""
    settings = client_settings(broker, topic_prefix="grown.")
    answers = [settings.topic(t) for t in ("predictions", "train-results", "errors")]
    asyncio.run(ensure_topics([broker.address], answers, partitions=2))

    async def one_partition(consumer: Any, topic: str) -> set[int]:
        return {0}  # what the client saw before partition 1 was added

    monkeypatch.setattr(client_module, "_partitions", one_partition)
    monkeypatch.setattr(client_module, "PARTITION_CHECK_S", 0.2)

    async def go() -> dict[str, Any]:
        async with ShotstreamClient(settings) as client:
            waiting = client.expect("r-late")
            producer = AIOKafkaProducer(bootstrap_servers=broker.address)
            await producer.start()
            try:  # a worker's answer, on the partition added
                await producer.send_and_wait(
                    settings.topic("predictions"),
                    b'{"request_id": "r-late", "data": []}',
                    key=b"r-late",
                    partition=1,
                )
            finally:
                await producer.stop()
            return await asyncio.wait_for(waiting, 20)

    assert asyncio.run(go())["request_id"] == "r-late"


def test_a_dead_letter_s_retry_after_header_reaches_the_client(broker: EmbeddedBroker) -> None:
    """An overloaded worker's refusal says when to retry in a record header (the dead
    letter's body keeps its fixed shape): produced by the workers' producer, read by the
    client over the real broker, and the gateway's Retry-After comes from it."""
    from streams.errors import ErrorCode, RequestError, retry_after_headers
    from streams.producer import OutputProducer

    settings = client_settings(broker, topic_prefix="retry.")
    answers = [settings.topic(t) for t in ("predictions", "train-results", "errors")]
    asyncio.run(ensure_topics([broker.address], answers, partitions=1))
    busy = RequestError(ErrorCode.SERVICE_UNAVAILABLE, "overloaded", retry_after_s=2.2)

    async def go() -> list[int | None]:
        async with ShotstreamClient(settings) as client:
            waiting = [client.expect("r-busy"), client.expect("r-plain")]
            output = OutputProducer(settings)
            try:
                for rid, headers in (("r-busy", retry_after_headers(busy)), ("r-plain", [])):
                    letter = f'{{"request_id": "{rid}", "error": {{"code": "x"}}}}'.encode()
                    await output.send(settings.topic("errors"), rid, letter, headers=headers)
            finally:
                await output.stop()
            got = await asyncio.wait_for(asyncio.gather(*waiting), 20)
            return [answer.retry_after_s for answer in got]

    assert asyncio.run(go()) == [3, None]  # whole seconds, rounded up
