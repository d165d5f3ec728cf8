"""Few-shot classifier records and their versioned binary encoding (never pickle).

Layout of an encoded record (little-endian)::

    b"SSCR"            magic
    uint16             format version (2, or 3 for a whitening learner; 1 is still read)
    uint32             length of the JSON header
    JSON header        UTF-8: every field but the weights, plus "dim" and "n_classes"
    float32[r x dim]   the weights, row-major: each label's "rows" prototypes in turn,
                       labels in header order (r = sum of "rows")

Version 1 had no ``rows`` and ``seen``: one row per label. It decodes as one prototype per
class that has seen no examples, which is what it was. Version 3 is version 2 written for a
whitening learner (``hyper["whiten"]`` above 0, with ``_mean.sq_dims``): the number tells
an older worker, which reads 1 and 2 only, to refuse such a record rather than learn it
unwhitened and drop its per-dimension statistics.

>>> rec = ClassifierRecord.new("c-1", model="m", owner="h", access="private", dim=2, now=0.0)
>>> rec.labels.append("a"); rec.weights = np.array([[1.0, 2.0]], dtype=np.float32)
>>> again = decode_record(encode_record(rec))
>>> again.labels, again.weights.tolist(), again.version
(['a'], [[1.0, 2.0]], 0)
>>> again.rows, again.seen
([1], [0])
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt

MAGIC = b"SSCR"
FORMAT_VERSION = 2
WHITENING_FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
_HEAD = struct.Struct("<4sHI")


class RecordFormatError(ValueError):
    """Bytes that are not a classifier record this code can read."""


def iso_time(t: float) -> str:
    """A record's timestamp (seconds since the epoch) as ISO 8601 UTC, to the second.

    >>> iso_time(0)
    '1970-01-01T00:00:00+00:00'
    """
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


@dataclass
class ClassifierRecord:
    """Everything shotstream keeps about one few-shot classifier (no training examples)."""

    classifier_id: str
    model: str
    owner: str
    """SHA-256 hex of the owner's API key (never the key itself)."""
    access: str
    dim: int
    labels: list[str] = field(default_factory=list)
    weights: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 0), dtype=np.float32)
    )
    version: int = 0
    """Applied train requests."""
    created_at: float = 0.0
    updated_at: float = 0.0
    samples_seen: int = 0
    applied: dict[str, int] = field(default_factory=dict)
    """``"topic:partition"`` → last source offset applied (exactly-once effects)."""
    recent: list[int] = field(default_factory=list)
    """Prequential outcomes of the most recent examples (1 = predicted right before learning)."""
    hyper: dict[str, Any] = field(default_factory=dict)
    """Learner settings frozen at creation (C, variant, temperature, warm start ...)."""
    rows: list[int] = field(default_factory=list)
    """Weight rows (prototypes) per label; empty means one each."""
    seen: list[int] = field(default_factory=list)
    """Examples learned per label (first passes); empty means none yet."""
    used_number: int = 0
    """Few-shot classify requests answered with it (as workers report them: ``streams.usage``)."""
    used_at: float | None = None
    """When the last of them was answered (epoch seconds); None before the first."""

    @classmethod
    def new(
        cls, classifier_id: str, *, model: str, owner: str, access: str, dim: int, now: float
    ) -> ClassifierRecord:
        return cls(
            classifier_id,
            model,
            owner,
            access,
            dim,
            weights=np.zeros((0, dim), dtype=np.float32),
            created_at=now,
            updated_at=now,
        )

    @property
    def lineage(self) -> Lineage:
        """``((owner, created_at), version)``: see :func:`is_older`."""
        return (self.owner, self.created_at), self.version

    @property
    def prequential_accuracy(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


def encode_record(record: ClassifierRecord) -> bytes:
    n = len(record.labels)
    rows = record.rows or [1] * n
    seen = record.seen or [0] * n
    if len(rows) != n or len(seen) != n or min(rows, default=1) < 1:
        raise ValueError(f"{len(rows)} row counts and {len(seen)} example counts for {n} labels")
    weights = np.ascontiguousarray(record.weights, dtype="<f4").reshape(-1, record.dim)
    if weights.shape[0] != sum(rows):
        raise ValueError(f"{weights.shape[0]} weight rows for {sum(rows)} ({n} labels)")
    header = {
        "classifier_id": record.classifier_id,
        "model": record.model,
        "owner": record.owner,
        "access": record.access,
        "dim": record.dim,
        "n_classes": n,
        "labels": record.labels,
        "rows": rows,
        "seen": seen,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "samples_seen": record.samples_seen,
        "applied": record.applied,
        "recent": record.recent,
        "hyper": record.hyper,
        # only once used: records never classified with encode as before
        **(
            {"used_number": record.used_number, "used_at": record.used_at}
            if record.used_number
            else {}
        ),
    }
    whitens = float(record.hyper.get("whiten", 0.0) or 0.0) > 0
    version = WHITENING_FORMAT_VERSION if whitens else FORMAT_VERSION
    return _join(version, header, weights.tobytes())


def _join(version: int, header: Any, body: bytes) -> bytes:
    """A record's bytes from its parts (what :func:`_split` takes apart)."""
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":"), default=_listed).encode()
    return _HEAD.pack(MAGIC, version, len(head)) + head + body


