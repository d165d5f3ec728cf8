"""``shotstream dev``: broker + worker + gateway in one command, and Ctrl-C stops all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from streams.cli import free_port
from tests.integration.conftest import API_KEYS

pytestmark = pytest.mark.integration


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_dev_serves_http_through_kafka_and_stops_on_ctrl_c(
    tmp_path: Path, model_cache: Path
) -> None:
    kafka, http = free_port(), free_port()
    env = {
        **os.environ,
        "SHOTSTREAM_DATA_DIR": str(tmp_path / "data"),
        "SHOTSTREAM_MODEL_CACHE_DIR": str(model_cache),
        "SHOTSTREAM_HTTP_PORT": str(http),
        "SHOTSTREAM_API_KEYS": API_KEYS["alice"],
    }
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams", "dev", "--port", str(kafka)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
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
