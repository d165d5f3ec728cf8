"""A record whose header key is not UTF-8 is read, with the records around it."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer import fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import TopicPartition

from streams import lenient_records


class RawKey(str):
    """A header key that encodes to bytes that are not UTF-8 (what librdkafka may send)."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff" + str.encode(self, encoding, errors)


def batch(codec: int, base: int) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    headers: list[Any] = [("authorization", b"Bearer k")]
    for offset, key in enumerate(["good", "bad", "after"], start=base):
        if key == "bad" and base == 0:
            headers = [(RawKey("authorization"), b"Bearer k")]
        builder.append(offset, timestamp=None, key=key.encode(), value=b"{}", headers=headers)
        headers = [("authorization", b"Bearer k")]
    return bytes(builder.build())


def read(data: bytes) -> list[Any]:
    records = fetcher.MemoryRecords(data)
    return list(
        fetcher.PartitionRecords(
            TopicPartition("t", 0), records, None, 0, None, None, True, fetcher.READ_UNCOMMITTED
        )
    )


@pytest.mark.parametrize("codec", [0, 1], ids=["plain", "gzip"])
def test_a_batch_with_an_undecodable_header_key_is_read_whole(
    codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = batch(codec, 0) + batch(codec, 3)  # the second batch is sound
    monkeypatch.setattr(fetcher, "MemoryRecords", lenient_records._FAST or fetcher.MemoryRecords)
    with pytest.raises((CorruptRecordException, UnicodeDecodeError)):
        read(data)  # aiokafka alone: the partition's fetch fails, for good
    monkeypatch.setattr(lenient_records, "_FAST", fetcher.MemoryRecords)
    monkeypatch.setattr(fetcher, "MemoryRecords", lenient_records.TolerantMemoryRecords)
    got = read(data)
    keys = [(r.offset, r.key) for r in got]
    assert keys == [
        (0, b"good"),
        (1, b"bad"),
        (2, b"after"),
        (3, b"good"),
        (4, b"bad"),
        (5, b"after"),
    ]
    assert list(got[1].headers) == [("\udcffauthorization", b"Bearer k")]
    assert list(got[2].headers) == [("authorization", b"Bearer k")]
