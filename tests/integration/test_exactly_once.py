"""Exactly-once effects of training: crashes, restarts and moving partitions change nothing.

A reference worker learns a fixed stream of train records without interruption. Then
the same records go through workers that are SIGKILLed at random points, restarted on
their RocksDB, and joined by a second worker (partitions move mid-stream). At the end
every classifier must have the reference weights and one version per request.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from state.records import ClassifierRecord, decode_record
from streams.app import classifier_changelog_topic
from streams.broker import EmbeddedBroker
from streams.client import Answer, ShotstreamClient
from streams.processes import WorkerProcess
from streams.replica import ClassifierReplica
from streams.settings import Settings
from tests.integration.conftest import API_KEYS, client_settings, metrics_port, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.model]

KEY = API_KEYS["alice"]
WORDS = [
    "billing",
    "invoice",
    "refund",
    "login",
    "password",
    "crash",
    "slow",
    "export",
    "report",
    "chart",
    "api",
    "token",
    "firewall",
    "sso",
    "upgrade",
    "mobile",
    "email",
    "sync",
    "backup",
    "latency",
]


def train_stream(
    seed: int, classifiers: int = 4, per: int = 10, size: int = 20
) -> list[tuple[str, dict]]:
    """(classifier_id, body) pairs in production order; ids are fixed per seed. A
    classifier gets ``per * size`` examples over 4 labels: about 50 a label, each text 4
    words of its label's own 5 and 2 of any, so labels are missed early and grow prototypes
    (every 5 misses) mid-stream, and are then learned with clear margins. (Labels drawn at
    random, unlearnable, leave so many near ties that the last-bit differences between two
    runs' embeddings, batched differently, flip some predictions, and with them which
    prototypes learn.)"""
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(classifiers)]
    stream = []
    for step in range(per):
        for cid in ids:
            examples = []
            for _ in range(size):
                team = rng.randint(1, 4)
                words = rng.choices(WORDS[5 * (team - 1) : 5 * team], k=4) + rng.choices(WORDS, k=2)
                rng.shuffle(words)
                examples.append({"text": " ".join(words), "label": f"team{team}"})
            body: dict = {"input": examples, "num_iters": 5}
            if step == 0:
                body["model"] = "jina-embeddings-v3"
            stream.append((cid, body))
    return stream


async def produce(
    c: ShotstreamClient,
    stream: list[tuple[str, dict]],
    pause_s: float,
    answered: list[asyncio.Future[Answer]],
    start: int = 0,
) -> None:
    for i, (cid, body) in enumerate(stream, start):
        answered.append(
            await c.send(
                c.settings.topic("train"),
                {**body, "request_id": f"t-{i:04d}"},
                key=cid,
                headers=[("authorization", f"Bearer {KEY}".encode())],
            )
        )
        await asyncio.sleep(pause_s)


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition on state that other tasks change (answers arriving)."""
    while not condition():  # noqa: ASYNC110 - many futures, no single event to wait on
        await asyncio.sleep(0.01)


def group_of(
    broker: EmbeddedBroker, data: Path, model_cache: Path, name: str, **extra: str
) -> tuple[dict[str, str], Settings]:
    """A worker environment and client settings for topics and a consumer group of their
    own (``<name>.`` and ``<name>``)."""
    env = worker_env(
        broker,
        data,
        model_cache,
        SHOTSTREAM_TOPIC_PREFIX=f"{name}.",
        SHOTSTREAM_KAFKA__GROUP_ID=name,
        **extra,
    )
    return env, client_settings(broker, topic_prefix=f"{name}.", kafka={"group_id": name})


async def final_records(settings: Settings) -> dict[str, ClassifierRecord]:
    replica = ClassifierReplica(",".join(settings.brokers), classifier_changelog_topic(settings))
    await replica.start()
    try:
        await replica.caught_up()
        return dict(replica.records)
    finally:
        await replica.stop()


