"""The classifier replica applies changelog records in order and reads local deletes at once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from state.records import ClassifierRecord, encode_record
from streams import replica as replica_module
from streams.replica import ClassifierReplica


def record(version: int, cid: str = "c1", created: float = 0.0) -> bytes:
    """A record of classifier ``cid``; another ``created`` is another classifier under the
    id (deleted and made again)."""
    r = ClassifierRecord.new(cid, model="hash", owner="alice", access="private", dim=4, now=created)
    r.labels = ["a", "b"]
    r.weights = np.zeros((2, 4), dtype=np.float32)
    r.version = version
    return encode_record(r)


def test_changelog_records_and_tombstones_apply_in_order() -> None:
    replica = ClassifierReplica("127.0.0.1:1", "changelog")  # never started: fed by hand
    replica.apply("c1", record(1))
    replica.apply("c1", record(2))
    got = replica.get("c1")
    assert got is not None
    assert got.version == 2
    replica.apply("c1", None)
    assert replica.get("c1") is None
    replica.apply("c1", b"not a record")  # logged and skipped, never raised
    assert replica.get("c1") is None


def test_a_local_delete_is_read_at_once_and_older_writes_cannot_bring_it_back() -> None:
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica.apply("c1", record(1))
    replica.forget("c1")  # this worker deleted it; versions 2 and the tombstone are on the way
    assert replica.get("c1") is None
    replica.apply("c1", record(2))  # an update written before the delete, replicating late
    assert replica.get("c1") is None
    replica.apply("c1", None)  # the delete's own tombstone: the changelog has caught up
    replica.apply("c1", record(1, created=1.0))  # a new classifier under the same id
    got = replica.get("c1")
    assert got is not None
    assert got.version == 1


def test_a_local_delete_gives_way_when_its_tombstone_never_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica.forget("c1")
    monkeypatch.setattr(replica_module, "FORGET_S", 0.0)
    replica.apply("c1", record(3))
    got = replica.get("c1")
    assert got is not None
    assert got.version == 3


def test_a_newer_write_it_cannot_read_stops_the_older_version_being_served() -> None:
    """A rolling upgrade: the owner made a public classifier private, written in a format
    this worker cannot read. Serving the last readable version would keep it public;
    it is not served at all. A record that makes the decoder itself fail (nesting too
    deep) is skipped the same way, never raised into the changelog reader."""
    from state.records import _HEAD, MAGIC, READABLE_VERSIONS, decode_record

    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    readable = decode_record(record(1))
    readable.access = "public"
    replica.apply("c1", encode_record(readable))
    assert replica.get("c1") is not None
    newer = encode_record(readable)
    magic, _version, size = _HEAD.unpack_from(newer)
    future = max(READABLE_VERSIONS) + 1
    replica.apply("c1", _HEAD.pack(magic, future, size) + newer[_HEAD.size :])
    assert replica.get("c1") is None
    replica.apply("c2", record(1, "c2"))
    deep = b"[" * 200_000 + b"]" * 200_000
    replica.apply("c2", _HEAD.pack(MAGIC, 2, len(deep)) + deep)
    assert replica.get("c2") is None


def test_delete_create_delete_here_stays_deleted_until_the_last_tombstone() -> None:
    """Delete, re-create and delete again on this worker before the first tombstone comes
    back: that tombstone ended the second delete's guard, and the re-create's record was
    served until the second tombstone arrived."""
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica.apply("c1", record(5))
    replica.forget("c1")  # delete
    replica.forget("c1")  # re-created (version 1, replicating) and deleted again
    replica.apply("c1", None)  # the first delete's tombstone
    replica.apply("c1", record(1, created=1.0))  # the re-create, before the second delete
    assert replica.get("c1") is None
    replica.apply("c1", None)  # the second tombstone
    replica.apply("c1", record(1, created=2.0))  # now a new classifier under the same id
    got = replica.get("c1")
    assert got is not None
    assert got.version == 1


def test_a_write_of_a_deleted_classifier_after_its_tombstone_does_not_bring_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker that lost the partition mid-request writes after the new owner deleted the
    classifier: its write, read after the tombstone, is stale (and the owner is told, to
    delete it again), while a classifier made again under the id is new."""
    stale: list[tuple[str, int]] = []
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica.on_stale = lambda key, partition: stale.append((key, partition))
    replica.apply("c1", record(5), partition=3)
    replica.apply("c1", None, partition=3)  # deleted by the partition's new owner
    assert replica.was_deleted("c1")
    replica.apply("c1", record(6), partition=3)  # the old owner's write, landing after it
    assert replica.get("c1") is None
    assert stale == [("c1", 3)]
    assert replica.get("c2") is None
    replica.apply("c1", record(1, created=9.0), partition=3)  # made again: a new classifier
    got = replica.get("c1")
    assert got is not None
    assert got.version == 1
    assert not replica.was_deleted("c1", got.lineage)
    replica.apply("c1", record(7), partition=3)  # the old one's stale write, even now
    got = replica.get("c1")
    assert got is not None
    assert (got.created_at, got.version) == (9.0, 1)
    assert stale == [("c1", 3), ("c1", 3)]
    monkeypatch.setattr(replica_module, "DELETED_MEMORY_S", 0.0)  # memories end
    replica.apply("c1", None, partition=3)
    assert not replica.was_deleted("c1")
    replica.apply("c2", None)  # any tombstone sweeps the expired ones
    assert not replica._deleted


