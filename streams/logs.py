"""Logging: a burst of the same Kafka client complaint is one line, not thousands.

With the brokers away, aiokafka logs every failed connection, metadata update, fetch and
produce attempt: a gateway logged 3,532 lines in 40 s (1,815 of them "Unable connect to
node ..."), which buries everything else. :class:`RepeatFilter` passes the first record of
each kind and then one per window, saying how many it held back.
"""

from __future__ import annotations

import logging
import pkgutil
import time
from collections.abc import Callable

REPEAT_WINDOW_S = 30.0
"""At most one record of a kind per logger in this time."""


class RepeatFilter(logging.Filter):
    """Pass the first record of each (logger, level, message template), then at most one
    per ``window_s``; the next one passed says how many were held back meanwhile.

    >>> clock = iter([0.0, 1.0, 2.0, 31.0]).__next__
    >>> repeats = RepeatFilter(30.0, clock=clock)
    >>> records = [
    ...     logging.LogRecord("k", logging.ERROR, "", 0, "no node %s", (n,), None)
    ...     for n in range(4)
    ... ]
    >>> [repeats.filter(r) for r in records]
    [True, False, False, True]
    >>> records[3].getMessage()
    'no node 3 (2 more like this in the last 31 s)'
    """

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}
        """Kind → (when one was last passed, how many held back since)."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen[0] < self.window_s:
            self._seen[kind] = (seen[0], seen[1] + 1)
            return False
        self._seen[kind] = (now, 0)
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.msg} ({seen[1]} more like this in the last {now - seen[0]:.0f} s)"
            )
        return True


def quiet_kafka_repeats(window_s: float = REPEAT_WINDOW_S) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every aiokafka logger (a logger's filters do not
    apply to its children's records, so each module's logger gets it). Returns it."""
    import aiokafka

    repeats = RepeatFilter(window_s)
    names = ["aiokafka"]
    names += [m.name for m in pkgutil.walk_packages(aiokafka.__path__, "aiokafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(repeats)
    return repeats
