"""Few-shot classifier records and their versioned binary encoding (never pickle).

Layout of an encoded record (little-endian)::

    b"SSCR"            magic
    uint16             format version (1)
    uint32             length of the JSON header
    JSON header        UTF-8: every field but the weights, plus "dim" and "n_classes"
    float32[n x dim]   the weights, row-major, one row per label in header order

>>> rec = ClassifierRecord.new("c-1", model="m", owner="h", access="private", dim=2, now=0.0)
>>> rec.labels.append("a"); rec.weights = np.array([[1.0, 2.0]], dtype=np.float32)
>>> again = decode_record(encode_record(rec))
>>> again.labels, again.weights.tolist(), again.version
(['a'], [[1.0, 2.0]], 0)
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
FORMAT_VERSION = 1
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
    def prequential_accuracy(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None


def encode_record(record: ClassifierRecord) -> bytes:
    weights = np.ascontiguousarray(record.weights, dtype="<f4").reshape(-1, record.dim)
    if weights.shape[0] != len(record.labels):
        raise ValueError(f"{weights.shape[0]} weight rows for {len(record.labels)} labels")
    header = {
        "classifier_id": record.classifier_id,
        "model": record.model,
        "owner": record.owner,
        "access": record.access,
        "dim": record.dim,
        "n_classes": len(record.labels),
        "labels": record.labels,
        "version": record.version,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "samples_seen": record.samples_seen,
        "applied": record.applied,
        "recent": record.recent,
        "hyper": record.hyper,
    }
    head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    return _HEAD.pack(MAGIC, FORMAT_VERSION, len(head)) + head + weights.tobytes()


def decode_record(data: bytes) -> ClassifierRecord:
    if len(data) < _HEAD.size:
        raise RecordFormatError("record too short")
    magic, version, head_len = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise RecordFormatError(f"not a classifier record (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise RecordFormatError(f"record format {version} is not supported (this code reads 1)")
    start = _HEAD.size
    try:
        header = json.loads(data[start : start + head_len].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordFormatError(f"corrupt record header: {exc}") from exc
    dim, n = int(header["dim"]), int(header["n_classes"])
    body = data[start + head_len :]
    if len(body) != 4 * dim * n:
        raise RecordFormatError(f"weights are {len(body)} bytes, expected {4 * dim * n}")
    weights = np.frombuffer(body, dtype="<f4").reshape(n, dim).astype(np.float32)
    return ClassifierRecord(
        classifier_id=header["classifier_id"],
        model=header["model"],
        owner=header["owner"],
        access=header["access"],
        dim=dim,
        labels=list(header["labels"]),
        weights=weights,
        version=int(header["version"]),
        created_at=float(header["created_at"]),
        updated_at=float(header["updated_at"]),
        samples_seen=int(header["samples_seen"]),
        applied={str(k): int(v) for k, v in header["applied"].items()},
        recent=[int(v) for v in header["recent"]],
        hyper=dict(header["hyper"]),
    )