def test_a_local_delete_knows_its_classifier_before_the_replica_read_it() -> None:
    """Created and deleted here before this worker's replica read the creation: the
    deleting worker names the classifier from its table, so a stale write of it after the
    tombstone is still known (it was accepted, and never deleted again)."""
    stale: list[tuple[str, int]] = []
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica.on_stale = lambda key, partition: stale.append((key, partition))
    lineage = (("alice", 0.0), 1)  # record()'s owner and creation time, version 1
    replica.forget("c1", lineage)
    replica.apply("c1", record(1), partition=2)  # the creation, read late: hidden
    replica.apply("c1", None, partition=2)  # the delete's tombstone
    replica.apply("c1", record(2), partition=2)  # a stale write after it
    assert replica.get("c1") is None
    assert replica.was_deleted("c1", lineage)
    assert stale == [("c1", 2)]


class Changelog:
    """A consumer's view of the changelog for :meth:`ClassifierReplica.wait_for`: each
    end-offset query answers the next of ``ends`` once released."""

    def __init__(self, *ends: dict[int, int]) -> None:
        self.ends = list(ends)
        self.queries = 0
        self.release = asyncio.Event()
        self.release.set()

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("changelog", 0)}

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.queries += 1
        answer = self.ends.pop(0)
        await self.release.wait()
        if not answer:
            raise KafkaConnectionError("away")
        return {TopicPartition("changelog", p): e for p, e in answer.items()}


def following(changelog: Changelog) -> ClassifierReplica:
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica._consumer = changelog  # type: ignore[assignment]
    replica._task = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
    return replica


def read(replica: ClassifierReplica, offset: int, cid: str | None, value: bytes | None) -> None:
    key = cid.encode() if cid else None
    replica._on_record(SimpleNamespace(key=key, value=value, offset=offset, partition=0))


WAIT = 600.0
"""A visibility wait no test may sit out: answering within GUARD means it did not."""
GUARD = 30.0


def test_an_unknown_id_is_unknown_once_the_changelog_is_read_to_its_end() -> None:
    """Not after the whole visibility wait: every write made before the request asked is
    in the changelog by then (an answer waits for its write), so it would have been read."""

    async def go() -> None:
        replica = following(Changelog({0: 5}))
        for offset in range(5):
            read(replica, offset, f"other-{offset}", record(1, f"other-{offset}"))
        assert await asyncio.wait_for(replica.wait_for("c1", WAIT), GUARD) is None

    asyncio.run(go())


