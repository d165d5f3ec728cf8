"""The worker's probes next to /metrics: /livez (the event loop turns), /readyz (serving)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from streams.metrics import STALLED_AFTER_S, PrometheusObserver


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_probes_tell_starting_ready_stalled_and_stopping_apart() -> None:
    observer = PrometheusObserver(CollectorRegistry())
    port = observer.serve(0)
    assert get(port, "/livez") == (200, "starting\n")  # loading a model is alive
    assert get(port, "/readyz") == (503, "starting\n")
    observer.on_heartbeat()
    observer.on_state("ready")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/livez") == (200, "ready\n")
    observer._beat = time.monotonic() - STALLED_AFTER_S - 5  # the loop stopped turning
    status, text = get(port, "/livez")
    assert status == 503
    assert text.startswith("event loop stalled for 3")
    assert get(port, "/readyz")[0] == 503
    status, metrics = get(port, "/metrics")
    stall = next(
        line for line in metrics.splitlines() if line.startswith("shotstream_event_loop_stall")
    )
    assert float(stall.split()[-1]) > STALLED_AFTER_S
    observer.on_heartbeat()
    loaded = False  # the classifier changelog read to its end
    observer.on_classifiers(lambda: 3, lambda: loaded)
    assert get(port, "/readyz") == (503, "reading the classifier changelog\n")
    loaded = True
    assert get(port, "/readyz") == (200, "ready\n")
    metrics = get(port, "/metrics")[1]
    assert "shotstream_classifiers 3.0" in metrics
    assert "shotstream_classifiers_loaded 1.0" in metrics
    observer.on_state("stopping")
    assert get(port, "/readyz") == (503, "stopping\n")
    assert get(port, "/livez") == (200, "stopping\n")


def test_alerted_series_exist_at_zero_before_their_first_event() -> None:
    """A series born at 1 is no ``increase()`` to Prometheus: the stale-write alert missed
    a worker's first rewrite (often the only one of its incident). The queue alert reads
    the configured capacity instead of assuming the default."""
    from prometheus_client import generate_latest

    observer = PrometheusObserver(CollectorRegistry())
    observer.on_model_loaded(
        "m",
        "pkg",
        "cpu",
        4,
        {"text": lambda: 10},
        queue_capacity=100,
        queue_waits={"text": lambda: 2.5},
        queue_wait_limit_s=10.0,
    )
    observer.on_agent("t", lambda: 2, lambda: 7.5)
    text = generate_latest(observer.registry).decode()
    assert 'shotstream_classifier_rewrites_total{reason="stale_write"} 0.0' in text
    assert 'shotstream_classifier_rewrites_total{reason="after_delete"} 0.0' in text
    assert 'shotstream_batcher_queue_capacity{model="m"} 100.0' in text
    assert 'shotstream_batcher_queue_wait_seconds{model="m"} 2.5' in text
    assert 'shotstream_batcher_queue_wait_limit_seconds{model="m"} 10.0' in text
    assert 'shotstream_requests_in_flight{topic="t"} 2.0' in text
    assert 'shotstream_oldest_request_age_seconds{topic="t"} 7.5' in text
