"""With the brokers away, aiokafka's complaints are one line per kind per window."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from streams.logs import RepeatFilter, quiet_kafka_repeats


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
