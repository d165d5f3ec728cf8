"""Deletes: an owner can delete a classifier whose stored record no longer decodes, and a
delete Kafka redelivers after a crash is answered as the first time."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from state.records import (
    ClassifierRecord,
    RecordFormatError,
    decode_record,
    encode_record,
    read_deletion,
)
from streams.errors import ErrorCode, RequestError
from streams.observer import Observer
from streams.records import DeleteRequest
from streams.replica import ClassifierReplica
from streams.settings import Settings
from streams.training import TrainHandler


def nan_record(cid: str, access: str) -> bytes:
    """A record whose weights went NaN (possible before the learner's finiteness guards)."""
    r = ClassifierRecord.new(cid, model="hash", owner="alice", access=access, dim=4, now=0.0)
    r.labels = ["a", "b"]
    r.weights = np.full((2, 4), np.nan, dtype=np.float32)
    data = encode_record(r)
    with pytest.raises(RecordFormatError, match="NaN"):
        decode_record(data)
    return data


AT = ("shotstream.train:0", 5)
"""Where the delete request was read: its source partition and offset."""


def handler(table: dict[bytes, bytes]) -> TrainHandler:
    # _delete touches only the table, the replica (never started here) and the observer
    none = cast(Any, None)
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    return TrainHandler(Settings(), none, cast(Any, table), replica, none, none, Observer())


def test_the_owner_deletes_an_unreadable_classifier() -> None:
    table = {b"c1": nan_record("c1", "private")}
    answer = handler(table)._delete(DeleteRequest("r1", "c1"), "alice", *AT)
    assert answer == {"request_id": "r1", "classifier_id": "c1", "deleted": True}
    gone = read_deletion(table[b"c1"])
    assert gone is not None
    assert (gone.owner, gone.source, gone.offset) == ("alice", *AT)


@pytest.mark.parametrize(
    ("access", "code"),
    [("private", ErrorCode.CLASSIFIER_NOT_FOUND), ("public", ErrorCode.AUTHZ_ACCESS_DENIED)],
)
def test_others_may_not_delete_it(access: str, code: ErrorCode) -> None:
    table = {b"c1": nan_record("c1", access)}
    with pytest.raises(RequestError) as raised:
        handler(table)._delete(DeleteRequest("r1", "c1"), "bob", *AT)
    assert raised.value.code == code
    assert b"c1" in table


def test_a_record_without_a_readable_header_is_not_deleted() -> None:
    table = {b"c1": b"SSCR\x02\x00\x05\x00\x00\x00{oops"}
    with pytest.raises(RecordFormatError):
        handler(table)._delete(DeleteRequest("r1", "c1"), "alice", *AT)
    assert b"c1" in table


def readable(cid: str, owner: str = "alice") -> bytes:
    r = ClassifierRecord.new(cid, model="hash", owner=owner, access="private", dim=4, now=0.0)
    return encode_record(r)


def test_a_redelivered_delete_is_answered_again_and_a_new_one_finds_nothing() -> None:
    table = {b"c1": readable("c1")}
    train = handler(table)
    first = train._delete(DeleteRequest("r1", "c1"), "alice", *AT)
    assert train._read("c1") is None  # the marker reads as no classifier
    # the same record again (a crash before its offset was committed): the same answer
    assert train._delete(DeleteRequest("r1", "c1"), "alice", *AT) == first
    # a new delete of the deleted id, or the same offset from someone else: not found
    for owner, at in (("alice", ("shotstream.train:0", 9)), ("bob", AT)):
        with pytest.raises(RequestError) as raised:
            train._delete(DeleteRequest("r2", "c1"), owner, *at)
        assert raised.value.code == ErrorCode.CLASSIFIER_NOT_FOUND


def test_replicas_read_the_deletion_marker_as_gone() -> None:
    table = {b"c1": readable("c1")}
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    replica.apply("c1", table[b"c1"])
    assert replica.get("c1") is not None
    handler(table)._delete(DeleteRequest("r1", "c1"), "alice", *AT)
    other = ClassifierReplica("127.0.0.1:1", "changelog")  # another worker's
    other.apply("c1", readable("c1"))
    other.apply("c1", table[b"c1"])
    assert other.get("c1") is None
    assert other.owned_by("alice") == []
