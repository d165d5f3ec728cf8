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


def builder(codec: int) -> _DefaultRecordBatchBuilderPy:
    return _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 26,
    )


def batch(codec: int, base: int) -> bytes:
    made = builder(codec)
    headers: list[Any] = [("authorization", b"Bearer k")]
    for offset, key in enumerate(["good", "bad", "after"], start=base):
        if key == "bad" and base == 0:
            headers = [(RawKey("authorization"), b"Bearer k")]
        made.append(offset, timestamp=None, key=key.encode(), value=b"{}", headers=headers)
        headers = [("authorization", b"Bearer k")]
    return bytes(made.build())


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


def sound_batch(codec: int, value: bytes = b"{}", count: int = 3, base: int = 0) -> bytes:
    made = builder(codec)
    for offset in range(base, base + count):
        made.append(offset, timestamp=None, key=b"k%d" % offset, value=value, headers=[])
    return bytes(made.build())


def tolerant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lenient_records, "_FAST", lenient_records._FAST or fetcher.MemoryRecords)
    monkeypatch.setattr(fetcher, "MemoryRecords", lenient_records.TolerantMemoryRecords)


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_every_kafka_codec_is_read(codec: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without cramjam aiokafka reads gzip only: a snappy, lz4 or zstd record (or a topic
    set to compression.type=zstd) crashed the worker on every restart."""
    tolerant(monkeypatch)
    assert [(r.offset, r.key) for r in read(sound_batch(codec))] == [
        (0, b"k0"),
        (1, b"k1"),
        (2, b"k2"),
    ]


@pytest.mark.parametrize("codec", [1, 2, 3, 4], ids=["gzip", "snappy", "lz4", "zstd"])
def test_a_batch_that_inflates_past_the_limit_is_answered_not_inflated(
    codec: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 MB gzip record of zeros inflated to 2 GB at once and the worker died of it, on
    every restart; a 9.6 kB zstd record inflated to 300 MiB (the worker grew by 1.2 GB).
    Inflating stops at the limit; each record is an UnreadableRecord."""
    tolerant(monkeypatch)
    monkeypatch.setattr(lenient_records, "MAX_BATCH_BYTES", 10_000)
    bomb = sound_batch(codec, value=b"\0" * 20_000, count=2)
    assert len(bomb) < 3_000
    got = read(bomb)
    assert [(r.offset, r.key, r.value) for r in got] == [(0, None, None), (1, None, None)]
    [(name, reason)] = got[0].headers
    assert name == "shotstream-unreadable"
    assert b"data inflates past 10,000 bytes" in reason
    monkeypatch.setattr(lenient_records, "MAX_BATCH_BYTES", 100_000)
    assert [r.value for r in read(bomb)] == [b"\0" * 20_000] * 2  # under the limit: read


def test_a_batch_that_cannot_be_read_becomes_a_record_per_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch whose data cannot be decoded (here gzip-flagged garbage with a sound CRC)
    raised out of the fetcher and ended the worker; its offsets now come out as records
    the handlers answer, and the next batch is read."""
    import struct

    from aiokafka.record.util import calc_crc32c

    after_crc = struct.pack(">hiqqqhii", 1, 1, 5, 7, -1, -1, -1, 2) + b"\x1f\x8b\x08\x00junk"
    garbage = struct.pack(">qiibI", 10, 9 + len(after_crc), -1, 2, calc_crc32c(after_crc))
    garbage += after_crc
    tolerant(monkeypatch)
    got = read(garbage + sound_batch(0, base=12))
    assert [(r.offset, r.timestamp, r.value) for r in got[:2]] == [(10, 7, None), (11, 7, None)]
    assert all(name == "shotstream-unreadable" for r in got[:2] for name, _ in r.headers)
    assert [r.key for r in got[2:]] == [b"k12", b"k13", b"k14"]  # the next batch is read


def test_snappy_sizes_are_read_raw_and_in_blocks() -> None:
    """Java and aiokafka frame snappy in xerial blocks, librdkafka may write it raw: both
    are measured from their block lengths, nothing inflated."""
    import cramjam
    from aiokafka.codec import snappy_encode

    data = bytes(range(256)) * 400  # 102,400 bytes: four xerial blocks
    assert lenient_records.inflated_size(2, memoryview(snappy_encode(data))) == len(data)
    raw = bytes(cramjam.snappy.compress_raw(data))
    assert lenient_records.inflated_size(2, memoryview(raw)) == len(data)
