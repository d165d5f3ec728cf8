"""Zero-shot over the real embedded broker with the packaged multilingual model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from streams.broker import EmbeddedBroker
from streams.cli import ROUTING_INPUTS, ROUTING_LABELS
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from tests.integration.conftest import client_settings, metrics_port, with_client

pytestmark = [pytest.mark.integration, pytest.mark.model]

# Jina's published answers for the routing example (001_59e4f53cc53ff293.txt)
JINA = [
    "Simple task",
    "Complex reasoning",
    "Creative writing",
    "Complex reasoning",
    "Creative writing",
    "Simple task",
]


def assert_well_formed(answer: dict, labels: list[str], n_inputs: int) -> None:
    assert set(answer) == {"request_id", "usage", "data"}
    assert answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"] > 0
    assert [d["index"] for d in answer["data"]] == list(range(n_inputs))
    for d in answer["data"]:
        assert d["object"] == "classification"
        assert d["prediction"] in labels
        scores = [p["score"] for p in d["predictions"]]
        assert sorted(p["label"] for p in d["predictions"]) == sorted(labels)
        assert scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-4
        assert d["score"] == scores[0]
        assert d["prediction"] == d["predictions"][0]["label"]


def test_routing_example_round_trips(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    async def go(c: ShotstreamClient) -> dict:
        return await c.classify(
            ROUTING_INPUTS, labels=ROUTING_LABELS, model="jina-embeddings-v3", timeout_s=120
        )

    answer = with_client(client_settings(broker), go)
    assert_well_formed(answer, ROUTING_LABELS, 6)
    predictions = [d["prediction"] for d in answer["data"]]
    agree = sum(p == j for p, j in zip(predictions, JINA, strict=True))
    assert agree >= 4, predictions  # the small multilingual model agrees with Jina on most


def test_label_groups_and_text_docs(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    groups = {"topic": ["sports", "cooking", "finance"], "tone": ["happy", "angry"]}

    async def go(c: ShotstreamClient) -> dict:
        return await c.classify(
            [{"text": "I love baking bread on sunny Sundays!"}, "Stocks crashed, I'm furious."],
            labels=groups,
            timeout_s=60,
        )

    answer = with_client(client_settings(broker), go)
    first, second = answer["data"]
    assert set(first["prediction"]) == {"topic", "tone"}
    assert first["prediction"]["topic"] == "cooking"
    assert second["prediction"]["topic"] == "finance"
    for item in answer["data"]:
        for group, labels in groups.items():
            assert abs(sum(p["score"] for p in item["predictions"][group]) - 1) < 1e-4
            assert item["prediction"][group] in labels


def test_many_concurrent_requests_all_answered(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    async def go(c: ShotstreamClient) -> list:
        futures = [
            await c.send(
                c.settings.topic("classify"),
                {"input": [f"message number {i}"], "labels": ["a", "b"]},
            )
            for i in range(100)
        ]
        import asyncio

        return await asyncio.wait_for(asyncio.gather(*futures), 120)

    answers = with_client(client_settings(broker), go)
    assert len({a["request_id"] for a in answers}) == 100
    assert all("data" in a for a in answers)


def test_metrics_are_served(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    url = f"http://127.0.0.1:{metrics_port(worker)}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    for name in (
        "shotstream_requests_total",
        "shotstream_inputs_total",
        "shotstream_predictions_total",
        "shotstream_batch_size_bucket",
        "shotstream_embedding_seconds_bucket",
        "shotstream_end_to_end_latency_seconds_bucket",
        "shotstream_batcher_queue_depth",
        "shotstream_model_info",
        "shotstream_compute_streams",
        "shotstream_event_loop_stall_seconds",
    ):
        assert name in text, name
    assert 'dim="384",model="multilingual-e5-small"' in text
    # the worker's own agents and replica, read on each scrape
    assert 'shotstream_batcher_queue_capacity{model="multilingual-e5-small"} 8192.0' in text
    assert "shotstream_classifiers_loaded 1.0" in text
    for topic in ("shotstream.classify", "shotstream.train"):
        assert f'shotstream_requests_in_flight{{topic="{topic}"}} ' in text
        assert f'shotstream_oldest_request_age_seconds{{topic="{topic}"}} ' in text
    # the worker holds every partition of its request topics (4): their lag is read
    # from Kafka every 15 s, and everything answered before is committed within a second
    lag = 'shotstream_consumer_lag_records{{partition="{}",topic="{}"}} 0.0'
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        series = [
            lag.format(p, t) for t in ("shotstream.classify", "shotstream.train") for p in range(4)
        ]
        if all(s in text for s in series):
            break
        time.sleep(1)
    assert [s for s in series if s not in text] == []
    for probe in ("livez", "readyz"):  # a worker that answers is alive and ready
        probe_url = f"http://127.0.0.1:{metrics_port(worker)}/{probe}"
        with urllib.request.urlopen(probe_url, timeout=10) as response:
            assert (response.status, response.read()) == (200, b"ready\n")


def test_cli_classify_prints_the_prediction(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    env = {**os.environ, "SHOTSTREAM_BROKERS": broker.address}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "classify",
            "--json",
            "-l",
            "weather",
            "-l",
            "music",
            "It will rain all day tomorrow",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(out.stdout)
    assert answer["data"][0]["prediction"] == "weather"