def run_reference(
    broker: EmbeddedBroker, tmp: Path, cache: Path, stream: list[tuple[str, dict]], tag: str
) -> dict[str, ClassifierRecord]:
    env, settings = group_of(broker, tmp / "ref", cache, f"{tag}-ref")
    with WorkerProcess(env, tmp / "ref.log") as w:
        w.wait_ready(600)

        async def go() -> dict[str, ClassifierRecord]:
            async with ShotstreamClient(settings) as c:
                answered: list[asyncio.Future[Answer]] = []
                await produce(c, stream, 0.0, answered)
                answers = await asyncio.wait_for(asyncio.gather(*answered), 300)
                assert all("error" not in a for a in answers), answers
            return await final_records(settings)

        return asyncio.run(go())


def assert_same(
    records: dict[str, ClassifierRecord],
    reference: dict[str, ClassifierRecord],
    stream: list[tuple[str, dict]],
) -> None:
    assert set(records) == set(reference)
    for cid, ref in reference.items():
        got = records[cid]
        assert got.version == ref.version == sum(1 for c, _ in stream if c == cid)
        assert got.samples_seen == ref.samples_seen
        assert got.labels == ref.labels
        assert (got.rows, got.seen) == (ref.rows, ref.seen)  # prototypes grew alike
        assert got.hyper.get("_misses") == ref.hyper.get("_misses")
        assert got.recent == ref.recent  # every example predicted alike before learning it
        np.testing.assert_allclose(got.weights, ref.weights, atol=2e-3, rtol=1e-3)
    assert any(r > 1 for ref in reference.values() for r in ref.rows)  # growth was tested


def exported_classifiers(worker: WorkerProcess) -> set[str]:
    """The classifier ids in a worker's ``shotstream_fewshot_prequential_accuracy``."""
    url = f"http://127.0.0.1:{metrics_port(worker)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return set(
        re.findall(r'^shotstream_fewshot_prequential_accuracy\{classifier_id="([^"]+)"', text, re.M)
    )


