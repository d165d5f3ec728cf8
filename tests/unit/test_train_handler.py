"""The train agent's order and replay answers, driven record by record without Kafka.

A fake stream feeds records to the real ``RequestAgent`` and ``TrainHandler``; the table
is a dict, embeddings come from a seeded generator (with per-request delays to make
requests finish out of order), and the output producer records what it is given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
import pytest

from models.registry import ModelNotAvailableError
from state.records import ClassifierRecord, decode_record, encode_record
from streams.agents import RequestAgent
from streams.auth import KeyRing, hash_key
from streams.errors import ErrorCode, RequestError
from streams.observer import Observer
from streams.records import parse_train
from streams.replica import ClassifierReplica
from streams.settings import Settings
from streams.training import TrainHandler, key_partition

DIM = 8
ALICE = hash_key("key-alice")  # an owner id is its key's hash


class Output:
    settings = Settings()

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.headers: dict[str, dict[str, bytes]] = {}  # request_id → its record's headers

    async def send(self, topic: str, key: str | None, value: bytes, *, headers: Any = ()) -> None:
        await asyncio.sleep(0.001)
        body = orjson.loads(value)
        self.sent.append((topic, body))
        self.headers[body.get("request_id")] = dict(headers)

    def answers(self) -> dict[str, Any]:
        """request_id → version (train results) or error code (dead letters)."""
        return {
            body["request_id"]: body["error"]["code"]
            if body.get("error")
            else body.get("version", "deleted" if body.get("deleted") else None)
            for _topic, body in self.sent
        }


def handler(delays: dict[str, float]) -> tuple[TrainHandler, dict[bytes, bytes], Output]:
    service = SimpleNamespace(
        registry=SimpleNamespace(resolve=lambda name: SimpleNamespace(name=name, modality="text"))
    )
    table: dict[bytes, bytes] = {}
    output = Output()
    replica = ClassifierReplica("127.0.0.1:1", "changelog")  # never started: empty
    replica.loaded.set()
    train = TrainHandler(
        Settings(),
        cast(Any, service),
        cast(Any, table),
        replica,
        KeyRing(["key-alice", "key-bob"]),
        cast(Any, output),
        Observer(),
    )

    async def embed(request: Any, model: str) -> tuple[np.ndarray, None, int, str]:
        await asyncio.sleep(delays.get(request.request_id, 0.0))
        rng = np.random.default_rng(len(request.examples))
        vectors = rng.normal(size=(len(request.examples), DIM)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), None, 1, model

    train._embed = embed  # type: ignore[method-assign]
    return train, table, output


def event(offset: int, body: dict[str, Any] | bytes, key: str, api_key: str = "key-alice") -> Any:
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    message = SimpleNamespace(
        topic="train",
        partition=0,
        tp=("train", 0),
        offset=offset,
        key=key.encode(),
        value=value,
        headers=[("authorization", f"Bearer {api_key}".encode())],
        timestamp=1000.0 + offset,
    )
    return SimpleNamespace(message=message, ack=lambda: None)


def train(rid: str, label: str, model: str | None = "m", cid: str = "x") -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": rid,
        "classifier_id": cid,
        "input": [{"text": "t", "label": label}],
    }
    return body if model is None else {**body, "model": model}


class Stream:
    def __init__(self, events: list[Any]) -> None:
        self._events = events

    def noack(self) -> Stream:
        return self

    async def events(self) -> AsyncIterator[Any]:
        for e in self._events:
            yield e


def run(train_handler: TrainHandler, events: list[Any]) -> None:
    async def go() -> None:
        agent = RequestAgent(train_handler, max_in_flight=8)
        await agent(cast(Any, Stream(events)))
        await asyncio.gather(*list(agent._tasks))

    asyncio.run(go())


def stored(table: dict[bytes, bytes], cid: str = "x") -> ClassifierRecord:
    return decode_record(table[cid.encode()])


def test_a_record_failing_before_its_turn_does_not_let_the_next_overtake() -> None:
    """Offset 0 creates x (slow to embed), offset 1 is not JSON, offset 2 trains x: both
    are learned, in order (before, offset 2 was applied first and offset 0 then looked
    like a replay: answered, never learned)."""
    train_handler, table, output = handler({"r0": 0.2})
    run(
        train_handler,
        [event(0, train("r0", "a"), "x"), event(1, b"{no", "x"), event(2, train("r2", "b"), "x")],
    )
    assert output.answers() == {"r0": 1, "x": "INPUT_NOT_JSON", "r2": 2}
    record = stored(table)
    assert (record.version, record.labels, record.applied) == (2, ["a", "b"], {"train:0": 2})


def test_a_redelivered_failure_fails_again_and_never_shows_anothers_classifier() -> None:
    """Offset 0: bob trains x, which does not exist (no model: CLASSIFIER_NOT_FOUND).
    Offset 1: alice creates x, private. Both redelivered (a crash before the commit): bob's
    record fails again, alike (before, it was answered as a replay, with alice's private
    labels), so the redelivery does not tell bob that x now exists."""
    train_handler, table, output = handler({})
    events = [
        event(0, train("rB", "zz", model=None), "x", api_key="key-bob"),
        event(1, train("rA", "secret-label"), "x"),
    ]
    run(train_handler, events)
    first = output.answers()
    output.sent.clear()
    run(train_handler, events)
    assert first == {"rB": "CLASSIFIER_NOT_FOUND", "rA": 1}
    assert output.answers() == {"rB": "CLASSIFIER_NOT_FOUND", "rA": 1}
    assert stored(table).version == 1


def test_a_replay_is_answered_to_the_owner_only() -> None:
    """Older than a full replay memory and stamped before the last update, bob's record
    counts as a redelivery; it is still refused, not answered with alice's classifier."""
    train_handler, table, output = handler({})
    record = ClassifierRecord.new("x", model="m", owner=ALICE, access="private", dim=DIM, now=0.0)
    record.labels, record.rows, record.seen = ["secret-label"], [1], [1]
    record.weights = np.zeros((1, DIM), dtype=np.float32)
    record.version, record.updated_at = 64, 5000.0
    record.applied["train:0"] = 100
    record.hyper["_replay"] = {"train:0": [[o, o - 36, 4000.0] for o in range(37, 101)]}
    table[b"x"] = encode_record(record)
    run(train_handler, [event(3, train("rB", "zz", model=None), "x", api_key="key-bob")])
    assert output.answers() == {"rB": "CLASSIFIER_NOT_FOUND"}


