"""The classifier table restores without rollbacks, on a real RocksDB store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.types import TP

from state.records import ClassifierRecord, decode_record, encode_record
from streams.table import ClassifierTable

TOPIC = "tbl-classifiers-changelog"
TP0 = TP(TOPIC, 0)


@pytest.fixture
def table(tmp_path: Path) -> ClassifierTable:
    app = faust.App("tbl", store="rocksdb://", datadir=str(tmp_path), Table=ClassifierTable)
    made = app.Table("classifiers", partitions=1, key_type=bytes, value_type=bytes)
    assert isinstance(made, ClassifierTable)
    return made


def record(version: int, created_at: float = 1.0) -> bytes:
    r = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=created_at)
    r.version = version
    return encode_record(r)


def event(offset: int, value: bytes | None, key: bytes = b"c") -> Any:
    message = SimpleNamespace(key=key, value=value, topic=TOPIC, partition=0, offset=offset, tp=TP0)
    return SimpleNamespace(message=message)


def stored(table: ClassifierTable, key: bytes = b"c") -> bytes | None:
    value = table.data._db_for_partition(0).get(key)  # type: ignore[attr-defined]
    return None if value is None else bytes(value)


def test_a_restore_skips_a_write_older_than_what_it_read(table: ClassifierTable) -> None:
    table.apply_changelog_batch([event(0, record(1)), event(1, record(3)), event(2, record(2))])
    assert decode_record(stored(table) or b"").version == 3  # not 2, the last write
    assert table.data.persisted_offset(TP0) == 2  # the skipped write was read all the same
    # also across batches (against what is stored), and a second classifier is its own
    table.apply_changelog_batch([event(3, record(1)), event(4, record(1), key=b"d")])
    assert decode_record(stored(table) or b"").version == 3
    assert decode_record(stored(table, b"d") or b"").version == 1
    assert table.data.persisted_offset(TP0) == 4


def test_a_classifier_deleted_and_made_again_is_not_stale(table: ClassifierTable) -> None:
    table.apply_changelog_batch([event(0, record(5)), event(1, None), event(2, record(1, 9.0))])
    assert decode_record(stored(table) or b"").version == 1
    table.apply_changelog_batch([event(3, record(1, 20.0))])  # made again, no tombstone read
    assert decode_record(stored(table) or b"").created_at == 20.0


def test_a_restore_skips_a_write_of_a_classifier_after_its_delete(table: ClassifierTable) -> None:
    """A worker that lost the partition mid-request wrote version 6 after the new owner's
    delete: restored as the last write, it brought the deleted classifier back."""
    batch = [event(0, record(5)), event(1, None), event(2, record(6)), event(3, record(1, 9.0))]
    table.apply_changelog_batch(batch[:3])
    assert stored(table) is None
    assert table.data.persisted_offset(TP0) == 2
    table.apply_changelog_batch(batch[3:])  # made again: a new classifier, not stale
    assert decode_record(stored(table) or b"").created_at == 9.0
    # in one batch: deleted, made again, then the deleted one's stale write (skipped)
    made_again = [event(4, None), event(5, record(2, 20.0)), event(6, record(3, 9.0))]
    table.apply_changelog_batch(made_again)
    assert decode_record(stored(table) or b"").created_at == 20.0


def test_a_write_after_another_workers_keeps_the_restore_point(table: ClassifierTable) -> None:
    """faust records each write's offset as where the next restore starts; past a write
    of another worker in between, that would skip it."""

    def sent(offset: int) -> Any:
        result = SimpleNamespace(topic_partition=TP0, offset=offset)
        return SimpleNamespace(result=lambda: result)

    for offset in (0, 1):
        table._on_changelog_sent(sent(offset))
    assert table.data.persisted_offset(TP0) == 1
    table._on_changelog_sent(sent(3))  # offset 2 was another worker's
    table._on_changelog_sent(sent(4))
    assert table.data.persisted_offset(TP0) == 1


def test_a_restore_passes_over_records_without_a_key(table: ClassifierTable) -> None:
    """A changelog batch the reader cannot read comes out as records with neither key nor
    value (streams.lenient_records, logged there); as deletes of key None they ended the
    restore. They are no classifier's: passed over, and read all the same."""
    table.apply_changelog_batch([event(0, record(2)), event(1, None, key=None)])  # type: ignore[arg-type]
    assert decode_record(stored(table) or b"").version == 2
    assert table.data.persisted_offset(TP0) == 1
