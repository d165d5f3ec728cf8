"""The classifier table: faust's table, restored from its changelog without rollbacks.

faust restores a table (at start, when a partition moves, and on standby replicas) by
writing each changelog record over the stored value: the last write wins. Without
transactions nothing stops a worker that lost a partition from writing after the
partition's new owner (a pause past the session timeout, then the in-flight request
resumes and writes), and that write would roll the classifier back. Here such a write is
recognised by its header (same classifier, lower version; see
:func:`state.records.is_older`) and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import faust
from faust.types import TP, EventT, FutureMessage

from state.records import Lineage, is_older, record_lineage

log = logging.getLogger(__name__)


class ClassifierTable(faust.Table):  # type: ignore[type-arg]  # faust's generics
    """A ``faust.Table`` of encoded classifier records that never restores an older
    version of a classifier over a newer one, and that tells a writer when its write is
    in the changelog (:attr:`last_sent`)."""

    last_sent: FutureMessage | None = None
    """The delivery of the last changelog record sent: a table write is synchronous, so
    right after one this is its own (awaited before its request is answered)."""

    _gaps: set[TP]
    """Partitions where another worker's write was seen after this one's restore point
    (until the next restore reads past it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gaps = set()

    def send_changelog(self, *args: Any, **kwargs: Any) -> FutureMessage:
        sent = super().send_changelog(*args, **kwargs)
        self.last_sent = sent
        return sent

    def _on_changelog_sent(self, fut: FutureMessage) -> None:
        # faust records the offset of each write it sends as the point the next restore
        # reads on from. That holds only if nothing else was written to the partition in
        # between: a worker paused past the session timeout, resuming, would otherwise
        # step over the new owner's writes it never read (and its table keeps its own,
        # older version for good). Past such a gap the offset stays, so the next restore
        # reads those writes (and skips whatever of them is older).
        result = fut.result()
        tp = result.topic_partition
        persisted = self.data.persisted_offset(tp)
        if persisted is not None and result.offset != persisted + 1:
            if tp in self._gaps:
                return  # said once: every later write of the partition is past it too
            self._gaps.add(tp)
            log.warning(
                "changelog %s partition %d: this worker's write is at offset %d, but its "
                "table has read up to %d: another worker wrote in between; the next "
                "restore of this partition reads from there",
                tp.topic,
                tp.partition,
                result.offset,
                persisted,
            )
            return
        super()._on_changelog_sent(fut)

    def apply_changelog_batch(self, batch: Iterable[EventT[Any]]) -> None:
        events = list(batch)
        kept: list[EventT[Any]] = []
        latest: dict[Any, Lineage | None] = {}
        deleted: dict[Any, set[Any]] = {}
        """Keys deleted in this batch: the deleted classifiers' identities."""
        for event in events:
            message = event.message
            key, value = message.key, message.value
            if key is None:  # no classifier's: a batch the reader could not read (logged)
                continue
            if key not in latest:
                latest[key] = record_lineage(self._stored(key, message.partition))
            incoming = record_lineage(value)
            after_delete = incoming is not None and incoming[0] in deleted.get(key, ())
            if is_older(incoming, latest[key]) or after_delete:
                log.warning(
                    "changelog %s partition %d offset %d: skipped a stale write of "
                    "classifier %r (%s)",
                    message.topic,
                    message.partition,
                    message.offset,
                    bytes(key).decode("utf-8", "replace") if key is not None else None,
                    "after its delete" if after_delete else "older than the version already read",
                )
                continue
            before = latest[key]
            if value is None and before is not None:
                deleted.setdefault(key, set()).add(before[0])
            latest[key] = incoming
            kept.append(event)
        super().apply_changelog_batch(kept)
        # the store records what it wrote as read; what was skipped was read as well
        read: dict[TP, int] = {}
        for event in events:
            tp = event.message.tp
            read[tp] = max(read.get(tp, -1), event.message.offset)
        for tp, offset in read.items():
            self.data.set_persisted_offset(tp, offset)
            self._gaps.discard(tp)

    def _stored(self, key: Any, partition: int) -> bytes | None:
        store: Any = self.data
        db_for_partition = getattr(store, "_db_for_partition", None)  # faust's RocksDB store
        if db_for_partition is not None:
            value = db_for_partition(partition).get(key)
        else:  # the memory store: a mapping
            value = store.get(key)
        return None if value is None else bytes(value)