def test_training_waits_for_the_replica_to_load_before_counting_classifiers() -> None:
    """A worker just started: alice's 16 classifiers are still being read from the
    changelog. Her 17th create waits for them and is refused (before, it was counted
    against an empty replica and created)."""
    train_handler, table, output = handler({})
    replica = train_handler.replica
    replica.loaded.clear()

    async def load_later() -> None:
        await asyncio.sleep(0.1)
        for i in range(16):
            owned = ClassifierRecord.new(
                f"c{i}", model="m", owner=ALICE, access="private", dim=DIM, now=0.0
            )
            replica.apply(owned.classifier_id, encode_record(owned))
        replica.loaded.set()

    async def go() -> None:
        agent = RequestAgent(train_handler, max_in_flight=8)
        create = event(0, train("r17", "a", cid="c16"), "c16")
        await asyncio.gather(agent(cast(Any, Stream([create]))), load_later())
        await asyncio.gather(*list(agent._tasks))

    asyncio.run(go())
    assert output.answers() == {"r17": "AUTHZ_RESOURCE_LIMIT_EXCEEDED"}
    assert table == {}


def test_a_large_train_request_is_learned_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1,024 examples x 1,000 passes took ~6 s on the loop, stalling every other request
    of the worker: above INLINE_UPDATES example passes the learning runs in a thread (and
    is learned and answered the same); small requests stay on the loop (no thread hop)."""
    import threading

    import state.classifiers
    import streams.training

    threads: list[bool] = []
    apply = state.classifiers.apply_examples

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread() is threading.main_thread())
        return apply(*args, **kwargs)

    monkeypatch.setattr(streams.training, "apply_examples", spy)
    train_handler, table, output = handler({})
    big = {
        **train("r1", "b"),
        "input": [{"text": "t", "label": label} for label in "abcde"],
        "num_iters": 1000,
    }
    assert len(big["input"]) * 1000 > streams.training.INLINE_UPDATES
    run(train_handler, [event(0, train("r0", "a"), "x"), event(1, big, "x")])
    assert threads == [True, False]  # on the loop's thread, then off it
    assert output.answers() == {"r0": 1, "r1": 2}
    assert stored(table).samples_seen == 6


def test_a_redelivery_after_the_train_topic_was_recreated_is_not_learned_twice() -> None:
    """Offsets 0-4 on the old topic, then the topic is recreated and offsets 0 and 1 come
    again with new timestamps (learned: versions 6 and 7). Redelivered after a crash, they
    are replays of the new records: answered 6 and 7 again, not learned (the old topic's
    entries for offsets 0 and 1 are older in the replay memory and must not decide)."""

    def at(offset: int, body: dict[str, Any], timestamp: float) -> Any:
        e = event(offset, body, "x")
        e.message.timestamp = timestamp
        return e

    train_handler, table, output = handler({})
    run(train_handler, [at(o, train(f"old{o}", "ab"[o % 2]), 1000.0 + o) for o in range(5)])
    new = [at(0, train("new0", "a"), 9000.0), at(1, train("new1", "b"), 9001.0)]
    run(train_handler, new)
    assert stored(table).version == 7
    output.sent.clear()
    run(train_handler, new)
    assert stored(table).version == 7
    assert output.answers() == {"new0": 6, "new1": 7}


def test_a_record_off_its_keys_partition_is_refused_not_learned_as_a_second_classifier() -> None:
    """faust reads and writes a classifier in the record's partition: one produced
    elsewhere (a librdkafka client's CRC32 partitioner, a partition named by hand) would
    create a second "x" there, or let another key take over a private id."""
    train_handler, table, output = handler({})
    train_handler.partition_count = lambda topic: 4 if topic == "train" else None
    home = key_partition(b"x", 4)

    def on(partition: int, offset: int, body: dict[str, Any], api_key: str = "key-alice") -> Any:
        e = event(offset, body, "x", api_key)
        e.message.partition, e.message.tp = partition, ("train", partition)
        return e

    run(
        train_handler,
        [on(home, 0, train("home", "a")), on((home + 1) % 4, 0, train("elsewhere", "a"))],
    )
    assert output.answers() == {"home": 1, "elsewhere": "INPUT_INVALID"}
    letter = next(b["error"]["detail"] for _t, b in output.sent if b["request_id"] == "elsewhere")
    assert f"belongs on partition {home} of 4" in letter
    assert stored(table).owner == ALICE
    # a delete is not checked: off its key's partition it finds only what was put there
    delete = {"request_id": "d", "classifier_id": "x", "action": "delete"}
    run(train_handler, [on((home + 1) % 4, 1, delete)])
    assert output.answers()["d"] == "deleted"  # (the fake table has one partition)
    train_handler.partition_count = lambda topic: None  # unknown: not checked
    output.sent.clear()
    run(train_handler, [on((home + 1) % 4, 2, train("unknown", "b"))])
    assert output.answers() == {"unknown": 1}  # x was deleted just before


def made_again_with_m2_before(train_handler: TrainHandler, last: Any) -> None:
    """x is made with model m1 (r0), trained (r1: slow to embed when the handler delays it,
    holding the turns behind it), deleted (r2) and made again with m2 (r3); then ``last``,
    whose embedding before its turn still sees m1."""
    run(train_handler, [event(0, train("r0", "a", model="m1"), "x")])
    delete = {"request_id": "r2", "classifier_id": "x", "action": "delete"}
    run(
        train_handler,
        [
            event(1, train("r1", "b", model=None), "x"),
            event(2, delete, "x"),
            event(3, train("r3", "a", model="m2"), "x"),
            last,
        ],
    )


@pytest.mark.parametrize(
    "refusal",
    [
        RequestError(ErrorCode.INPUT_INVALID, "input[0] is an image, m1 embeds text"),
        ModelNotAvailableError("model 'm1' could not be loaded"),
    ],
)
def test_a_model_refusal_is_decided_by_the_classifier_the_record_finds_in_its_turn(
    refusal: Exception,
) -> None:
    """x (model m1) is deleted and created again with m2 by records before r4, which names
    no model. r4's embedding before its turn still sees m1 and is refused there (as images
    for a text-only model are); in its turn, x is m2's, and r4 is learned."""
    train_handler, table, output = handler({"r1": 0.2})
    embed = train_handler._embed

    async def refuse_m1(request: Any, model: str) -> tuple[np.ndarray, None, int, str]:
        if model == "m1" and request.request_id == "r4":
            raise refusal
        return await embed(request, model)

    train_handler._embed = refuse_m1  # type: ignore[method-assign]
    made_again_with_m2_before(train_handler, event(4, train("r4", "b", model=None), "x"))
    assert output.answers() == {"r0": 1, "r1": 2, "r2": "deleted", "r3": 1, "r4": 2}
    assert (stored(table).model, stored(table).version) == ("m2", 2)


