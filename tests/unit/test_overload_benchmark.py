"""benchmarks.overload's accounting: what a flood's callers got, from answers alone."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks.load import LoadClient, RunResult, _answer_of
from benchmarks.overload import (
    OK,
    cut_off,
    markdown,
    outcomes,
    plot,
    relative,
    timeline,
    to_json,
)
from streams.records import DEADLINE_HEADER


def flood_result(latencies: dict[str, float], codes: dict[str, str]) -> RunResult:
    """Requests sent one every 0.1 s, answered after their ``latencies``."""
    result = RunResult("flood")
    for i, (rid, latency) in enumerate(latencies.items()):
        result.sent[rid] = 100.0 + 0.1 * i
        result.received[rid] = result.sent[rid] + latency
    result.sent["lost"] = 100.0 + 0.1 * len(latencies)
    result.codes.update(codes)
    return result


def test_outcomes_split_predictions_from_refusals_and_count_those_in_time() -> None:
    result = flood_result(
        {"a": 0.2, "b": 3.0, "c": 31.0, "d": 0.01, "e": 0.02},
        {"d": "SERVICE_UNAVAILABLE", "e": "DEADLINE_EXCEEDED"},
    )
    summary = outcomes(result, deadline_s=30.0)
    assert summary["requests"] == 6
    assert summary["unanswered"] == 1  # "lost" never answered
    assert summary["outcomes"][OK]["count"] == 3
    assert summary["outcomes"][OK]["p50_s"] == pytest.approx(3.0)
    assert summary["outcomes"]["SERVICE_UNAVAILABLE"]["count"] == 1
    assert summary["in_time"] == 2  # "c" came after its 30 s
    # predictions that came while requests were still being sent (until 100.5): "a" only
    assert summary["answered_per_s"] == pytest.approx(1 / 0.5)
    assert set(timeline(result)) == {"DEADLINE_EXCEEDED", OK, "SERVICE_UNAVAILABLE"}


def test_ratios_are_to_the_first_limit_and_the_report_and_plot_are_written(
    tmp_path: Path,
) -> None:
    off = flood_result({"a": 20.0, "b": 25.0, "c": 0.01}, {"c": "DEADLINE_EXCEEDED"})
    on = flood_result({"a": 5.0, "b": 0.01, "c": 0.01}, {"b": "SERVICE_UNAVAILABLE", "c": "X"})
    runs = {"0": outcomes(off, 30.0), "10": outcomes(on, 30.0)}
    ratios = relative(runs)
    assert list(ratios) == ["10"]
    assert ratios["10"]["answered_p50"] == pytest.approx(5.0 / 22.5)
    assert ratios["10"]["in_time"] == pytest.approx(0.5)
    results = {
        "args": {"model": "m", "rate": 80.0, "inputs": 8, "seconds": 150.0, "deadline": 30.0},
        "timestamp": "now",
        "machine": {"usable_cpus": 2},
        "runs": runs,
        "timelines": {"0": timeline(off), "10": timeline(on)},
        "ratios": ratios,
    }
    table = markdown(results)
    assert "| off | 4 | 2 (2) |" in table
    assert "| 10 s | 4 | 1 (1) |" in table
    assert "SERVICE_UNAVAILABLE 1" in table
    assert cut_off([[0.0, 29.5], [1.0, 0.01], [2.0, 30.1]], 30.0) == 2  # taken, then cut off
    written = to_json(results)
    assert json.loads(written)["timelines"] == results["timelines"]
    assert json.loads(written)["runs"] == runs
    assert len(written.splitlines()) < 100  # the timelines' points on one line
    plot(results, tmp_path / "overload.png")
    assert (tmp_path / "overload.png").stat().st_size > 10_000


def test_the_load_client_puts_a_deadline_on_each_record_and_reads_error_codes() -> None:
    client = LoadClient("127.0.0.1:1", "p.", headers=[("x", b"1")], deadline_s=30.0)
    headers = client._headers()
    assert headers[0] == ("x", b"1")
    name, value = headers[1]
    assert name == DEADLINE_HEADER
    assert float(value) == pytest.approx(time.time() + 30.0, abs=1.0)
    assert LoadClient("127.0.0.1:1", "p.")._headers() == []
    assert _answer_of(b'{"request_id": 7, "error": {"code": "INPUT_INVALID"}}') == (
        "7",
        "INPUT_INVALID",
    )
    assert _answer_of(b'{"request_id": "r", "data": []}') == ("r", None)
    assert _answer_of(b"not json") == (None, None)
