"""Logging: a burst of the same Kafka client complaint is one line, not thousands.

With the brokers away, aiokafka logs every failed connection, metadata update, fetch and
produce attempt: a gateway logged 3,532 lines in 40 s (1,815 of them "Unable connect to
node ..."), which buries everything else. :class:`RepeatFilter` passes the first warning
or error of each kind and then one per window, saying how many it held back.
"""

from __future__ import annotations

import logging
import pkgutil
import threading
import time
from collections.abc import Callable

REPEAT_WINDOW_S = 30.0
"""At most one record of a kind per logger in this time."""
_MAX_KINDS = 1024
"""Kinds remembered before the ones with nothing held back are forgotten."""


class RepeatFilter(logging.Filter):
    """Pass the first warning or error of each kind (logger, level, message template and
    the types of its arguments), then at most one per ``window_s``; the next one passed
    says how many were held back meanwhile. Records below WARNING always pass.

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

    Another error type under the same template is another kind:

    >>> repeats = RepeatFilter(30.0, clock=lambda: 0.0)
    >>> [
    ...     repeats.filter(logging.LogRecord("k", logging.WARNING, "", 0, "got %s", (e,), None))
    ...     for e in (TimeoutError(), TimeoutError(), PermissionError())
    ... ]
    [True, False, True]
    """

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}
        """Kind → (when one was last passed, how many held back since)."""
        self._lock = threading.Lock()  # faust runs an aiokafka consumer in a thread of its own

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        kind = (record.name, record.levelno, str(record.msg), *(type(a) for a in args))
        with self._lock:
            now = self.clock()
            seen = self._seen.get(kind)
            if seen is not None and now - seen[0] < self.window_s:
                self._seen[kind] = (seen[0], seen[1] + 1)
                return False
            if len(self._seen) >= _MAX_KINDS:  # e.g. messages with the error in their text
                self._seen = {k: v for k, v in self._seen.items() if v[1]}
            self._seen[kind] = (now, 0)
        if seen is not None and seen[1]:
            record.msg = (
                f"{record.msg} ({seen[1]} more like this in the last {now - seen[0]:.0f} s)"
            )
        return True


def quiet_kafka_repeats(window_s: float = REPEAT_WINDOW_S) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every aiokafka logger (a logger's filters do not
    apply to its children's records, so each module's logger gets it); the one already
    there if called again."""
    import aiokafka

    root = logging.getLogger("aiokafka")
    installed = [f for f in root.filters if isinstance(f, RepeatFilter)]
    repeats = installed[0] if installed else RepeatFilter(window_s)
    names = ["aiokafka"]
    names += [m.name for m in pkgutil.walk_packages(aiokafka.__path__, "aiokafka.")]
    for name in names:
        logger = logging.getLogger(name)
        if repeats not in logger.filters:
            logger.addFilter(repeats)
    return repeats


def announce(logger: logging.Logger, configured: str, message: str, *args: object) -> None:
    """Log a readiness line at INFO, or at the ``configured`` level (``SHOTSTREAM_LOG_LEVEL``)
    when that is higher: operators, ``WorkerProcess`` and ``shotstream demo`` wait for it
    at any level. (faust's worker sets its handler's level, not the logger's: the level a
    record is shown at cannot be read back from the logger.)"""
    level = logging.getLevelName(configured.upper())
    logger.log(max(logging.INFO, level if isinstance(level, int) else 0), message, *args)
