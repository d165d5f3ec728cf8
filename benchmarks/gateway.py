"""Gateway round-trip overhead: HTTP → Kafka → worker → HTTP against the same work on Kafka.

Run from the repository root::

    .venv/bin/python -m benchmarks.gateway [--model all-MiniLM-L6-v2] [--n 1000]

One embedded broker, one worker and one ``shotstream gateway`` process. The same
classify requests (one text, three labels each) are sent by ``--concurrency`` closed-loop
callers, each sending its next request when its previous answer arrives:

* **kafka**: produced to ``shotstream.classify``, answers read from the reply topics
  (``streams.client.ShotstreamClient``, what a Kafka-native caller does);
* **http**: ``POST /v1/classify`` to the gateway (aiohttp, keep-alive connections).

The two paths alternate over ``--rounds`` rounds so that drift hits both alike; the
medians of the rounds give the ratios: throughput http ÷ kafka (target ≥ 0.85, i.e.
overhead ≤ 15%) and p50/p99 latency http ÷ kafka. It also reports the gateway process's
CPU use while serving and while idle (during the kafka rounds: its reply consumers poll).
Writes ``<out>/gateway-<model>.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from benchmarks.texts import ROUTING_LABELS, make_texts
from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import GatewayProcess, WorkerProcess
from streams.settings import Settings

KEY = "bench-key"
TARGET = 0.85
WARM_UP = 64

Call = Callable[[str], Awaitable[None]]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gateway", description=__doc__)
    p.add_argument("--model", default="multilingual-e5-small")
    p.add_argument("--n", type=int, default=1000, help="requests per path per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--model-cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    return p.parse_args(argv)


async def closed_loop(call: Call, texts: Sequence[str], concurrency: int, desc: str) -> list[float]:
    """``concurrency`` callers work through ``texts``; latency (s) of every request."""
    latencies: list[float] = []
    queue = iter(texts)
    bar = tqdm(total=len(texts), desc=desc, unit="req", leave=False, dynamic_ncols=True)

    async def caller() -> None:
        for text in queue:
            start = time.perf_counter()
            await call(text)
            latencies.append(time.perf_counter() - start)
            bar.update()

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    bar.close()
    return latencies


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "throughput": len(latencies) / seconds,
        "p50_ms": 1000 * float(p50),
        "p99_ms": 1000 * float(p99),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(
    settings: Settings, base: str, texts: list[str], args: argparse.Namespace, gateway_pid: int
) -> dict[str, Any]:
    body = {"model": args.model, "labels": ROUTING_LABELS}
    headers = {"Authorization": f"Bearer {KEY}"}
    rounds: dict[str, list[dict[str, float]]] = {"kafka": [], "http": []}
    all_latencies: dict[str, list[float]] = {"kafka": [], "http": []}
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with (
        ShotstreamClient(settings) as kafka,
        aiohttp.ClientSession(base, connector=connector) as http,
    ):

        async def via_kafka(text: str) -> None:
            answer = await kafka.classify([text], labels=ROUTING_LABELS, model=args.model)
            if answer.is_error:
                raise RuntimeError(f"dead letter: {answer}")

        async def via_http(text: str) -> None:
            async with http.post(
                "/v1/classify", json={**body, "input": [text]}, headers=headers
            ) as r:
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}: {await r.text()}")
                await r.read()

        calls: dict[str, Call] = {"kafka": via_kafka, "http": via_http}
        for name, call in calls.items():
            await closed_loop(call, texts[:WARM_UP], args.concurrency, f"warm {name}")
        for i in range(args.rounds):
            for name, call in calls.items():
                cpu_before = cpu_seconds(gateway_pid)
                start = time.perf_counter()
                lat = await closed_loop(call, texts, args.concurrency, f"round {i + 1} {name}")
                result = summary(lat, time.perf_counter() - start)
                result["gateway_cpu_cores"] = (cpu_seconds(gateway_pid) - cpu_before) / result[
                    "seconds"
                ]
                rounds[name].append(result)
                all_latencies[name].extend(lat)
                print(
                    f"round {i + 1} {name:5s} {result['throughput']:7.1f} req/s  "
                    f"p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms",
                    flush=True,
                )
    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rounds.items()
    }
    return {
        "rounds": rounds,
        "median": med,
        "ratios": {
            "throughput_http_over_kafka": med["http"]["throughput"] / med["kafka"]["throughput"],
            "p50_http_over_kafka": med["http"]["p50_ms"] / med["kafka"]["p50_ms"],
            "p99_http_over_kafka": med["http"]["p99_ms"] / med["kafka"]["p99_ms"],
        },
        "gateway_cpu_ms_per_request": 1000
        * (med["http"]["gateway_cpu_cores"] - med["kafka"]["gateway_cpu_cores"])
        / med["http"]["throughput"],
        "latencies_ms": {k: sorted(1000 * x for x in v) for k, v in all_latencies.items()},
    }


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    med = results["median"]
    names = ["kafka", "http"]
    bars = left.bar(names, [med[n]["throughput"] for n in names], color=["#4c72b0", "#dd8452"])
    left.bar_label(bars, fmt="%.1f")
    left.set_ylabel("requests / s (median of rounds)")
    ratio = results["ratios"]["throughput_http_over_kafka"]
    left.set_title(f"throughput: http / kafka = {ratio:.2f} (target ≥ {TARGET})")
    for name in names:
        lat = results["latencies_ms"][name]
        right.plot(lat, np.linspace(0, 1, len(lat)), label=name)
    right.set_xlabel("latency (ms)")
    right.set_ylabel("fraction of requests")
    right.set_title(f"latency, {results['concurrency']} concurrent callers")
    right.legend()
    fig.suptitle(f"gateway round trip, {results['model']}, {results['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> None:
    import json

    texts = make_texts(args.n)
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shotstream-gw-")))
        broker = stack.enter_context(EmbeddedBroker(free_port()))
        port = free_port()
        env = {
            "SHOTSTREAM_BROKERS": broker.address,
            "SHOTSTREAM_DATA_DIR": str(work / "data"),
            "SHOTSTREAM_MODEL_CACHE_DIR": str(args.model_cache or work / "models"),
            "SHOTSTREAM_DEFAULT_MODEL": args.model,
            "SHOTSTREAM_API_KEYS": KEY,
            "SHOTSTREAM_HTTP_PORT": str(port),
            # the benchmark measures overhead, not the limits
            "SHOTSTREAM_GATEWAY__TIERS": json.dumps({"free": {"rpm": 10**9, "tpm": 10**12}}),
        }
        print(f"starting a worker ({args.model}) and a gateway ...", flush=True)
        worker = stack.enter_context(WorkerProcess(env, work / "worker.log"))
        worker.wait_ready(600)
        gateway = stack.enter_context(GatewayProcess(env, work / "gateway.log"))
        gateway.wait_ready(120)
        assert gateway.proc is not None
        settings = Settings(brokers=broker.address)
        results = asyncio.run(
            measure(settings, f"http://127.0.0.1:{port}", texts, args, gateway.proc.pid)
        )
    results.update(
        {
            "model": args.model,
            "n": args.n,
            "concurrency": args.concurrency,
            "timestamp": stamp,
            "machine": f"{os.cpu_count()} CPUs",
            "target_throughput_ratio": TARGET,
        }
    )
    r = results["ratios"]
    verdict = "PASS" if r["throughput_http_over_kafka"] >= TARGET else "MISS"
    print(
        f"\nthroughput http/kafka = {r['throughput_http_over_kafka']:.3f} "
        f"(overhead {100 * (1 - r['throughput_http_over_kafka']):.1f}%, target <= "
        f"{100 * (1 - TARGET):.0f}%) {verdict}\n"
        f"p50 http/kafka = {r['p50_http_over_kafka']:.3f}   "
        f"p99 http/kafka = {r['p99_http_over_kafka']:.3f}\n"
        f"gateway CPU: {results['median']['http']['gateway_cpu_cores']:.2f} cores while serving, "
        f"{results['median']['kafka']['gateway_cpu_cores']:.2f} while idle (polling); "
        f"{results['gateway_cpu_ms_per_request']:.2f} ms per request beyond idle"
    )
    name = args.model.replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"gateway-{name}.json"
    slim = {k: v for k, v in results.items() if k != "latencies_ms"}
    out.write_text(json.dumps(slim, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out / f"gateway-{name}.png")
    print(f"wrote {out} and .png")


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
