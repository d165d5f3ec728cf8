"""Consumer lag read from the real embedded broker: committed and end offsets."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.broker import EmbeddedBroker, ensure_topics
from streams.lag import LagReader

pytestmark = [pytest.mark.integration]


def test_lag_is_what_the_group_has_not_committed(broker: EmbeddedBroker) -> None:
    topic = "lagged.classify"
    tp0, tp1, tp2 = (TopicPartition(topic, p) for p in range(3))

    async def go() -> list[dict[TopicPartition, int]]:
        await ensure_topics([broker.address], [topic], partitions=3)
        producer = AIOKafkaProducer(bootstrap_servers=broker.address)
        await producer.start()
        try:
            for partition, records in ((0, 5), (1, 3)):
                for _ in range(records):
                    await producer.send_and_wait(topic, b"{}", partition=partition)
        finally:
            await producer.stop()
        reader = LagReader(broker.address, "lagged-group")
        try:
            before = await reader.read([tp0, tp1, tp2])  # the group has committed nothing
            member = AIOKafkaConsumer(
                bootstrap_servers=broker.address, group_id="lagged-group", enable_auto_commit=False
            )
            await member.start()
            try:
                member.assign([tp0, tp1])
                await member.commit({tp0: 2, tp1: 3})
            finally:
                await member.stop()
            after = await reader.read([tp0, tp1, tp2])
            held = await reader.read([tp1])  # only what is asked for
            return [before, after, held]
        finally:
            await reader.stop()

    before, after, held = asyncio.run(go())
    assert before == {tp0: 5, tp1: 3, tp2: 0}
    assert after == {tp0: 3, tp1: 0, tp2: 0}
    assert held == {tp1: 0}
