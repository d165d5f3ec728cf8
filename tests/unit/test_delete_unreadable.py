"""An owner can delete a classifier whose stored record no longer decodes."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import pytest

from state.records import ClassifierRecord, RecordFormatError, decode_record, encode_record
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


def handler(table: dict[bytes, bytes]) -> TrainHandler:
    # _delete touches only the table, the replica (never started here) and the observer
    none = cast(Any, None)
    replica = ClassifierReplica("127.0.0.1:1", "changelog")
    return TrainHandler(Settings(), none, cast(Any, table), replica, none, none, Observer())


def test_the_owner_deletes_an_unreadable_classifier() -> None:
    table = {b"c1": nan_record("c1", "private")}
    answer = handler(table)._delete(DeleteRequest("r1", "c1"), "alice")
    assert answer == {"request_id": "r1", "classifier_id": "c1", "deleted": True}
    assert table == {}


@pytest.mark.parametrize(
    ("access", "code"),
    [("private", ErrorCode.CLASSIFIER_NOT_FOUND), ("public", ErrorCode.AUTHZ_ACCESS_DENIED)],
)
def test_others_may_not_delete_it(access: str, code: ErrorCode) -> None:
    table = {b"c1": nan_record("c1", access)}
    with pytest.raises(RequestError) as raised:
        handler(table)._delete(DeleteRequest("r1", "c1"), "bob")
    assert raised.value.code == code
    assert b"c1" in table


def test_a_record_without_a_readable_header_is_not_deleted() -> None:
    table = {b"c1": b"SSCR\x02\x00\x05\x00\x00\x00{oops"}
    with pytest.raises(RecordFormatError):
        handler(table)._delete(DeleteRequest("r1", "c1"), "alice")
    assert b"c1" in table
