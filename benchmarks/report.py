"""Ratios with their targets, the printed table, the JSON file and the figure."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIGS: dict[str, str] = {
    "a": "raw embedder (best batch)",
    "b": "shotstream, micro-batched",
    "c": "shotstream, batching off",
    "e": "shotstream, 256 labels",
    "f1": "naive consumer, 1 record at a time",
    "f2": "naive consumer, getmany(32)",
}
"""Configuration key → description, in table order."""


@dataclass(frozen=True)
class Ratio:
    name: str
    value: float
    target: float | None = None
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        if self.target is None or math.isnan(self.value):
            return ""
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if ok else "MISS"

    @property
    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g}"

    def as_json(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "target": self.target_text or None,
            "verdict": self.verdict or None,
        }


def div(a: float, b: float) -> float:
    """``a / b``; NaN when ``b`` is 0 (a configuration that answered nothing)."""
    return a / b if b else float("nan")


def ratios(
    tput: dict[str, float], gflops: float, roof: float, batch1: float, gpu: bool = False
) -> list[Ratio]:
    """The ratios the issue asks for, targets where it sets one; ``batch1``: (a) at batch 1;
    ``gpu``: the model ran on a GPU (batching is worth more there: target 10, not 2.5)."""
    return [
        Ratio("(b)/(a)  shotstream vs raw embedder", div(tput["b"], tput["a"]), 0.90),
        Ratio("(b)/(c)  micro-batching on vs off", div(tput["b"], tput["c"]), 10 if gpu else 2.5),
        Ratio("(a)/roof embedder GFLOP/s vs matmul", div(gflops, roof), 0.6),
        Ratio("(f1)/(a) naive 1-by-1 vs raw embedder", div(tput["f1"], tput["a"])),
        Ratio("(f2)/(a) naive getmany(32) vs raw", div(tput["f2"], tput["a"])),
        Ratio("(b)/(f2) shotstream vs naive getmany(32)", div(tput["b"], tput["f2"])),
        Ratio("(b)/(e)  cost of 256 labels vs 3", div(tput["b"], tput["e"]), 1.2, False),
        # context for (b)/(c): what batching buys the bare model on this machine
        Ratio("(a)/(a@1) raw best batch vs raw batch 1", div(tput["a"], batch1)),
    ]


def print_report(results: dict[str, Any], found: list[str]) -> None:
    """A readable summary of ``results`` (the JSON document)."""
    m, raw, lat = results["machine"], results["raw_embedder"], results["latency"]
    tput: dict[str, float] = results["throughput"]
    print()
    print(
        f"shotstream throughput: model {results['model']}, n={results['n']}, "
        f"(b) workers {results.get('workers', 1)}, "
        f"{m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads, "
        f"{m['device']}, {m['dtype']}), {results['timestamp']}"
    )
    print()
    print(f"{'configuration':<44}{'texts/s':>10}{'vs (a)':>9}")
    for key, desc in CONFIGS.items():
        label = f"({key}) {desc}"
        if key == "a":
            label = f"(a) raw embedder ({raw['best_batch_size']})"
        print(f"{label:<44}{tput[key]:>10.1f}{div(tput[key], tput['a']):>9.2f}")
    per_batch = "  ".join(f"{bs}: {v['texts_per_s']:.0f}" for bs, v in raw["batch_sizes"].items())
    print(f"    raw embedder by batch size (NxS: S compute streams at once): {per_batch}")
    print(
        f"    compute: {raw['gflops']:.1f} GFLOP/s effective "
        f"({raw['flops_per_token'] / 1e6:.1f} MFLOP/token, mean {raw['mean_tokens']:.1f} "
        f"tokens); {raw['roof_dtype']} matmul roof {raw['roof_gflops']:.1f} GFLOP/s"
    )
    for key, summary in results["end_to_end"].items():
        stats = summary.get("worker_batching")
        if stats:
            print(
                f"    ({key}) worker: {stats['model_calls']} model calls, "
                f"{stats['mean_batch_size']:.1f} inputs/call, padded/real tokens "
                f"{stats['padding_ratio']:.2f}, model busy {100 * stats['model_busy']:.0f}% "
                "of the run"
            )
    print()
    if lat["percentiles"]:
        p = lat["percentiles"]
        print(
            f"latency, {lat['requests']} requests paced at {lat['rate']:.1f}/s "
            f"(half of (b)): p50 {p['p50_ms']:.1f} ms  p90 {p['p90_ms']:.1f} ms  "
            f"p99 {p['p99_ms']:.1f} ms"
        )
        print()
    print(f"{'ratio':<44}{'value':>8}  {'target':<9}")
    for name, r in results["ratios"].items():
        print(f"{name:<44}{r['value']:>8.2f}  {r['target'] or '':<9} {r['verdict'] or ''}")
    if found:
        print()
        print("noticed during the run:")
        for line in found:
            print(f"  - {line}")
    print()


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def plot(results: dict[str, Any], latencies_ms: list[float], path: Path) -> None:
    """Left: throughput bars with the ratio to (a); right: the paced run's latency CDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tput: dict[str, float] = results["throughput"]
    keys = list(CONFIGS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5))
    colors = ["#888888", "#1f77b4", "#aec7e8", "#2ca02c", "#ff7f0e", "#ffbb78"]
    bars = left.bar([f"({k})" for k in keys], [tput[k] for k in keys], color=colors[: len(keys)])
    for bar, key in zip(bars, keys, strict=True):
        left.annotate(
            f"{div(tput[key], tput['a']):.2f}x (a)",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    left.set_ylabel("texts / s")
    workers = results.get("workers", 1)
    on = f", (b) on {workers} workers" if workers > 1 else ""
    left.set_title(f"throughput, n={results['n']}, 1 text per request{on}")
    left.legend(bars, [f"({k}) {CONFIGS[k]}" for k in keys], fontsize=8, loc="upper right")
    left.set_ylim(0, max(tput.values()) * 1.35)

    lat = results["latency"]
    if latencies_ms:
        n = len(latencies_ms)
        right.plot(latencies_ms, [(i + 1) / n for i in range(n)], color="#1f77b4")
        for name, value in lat["percentiles"].items():
            right.axvline(value, linestyle=":", color="#555555")
            right.annotate(f" {name[:3]} {value:.0f} ms", (value, 0.05), rotation=90, fontsize=8)
        right.set_xscale("log")
    right.set_xlabel("answer time - send time (ms)")
    right.set_ylabel("fraction of requests")
    right.set_title(f"latency CDF, (b) worker paced at {lat['rate']:.0f} req/s")
    right.grid(alpha=0.3)
    m = results["machine"]
    fig.suptitle(
        f"shotstream {results['model']}: {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads, {m['device']})"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
