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
