"""``shotstream dev``: broker + worker + gateway in one command, Ctrl-C stops all, and a
restart keeps the classifiers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest

from state.classifiers import REPLAY_MEMORY
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.integration.conftest import API_KEYS, with_client

T = TypeVar("T")

pytestmark = pytest.mark.integration


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_dev(
    tmp_path: Path, model_cache: Path, log: IO[bytes]
) -> tuple[subprocess.Popen[bytes], int, int]:
    """`shotstream dev` with the HTTP gateway, its output in ``log``; its Kafka and HTTP
    ports."""
    kafka, http = free_port(), free_port()
    env = {
        **os.environ,
        "SHOTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "SHOTSTREAM_MODEL_CACHE_DIR": str(model_cache),
        "SHOTSTREAM_HTTP_PORT": str(http),
        "SHOTSTREAM_API_KEYS": API_KEYS["alice"],
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "dev", "--port", str(kafka)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, kafka, http


def test_dev_serves_http_through_kafka_and_stops_on_ctrl_c(
    tmp_path: Path, model_cache: Path
) -> None:
    log = (tmp_path / "dev.log").open("wb")
    proc, kafka, http = start_dev(tmp_path, model_cache, log)
    try:
        body = {"labels": ["greeting", "complaint"], "input": ["hello there, nice to meet you"]}
        headers = {"Authorization": f"Bearer {API_KEYS['alice']}"}
        deadline = time.monotonic() + 600
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.post(
                    f"http://127.0.0.1:{http}/v1/classify", json=body, headers=headers, timeout=60
                )
                break
            except httpx.TransportError:
                time.sleep(0.5)
        assert answer is not None, (tmp_path / "dev.log").read_text()[-3000:]
        assert answer.status_code == 200, answer.text
        assert answer.json()["data"][0]["prediction"] == "greeting"

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) is not None
        assert not port_open(http), "the gateway outlived dev"
        assert not port_open(kafka), "the broker outlived dev"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def test_a_killed_dev_takes_its_broker_and_gateway_with_it(
    tmp_path: Path, model_cache: Path
) -> None:
    """`kill -9` of dev (or the OOM killer) left its gateway and Tansu running, holding
    their ports, so the next `dev` said its port was in use: they now get SIGTERM when
    dev ends, however it ends."""
    with (tmp_path / "dev.log").open("wb") as log:
        proc, kafka, http = start_dev(tmp_path, model_cache, log)
        try:
            deadline = time.monotonic() + 300
            while not port_open(http) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert port_open(http), (tmp_path / "dev.log").read_text()
            assert port_open(kafka)
        finally:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 30
    while (port_open(http) or port_open(kafka)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_open(http), "the gateway outlived a SIGKILLed dev"
    assert not port_open(kafka), "the broker outlived a SIGKILLed dev"


class DevProcess(WorkerProcess):
    """``shotstream dev`` in a child process."""

    command = "dev"


TEXT = "The striker scored twice in the final."
TRAINED = REPLAY_MEMORY + 2
"""Train requests before the first restart: more than the replay memory holds."""
EXAMPLES = [
    {"text": TEXT, "label": "sports"},
    {"text": "Parliament passed the budget after a long debate.", "label": "politics"},
]


async def train(c: ShotstreamClient, classifier_id: str) -> int:
    answer = await c.train(
        EXAMPLES, classifier_id=classifier_id, api_key=API_KEYS["alice"], model="jina-embeddings-v3"
    )
    assert not answer.is_error, answer
    return int(answer["version"])


def test_dev_restarted_keeps_its_classifiers(tmp_path: Path, model_cache: Path) -> None:
    """The embedded broker keeps nothing across restarts; `shotstream dev` writes the
    classifiers its tables hold into the new changelog, so a restart just works: the same
    scores, training goes on from the version it reached, a deleted classifier stays
    deleted, and a second restart carries the new version too (before, dev set the tables
    aside and started empty). The classifier is trained more times than the replay memory
    holds, so the new topic's offsets 0, 1 ... fall below what it remembers of the old
    one: restored as they were, a request seconds after the restart was answered as a
    replay and not learned."""
    env = {
        **os.environ,
        "SHOTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "SHOTSTREAM_MODEL_CACHE_DIR": str(model_cache),
        "SHOTSTREAM_API_KEYS": ",".join(API_KEYS.values()),
    }
    key = API_KEYS["alice"]

    def run(log: str, fn: Callable[[ShotstreamClient], Awaitable[T]]) -> tuple[T, str]:
        port = free_port()
        with DevProcess(env, tmp_path / log, ["--port", str(port), "--no-http"]) as dev:
            dev.wait_ready(600)
            return with_client(Settings(brokers=f"127.0.0.1:{port}"), fn), dev.log_text()

    async def first(c: ShotstreamClient) -> dict[str, Any]:
        versions = [await train(c, "kept") for _ in range(TRAINED)]
        assert versions == list(range(1, TRAINED + 1))
        assert await train(c, "gone") == 1
        assert not (await c.delete("gone", api_key=key)).is_error
        return dict(await c.classify([TEXT], classifier_id="kept", api_key=key))

    async def second(c: ShotstreamClient) -> tuple[dict[str, Any], int, dict[str, Any]]:
        scores = dict(await c.classify([TEXT], classifier_id="kept", api_key=key))
        gone = dict(await c.classify([TEXT], classifier_id="gone", api_key=key))
        return scores, await train(c, "kept"), gone

    async def third(c: ShotstreamClient) -> int:
        return await train(c, "kept")

    before, _ = run("first.log", first)
    (after, version, gone), log = run("second.log", second)
    assert after["data"] == before["data"], (before, after)
    assert version == TRAINED + 1, log[-3000:]
    assert gone["error"]["code"] == "CLASSIFIER_NOT_FOUND", gone
    assert "restored 1 classifier(s)" in log
    assert not list((tmp_path / "data").glob("faust.stale-*"))
    version, log = run("third.log", third)
    assert version == TRAINED + 2, log[-3000:]
    assert "this worker's write is at offset" not in log  # no gap after the restored offset