def test_embedding_again_in_turn_for_a_changed_model_keeps_to_the_deadline() -> None:
    """r4 was embedded before its turn with x's model then (m1); in its turn x is m2's and
    r4 is embedded again. That embedding ran without r4's deadline: learned after its
    caller had stopped waiting (a 504, and a retry learned it twice). It now stops at the
    deadline, unlearned, as the embedding before the turn does."""
    train_handler, table, output = handler({"r1": 0.2})
    embed = train_handler._embed

    async def slow_m2(request: Any, model: str) -> tuple[np.ndarray, None, int, str]:
        if model == "m2" and request.request_id == "r4":
            await asyncio.sleep(1.5)
        return await embed(request, model)

    train_handler._embed = slow_m2  # type: ignore[method-assign]
    r4 = late(event(4, train("r4", "b", model=None), "x"), time.time() + 0.6)
    made_again_with_m2_before(train_handler, r4)
    answers = output.answers()
    assert answers == {"r0": 1, "r1": 2, "r2": "deleted", "r3": 1, "r4": "DEADLINE_EXCEEDED"}
    assert (stored(table).model, stored(table).labels) == ("m2", ["a"])


def test_a_raised_class_limit_reaches_classifiers_made_before() -> None:
    """The class limit was copied into a classifier when it was made: after the operator
    raised SHOTSTREAM_LIMITS__MAX_CLASSES, old classifiers still refused class 17."""
    train_handler, table, output = handler({})
    train_handler.settings = Settings(limits={"max_classes": 2})
    run(train_handler, [event(0, train("r0", "a"), "x"), event(1, train("r1", "b"), "x")])
    run(train_handler, [event(2, train("r2", "c", model=None), "x")])
    assert output.answers()["r2"] == "INPUT_LABEL_LIMIT_EXCEEDED"
    train_handler.settings = Settings(limits={"max_classes": 3})
    run(train_handler, [event(3, train("r3", "c", model=None), "x")])
    assert output.answers()["r3"] == 3
    assert stored(table).labels == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("access", "code"),
    [("private", "CLASSIFIER_NOT_FOUND"), ("public", "AUTHZ_ACCESS_DENIED")],
)
def test_an_unreadable_classifier_is_refused_to_others_as_any_other(access: str, code: str) -> None:
    """A stored record that no longer decodes (weights gone NaN): another key training it
    got INTERNAL_ERROR "corrupt record", which told it that a private id exists (an
    unknown id is CLASSIFIER_NOT_FOUND). Its owner is told to delete it."""
    train_handler, table, output = handler({})
    run(train_handler, [event(0, {**train("r0", "a"), "access": access}, "x")])
    broken = stored(table)
    broken.weights[:] = np.nan
    table[b"x"] = encode_record(broken)
    run(train_handler, [event(1, train("rB", "a", model=None), "x", api_key="key-bob")])
    run(train_handler, [event(2, train("rA", "a", model=None), "x")])
    answers = output.answers()
    assert answers["rB"] == code
    assert answers["rA"] == "INTERNAL_ERROR"
    detail = next(b["error"]["detail"] for _t, b in output.sent if b["request_id"] == "rA")
    assert "delete it and train it again" in detail


