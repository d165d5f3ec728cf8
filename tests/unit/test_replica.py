"""The classifier replica applies changelog records in order and reads local deletes at once."""

from __future__ import annotations

import numpy as np
import pytest

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
