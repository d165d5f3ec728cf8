"""Logging: one format for every line a process writes, and a burst of the same Kafka
client complaint is one line, not thousands.

:func:`configure` gives the root logger the one handler that shotstream's own loggers,
faust's, aiokafka's and uvicorn's all propagate to: text (``TEXT_FORMAT``) or, with
``SHOTSTREAM_LOG_FORMAT=json``, one JSON object per line for a log shipper.

With the brokers away, aiokafka logs every failed connection, metadata update, fetch and
produce attempt: a gateway logged 3,532 lines in 40 s (1,815 of them "Unable connect to
node ..."), which buries everything else. :class:`RepeatFilter` passes the first warning
or error of each kind and then one per window, saying how many it held back.
"""

from __future__ import annotations

import json
import logging
import pkgutil
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

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
    at any level."""
    level = logging.getLevelName(configured.upper())
    logger.log(max(logging.INFO, level if isinstance(level, int) else 0), message, *args)


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: ``time`` (UTC, ISO 8601, milliseconds), ``level``,
    ``logger``, ``message``, ``pid``, and ``exception`` / ``stack`` when there is one
    (their newlines escaped, so a traceback stays on its line).

    >>> record = logging.LogRecord("x", logging.ERROR, "", 0, "got %s", ("é",), None)
    >>> record.created, record.process = 0.0, 7
    >>> line = JsonFormatter().format(record)
    >>> entry = json.loads(line)
    >>> entry["time"], entry["level"], entry["logger"], entry["message"], entry["pid"]
    ('1970-01-01T00:00:00.000Z', 'ERROR', 'x', 'got é', 7)
    """

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # typeshed's generic
    """A stream handler on whatever ``sys.stderr`` is when a record is written, as
    logging's own last resort: a handler holding the stream it was made with writes to a
    closed one once a caller that swapped standard error (a test's CLI runner) is done."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(level: str, form: str = "text") -> None:
    """Give the root logger one handler on standard error, at ``level``, writing ``form``
    (``text`` or ``json``), in place of any it had; quiet aiokafka's repeats. The worker
    (faust) and the gateway (uvicorn) are told to leave it as it is, so their records come
    out the same way."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet_kafka_repeats()  # Kafka away: one line per kind of complaint per 30 s
    threading.excepthook = log_thread_exception


def log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """An exception a thread did not catch, logged as an error (a JSON line in ``json``
    form) instead of printed raw: faust's consumer thread, stopped while the broker was
    away, let aiokafka's cancelled fetch retry out as 30 lines of plain traceback in a
    JSON log."""
    if issubclass(args.exc_type, SystemExit):  # as Python's own hook: a thread's exit
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("shotstream.threads").error(
        "thread %s ended with an exception it did not catch",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )
