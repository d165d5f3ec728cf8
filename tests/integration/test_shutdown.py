"""A stopped worker ends within its drain timeout; what it had not answered comes again."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from tests.integration.conftest import client_settings, metrics_port, with_client, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.model]

N = 120


def request(i: int) -> dict[str, Any]:
    # 4 inputs of ~60 tokens: the backlog takes a 2-core worker tens of seconds
    text = f"report {i}: rain and wind over the hills, " * 6
    return {"request_id": f"req-{i:04d}", "input": [text] * 4, "labels": ["weather", "sports"]}


def cancelled(log: str) -> int:
    counts = re.findall(r"(\d+) requests still in flight after 1 s were cancelled", log)
    assert counts, f"no drain in the log:\n{log[-3000:]}"
    return int(counts[-1])


def test_sigterm_with_a_backlog_cancels_the_rest_and_a_restart_answers_everything(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    """Before, faust waited for every request the worker had taken (up to 256) to be
    answered, however long that took (measured: 90 s for 300 requests of 8 inputs)."""
    env = worker_env(
        broker,
        tmp_path / "data",
        model_cache,
        SHOTSTREAM_TOPIC_PREFIX="shutdown.",
        SHOTSTREAM_KAFKA__GROUP_ID="shutdown",
        SHOTSTREAM_KAFKA__DRAIN_TIMEOUT_S="1",
    )
    first = WorkerProcess(env, tmp_path / "first.log").start()
    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        first.wait_ready(600)

        async def go(c: ShotstreamClient) -> tuple[int | None, list[dict[str, Any]]]:
            topic = c.settings.topic("classify")
            futures = [await c.send(topic, request(i)) for i in range(N)]
            for k, answer in enumerate(asyncio.as_completed(futures)):
                await answer
                if k == 4:  # answering has begun: most of the backlog is still ahead
                    break
            code = await asyncio.to_thread(first.stop, 120)  # SIGTERM; SIGKILL after 120 s
            await asyncio.to_thread(second.start)
            answers = await asyncio.wait_for(asyncio.gather(*futures), 300)
            return code, answers

        code, answers = with_client(client_settings(broker, topic_prefix="shutdown."), go)
        assert code == 0  # it ended on its own, cleanly, not by the SIGKILL
        assert cancelled(first.log_text()) > 0
        assert sorted(a["request_id"] for a in answers) == [f"req-{i:04d}" for i in range(N)]
        assert all(a["data"][0]["prediction"] == "weather" for a in answers)  # no dead letter
        assert "shotstream worker ready" in second.log_text()
    finally:
        first.stop()
        second.stop()


def until_in_metrics(worker: WorkerProcess, name: str, timeout_s: float = 10.0) -> str:
    """The worker's /metrics once it has ``shotstream_<name>`` samples."""
    url = f"http://127.0.0.1:{metrics_port(worker)}/metrics"
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        if f"shotstream_{name}{{" in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_sigterm_with_the_broker_away_still_ends_the_worker(
    tmp_path: Path, model_cache: Path
) -> None:
    """Answers cannot be produced, so requests in flight never finish: before, the worker
    ignored SIGTERM for as long as the broker was away (measured: still running after
    120 s, then SIGKILLed)."""
    with EmbeddedBroker(free_port()) as broker:
        env = worker_env(
            broker,
            tmp_path / "data",
            model_cache,
            SHOTSTREAM_PARTITIONS="1",
            SHOTSTREAM_KAFKA__DRAIN_TIMEOUT_S="1",
            SHOTSTREAM_LOG_LEVEL="warning",  # the ready line is written all the same
            SHOTSTREAM_LOG_FORMAT="json",
        )
        worker = WorkerProcess(env, tmp_path / "worker.log").start()
        try:
            worker.wait_ready(600)
            # the default model is on the dashboard before its first request
            assert 'model="multilingual-e5-small"' in until_in_metrics(worker, "model_info")

            async def go(c: ShotstreamClient) -> None:
                topic = c.settings.topic("classify")
                futures = [await c.send(topic, request(i)) for i in range(N)]
                await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)

            with_client(client_settings(broker), go)
            broker.stop()
        finally:
            proc = worker.proc
            assert proc is not None
            worker.stop(120)  # SIGTERM; SIGKILL after 120 s
    assert proc.returncode in (0, 1), proc.returncode  # ended by itself, not SIGKILLed
    assert cancelled(worker.log_text()) > 0
    # every line is JSON: ours, and aiokafka's complaints with the broker away (faust set
    # a handler of its own, in its own format)
    entries = [json.loads(line) for line in worker.log_text().splitlines()]
    loggers = {entry["logger"].split(".")[0] for entry in entries}
    assert {"shotstream", "aiokafka"} <= loggers, loggers
    assert {entry["level"] for entry in entries} <= {"WARNING", "ERROR", "CRITICAL"}