def test_a_classifier_living_in_another_partition_is_not_forked_here() -> None:
    """The train topic was widened: x's records now land on partition 0, but its state
    lives in changelog partition 1 (the replica read it there). Learning here would make
    a second, empty x that every replica then serves; the owner is told what happened,
    anyone else is answered as for any private classifier."""
    train_handler, table, output = handler({})
    there = ClassifierRecord.new("x", model="m", owner=ALICE, access="private", dim=DIM, now=0)
    there.labels, there.weights, there.version = ["a"], np.ones((1, DIM), np.float32), 7
    train_handler.replica.apply("x", encode_record(there), partition=1)
    run(train_handler, [event(0, train("rA", "b"), "x")])
    run(train_handler, [event(1, train("rB", "b"), "x", api_key="key-bob")])
    answers = output.answers()
    assert answers == {"rA": "INTERNAL_ERROR", "rB": "CLASSIFIER_NOT_FOUND"}
    detail = next(b["error"]["detail"] for _t, b in output.sent if b["request_id"] == "rA")
    assert "partition 1 of the classifier changelog" in detail
    assert table == {}
    table[b"x"] = encode_record(there)  # at home (partition 0): learned
    train_handler.replica.apply("x", encode_record(there), partition=0)
    run(train_handler, [event(2, train("rA2", "b"), "x")])
    assert output.answers()["rA2"] == 8


def test_restate_writes_again_only_this_workers_copy_of_the_same_classifier() -> None:
    """After the replica skips a stale write, the owner writes its state again; never a
    copy older than the changelog's, another classifier under the id (deleted and made
    again), or a partition it does not own."""
    train, _table, _output = handler({})
    sent: list[tuple[int, bytes, bytes]] = []
    rewrites: list[str] = []
    train.observer.on_rewrite = rewrites.append  # type: ignore[method-assign]

    class Table(dict[bytes, bytes]):
        def send_changelog(self, partition: int, key: bytes, value: bytes) -> None:
            sent.append((partition, key, value))

    train.table = cast(Any, Table())

    def record(version: int, created_at: float = 1.0) -> ClassifierRecord:
        r = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=created_at)
        r.version = version
        return r

    train.owned = {0}
    train.replica.records["c"] = record(3)
    train.table[b"c"] = encode_record(record(2))  # older than the changelog's
    train.restate("c", 0)
    train.table[b"c"] = encode_record(record(5, created_at=0.5))  # deleted, made again
    train.restate("c", 0)
    train.table[b"c"] = encode_record(record(3))
    train.restate("c", 1)  # not its partition
    assert sent == []
    train.restate("c", 0)
    assert sent == [(0, b"c", encode_record(record(3)))]
    assert rewrites == ["stale_write"]


