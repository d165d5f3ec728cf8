"""Integration fixtures: the real embedded broker over TCP, real workers, the packaged model.

One broker and one worker serve the whole session; tests that kill or restart workers
use their own topic prefix and consumer group so they never disturb the shared one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.settings import Settings

T = TypeVar("T")

API_KEYS = {
    "alice": "key-alice",
    "bob": "key-bob",
    "carol": "key-carol",
    # the gateway tests' own keys: each key may own 16 classifiers, and other tests fill theirs
    "dave": "key-dave",
    "erin": "key-erin",
    "frank": "key-frank",  # the image tests'
    "grace": "key-grace",  # test_fewshot's burst of creates
}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(free_port()) as b:
        yield b


def worker_env(
    broker: EmbeddedBroker, data_dir: Path, model_cache: Path, **extra: str
) -> dict[str, str]:
    return {
        "SHOTSTREAM_BROKERS": broker.address,
        "SHOTSTREAM_DATA_DIR": str(data_dir),
        "SHOTSTREAM_MODEL_CACHE_DIR": str(model_cache),
        "SHOTSTREAM_METRICS_PORT": "0",
        "SHOTSTREAM_PARTITIONS": "4",
        "SHOTSTREAM_API_KEYS": ",".join(API_KEYS.values()),
        **extra,
    }


@pytest.fixture(scope="session")
def worker(
    broker: EmbeddedBroker,
    tmp_path_factory: pytest.TempPathFactory,
    model_cache: Path,
    tiny_clip: Path,
) -> Iterator[WorkerProcess]:
    data = tmp_path_factory.mktemp("worker")
    env = worker_env(
        broker,
        data,
        model_cache,
        SHOTSTREAM_IMAGES__CLIP_MODEL=str(tiny_clip),
        SHOTSTREAM_IMAGES__ALLOW_LIST='["127.0.0.1/32"]',  # the tests' local image server
        SHOTSTREAM_USAGE_FLUSH_S="1",  # few-shot uses reach the listing within a second
    )
    proc = WorkerProcess(env, data / "worker.log").start()
    try:
        proc.wait_ready(600)
        yield proc
    finally:
        proc.stop()


def metrics_port(worker: WorkerProcess) -> int:
    found = re.search(r"metrics port (\d+)", worker.log_text())
    assert found, "worker logged no metrics port"
    return int(found.group(1))


def client_settings(broker: EmbeddedBroker, **kw: Any) -> Settings:
    return Settings(brokers=broker.address, **kw)


def with_client(settings: Settings, fn: Callable[[ShotstreamClient], Awaitable[T]]) -> T:
    async def go() -> T:
        async with ShotstreamClient(settings) as client:
            return await fn(client)

    return asyncio.run(go())