@pytest.mark.parametrize("seed", [11, 23, 37])
def test_sigkill_restart_and_moving_partitions_apply_each_record_once(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path, seed: int
) -> None:
    tag = f"eo{seed}"
    stream = train_stream(seed)
    reference = run_reference(broker, tmp_path, model_cache, stream, tag)
    rng = random.Random(seed)
    env, settings = group_of(
        broker,
        tmp_path / "a",
        model_cache,
        f"{tag}-trial",
        # no periodic commit: everything the first worker answered before the SIGKILL
        # comes again, however fast it answered (each second, under load every answer
        # could be committed before the kill, and no replay was tested)
        SHOTSTREAM_KAFKA__COMMIT_INTERVAL_S="600",
    )
    env_b = {**env, "SHOTSTREAM_DATA_DIR": str(tmp_path / "b")}
    first = WorkerProcess(env, tmp_path / "a1.log").start()
    restarted = WorkerProcess(env, tmp_path / "a2.log")  # same RocksDB directory
    joiner = WorkerProcess(env_b, tmp_path / "b.log")  # a second worker: partitions move
    kill_at = rng.randint(6, len(stream) // 3)
    join_at = rng.randint(len(stream) // 2, 2 * len(stream) // 3)
    try:
        first.wait_ready(600)

        async def go() -> dict[str, ClassifierRecord]:
            async with ShotstreamClient(settings) as c:
                answered: list[asyncio.Future[Answer]] = []
                # phase 1, then a SIGKILL while some of it is still unanswered
                await produce(c, stream[:kill_at], 0.02, answered)
                await until(lambda: sum(f.done() for f in answered) >= kill_at // 2)
                first.kill()
                await asyncio.to_thread(restarted.start)
                # phase 2 goes to the restarted worker (same RocksDB directory)
                await produce(c, stream[kill_at:join_at], 0.02, answered, start=kill_at)
                await asyncio.to_thread(restarted.wait_ready, 600)
                # a second worker joins: partitions move mid-stream
                await asyncio.to_thread(joiner.start)
                await asyncio.to_thread(joiner.wait_ready, 600)
                await produce(c, stream[join_at:], 0.02, answered, start=join_at)
                answers = await asyncio.wait_for(asyncio.gather(*answered), 300)
                assert all("error" not in a for a in answers), answers
            return await final_records(settings)

        records = asyncio.run(go())
        assert_same(records, reference, stream)
        # each classifier's accuracy is exported by the one worker that owns its partition
        # now: the restarted worker drops the series of those that moved to the joiner
        kept, taken = exported_classifiers(restarted), exported_classifiers(joiner)
        assert not kept & taken, kept & taken
        assert kept | taken == set(reference)
        assert "shotstream worker ready" in restarted.log_text()
        assert "shotstream worker ready" in joiner.log_text()
        replays = restarted.log_text().count("already applied") + joiner.log_text().count(
            "already applied"
        )
        print(
            f"seed {seed}: killed after {kill_at} answers, joined at {join_at}; "
            f"{replays} redelivered records recognised and not applied again"
        )
        # the answers before the kill were never committed: they come again, and the
        # check of replays was exercised
        assert replays > 0
    finally:
        for w in (first, restarted, joiner):
            w.stop()


def test_a_worker_without_its_rocksdb_rebuilds_from_the_changelog(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    stream = train_stream(5, classifiers=2, per=4, size=3)
    env, settings = group_of(broker, tmp_path / "data", model_cache, "rebuild")
    extra = [{"text": "refund my invoice please", "label": "team1"}]

    async def train_all(items: list[tuple[str, dict]]) -> list[Answer]:
        async with ShotstreamClient(settings) as c:
            answered: list[asyncio.Future[Answer]] = []
            await produce(c, items, 0.0, answered)
            return await asyncio.wait_for(asyncio.gather(*answered), 300)

    with WorkerProcess(env, tmp_path / "w1.log") as w:
        w.wait_ready(600)
        asyncio.run(train_all(stream))
        before = asyncio.run(final_records(settings))
    assert (tmp_path / "data" / "faust").exists()
    shutil.rmtree(tmp_path / "data" / "faust")  # the RocksDB state is gone
    cid = stream[0][0]
    with WorkerProcess(env, tmp_path / "w2.log") as w:
        w.wait_ready(600)
        [answer] = asyncio.run(train_all([(cid, {"input": extra, "num_iters": 5})]))
        after = asyncio.run(final_records(settings))
        restored = w.log_text()
    assert answer["version"] == before[cid].version + 1  # continued, not restarted at 1
    assert after[cid].samples_seen == before[cid].samples_seen + 1
    assert after[cid].labels[: len(before[cid].labels)] == before[cid].labels
    assert "shotstream worker ready" in restored


async def changelog_values(settings: Settings, key: str) -> list[tuple[int, bytes]]:
    """``(partition, value)`` of every changelog record of ``key``, oldest first."""
    return [(p, v) for p, v in await changelog_records(settings, key) if v is not None]


async def changelog_records(settings: Settings, key: str) -> list[tuple[int, bytes | None]]:
    """``(partition, value)`` of every changelog record of ``key``, tombstones (``None``)
    included, oldest first."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.brokers, enable_auto_commit=False)
    await consumer.start()
    try:
        topic = classifier_changelog_topic(settings)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[tuple[int, bytes | None]] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batches = await consumer.getmany(timeout_ms=500)
            found += [
                (m.partition, m.value)
                for batch in batches.values()
                for m in batch
                if m.key == key.encode()
            ]
        return found
    finally:
        await consumer.stop()


async def write_again(settings: Settings, key: str, partition: int, value: bytes) -> None:
    """Produce ``value`` to the changelog by hand, as a worker that lost the partition
    mid-request would write it (after the new owner's writes)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.brokers)
    await producer.start()
    try:
        await producer.send_and_wait(
            classifier_changelog_topic(settings), value, key=key.encode(), partition=partition
        )
    finally:
        await producer.stop()


async def last_version_written(settings: Settings, key: str, want: int) -> int:
    """The version of ``key``'s last changelog record, once it is ``want`` (30 s at most)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        last = decode_record((await changelog_values(settings, key))[-1][1]).version
        if last == want or asyncio.get_running_loop().time() > deadline:
            return last
        await asyncio.sleep(0.5)


def test_a_stale_changelog_write_rolls_no_classifier_back(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    """A worker that lost a classifier's partition mid-request (a pause past the session
    timeout) can write after the partition's new owner, with nothing in Kafka to stop it
    (no transactions). Such a write, an older version of the classifier, is produced here
    by hand: neither the replicas (classify) nor a table restored from the changelog may
    take it for the classifier's state."""
    env, settings = group_of(broker, tmp_path / "a", model_cache, "stale")
    cid = str(uuid.UUID(int=7))
    examples = [
        [{"text": "refund my invoice", "label": "billing"}, {"text": "app crash", "label": "bug"}],
        [{"text": "charged twice", "label": "billing"}],
        [{"text": "login fails", "label": "bug"}],
    ]

    async def train(batch: list[dict[str, str]], model: str | None = None) -> Answer:
        async with ShotstreamClient(settings) as c:
            return await c.train(batch, classifier_id=cid, api_key=KEY, model=model, num_iters=5)

    async def zombie_write() -> None:
        written = await changelog_values(settings, cid)
        assert [decode_record(v).version for _, v in written] == [1, 2, 3]
        await write_again(settings, cid, *written[1])

    async def classified_version() -> int:
        async with ShotstreamClient(settings) as c:
            answer = await c.classify(["my invoice is wrong"], classifier_id=cid, api_key=KEY)
        assert "error" not in answer, answer
        return int(answer["version"])

    with WorkerProcess(env, tmp_path / "a.log") as w:
        w.wait_ready(600)
        versions = [
            asyncio.run(train(batch, "jina-embeddings-v3" if i == 0 else None))["version"]
            for i, batch in enumerate(examples)
        ]
        assert versions == [1, 2, 3]
        asyncio.run(zombie_write())
        assert asyncio.run(final_records(settings))[cid].version == 3  # a replica's reading
        assert asyncio.run(classified_version()) == 3  # the worker's own replica
        # and the owner writes version 3 again: compaction keeps a key's last record only
        last = asyncio.run(last_version_written(settings, cid, 3))
        assert last == 3
    # a new worker restores the table from the changelog: it continues from version 3
    env_b = {**env, "SHOTSTREAM_DATA_DIR": str(tmp_path / "b")}
    with WorkerProcess(env_b, tmp_path / "b.log") as w:
        w.wait_ready(600)
        answer = asyncio.run(train([{"text": "cannot export", "label": "bug"}]))
        assert "error" not in answer, answer
        assert answer["version"] == 4
        record = asyncio.run(final_records(settings))[cid]
    assert (record.version, record.samples_seen) == (4, 5)
    assert "skipped a stale write" in w.log_text()


def test_a_stale_write_after_a_delete_brings_no_classifier_back(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    """The same kind of stale write, landing after the new owner deleted the classifier:
    read as the last write, it brought the classifier back, for classify and for a table
    restored from the changelog (and compaction would have kept it). Readers skip it and
    the owner deletes the classifier again."""
    env, settings = group_of(broker, tmp_path / "a", model_cache, "undead")
    cid = str(uuid.UUID(int=8))
    examples = [
        [{"text": "refund my invoice", "label": "billing"}, {"text": "app crash", "label": "bug"}],
        [{"text": "charged twice", "label": "billing"}],
    ]

    async def train(batch: list[dict[str, str]], model: str | None = None) -> Answer:
        async with ShotstreamClient(settings) as c:
            return await c.train(batch, classifier_id=cid, api_key=KEY, model=model, num_iters=5)

    async def delete() -> Answer:
        async with ShotstreamClient(settings) as c:
            return await c.delete(cid, api_key=KEY)

    async def zombie_write() -> None:
        first, _second = await changelog_values(settings, cid)
        await write_again(settings, cid, *first)

    async def classified() -> Answer:
        async with ShotstreamClient(settings) as c:
            return await c.classify(["my invoice is wrong"], classifier_id=cid, api_key=KEY)

    async def deleted_again() -> list[bytes | None]:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            values = [v for _, v in await changelog_records(settings, cid)]
            if values[-1] is None or asyncio.get_running_loop().time() > deadline:
                return values
            await asyncio.sleep(0.5)

    with WorkerProcess(env, tmp_path / "a.log") as w:
        w.wait_ready(600)
        assert asyncio.run(train(examples[0], "jina-embeddings-v3"))["version"] == 1
        assert asyncio.run(train(examples[1]))["version"] == 2
        assert asyncio.run(delete()).get("deleted") is True
        asyncio.run(zombie_write())  # version 1, after the tombstone
        values = asyncio.run(deleted_again())
        assert [v is None for v in values] == [False, False, True, False, True]
        assert cid not in asyncio.run(final_records(settings))  # a replica's reading
        answer = asyncio.run(classified())  # the worker's own replica
        assert answer["error"]["code"] == "CLASSIFIER_NOT_FOUND", answer
        assert "after its delete" in w.log_text()
        url = f"http://127.0.0.1:{metrics_port(w)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            exported = response.read().decode()
        assert 'shotstream_classifier_rewrites_total{reason="after_delete"} 1.0' in exported
    # a new worker restores the table from the changelog: no classifier to update
    env_b = {**env, "SHOTSTREAM_DATA_DIR": str(tmp_path / "b")}
    with WorkerProcess(env_b, tmp_path / "b.log") as w:
        w.wait_ready(600)
        answer = asyncio.run(train([{"text": "cannot export", "label": "bug"}]))
        assert answer["error"]["code"] == "CLASSIFIER_NOT_FOUND", answer


def test_a_rebalance_commits_what_was_answered(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    """A worker giving partitions up commits the requests it answered: the new owner does
    not get them again. faust forgets the acknowledgements of revoked partitions before
    its commit on a revoke; with no periodic commit in between (600 s here) every
    answered request came again."""
    env, settings = group_of(
        broker, tmp_path / "a", model_cache, "handover", SHOTSTREAM_KAFKA__COMMIT_INTERVAL_S="600"
    )
    env_b = {**env, "SHOTSTREAM_DATA_DIR": str(tmp_path / "b")}
    stream = train_stream(3, classifiers=4, per=2, size=3)
    more = [(cid, {"input": [{"text": "one more", "label": "team1"}]}) for cid in {*dict(stream)}]

    async def train_all(items: list[tuple[str, dict]], start: int) -> list[Answer]:
        async with ShotstreamClient(settings) as c:
            answered: list[asyncio.Future[Answer]] = []
            await produce(c, items, 0.0, answered, start=start)
            answers = await asyncio.wait_for(asyncio.gather(*answered), 300)
        assert all("error" not in a for a in answers), answers
        return answers

    with WorkerProcess(env, tmp_path / "a.log") as first:
        first.wait_ready(600)
        asyncio.run(train_all(stream, 0))
        with WorkerProcess(env_b, tmp_path / "b.log") as second:
            second.wait_ready(600)  # after the rebalance: the first worker gave some up
            answers = asyncio.run(train_all(more, len(stream)))
            logs = first.log_text() + second.log_text()
    assert [a["version"] for a in answers] == [3] * 4
    assert "already applied" not in logs
