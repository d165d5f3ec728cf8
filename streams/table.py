"""The classifier table: faust's table, restored from its changelog without rollbacks.

faust restores a table (at start, when a partition moves, and on standby replicas) by
writing each changelog record over the stored value: the last write wins. Without
transactions nothing stops a worker that lost a partition from writing after the
partition's new owner (a pause past the session timeout, then the in-flight request
resumes and writes), and that write would roll the classifier back. Here such a write is
recognised by its header (same classifier, lower version; see
:func:`state.records.is_stale_write`) and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import faust
from faust.types import TP, EventT

from state.records import is_stale_write

log = logging.getLogger(__name__)


class ClassifierTable(faust.Table):  # type: ignore[type-arg]  # faust's generics
    """A ``faust.Table`` of encoded classifier records that never restores an older
    version of a classifier over a newer one."""

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        events = list(batch)
        kept: list[EventT[Any]] = []
        latest: dict[Any, bytes | None] = {}
        for event in events:
            message = event.message
            key, value = message.key, message.value
            stored = latest[key] if key in latest else self._stored(key, message.partition)
            if is_stale_write(stored, value):
                log.warning(
                    "changelog %s partition %d offset %d: skipped a stale write of "
                    "classifier %r (older than the version already read)",
                    message.topic,
                    message.partition,
                    message.offset,
                    bytes(key).decode("utf-8", "replace") if key is not None else None,
                )
                continue
            latest[key] = value
            kept.append(event)
        super().apply_changelog_batch(kept)
        # the store records what it wrote as read; what was skipped was read as well
        read: dict[TP, int] = {}
        for event in events:
            tp = event.message.tp
            read[tp] = max(read.get(tp, -1), event.message.offset)
        for tp, offset in read.items():
            self.data.set_persisted_offset(tp, offset)

    def _stored(self, key: Any, partition: int) -> bytes | None:
        store: Any = self.data
        db_for_partition = getattr(store, "_db_for_partition", None)  # faust's RocksDB store
        if db_for_partition is not None:
            value = db_for_partition(partition).get(key)
        else:  # the memory store: a mapping
            value = store.get(key)
        return None if value is None else bytes(value)