def test_a_record_written_before_the_request_is_waited_for_and_found() -> None:
    """Up to the changelog's end when asked: here a newer version (made public, say) that
    the request needs, two records on."""

    async def go() -> None:
        replica = following(Changelog({0: 3}))
        read(replica, 0, "other", record(1, "other"))
        waiting = asyncio.create_task(replica.wait_for("c1", WAIT, min_version=2))
        await asyncio.sleep(0.01)
        read(replica, 1, "c1", record(1))  # an older version: not yet
        await asyncio.sleep(0.01)
        assert not waiting.done()
        read(replica, 2, "c1", record(2))
        found = await asyncio.wait_for(waiting, GUARD)
        assert found is not None
        assert found.version == 2

    asyncio.run(go())


def test_a_query_under_way_when_asked_is_not_trusted_with_its_end() -> None:
    """A query the broker may have answered before a write the caller must see: the
    caller waits for the next one (shared by all who asked meanwhile)."""

    async def go() -> None:
        changelog = Changelog({0: 0}, {0: 1})
        replica = following(changelog)
        changelog.release.clear()
        first = asyncio.create_task(replica.wait_for("a", WAIT))
        await asyncio.sleep(0.01)  # its query is under way
        later = [asyncio.create_task(replica.wait_for(c, WAIT)) for c in ("c1", "b")]
        await asyncio.sleep(0.01)
        changelog.release.set()
        assert await asyncio.wait_for(first, GUARD) is None  # the end was 0: read
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in later)  # their end is 1: offset 0 not read yet
        read(replica, 0, "c1", record(1))
        assert [await asyncio.wait_for(t, GUARD) for t in later][1] is None
        assert later[0].result() is not None
        assert changelog.queries == 2

    asyncio.run(go())


def test_without_end_offsets_the_visibility_wait_alone_decides() -> None:
    async def go() -> None:
        replica = following(Changelog({}))  # Kafka away
        started = asyncio.get_running_loop().time()
        assert await replica.wait_for("c1", 0.2) is None
        assert asyncio.get_running_loop().time() - started >= 0.2  # waited it out

    asyncio.run(go())


def test_a_stop_during_a_query_leaves_its_callers_waiting_as_without_offsets() -> None:
    """They are not cancelled with it (nobody cancelled them), and the next caller gets
    a query of its own, not the dead one's."""

    async def go() -> None:
        changelog = Changelog({0: 1}, {0: 1})
        replica = following(changelog)
        changelog.release.clear()  # the query hangs
        callers = [asyncio.create_task(replica.wait_for(c, 0.3)) for c in ("a", "b")]
        await asyncio.sleep(0.01)
        for query in list(replica._queries):
            query.cancel()  # as stop() does
        assert await asyncio.gather(*callers) == [None, None]
        assert not any(c.cancelled() for c in callers)
        changelog.release.set()
        read(replica, 0, "c1", record(1))
        assert await asyncio.wait_for(replica.wait_for("c2", WAIT), GUARD) is None
        assert changelog.queries == 2

    asyncio.run(go())


def test_a_listing_replica_keeps_what_a_listing_shows_and_not_the_weights() -> None:
    """Gateways and the CLI only list, yet held every classifier's weights and learner
    state: 107 kB per 16-class classifier with grown prototypes, 3.9 kB without."""
    from streams.gateway import summary

    full = ClassifierReplica("127.0.0.1:1", "changelog")
    listing = ClassifierReplica("127.0.0.1:1", "changelog", listing_only=True)
    for replica in (full, listing):
        replica.apply("c1", record(1))
        replica.apply("c1", record(2))  # lineage checks still see versions
        replica.apply("c1", record(1))  # a stale write: skipped by both
    kept, light = full.get("c1"), listing.get("c1")
    assert kept is not None
    assert light is not None
    assert kept.weights.shape == (2, 4)
    assert light.weights.shape == (0, 4)
    assert (light.hyper, light.applied) == ({}, {})
    assert summary(light) == summary(kept)
    assert [r.classifier_id for r in listing.owned_by("alice")] == ["c1"]