def test_restate_deletes_again_a_classifier_deleted_here() -> None:
    """A stale write after a delete: the owner's table has no record and the replica read
    the delete, so the delete goes to the changelog again (a tombstone)."""
    train, _table, _output = handler({})
    sent: list[tuple[int, bytes, bytes | None]] = []
    rewrites: list[str] = []
    train.observer.on_rewrite = rewrites.append  # type: ignore[method-assign]

    class Table(dict[bytes, bytes]):
        @property
        def data(self) -> dict[bytes, bytes]:
            return self

        def send_changelog(self, partition: int, key: bytes, value: bytes | None) -> None:
            sent.append((partition, key, value))

    train.table = cast(Any, Table())
    train.owned = {0}
    made = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=1.0)
    train.restate("c", 0)  # never known here: nothing to delete again
    train.replica.apply("c", encode_record(made), partition=0)
    train.replica.apply("c", None, partition=0)
    train.restate("c", 1)  # not its partition
    assert sent == []
    train.restate("c", 0)
    assert sent == [(0, b"c", None)]
    assert rewrites == ["after_delete"]  # operators see it (shotstream_classifier_rewrites)
    # a table restored with the stale write over the delete (a standby's, say) drops it
    made.version = 2
    train.table[b"c"] = encode_record(made)
    train.restate("c", 0)
    assert b"c" not in train.table
    assert sent == [(0, b"c", None)] * 2
    again = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=5.0)
    train.table[b"c"] = encode_record(again)  # made again: another classifier, kept
    train.restate("c", 0)
    assert b"c" in train.table
    assert len(sent) == 2


class DeliveringTable(dict[bytes, bytes]):
    """A table whose changelog records (writes and tombstones) are delivered or fail as
    ``outcomes`` say, in order (``None``: delivered; delivered when none is left)."""

    last_sent: asyncio.Future[None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.outcomes: list[BaseException | None] = []
        self.writes: list[bytes] = []
        self.tombstones: list[tuple[int, bytes]] = []

    def _sent(self) -> None:
        self.last_sent = asyncio.get_running_loop().create_future()
        failure = self.outcomes.pop(0) if self.outcomes else None
        if failure is None:
            self.last_sent.set_result(None)
        else:
            self.last_sent.set_exception(failure)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self.writes.append(value)
        self._sent()

    def __delitem__(self, key: bytes) -> None:  # faust's table sends the tombstone
        super().__delitem__(key)
        self.send_changelog(0, key, None)

    def send_changelog(self, partition: int, key: bytes, value: None) -> None:
        self.tombstones.append((partition, key))
        self._sent()


def test_a_changelog_record_the_broker_did_not_take_is_written_again_before_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer gave up on a train update's changelog record (the broker away longer
    than its timeout). The update is written again until a write lands, and only then
    answered: it was an INTERNAL_ERROR dead letter although the table kept the update
    (a client retry learned it twice; a failover before the next write lost it)."""
    from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    import streams.training as training

    monkeypatch.setattr(training, "REDELIVERY_BACKOFF_S", (0.0,))
    for first, expected in (
        ([KafkaTimeoutError(), KafkaTimeoutError()], 1),  # answered once the third lands
        ([MessageSizeTooLargeError()], "INTERNAL_ERROR"),  # not worth retrying
    ):
        trainer, _table, output = handler({})
        table = DeliveringTable()
        trainer.table = cast(Any, table)
        table.outcomes[:] = first
        run(trainer, [event(0, train("r0", "a"), "x")])
        assert output.answers() == {"r0": expected}
        if expected == 1:
            assert len(table.writes) == 3  # the update, then the same state twice again
            assert len(set(table.writes)) == 1


def test_a_tombstone_the_broker_did_not_take_is_sent_again_before_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A delete whose changelog tombstone timed out was an INTERNAL_ERROR dead letter,
    although this worker's table had dropped the classifier: the other workers kept
    serving it and a client retry was answered not found. The tombstone now goes again
    until one lands, as a train update's record does; not once the id is made again."""
    from aiokafka.errors import KafkaTimeoutError

    import streams.training as training

    monkeypatch.setattr(training, "REDELIVERY_BACKOFF_S", (0.0,))
    trainer, _table, output = handler({})
    table = DeliveringTable()
    trainer.table = cast(Any, table)
    run(trainer, [event(0, train("r0", "a"), "x")])
    table.outcomes[:] = [KafkaTimeoutError(), KafkaTimeoutError()]
    run(trainer, [event(1, {"action": "delete", "request_id": "d1", "classifier_id": "x"}, "x")])
    assert output.answers() == {"r0": 1, "d1": "deleted"}
    assert table.tombstones == [(0, b"x")] * 3  # the delete's, then twice again
    assert b"x" not in table
    # made again while the tombstone was retried: that classifier is not deleted again
    dict.__setitem__(table, b"x", b"another classifier")
    table.tombstones.clear()
    assert trainer._delete_again("x", 0) is None
    assert table.tombstones == []


