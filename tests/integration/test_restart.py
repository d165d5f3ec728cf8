"""A worker killed mid-stream and restarted: every request produced gets answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.integration.conftest import API_KEYS, client_settings, with_client, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.model]

N = 240


def test_sigkill_mid_stream_loses_nothing(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    # own topics and group, so the shared worker is not involved
    env = worker_env(
        broker,
        tmp_path / "data",
        model_cache,
        SHOTSTREAM_TOPIC_PREFIX="restart.",
        SHOTSTREAM_KAFKA__GROUP_ID="restart",
    )
    first = WorkerProcess(env, tmp_path / "first.log").start()
    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        first.wait_ready(600)
        settings = client_settings(broker, topic_prefix="restart.")

        async def go(c: ShotstreamClient) -> tuple[set[str], list[dict]]:
            topic = c.settings.topic("classify")
            produced: set[str] = set()
            futures = []
            some_answered = asyncio.Event()

            def answered(_f: object) -> None:
                if sum(f.done() for f in futures) >= 40:
                    some_answered.set()

            async def produce() -> None:
                for i in range(N):
                    rid = f"req-{i:04d}"
                    produced.add(rid)
                    future = await c.send(
                        topic,
                        {
                            "request_id": rid,
                            "input": [f"message {i} about the weather"],
                            "labels": ["weather", "sports"],
                        },
                    )
                    future.add_done_callback(answered)
                    futures.append(future)
                    await asyncio.sleep(0.02)

            producer = asyncio.create_task(produce())
            # kill the worker once it has answered some but not all
            await some_answered.wait()
            first.kill()
            await asyncio.to_thread(second.start)
            await producer
            answers = await asyncio.wait_for(asyncio.gather(*futures), 240)
            return produced, answers

        produced, answers = with_client(settings, go)
        assert {a["request_id"] for a in answers} == produced
        assert all("data" in a for a in answers)
        assert all(a["data"][0]["prediction"] == "weather" for a in answers)
        assert "shotstream worker ready" in second.log_text()
    finally:
        first.stop()
        second.stop()


EXAMPLES = [
    {"text": "The striker scored twice in the final.", "label": "sports"},
    {"text": "Parliament passed the budget after a long debate.", "label": "politics"},
]


def train_twice(settings: Settings, classifier_id: str) -> list[int]:
    """Two train requests for ``classifier_id``, one after the other: their versions."""

    async def go(c: ShotstreamClient) -> list[int]:
        answers = [
            await c.train(
                EXAMPLES,
                classifier_id=classifier_id,
                api_key=API_KEYS["alice"],
                model="jina-embeddings-v3",
            )
            for _ in range(2)
        ]
        return [a["version"] for a in answers]

    return with_client(settings, go)


@pytest.mark.parametrize("topics_made_by", ["this worker", "another worker"])
def test_a_new_broker_starts_the_worker_on_empty_tables_not_stale_ones(
    tmp_path: Path, model_cache: Path, topics_made_by: str
) -> None:
    """`shotstream dev` restarted: a new in-memory broker, the same data directory. The old
    tables are moved aside; training the same id again creates it anew and learns (before,
    it was answered as a replay of the old broker's offset 0 and learned nothing). When
    another worker made the new topics first, the tables' offsets past the changelog's end
    give them away (before, only the worker that created the changelog noticed; the other
    crashed in faust's recovery with ConsistencyError)."""
    from streams.cli import free_port
    from streams.worker import prepare_broker

    def train_twice_on_a_fresh_broker(log: str, precreate: bool) -> tuple[list[int], str]:
        with EmbeddedBroker(free_port()) as broker:
            env = worker_env(broker, tmp_path / "data", model_cache, SHOTSTREAM_PARTITIONS="1")
            if precreate:
                asyncio.run(prepare_broker(Settings(brokers=broker.address, partitions=1)))
            with WorkerProcess(env, tmp_path / log) as worker:
                worker.wait_ready(600)

                return train_twice(client_settings(broker), "same-id"), worker.log_text()

    first, _ = train_twice_on_a_fresh_broker("first.log", precreate=False)
    assert first == [1, 2]
    second, log = train_twice_on_a_fresh_broker(
        "second.log", precreate=topics_made_by == "another worker"
    )
    assert second == [1, 2], second
    why = "it was just created" if topics_made_by == "this worker" else "it ends before their"
    assert f"older than their changelog topic shotstream-classifiers-changelog ({why}" in log
    assert len(list(tmp_path.joinpath("data").glob("faust.stale-*"))) == 1


def test_a_recreated_train_topic_is_learned_not_taken_for_replays(
    tmp_path: Path, model_cache: Path
) -> None:
    """An operator deletes the train topic between two runs while the classifiers (their
    changelog) survive: the new topic reuses offsets 0, 1 ... Its records are new ones,
    told apart from redeliveries by their timestamps, and are learned (before, they were
    answered with the old versions and learned nothing)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.cli import free_port

    with EmbeddedBroker(free_port()) as broker:
        env = worker_env(broker, tmp_path / "data", model_cache, SHOTSTREAM_PARTITIONS="1")
        settings = client_settings(broker)

        async def delete_train_topic() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
            await admin.start()
            try:
                await admin.delete_topics([settings.topic("train")])
            finally:
                await admin.close()

        with WorkerProcess(env, tmp_path / "first.log") as worker:
            worker.wait_ready(600)
            assert train_twice(settings, "kept-id") == [1, 2]
        asyncio.run(delete_train_topic())
        with WorkerProcess(env, tmp_path / "second.log") as worker:
            worker.wait_ready(600)  # makes the train topic again
            assert train_twice(settings, "kept-id") == [3, 4], worker.log_text()[-3000:]
