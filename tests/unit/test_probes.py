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
    observer.on_state("stopping")
    assert get(port, "/readyz") == (503, "stopping\n")
    assert get(port, "/livez") == (200, "stopping\n")