def late(ev: Any, deadline: float | bytes) -> Any:
    """``ev`` with a ``shotstream-deadline`` header (as the gateway sets)."""
    value = deadline if isinstance(deadline, bytes) else f"{deadline:.3f}".encode()
    ev.message.headers = [*ev.message.headers, ("shotstream-deadline", value)]
    return ev


def test_a_request_past_its_deadline_is_not_learned_but_a_replay_is_answered() -> None:
    """The gateway answers 504 at its reply timeout; a worker getting to the request later
    learned it anyway, and the client's retry learned the examples twice. Past its
    deadline it is now DEADLINE_EXCEEDED and nothing is embedded or learned, also when the
    deadline passes while it is embedded (the embedding stops there); a replay of one
    learned in time is still answered (it was learned); a malformed deadline is
    INPUT_INVALID."""
    trainer, table, output = handler({"r2": 0.3})
    embedded: list[str] = []
    embed = trainer._embed

    finished: list[str] = []

    async def counting(request: Any, model: str) -> Any:
        embedded.append(request.request_id)
        done = await embed(request, model)
        finished.append(request.request_id)
        return done

    trainer._embed = counting  # type: ignore[method-assign]
    now = time.time()
    first = late(event(0, train("r0", "a"), "x"), now + 60)
    run(trainer, [first, late(event(1, train("r1", "b"), "x"), now - 1)])
    assert output.answers() == {"r0": 1, "r1": "DEADLINE_EXCEEDED"}
    assert embedded == ["r0"]
    assert stored(table).labels == ["a"]
    # passes while its examples are embedded (0.3 s): the embedding is called off at the
    # deadline (it ran to its end before), and the request refused in turn, unlearned
    run(trainer, [late(event(2, train("r2", "b"), "x"), time.time() + 0.1)])
    assert output.answers()["r2"] == "DEADLINE_EXCEEDED"
    assert "r2" in embedded
    assert "r2" not in finished
    assert stored(table).labels == ["a"]
    run(trainer, [first])  # offset 0 redelivered long after its deadline: learned, answered
    assert output.answers()["r0"] == 1
    run(trainer, [late(event(3, train("r3", "b"), "x"), b"soon")])
    assert output.answers()["r3"] == "INPUT_INVALID"
    delete = {"action": "delete", "request_id": "d4", "classifier_id": "x"}
    run(trainer, [late(event(4, delete, "x"), time.time() - 1)])
    assert output.answers()["d4"] == "DEADLINE_EXCEEDED"
    assert stored(table).version == 1


def test_an_overloaded_worker_s_refusal_is_not_learned_but_a_replay_is_answered() -> None:
    """A train request with a deadline whose examples would wait behind more than
    SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S of model work is refused SERVICE_UNAVAILABLE,
    unlearned (its caller retries). Refused before its turn, a redelivered record that had
    been learned was refused too, and the caller's retry learned its examples twice: the
    refusal now waits for the turn, where a replay is answered as learned."""
    from models.batching import Overloaded

    trainer, table, output = handler({})
    embed = trainer._embed
    first = late(event(0, train("r0", "a"), "x"), time.time() + 60)
    run(trainer, [first])
    assert output.answers() == {"r0": 1}

    async def overloaded(request: Any, model: str) -> Any:
        raise Overloaded(12.0, 10.0)

    trainer._embed = overloaded  # type: ignore[method-assign]
    run(trainer, [late(event(1, train("r1", "b"), "x"), time.time() + 60)])
    assert output.answers()["r1"] == "SERVICE_UNAVAILABLE"
    assert output.headers["r1"] == {"shotstream-retry-after": b"2"}  # 12 s of work, 10 allowed
    assert stored(table).labels == ["a"]
    output.sent.clear()
    run(trainer, [first])  # redelivered (a worker restarted) while the model is busy
    assert output.answers() == {"r0": 1}
    assert stored(table).version == 1
    trainer._embed = embed  # type: ignore[method-assign]
    run(trainer, [late(event(2, train("r2", "b"), "x"), time.time() + 60)])
    assert output.answers()["r2"] == 2


