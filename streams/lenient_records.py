"""Records whose header keys are not UTF-8 are read, and batches that cannot be read at
all are answered, not fatal.

Kafka header keys are bytes on the wire; the Java client writes them from strings, but
librdkafka-based clients (confluent-kafka, kcat) write any bytes they are given, and
brokers store them. aiokafka decodes header keys strictly, and its fetcher gives up on
the whole partition: faust's consumer thread crashed on such a record, the worker exited,
and every worker that took the partition over crashed on the same offset, for good.

:func:`install` wraps the fetcher's record reader: batches are read by aiokafka's own
(compiled) reader as before; only a batch that fails on an undecodable header key is read
again by aiokafka's pure-Python reader with header keys decoded with ``surrogateescape``
(a key never matches a header the service looks for, so such a record is answered as one
without it); the other records of the batch are kept. The wrapping costs about 2 µs per
batch fetched (a slice and a Python object), next to milliseconds of model time per
request.

A batch that cannot be read at all (a compression codec the worker lacks, corrupt data,
a compressed batch that inflates past :data:`MAX_BATCH_BYTES`) crashed the fetcher the same
way. Its offsets now come out as :class:`UnreadableRecord`: no key, no value, and a
:data:`~streams.records.UNREADABLE_HEADER` saying why, which the handlers answer with a
``RECORD_UNREADABLE`` dead letter each; the partition goes on after the batch.
"""

from __future__ import annotations

import logging
import mmap
import operator
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any, SupportsIndex

import cramjam
from aiokafka.record.default_records import _DefaultRecordBatchPy

from streams.records import UNREADABLE_HEADER

log = logging.getLogger(__name__)

_BATCH_HEAD = struct.Struct(">qi")
"""A record batch starts with its base offset and its length (after these 12 bytes)."""
_MAGIC_AT = 16
"""Where a batch's format version (magic) is: after base offset, length and epoch."""
_CODEC_AT = 22
"""The low byte of a v2 batch's attributes: its compression codec in the low 3 bits."""
_MAX_TIMESTAMP = struct.Struct(">q")
_MAX_TIMESTAMP_AT = 35
_RECORDS_AT = 61
"""Where a v2 batch's (possibly compressed) records begin."""
_GZIP, _SNAPPY, _LZ4, _ZSTD = 1, 2, 3, 4
_XERIAL = b"\x82SNAPPY\x00"
"""How a snappy batch framed in blocks (xerial, what Java and aiokafka write) starts."""
MAX_BATCH_BYTES = 64 << 20
"""The most a compressed batch may inflate to (4x the default 16 MiB record limit). A 2 MB
gzip record of zeros inflates to 2 GB: a worker under a 1.5 GB memory cap died of it, on
every restart; a 9.6 kB zstd record inflated to 300 MiB (and the worker by 1.2 GB)."""
_inflated = threading.local()
"""Per reading thread, the buffer lz4 and zstd batches are inflated into to be measured
(``MAX_BATCH_BYTES`` + 1, an anonymous mapping: its pages are taken as they are written,
where a bytearray of that size zeroes, and so holds, all 64 MiB at once)."""


class UnreadableRecord:
    """A record of a batch that could not be read: its offset, and why in a header."""

    __slots__ = ("headers", "offset", "timestamp")
    key = None
    value = None
    checksum = None
    timestamp_type = 0

    def __init__(self, offset: int, timestamp: int, reason: str) -> None:
        self.offset = offset
        self.timestamp = timestamp
        self.headers = [(UNREADABLE_HEADER, reason.encode("utf-8", "replace"))]


class BatchTooLargeError(ValueError):
    """A compressed batch inflates past :data:`MAX_BATCH_BYTES`."""


class _LenientBytes(bytearray):
    """A record buffer whose slices decode undecodable bytes as surrogate escapes."""

    def __getitem__(self, index: SupportsIndex | slice) -> Any:
        got = bytearray.__getitem__(self, index)
        return _LenientBytes(got) if isinstance(index, slice) else got

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "surrogateescape")


def _is_header_decoding(exc: BaseException) -> bool:
    """Whether a reader's error comes from decoding text (a header key)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, UnicodeDecodeError) or "UnicodeDecodeError" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _forwarded(name: str) -> property:
    """The compiled batch's ``name``, read through the wrapper."""
    return property(operator.attrgetter(f"_fast.{name}"))