def _split(data: bytes) -> tuple[int, Any, bytes]:
    """``(format version, JSON header, weight bytes)`` of a record of any format version."""
    if len(data) < _HEAD.size:
        raise RecordFormatError("record too short")
    magic, version, head_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise RecordFormatError(f"not a classifier record (magic {magic!r})")
    start = _HEAD.size
    try:
        header = json.loads(data[start : start + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordFormatError(f"corrupt record header: {exc}") from exc
    return version, header, data[start + head_len :]


SOURCE_FIELDS = ("_replay", "_used")
"""``hyper`` entries keyed by source (``"topic:partition"``), beside ``applied``."""


def without_sources(data: bytes) -> bytes:
    """``data`` with what it remembers of its source topics forgotten (``applied`` and the
    ``hyper`` entries of :data:`SOURCE_FIELDS`), all else byte for byte: for a record
    written into a changelog on new topics, whose offsets start again at 0. Any format
    version; :class:`RecordFormatError` when it is not a record.

    >>> rec = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=1, now=0.0)
    >>> rec.applied["train:0"] = 70
    >>> rec.hyper.update({"C": 0.03, "_replay": {"train:0": [[70, 9, 5.0]]}})
    >>> again = decode_record(without_sources(encode_record(rec)))
    >>> again.applied, again.hyper
    ({}, {'C': 0.03})
    """
    version, header, body = _split(data)
    header["applied"] = {}
    hyper = header.get("hyper")
    if isinstance(hyper, dict):
        for name in SOURCE_FIELDS:
            hyper.pop(name, None)
    return _join(version, header, body)


def _listed(value: object) -> object:
    """JSON for what a header holds beside plain values: the running mean, an array."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} in a classifier record header")


def _running_mean(hyper: dict[str, Any], dim: int) -> dict[str, Any]:
    """``hyper`` with its running mean (``_mean.mean``) as a float32 array: a list of
    ``dim`` Python floats cost every replica ~12 kB per classifier and every train
    request a conversion each way."""
    state = hyper.get("_mean")
    if not isinstance(state, dict) or "mean" not in state:
        return hyper
    arrays = {key: state[key] for key in ("mean", "sq_dims") if key in state}
    for key, value in arrays.items():  # sq_dims: the per-dimension squares of whitening
        try:
            array = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise RecordFormatError(f"corrupt record header: running {key} ({exc})") from exc
        if array.shape != (dim,) or not np.isfinite(array).all():
            raise RecordFormatError(f"corrupt record header: running {key} of shape {array.shape}")
        arrays[key] = array
    return {**hyper, "_mean": {**state, **arrays}}


def _checked_misses(hyper: dict[str, Any], n: int) -> dict[str, Any]:
    """``hyper`` after checking its miss counts (``_misses``, one per class, kept by a
    learner that grows on misses). Fewer counts than classes are fine: a worker from
    before growing on misses adds classes and keeps the counts it does not know as they
    were (classes are only ever appended; the new ones start at none)."""
    misses = hyper.get("_misses")
    if misses is None:
        return hyper
    if not isinstance(misses, list) or len(misses) > n:
        raise RecordFormatError(f"corrupt record header: misses {misses!r} for {n} classes")
    for value in misses:
        _int(value, "misses")
    return hyper


def decode_record(data: bytes) -> ClassifierRecord:
    version, header, body = _split(data)
    if version not in READABLE_VERSIONS:
        raise RecordFormatError(
            f"record format {version} is not supported (this code reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    try:
        return _from_header(header, body)
    except RecordFormatError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind
        raise RecordFormatError(f"corrupt record header: {exc!r}") from exc


def read_ownership(data: bytes) -> tuple[str, str]:
    """``(owner, access)`` from a record's header alone, for any format version.

    Enough to let the owner delete a classifier ``decode_record`` refuses (weights that
    went NaN, a format this code does not read, a corrupt field elsewhere).
    """
    _version, header, _body = _split(data)
    owner = header.get("owner") if isinstance(header, dict) else None
    access = header.get("access") if isinstance(header, dict) else None
    if not isinstance(owner, str) or access not in ("private", "public"):
        raise RecordFormatError(f"corrupt record header: owner {owner!r}, access {access!r}")
    return owner, access


Lineage = tuple[tuple[Any, Any], int]
"""``((owner, created_at), version)`` of a classifier record: which classifier (not one
deleted and made again under its id since) and how far it is."""


def record_lineage(data: bytes | None) -> Lineage | None:
    """A stored record's :data:`Lineage` from its header alone; ``None`` for a tombstone or
    a header that cannot be read."""
    if data is None:
        return None
    try:
        _version, header, _body = _split(data)
    except RecordFormatError:
        return None
    version = header.get("version") if isinstance(header, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        return None
    return (header.get("owner"), header.get("created_at")), version


def is_older(incoming: Lineage | None, stored: Lineage | None) -> bool:
    """Whether ``incoming`` is the classifier ``stored`` is, at a lower version: a stale
    changelog write.

    A version only grows, so such a write comes from a worker that lost the classifier's
    partition while it was still working on it (evicted after a pause longer than the
    session timeout, then resumed): its write lands after the new owner's. Readers of the
    changelog skip it; the last write no longer decides alone. Unreadable headers, a
    tombstone and a new lineage are never stale.

    >>> r = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=1.0)
    >>> v1 = r.lineage; r.version = 2; v2 = r.lineage
    >>> is_older(v1, v2), is_older(v2, v1), is_older(v2, v2)
    (True, False, False)
    >>> r.created_at = 5.0; r.version = 1  # deleted, made again
    >>> is_older(r.lineage, v2), is_older(v1, None), is_older(None, v2)
    (False, False, False)
    >>> record_lineage(encode_record(r)) == r.lineage
    True
    """
    return (
        incoming is not None
        and stored is not None
        and incoming[0] == stored[0]
        and incoming[1] < stored[1]
    )


def _int(value: Any, name: str, least: int = 0) -> int:
    """An integer field: JSON ints only (not bools, not floats int() would truncate)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise RecordFormatError(f"corrupt record header: {name} is {value!r}")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise RecordFormatError(f"corrupt record header: {name} is {value!r}")
    return value


def _from_header(header: Any, body: bytes) -> ClassifierRecord:
    dim, n = _int(header["dim"], "dim"), _int(header["n_classes"], "n_classes")
    rows = [_int(r, "rows", 1) for r in header.get("rows", [1] * n)]  # v1: one row per label
    seen = [_int(c, "seen") for c in header.get("seen", [0] * n)]
    labels = [_str(label, "a label") for label in header["labels"]]
    if len(rows) != n or len(seen) != n or len(labels) != n or len(set(labels)) != n:
        raise RecordFormatError(
            f"corrupt record header: labels {labels}, rows {rows}, seen {seen} for {n} classes"
        )
    if header["access"] not in ("private", "public"):
        raise RecordFormatError(f"corrupt record header: access is {header['access']!r}")
    recent = [_int(v, "recent") for v in header["recent"]]
    if any(v > 1 for v in recent):
        raise RecordFormatError(f"corrupt record header: recent outcomes {recent}")
    if len(body) != 4 * dim * sum(rows):
        raise RecordFormatError(f"weights are {len(body)} bytes, expected {4 * dim * sum(rows)}")
    weights = np.frombuffer(body, dtype="<f4").reshape(sum(rows), dim).astype(np.float32)
    if not np.isfinite(weights).all():
        raise RecordFormatError("corrupt record: weights hold NaN or infinity")
    return ClassifierRecord(
        classifier_id=_str(header["classifier_id"], "classifier_id"),
        model=_str(header["model"], "model"),
        owner=_str(header["owner"], "owner"),
        access=header["access"],
        dim=dim,
        labels=labels,
        weights=weights,
        version=_int(header["version"], "version"),
        created_at=float(header["created_at"]),
        updated_at=float(header["updated_at"]),
        samples_seen=_int(header["samples_seen"], "samples_seen"),
        applied={str(k): _int(v, "an applied offset") for k, v in header["applied"].items()},
        recent=recent,
        hyper=_checked_misses(_running_mean(dict(header["hyper"]), dim), n),
        rows=rows,
        seen=seen,
        used_number=_int(header.get("used_number", 0), "used_number"),
        used_at=_used_at(header.get("used_at")),
    )


def _used_at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise RecordFormatError(f"corrupt record header: used_at is {value!r}")
    return float(value)