def test_a_request_the_model_queue_would_keep_past_its_deadline_is_not_learned() -> None:
    """Refused DEADLINE_EXCEEDED before its turn because the inputs queued for the model
    would keep it past its deadline (which had not passed), a train request was embedded
    again in its turn without the deadline, learned, and answered after its caller gave
    up (a 504: its retry learned the examples twice). It is now refused in turn, unlearned,
    as a busy worker's refusal is; a replay is still answered as learned."""
    from models.batching import Unreachable

    trainer, table, output = handler({})
    embed = trainer._embed
    first = late(event(0, train("r0", "a"), "x"), time.time() + 60)
    run(trainer, [first])
    calls: list[str] = []

    async def behind_a_backlog(request: Any, model: str) -> Any:
        calls.append(request.request_id)
        if len(calls) == 1:  # the queue is long only when the request first comes
            raise Unreachable(90.0, 60.0)
        return await embed(request, model)

    trainer._embed = behind_a_backlog  # type: ignore[method-assign]
    run(trainer, [late(event(1, train("r1", "b"), "x"), time.time() + 60)])
    assert output.answers()["r1"] == "DEADLINE_EXCEEDED"
    assert calls == ["r1"]  # not embedded again in its turn
    assert stored(table).labels == ["a"]
    calls.clear()
    output.sent.clear()
    run(trainer, [first])  # redelivered while the queue is long: answered as learned
    assert output.answers() == {"r0": 1}
    assert stored(table).version == 1


def test_a_refusal_no_retry_gets_past_comes_before_a_busy_worker_s() -> None:
    """x is deleted by the record before an update of it, whose embedding (before its
    turn, x still there: the turns wait for r1) is refused by a busy worker. In its turn
    the update finds no x: it answered 503 with a Retry-After, and its caller retried a
    request that could never pass. It is now CLASSIFIER_NOT_FOUND, as without the busy
    worker."""
    from models.batching import Overloaded

    trainer, _table, output = handler({"r1": 0.2})  # holds the turns behind it
    embed = trainer._embed
    run(trainer, [event(0, train("r0", "a"), "x")])

    async def busy_for_r3(request: Any, model: str) -> Any:
        if request.request_id == "r3":
            raise Overloaded(12.0, 10.0)
        return await embed(request, model)

    trainer._embed = busy_for_r3  # type: ignore[method-assign]
    delete = {"request_id": "d2", "classifier_id": "x", "action": "delete"}
    update = {**train("r3", "c", model=None), "create": False}
    run(
        trainer,
        [
            event(1, train("r1", "b", model=None), "x"),
            event(2, delete, "x"),
            late(event(3, update, "x"), time.time() + 60),
        ],
    )
    answers = output.answers()
    assert answers == {"r0": 1, "r1": 2, "d2": "deleted", "r3": "CLASSIFIER_NOT_FOUND"}
    assert output.headers["r3"] == {}


def test_few_shot_requests_wait_for_the_changelog_a_bounded_time() -> None:
    """A worker that has not read the classifier changelog (just started, or it cannot
    reach it) held every train request until it had: with all its in-flight slots taken,
    nothing behind them was consumed either. They now answer SERVICE_UNAVAILABLE after
    ``limits.changelog_wait_s`` (a retry gets past it), and are served once it is read."""
    trainer, table, output = handler({})
    trainer.settings = Settings(limits={"changelog_wait_s": 0.05})
    trainer.replica.loaded.clear()
    run(trainer, [event(0, train("r0", "a"), "x")])
    assert output.answers() == {"r0": "SERVICE_UNAVAILABLE"}
    assert table == {}
    trainer.replica.loaded.set()
    run(trainer, [event(1, train("r1", "a"), "x")])
    assert output.answers()["r1"] == 1


def test_an_update_only_request_never_creates_the_classifier_it_names() -> None:
    """The gateway's updates say ``create: false``: a mistyped id must answer not found,
    with or without a model, and one that exists is updated as ever."""
    train_handler, table, output = handler({})
    typo = {**train("u1", "a", cid="typo"), "create": False}
    bare = {**train("u2", "a", model=None, cid="typo"), "create": False}
    made = train("c1", "a")
    update = {**train("u3", "b"), "create": False}
    run(
        train_handler,
        [
            event(0, typo, "typo"),
            event(1, bare, "typo"),
            event(2, made, "x"),
            event(3, update, "x"),
        ],
    )
    answers = output.answers()
    assert answers == {
        "u1": "CLASSIFIER_NOT_FOUND",
        "u2": "CLASSIFIER_NOT_FOUND",
        "c1": 1,
        "u3": 2,
    }
    assert b"typo" not in table
    assert stored(table).labels == ["a", "b"]


def usage(count: int, at: float, cid: str = "x") -> dict[str, Any]:
    return {"action": "usage", "request_id": f"u{at}", "classifier_id": cid, "count": count,
            "used_at": at}  # fmt: skip


