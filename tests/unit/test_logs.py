"""One format for every logger of a process; with the brokers away, aiokafka's complaints
are one line per kind per window."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from streams.logs import RepeatFilter, configure, quiet_kafka_repeats


@pytest.fixture
def repeats() -> Iterator[RepeatFilter]:
    filt = quiet_kafka_repeats()
    yield filt
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and filt in logger.filters:
            logger.removeFilter(filt)


@pytest.mark.parametrize(
    "name", ["aiokafka", "aiokafka.consumer.fetcher", "aiokafka.producer.sender"]
)
def test_every_aiokafka_logger_holds_back_repeats(
    repeats: RepeatFilter, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger(name)
    with caplog.at_level(logging.WARNING):
        for node in range(100):
            log.error("Unable connect to node with id %s: %s", node, "refused")
        log.warning("Got error produce response: %s", "NodeNotReadyError")
    messages = [r.getMessage() for r in caplog.records if r.name == name]
    assert messages == [
        "Unable connect to node with id 0: refused",
        "Got error produce response: NodeNotReadyError",
    ]


def test_other_loggers_are_left_alone(
    repeats: RepeatFilter, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("streams.gateway")
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            log.info("same line")
    assert [r.getMessage() for r in caplog.records] == ["same line"] * 3


def test_aiokafka_info_lines_all_pass(
    repeats: RepeatFilter, caplog: pytest.LogCaptureFixture
) -> None:
    """Group rebalances are logged at INFO, twice within a window in a rolling deploy."""
    log = logging.getLogger("aiokafka.consumer.group_coordinator")
    with caplog.at_level(logging.INFO):
        for partitions in ("{0, 1}", "{0}"):
            log.info("Setting newly assigned partitions %s for group %s", partitions, "g")
    assert len([r for r in caplog.records if r.name == log.name]) == 2


@pytest.fixture
def root_kept() -> Iterator[None]:
    """The root logger's handlers and level as they were after the test (pytest's own);
    uvicorn's logger as a gateway process leaves it (tests before may have served with
    uvicorn's own logging configuration, which stops its records short of the root)."""
    root, uvicorn = logging.getLogger(), logging.getLogger("uvicorn")
    kept = [(log, log.handlers[:], log.level, log.propagate) for log in (root, uvicorn)]
    uvicorn.handlers[:], uvicorn.propagate = [], True
    hook = threading.excepthook  # (configure sets its own)
    yield
    threading.excepthook = hook
    for log, handlers, level, propagate in kept:
        log.handlers[:], log.propagate = handlers, propagate
        log.setLevel(level)


@pytest.mark.usefixtures("root_kept", "repeats")
def test_json_logs_are_one_object_per_line_from_every_library(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SHOTSTREAM_LOG_FORMAT=json: a worker wrote our lines, faust's (``[ts] [pid] [INFO]``)
    and uvicorn's (``INFO:     ...``) in three formats, and a traceback over many lines."""
    configure("info", "json")
    logging.getLogger("faust.worker").info("[^Worker]: Starting...")
    logging.getLogger("uvicorn.error").warning("Uvicorn running on %s", "http://x")
    logging.getLogger("streams.worker").debug("below the level: not written")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("streams.agents").exception("request %s failed", "r-1")
    lines = capsys.readouterr().err.splitlines()
    entries = [json.loads(line) for line in lines]
    assert [(e["logger"], e["level"], e["message"]) for e in entries] == [
        ("faust.worker", "INFO", "[^Worker]: Starting..."),
        ("uvicorn.error", "WARNING", "Uvicorn running on http://x"),
        ("streams.agents", "ERROR", "request r-1 failed"),
    ]
    assert "ValueError: bad\nvalue" in entries[2]["exception"]


@pytest.mark.usefixtures("root_kept", "repeats")
def test_text_logs_name_the_logger_and_configure_replaces_handlers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("warning")
    configure("warning")  # again (a worker started in a dev process): still one handler
    logging.getLogger("uvicorn.error").warning("Uvicorn running")
    logging.getLogger("faust.worker").info("below the level")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith(" WARNING uvicorn.error: Uvicorn running"), line


@pytest.mark.usefixtures("root_kept", "repeats")
def test_the_handler_writes_to_standard_error_as_it_is_when_a_record_comes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CLI runner swaps sys.stderr for one command and closes it after: a handler made
    meanwhile wrote to the closed stream, and "--- Logging error ---" with its traceback
    came out in a later command's output (a test of the CLI failed on it)."""
    import io
    import sys

    swapped = io.StringIO()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", swapped)
        configure("info")
    swapped.close()
    logging.getLogger("streams.client").error("cannot reach %s", "127.0.0.1:1")
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert err.rstrip().endswith("ERROR streams.client: cannot reach 127.0.0.1:1"), err


@pytest.mark.usefixtures("root_kept", "repeats")
def test_an_exception_a_thread_did_not_catch_is_one_json_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Python printed it raw, over many lines: faust's consumer thread, stopped with the
    broker away, wrote a plain traceback into a worker's JSON log (CI caught it)."""
    configure("info", "json")

    def fails() -> None:
        raise RuntimeError("cancelled fetch\nretry")

    thread = threading.Thread(target=fails, name="consumer-thread")
    thread.start()
    thread.join()
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert "consumer-thread" in entry["message"]
    assert "RuntimeError: cancelled fetch\nretry" in entry["exception"]
