"""How often each few-shot classifier is used: the listing's ``used_number`` and ``used_at``.

Classify requests are keyed by request id, so any worker may answer one for any classifier,
and none of them may write its record (only the owner of the classifier's partition of the
train topic does, in turn with its train requests). So each worker counts the few-shot
requests it answered, per classifier, and every ``SHOTSTREAM_USAGE_FLUSH_S`` (10 s) sends
the counts as one ``{"action": "usage", "count": n, "used_at": t}`` record per classifier to
the train topic, keyed by the classifier id like any train record. The owner adds it to the
record once (a redelivered report is at or behind the source offset the record holds) and
answers nothing; the version and ``updated_at`` stay as they are.

Counts are at most once: a worker that dies loses the uses it had not reported yet (at most
the last ``usage_flush_s``), and a report for a classifier deleted since is dropped.
``SHOTSTREAM_USAGE_FLUSH_S=0`` turns counting and reports off.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import orjson

from streams.producer import OutputProducer

log = logging.getLogger(__name__)


class UsageCounter:
    """Few-shot uses per classifier since the last report."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}

    def count(self, classifier_id: str, now: float | None = None) -> None:
        """One answered few-shot request of ``classifier_id``."""
        uses, last = self._counts.get(classifier_id, (0, 0.0))
        self._counts[classifier_id] = (uses + 1, max(last, time.time() if now is None else now))

    def take(self) -> dict[str, tuple[int, float]]:
        """The counts since the last call, ``{classifier_id: (uses, last used)}``; reset."""
        counts, self._counts = self._counts, {}
        return counts

    async def report(self, output: OutputProducer, train_topic: str) -> int:
        """Send the counts since the last report to ``train_topic``; how many classifiers."""
        counts = self.take()

        async def send(classifier_id: str, uses: int, at: float) -> None:
            body = {
                "action": "usage",
                "request_id": f"usage-{uuid.uuid4()}",
                "classifier_id": classifier_id,
                "count": uses,
                "used_at": at,
            }
            try:
                await output.send(train_topic, classifier_id, orjson.dumps(body))
            except Exception:  # counts are at most once: never a worker's end
                log.exception("could not report the uses of classifier %s", classifier_id)

        # all at once: one at a time, each waiting for its ack, thousands of classifiers
        # would take seconds (and a stopping worker gives its report 5 s)
        await asyncio.gather(*(send(cid, uses, at) for cid, (uses, at) in counts.items()))
        return len(counts)
