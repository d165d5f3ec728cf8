"""The Grafana dashboard and the README chart and name only metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

from streams.metrics import HttpMetrics, PrometheusObserver

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bshotstream_[a-z_]+")
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def charted() -> set[str]:
    """Every metric name the dashboard's queries use."""
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    return {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in METRIC.findall(target["expr"])
    }


def collected() -> list[Metric]:
    """The metric families of the worker's and the gateway's registries."""
    registry = CollectorRegistry()
    PrometheusObserver(registry)
    HttpMetrics(app=None, registry=registry)  # type: ignore[arg-type]
    return list(registry.collect())


def exposed() -> set[str]:
    """Every family and sample name the worker's and the gateway's registries can expose."""
    names = set()
    for family in collected():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def test_every_dashboard_query_names_an_exposed_metric() -> None:
    queried = charted()
    assert "shotstream_produce_retries_total" in queried
    assert queried - exposed() == set()


def test_the_alert_rules_name_exposed_metrics_and_are_complete() -> None:
    import yaml

    rules = yaml.safe_load((ROOT / "deploy" / "alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in alerts}) == len(alerts) >= 8
    for rule in alerts:
        assert rule["annotations"]["summary"], rule["alert"]
        assert set(METRIC.findall(rule["expr"])) <= exposed(), rule["alert"]
    named = {name for rule in alerts for name in METRIC.findall(rule["expr"])}
    assert {"shotstream_unanswered_total", "shotstream_event_loop_stall_seconds"} <= named
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert {m for rule in alerts for m in re.findall(r'job="([^"]+)"', rule["expr"])} <= jobs


def test_the_dashboard_charts_every_metric() -> None:
    """Each metric family is on some panel (the README says the dashboard charts them)."""
    queried = charted()
    uncharted = {
        family.name
        for family in collected()
        if not queried & {family.name + suffix for suffix in SUFFIXES[family.type]}
    }
    assert uncharted == set()


def test_every_metric_the_readme_names_is_exposed() -> None:
    readme = (ROOT / "README.md").read_text()
    assert set(METRIC.findall(readme)) - exposed() == set()


def test_a_deleted_classifier_is_no_longer_exported() -> None:
    """One series per classifier: ids created and deleted would otherwise pile up."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    observer.on_train("c-1", 3, 0.5)
    observer.on_train("c-2", 3, 0.75)
    gauge = "shotstream_fewshot_prequential_accuracy"
    assert registry.get_sample_value(gauge, {"classifier_id": "c-1"}) == 0.5
    observer.on_delete("c-1")
    observer.on_delete("never-trained-here")
    assert registry.get_sample_value(gauge, {"classifier_id": "c-1"}) is None
    assert registry.get_sample_value(gauge, {"classifier_id": "c-2"}) == 0.75


def test_a_classifier_whose_partition_moved_is_no_longer_exported() -> None:
    """After a rebalance the partition's new owner reports its classifiers; a series left
    here would be frozen at its last value and counted twice across workers."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    observer.on_train("c-0", 3, 0.5, partition=0)
    observer.on_train("c-1", 3, 0.75, partition=1)
    observer.on_train_partitions({1, 2})
    gauge = "shotstream_fewshot_prequential_accuracy"
    assert registry.get_sample_value(gauge, {"classifier_id": "c-0"}) is None
    assert registry.get_sample_value(gauge, {"classifier_id": "c-1"}) == 0.75
    observer.on_train("c-0", 3, 0.25, partition=2)  # learned here again, on a kept partition
    observer.on_train_partitions({2})
    assert registry.get_sample_value(gauge, {"classifier_id": "c-0"}) == 0.25
    assert registry.get_sample_value(gauge, {"classifier_id": "c-1"}) is None


def test_per_classifier_series_are_bounded_least_recently_trained_first() -> None:
    """One key creating ids without end must not grow every scrape with them."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, classifier_series=2)
    gauge = "shotstream_fewshot_prequential_accuracy"
    observer.on_train("c-1", 3, 0.5, partition=0)
    observer.on_train("c-2", 3, 0.75, partition=0)
    observer.on_train("c-1", 3, 0.25, partition=0)  # trained again: now the most recent
    observer.on_train("c-3", 3, 1.0, partition=1)
    assert registry.get_sample_value(gauge, {"classifier_id": "c-2"}) is None
    assert registry.get_sample_value(gauge, {"classifier_id": "c-1"}) == 0.25
    assert registry.get_sample_value(gauge, {"classifier_id": "c-3"}) == 1.0
    observer.on_train_partitions({0})  # the evicted id is not forgotten twice
    assert registry.get_sample_value(gauge, {"classifier_id": "c-3"}) is None
    assert registry.get_sample_value(gauge, {"classifier_id": "c-1"}) == 0.25

    none = CollectorRegistry()
    PrometheusObserver(none, classifier_series=0).on_train("c-1", 3, 0.5)
    assert none.get_sample_value(gauge, {"classifier_id": "c-1"}) is None
    assert none.get_sample_value("shotstream_train_examples_total") == 3


def test_the_bug_counters_the_alerts_watch_start_at_zero() -> None:
    """``increase()`` sees no increase in a series whose first sample is already 1, so the
    alerts on a worker's first INTERNAL_ERROR or unanswered record never fired."""
    from streams.settings import Settings
    from streams.worker import build_worker

    _, _, observer = build_worker(Settings())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in observer.registry.collect()
        for s in metric.samples
    }
    for topic in ("shotstream.classify", "shotstream.train"):
        dead = ("shotstream_dead_letters_total", (("code", "INTERNAL_ERROR"), ("topic", topic)))
        assert samples[dead] == 0
        assert samples[("shotstream_unanswered_total", (("topic", topic),))] == 0


def test_consumer_lag_is_exported_for_the_partitions_held_only() -> None:
    """A partition another worker holds now is that worker's to report: a series left
    here would be frozen at its last value and, summed over workers, counted twice."""
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    gauge = "shotstream_consumer_lag_records"
    observer.on_consumer_lag({("t.classify", 0): 7, ("t.classify", 1): 0, ("t.train", 0): 2})
    assert registry.get_sample_value(gauge, {"topic": "t.classify", "partition": "0"}) == 7
    assert registry.get_sample_value(gauge, {"topic": "t.train", "partition": "0"}) == 2
    observer.on_consumer_lag({("t.classify", 1): 3})  # a rebalance took the others
    assert registry.get_sample_value(gauge, {"topic": "t.classify", "partition": "1"}) == 3
    assert registry.get_sample_value(gauge, {"topic": "t.classify", "partition": "0"}) is None
    assert registry.get_sample_value(gauge, {"topic": "t.train", "partition": "0"}) is None
    observer.on_consumer_lag({})
    assert registry.get_sample_value(gauge, {"topic": "t.classify", "partition": "1"}) is None
