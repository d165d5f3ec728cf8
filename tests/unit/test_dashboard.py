"""The Grafana dashboard and the README chart and name only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from streams.metrics import HttpMetrics, PrometheusObserver

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bshotstream_[a-z_]+")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def exposed() -> set[str]:
    """Every family and sample name the worker's and the gateway's registries can expose."""
    registry = CollectorRegistry()
    PrometheusObserver(registry)
    HttpMetrics(app=None, registry=registry)  # type: ignore[arg-type]
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_every_dashboard_query_names_an_exposed_metric() -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in METRIC.findall(target["expr"])
    }
    assert "shotstream_produce_retries_total" in queried
    assert queried - exposed() == set()


def test_every_metric_the_readme_names_is_exposed() -> None:
    readme = (ROOT / "README.md").read_text()
    assert set(METRIC.findall(readme)) - exposed() == set()