def test_usage_reports_add_up_once_each_without_an_answer_or_a_new_version() -> None:
    train_handler, table, output = handler({})
    run(train_handler, [event(0, train("r0", "a"), "x")])
    before = stored(table)
    run(
        train_handler,
        [
            event(1, usage(3, 5000.0), "x", api_key=""),  # a worker's report carries no key
            event(2, usage(2, 4000.0), "x", api_key=""),  # an older last use keeps the newer
            event(2, usage(2, 4000.0), "x", api_key=""),  # redelivered: not added again
            event(3, usage(7, 6000.0, cid="gone"), "gone", api_key=""),  # unknown: nothing
        ],
    )
    record = stored(table)
    assert (record.used_number, record.used_at) == (5, 5000.0)
    assert (record.version, record.updated_at) == (before.version, before.updated_at)
    assert record.weights.tobytes() == before.weights.tobytes()
    assert output.answers() == {"r0": 1}  # neither an answer nor a dead letter for a report
    assert b"gone" not in table
    again = decode_record(encode_record(record))
    assert (again.used_number, again.used_at) == (5, 5000.0)
    # a train request after the reports keeps the counts, and they keep nothing else
    run(train_handler, [event(4, train("r4", "b"), "x")])
    assert (stored(table).version, stored(table).used_number) == (2, 5)


@pytest.mark.parametrize(
    "bad",
    [
        {"count": 0},
        {"count": 1.5},
        {"count": True},
        {"used_at": None},
        {"used_at": "now"},
        {"used_at": -1},
    ],
)
def test_a_malformed_usage_report_is_a_dead_letter(bad: dict[str, Any]) -> None:
    train_handler, table, output = handler({})
    raw = orjson.dumps({**usage(3, 5000.0), **bad})
    run(train_handler, [event(0, train("r0", "a"), "x"), event(1, raw, "x", api_key="")])
    assert output.answers()["u5000.0"] == "INPUT_INVALID", output.answers()
    assert stored(table).used_number == 0


@pytest.mark.parametrize("used_at", [float("nan"), float("inf")])
def test_a_usage_report_at_no_real_time_is_refused(used_at: float) -> None:
    # a JSON decoder that reads NaN or Infinity would hand it on; a record holding one
    # could not be read back
    with pytest.raises(RequestError, match="used_at"):
        parse_train({**usage(1, 0.0), "used_at": used_at}, Settings().limits, request_id="u",
                    key=b"x")  # fmt: skip


def test_usage_reports_on_a_train_topic_made_anew_are_added_and_never_move_train_offsets() -> None:
    train_handler, table, output = handler({})
    run(train_handler, [event(40, train("r0", "a"), "x"), event(41, usage(2, 5000.0), "x", "")])
    # the topic made anew: offsets start again, times go on (event's timestamp: 1000 + offset,
    # so these come later only by the offset; give them later times explicitly)
    again = [event(0, usage(3, 6000.0), "x", ""), event(1, train("r1", "b"), "x")]
    for e in again:
        e.message.timestamp += 100.0
    run(train_handler, again)
    record = stored(table)
    assert record.used_number == 5  # the report at offset 0 is not taken for a redelivery
    assert output.answers()["r1"] == 2  # nor did the reports make r1 look applied
    assert record.applied["train:0"] == 1


def test_a_usage_report_from_a_clock_ahead_lists_no_time_in_the_future() -> None:
    train_handler, table, _output = handler({})
    far = 1e12  # milliseconds taken for seconds: year 33658
    run(train_handler, [event(0, train("r0", "a"), "x"), event(1, usage(1, far), "x", "")])
    assert stored(table).used_at is not None
    assert stored(table).used_at <= time.time()


def test_train_and_delete_requests_are_counted_as_requests_and_answers() -> None:
    """As classify requests are, so that the alert on requests without answers covers
    training; dead letters are answers of their own, usage reports are not requests."""
    seen: list[tuple[str, str, str, int]] = []
    train_handler, _table, _output = handler({})
    observer = train_handler.observer
    observer.on_request = lambda t, k, n: seen.append(("request", t, k, n))  # type: ignore[method-assign]
    observer.on_response = lambda t, k, n, _s: seen.append(("response", t, k, n))  # type: ignore[method-assign]
    body = train("r1", "a")
    body["input"] = [{"text": "t", "label": "a"}, {"text": "u", "label": "b"}]
    run(
        train_handler,
        [
            event(0, body, "x"),
            event(1, {"request_id": "r2", "classifier_id": "x", "action": "delete"}, "x"),
            event(2, train("r3", "a", model=None, cid="y"), "y", api_key="nobody"),
            event(3, {"action": "usage", "count": 1, "used_at": 5.0, "classifier_id": "x"}, "x"),
        ],
    )
    assert sorted(seen) == sorted(
        [
            ("request", "train", "train", 2),
            ("response", "train", "train", 0),
            ("request", "train", "delete", 0),
            ("response", "train", "delete", 0),
            (
                "request",
                "train",
                "train",
                1,
            ),  # refused (no such key): a dead letter, not a response
        ]
    )