class _TolerantBatch:
    """A v2 record batch read by the compiled reader, read again leniently on failure.

    What the fetcher reads of a batch is forwarded explicitly (``__slots__``, no
    ``__getattr__`` on the way): it runs for every batch fetched."""

    __slots__ = ("_fast", "_raw")

    def __init__(self, fast: Any, raw: memoryview) -> None:
        self._fast = fast
        self._raw = raw

    def validate_crc(self) -> bool:
        return bool(self._fast.validate_crc())

    base_offset = _forwarded("base_offset")
    next_offset = _forwarded("next_offset")
    producer_id = _forwarded("producer_id")
    is_control_batch = _forwarded("is_control_batch")
    is_transactional = _forwarded("is_transactional")

    def __getattr__(self, name: str) -> Any:  # anything else a reader may ask (rare)
        return getattr(self._fast, name)

    def __next__(self) -> Any:  # control batches are read record by record
        return next(self._fast)

    def __iter__(self) -> Iterator[Any]:
        last = -1
        try:
            self._check_inflated_size()
            for record in self._fast:
                last = record.offset
                yield record
        except Exception as exc:  # whatever stops the reader: answered, not fatal
            if not _is_header_decoding(exc):
                yield from self._unreadable(exc, last)
                return
            log.warning(
                "a record batch from offset %d holds a header key that is not UTF-8; read "
                "with the key's bytes escaped",
                self._fast.base_offset,
            )
            for record in self._lenient():
                if record.offset > last:
                    yield record

    def _check_inflated_size(self) -> None:
        """Refuse a compressed batch that inflates past :data:`MAX_BATCH_BYTES`, inflating
        at most that much (the reader would inflate all of it at once)."""
        codec = self._raw[_CODEC_AT] & 0x07
        if codec and inflated_size(codec, self._raw[_RECORDS_AT:]) > MAX_BATCH_BYTES:
            name = {_GZIP: "gzip", _SNAPPY: "snappy", _LZ4: "lz4", _ZSTD: "zstd"}[codec]
            raise BatchTooLargeError(f"its {name} data inflates past {MAX_BATCH_BYTES:,} bytes")

    def _unreadable(self, exc: Exception, after: int) -> Iterator[UnreadableRecord]:
        """The batch's records not yielded yet, as :class:`UnreadableRecord`."""
        reason = f"{type(exc).__name__}: {exc}"[:300]
        first = max(int(self._fast.base_offset), after + 1)
        end = int(self._fast.next_offset)
        (timestamp,) = _MAX_TIMESTAMP.unpack_from(self._raw, _MAX_TIMESTAMP_AT)
        log.error(
            "the record batch at offsets %d..%d cannot be read (%s): each record is answered "
            "with a RECORD_UNREADABLE dead letter",
            first,
            end - 1,
            reason,
        )
        for offset in range(first, end):
            yield UnreadableRecord(offset, timestamp, reason)

    def _lenient(self) -> Iterator[Any]:
        batch = _DefaultRecordBatchPy(self._raw)
        batch._maybe_uncompress()
        batch._buffer = _LenientBytes(batch._buffer)
        return iter(batch)


def inflated_size(codec: int, data: memoryview) -> int:
    """How large a batch's compressed ``data`` inflates, counted up to
    :data:`MAX_BATCH_BYTES` + 1 (any larger size reads as that), inflating no more than
    that: gzip by a bounded inflate, lz4 and zstd into a buffer of that size (they are
    inflated twice, here and by the reader), snappy from the lengths its blocks begin with.
    A codec this does not know reads as 0: the reader says what it makes of it."""
    cap = MAX_BATCH_BYTES + 1
    if codec == _GZIP:
        return len(zlib.decompressobj(wbits=47).decompress(data, cap))
    if codec == _SNAPPY:
        return min(cap, _snappy_size(data))
    if codec in (_LZ4, _ZSTD):
        buffer = getattr(_inflated, "buffer", None)
        if buffer is None or len(buffer) != cap:
            buffer = _inflated.buffer = mmap.mmap(-1, cap)
        module = cramjam.lz4 if codec == _LZ4 else cramjam.zstd
        try:
            return int(module.decompress_into(data, buffer))
        except cramjam.DecompressionError as exc:
            if "whole buffer" in str(exc):  # what more than ``cap`` bytes raise
                return cap
            raise
    return 0


def _snappy_size(data: memoryview) -> int:
    """The inflated size of snappy ``data``, raw or in xerial blocks (each a 4-byte
    length and a raw snappy block, after a 16-byte header), read from the sizes raw snappy
    blocks begin with."""
    if bytes(data[: len(_XERIAL)]) != _XERIAL:
        return int(cramjam.snappy.decompress_raw_len(data))
    total, cursor = 0, 16
    while cursor < len(data):
        (size,) = struct.unpack_from(">i", data, cursor)
        total += int(cramjam.snappy.decompress_raw_len(data[cursor + 4 : cursor + 4 + size]))
        cursor += 4 + size
    return total


class TolerantMemoryRecords:
    """aiokafka's ``MemoryRecords`` (the compiled one where installed), its v2 batches
    wrapped in :class:`_TolerantBatch`."""

    def __init__(self, data: bytes) -> None:
        self._fast = _FAST(data)
        self._data = memoryview(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return int(self._fast.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._fast.has_next())

    def next_batch(self) -> Any:
        fast = self._fast.next_batch()
        if fast is None:
            return None
        _offset, length = _BATCH_HEAD.unpack_from(self._data, self._pos)
        end = self._pos + _BATCH_HEAD.size + length
        raw, self._pos = self._data[self._pos : end], end
        return _TolerantBatch(fast, raw) if raw[_MAGIC_AT] >= 2 else fast


_FAST: Any = None


def install() -> None:
    """Make aiokafka's fetcher read batches through :class:`TolerantMemoryRecords`
    (idempotent)."""
    global _FAST
    from aiokafka.consumer import fetcher

    if fetcher.MemoryRecords is TolerantMemoryRecords:
        return
    _FAST = fetcher.MemoryRecords
    fetcher.MemoryRecords = TolerantMemoryRecords
