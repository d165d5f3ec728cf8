"""A worker killed mid-stream and restarted: every request produced gets answered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from tests.integration.conftest import client_settings, with_client, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.model]

N = 240


def test_sigkill_mid_stream_loses_nothing(
    broker: EmbeddedBroker, tmp_path: Path, model_cache: Path
) -> None:
    # own topics and group, so the shared worker is not involved
    env = worker_env(
        broker,
        tmp_path / "data",
        model_cache,
        SHOTSTREAM_TOPIC_PREFIX="restart.",
        SHOTSTREAM_KAFKA__GROUP_ID="restart",
    )
    first = WorkerProcess(env, tmp_path / "first.log").start()
    second = WorkerProcess(env, tmp_path / "second.log")
    try:
        first.wait_ready(600)
        settings = client_settings(broker, topic_prefix="restart.")

        async def go(c: ShotstreamClient) -> tuple[set[str], list[dict]]:
            topic = c.settings.topic("classify")
            produced: set[str] = set()
            futures = []
            some_answered = asyncio.Event()

            def answered(_f: object) -> None:
                if sum(f.done() for f in futures) >= 40:
                    some_answered.set()

            async def produce() -> None:
                for i in range(N):
                    rid = f"req-{i:04d}"
                    produced.add(rid)
                    future = await c.send(
                        topic,
                        {
                            "request_id": rid,
                            "input": [f"message {i} about the weather"],
                            "labels": ["weather", "sports"],
                        },
                    )
                    future.add_done_callback(answered)
                    futures.append(future)
                    await asyncio.sleep(0.02)

            producer = asyncio.create_task(produce())
            # kill the worker once it has answered some but not all
            await some_answered.wait()
            first.kill()
            await asyncio.to_thread(second.start)
            await producer
            answers = await asyncio.wait_for(asyncio.gather(*futures), 240)
            return produced, answers

        produced, answers = with_client(settings, go)
        assert {a["request_id"] for a in answers} == produced
        assert all("data" in a for a in answers)
        assert all(a["data"][0]["prediction"] == "weather" for a in answers)
        assert "shotstream worker ready" in second.log_text()
    finally:
        first.stop()
        second.stop()
