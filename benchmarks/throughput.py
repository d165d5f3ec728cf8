"""Throughput, latency and label-count cost of shotstream against its own embedder and peers.

Run from the repository root::

    .venv/bin/python -m benchmarks.throughput [--model all-MiniLM-L6-v2] [--n 2000]
                                              [--out benchmarks/results]

Everything is measured in one run, on one embedded broker (see README.md):

(a) the raw embedder, ``embed_ids`` on length-sorted texts at several batch sizes, on
    one compute stream and on two at once (``benchmarks.load.RAW_STREAMS``);
(b) shotstream end to end (a worker process, micro-batching on);
(c) the same with micro-batching off;
(d) latency on (b)'s worker, paced at half of (b)'s rate;
(e) (b) with 256 labels per request instead of 3;
(f1, f2) naive hand-written consumer loops (``benchmarks/peers.py``).

It writes ``<out>/throughput-<model>.json`` and ``.png`` and prints the ratios with
PASS/MISS against their targets; it never fails on a missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from benchmarks.load import (
    RAW_STREAMS,
    LoadClient,
    Request,
    RunResult,
    config_name,
    make_requests,
    run_batches,
)
from benchmarks.peers import NaivePeer
from benchmarks.report import plot, print_report, ratios, write_json
from benchmarks.scrape import batch_stats, scrape
from benchmarks.texts import ROUTING_LABELS, make_texts, many_labels
from models.embedders import TransformersTextEncoder, resolve_device
from models.registry import Encoder, ModelRegistry
from streams.broker import EmbeddedBroker, ensure_topics
from streams.cli import free_port
from streams.processes import WorkerProcess
from streams.settings import TOPICS, Settings

BATCH_SIZES = (1, 8, 16, 32, 64, 128)
GPU_BATCH_SIZES = (1, 8, 32, 128, 256, 512)
"""On a GPU a call costs more than its arithmetic until batches are large."""
SINGLE_SAMPLE = 400
"""Texts timed at batch size 1 (an even sample over the lengths)."""
WARM_UP = 64
PEER_BATCH = 32
SETTLE_S = 10.0
"""With several (b) workers: how long their group gets to spread the partitions."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__)
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="model name requests use")
    p.add_argument("--n", type=int, default=2000, help="requests per throughput run")
    p.add_argument("--n-lat", type=int, default=None, help="paced requests (min(1000, n))")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output dir")
    p.add_argument("--model-cache", type=Path, default=None, help="converted weights (kept)")
    p.add_argument("--logs", type=Path, default=None, help="keep worker logs in this dir")
    p.add_argument("--stall", type=float, default=120.0, help="give up after s without answers")
    p.add_argument("--workers", type=int, default=1, help="workers for (b), (d), (e)")
    p.add_argument("--tag", default="", help="file name suffix (e.g. the machine: h100)")
    p.add_argument("--weights", default="as packaged", help="what the weights are, for the record")
    return p.parse_args(argv)


# -- (a): the raw embedder ---------------------------------------------------------------


def load_model(
    model: str, cache_dir: Path, device: str | None = None, dtype: str | None = None
) -> Encoder:
    """The model as a worker loads it (same registry, aliases, device and dtype resolution);
    ``device`` and ``dtype`` override the settings."""
    settings = Settings()
    device, dtype = resolve_device(device or settings.model_device, dtype or settings.models.dtype)
    registry = ModelRegistry(
        cache_dir=cache_dir, device=device, dtype=dtype, aliases=settings.models.aliases
    )
    return registry.load(registry.resolve(model))


def load_encoder(
    model: str, cache_dir: Path, device: str | None = None, dtype: str | None = None
) -> TransformersTextEncoder:
    """The text encoder as a worker loads it (``load_model``)."""
    encoder = load_model(model, cache_dir, device, dtype)
    assert isinstance(encoder, TransformersTextEncoder), "a transformers model is needed"
    return encoder


def measure_raw(
    encoder: TransformersTextEncoder,
    texts: Sequence[str],
    batch_sizes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """texts/s of ``embed_ids`` per batch size (default: the device's) and compute streams
    (``config_name``) over length-sorted, pre-tokenized texts; batch 1 on one stream only."""
    ids = sorted(encoder.tokenize(texts), key=len)
    per_batch: dict[str, dict[str, float]] = {}
    gpu = encoder.device.type == "cuda"
    # a GPU worker computes on one stream (``plan_compute``): two would queue at its lock
    raw_streams = RAW_STREAMS[:1] if gpu else RAW_STREAMS
    for bs in batch_sizes or (GPU_BATCH_SIZES if gpu else BATCH_SIZES):
        rows = ids[:: max(1, len(ids) // SINGLE_SAMPLE)][:SINGLE_SAMPLE] if bs == 1 else ids
        batches = [rows[i : i + bs] for i in range(0, len(rows), bs)]
        encoder.embed_ids(batches[len(batches) // 2])  # warm up at this shape
        tokens = sum(min(len(r), encoder.max_length) for r in rows)
        for streams in raw_streams[:1] if bs == 1 else raw_streams:
            name = config_name(bs, streams)
            with tqdm(total=len(batches), desc=f"(a) {name}", unit="batch", leave=False) as bar:

                def step(batch: list[list[int]], bar: Any = bar) -> object:
                    out = encoder.embed_ids(batch)
                    bar.update()
                    return out

                seconds = run_batches(step, batches, streams)
            per_batch[name] = {
                "texts": len(rows),
                "tokens": tokens,
                "seconds": seconds,
                "texts_per_s": len(rows) / seconds,
            }
    best = max(per_batch, key=lambda k: per_batch[k]["texts_per_s"])
    mean_tokens = float(np.mean([min(len(r), encoder.max_length) for r in ids]))
    flops = flops_per_token(encoder, mean_tokens)
    b = per_batch[best]
    return {
        "batch_sizes": per_batch,
        "best_batch_size": best,
        "texts_per_s": b["texts_per_s"],
        "mean_tokens": mean_tokens,
        "flops_per_token": flops,
        "gflops": b["tokens"] * flops / b["seconds"] / 1e9,
    }


def flops_per_token(encoder: TransformersTextEncoder, seq: float) -> float:
    """A BERT-style encoder: ``layers * (2 * (4h^2 + 2h*ffn) + 4*seq*h)``."""
    config = encoder.model.config
    layers = int(getattr(config, "num_hidden_layers", 0) or config.n_layers)
    h = int(getattr(config, "hidden_size", 0) or config.dim)
    ffn = int(getattr(config, "intermediate_size", 0) or config.hidden_dim)
    return float(layers * (2 * (4 * h * h + 2 * h * ffn) + 4 * seq * h))


def measure_roof(encoder: TransformersTextEncoder, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the best of ``repeats`` n-by-n matmuls on the encoder's device and dtype."""
    import torch

    dtype = next(encoder.model.parameters()).dtype
    a = torch.randn(n, n, device=encoder.device, dtype=dtype)
    b = torch.randn(n, n, device=encoder.device, dtype=dtype)

    def sync() -> None:
        if encoder.device.type == "cuda":
            torch.cuda.synchronize()

    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


# -- (b)-(f): through the broker ---------------------------------------------------------


@dataclass
class Bench:
    """What every end-to-end configuration shares: broker, workload, where files go."""

    brokers: str
    model: str
    run_id: str
    work_dir: Path
    model_cache: Path
    texts: list[str]
    n_lat: int
    stall_s: float
    logs_dir: Path | None
    workers: int = 1
    """Workers serving (b), (d) and (e), one consumer group (they share the GPU, if any)."""
    metrics_ports: dict[str, int] = field(default_factory=dict)

    def prefix(self, config: str) -> str:
        return f"bench.{self.run_id}.{config}."

    def requests(
        self, config: str, phase: str, texts: Sequence[str], labels: Sequence[str]
    ) -> list[Request]:
        return make_requests(f"{self.run_id}-{config}-{phase}", texts, labels, self.model)

    def start_worker(self, config: str, instance: int = 0, **extra: str) -> WorkerProcess:
        """A worker of ``config``'s group; its batcher is measured if ``instance`` is 0."""
        data = self.work_dir / (f"{config}-{instance}" if instance else config)
        env = {
            "SHOTSTREAM_BROKERS": self.brokers,
            "SHOTSTREAM_DATA_DIR": str(data),
            "SHOTSTREAM_MODEL_CACHE_DIR": str(self.model_cache),
            "SHOTSTREAM_DEFAULT_MODEL": self.model,
            "SHOTSTREAM_TOPIC_PREFIX": self.prefix(config),
            "SHOTSTREAM_KAFKA__GROUP_ID": f"bench-{self.run_id}-{config}",
            "SHOTSTREAM_PARTITIONS": str(max(4, self.workers)),
            "SHOTSTREAM_METRICS_PORT": "0",
            **extra,
        }
        print(f"starting the ({config}) worker {instance} ...", flush=True)
        worker = WorkerProcess(env, data / "worker.log").start()
        worker.wait_ready(600)
        port = re.search(r"metrics port (\d+)", worker.log_text())
        if port and not instance:
            self.metrics_ports[config] = int(port.group(1))
        return worker

    async def measured(self, config: str, run: Awaitable[RunResult]) -> RunResult:
        """Await ``run``; add what the worker's batcher did meanwhile (if it has metrics)."""
        port = self.metrics_ports.get(config)
        if port is None:
            return await run
        before = await asyncio.to_thread(scrape, port)
        result = await run
        after = await asyncio.to_thread(scrape, port)
        result.batching = batch_stats(before, after, result.seconds)
        return result

    def stop_worker(self, config: str, worker: WorkerProcess, found: list[str]) -> None:
        code = worker.stop()
        if code not in (0, None):
            found.append(f"({config}) worker exited with {code}")
        found.extend(scan_log(config, worker.log_text()))
        if self.logs_dir is not None:
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(
                worker.log_path, self.logs_dir / f"worker-{worker.log_path.parent.name}.log"
            )

    async def batched(self) -> tuple[RunResult, RunResult, RunResult]:
        """(b), then (d) and (e) on the same worker."""
        many = many_labels(256)
        async with LoadClient(self.brokers, self.prefix("b"), stall_s=self.stall_s) as client:
            texts = self.texts
            await client.burst(self.requests("b", "warm", texts[:WARM_UP], ROUTING_LABELS), "warm")
            run = self.requests("b", "run", texts, ROUTING_LABELS)
            b = await self.measured("b", client.burst(run, "(b)"))
            paced = self.requests("b", "lat", texts[: self.n_lat], ROUTING_LABELS)
            rate = max(b.throughput / 2, 1.0)
            lat = await self.measured("b", client.paced(paced, rate, "(d)"))
            await client.burst(self.requests("b", "warm256", texts[:16], many), "warm 256")
            e = await self.measured("b", client.burst(self.requests("b", "e", texts, many), "(e)"))
        return b, lat, e

    async def plain(self, config: str) -> RunResult:
        """Warm up, then one burst of 3-label requests (used by (c), (f1), (f2))."""
        async with LoadClient(self.brokers, self.prefix(config), stall_s=self.stall_s) as client:
            warm = self.requests(config, "warm", self.texts[:WARM_UP], ROUTING_LABELS)
            await client.burst(warm, "warm")
            run = self.requests(config, "run", self.texts, ROUTING_LABELS)
            return await self.measured(config, client.burst(run, f"({config})"))

    def peer(self, config: str, encoder: TransformersTextEncoder, batch: int) -> RunResult:
        topics = [f"{self.prefix(config)}{t}" for t in TOPICS]
        asyncio.run(ensure_topics([self.brokers], topics, 4))
        peer = NaivePeer(
            encoder,
            brokers=self.brokers,
            prefix=self.prefix(config),
            group_id=f"bench-{self.run_id}-{config}",
            batch=batch,
            temperature=Settings().models.temperature,
        ).start()
        try:
            return asyncio.run(self.plain(config))
        finally:
            peer.stop()


_NOTEWORTHY = re.compile(r"\b(ERROR|CRITICAL|WARNING)\b|Traceback")


def scan_log(config: str, text: str, keep: int = 3) -> list[str]:
    """Counts and first lines of the warnings and errors in a worker log."""
    hits = [line.strip() for line in text.splitlines() if _NOTEWORTHY.search(line)]
    if not hits:
        return []
    first = list(dict.fromkeys(h[:200] for h in hits))[:keep]
    return [f"({config}) worker log: {len(hits)} warning/error lines, e.g. {first}"]


def machine(encoder: TransformersTextEncoder, weights: str) -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "load_average": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(encoder.device),
        "dtype": str(next(encoder.model.parameters()).dtype).removeprefix("torch."),
        "gpu": torch.cuda.get_device_name(0) if encoder.device.type == "cuda" else None,
        "weights": weights,
    }


def run(args: argparse.Namespace) -> None:
    texts = make_texts(args.n)
    n_lat = args.n_lat or min(1000, args.n)
    found: list[str] = []
    stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shotstream-bench-")))
        cache = args.model_cache or work / "models"
        print(f"loading {args.model} (weights under {cache}) ...", flush=True)
        encoder = load_encoder(args.model, cache)
        mach = machine(encoder, args.weights)
        raw = measure_raw(encoder, texts)
        raw["roof_gflops"] = measure_roof(encoder)
        raw["roof_dtype"] = mach["dtype"]
        print(f"(a) {raw['texts_per_s']:.1f} texts/s at batch {raw['best_batch_size']}")

        broker = stack.enter_context(EmbeddedBroker(free_port()))
        bench = Bench(
            brokers=broker.address,
            model=args.model,
            run_id=f"{int(time.time())}{os.getpid()}",
            work_dir=work,
            model_cache=cache,
            texts=texts,
            n_lat=n_lat,
            stall_s=args.stall,
            logs_dir=args.logs,
            workers=args.workers,
        )
        workers = [bench.start_worker("b", i) for i in range(args.workers)]
        if args.workers > 1:
            time.sleep(SETTLE_S)  # let the group rebalance onto every worker
        try:
            b, lat, e = asyncio.run(bench.batched())
        finally:
            for worker in workers:
                bench.stop_worker("b", worker, found)
        print(f"(b) {b.throughput:.1f}/s  (e) {e.throughput:.1f}/s  (d) paced done")
        worker = bench.start_worker(  # one request, one input, one stream at a time
            "c",
            SHOTSTREAM_BATCHING__MAX_BATCH_SIZE="1",
            SHOTSTREAM_BATCHING__MAX_IN_FLIGHT="1",
            SHOTSTREAM_BATCHING__COMPUTE_STREAMS="1",
        )
        try:
            c = asyncio.run(bench.plain("c"))
        finally:
            bench.stop_worker("c", worker, found)
        print(f"(c) {c.throughput:.1f}/s", flush=True)
        f1 = bench.peer("f1", encoder, 1)
        print(f"(f1) {f1.throughput:.1f}/s", flush=True)
        f2 = bench.peer("f2", encoder, PEER_BATCH)
        print(f"(f2) {f2.throughput:.1f}/s", flush=True)

    runs = {"b": b, "c": c, "e": e, "f1": f1, "f2": f2}
    for result in (*runs.values(), lat):
        found.extend(result.complaints())
    tput = {"a": raw["texts_per_s"], **{k: r.throughput for k, r in runs.items()}}
    roof, batch1 = raw["roof_gflops"], raw["batch_sizes"]["1"]["texts_per_s"]
    results: dict[str, Any] = {
        "model": args.model,
        "n": args.n,
        "workers": args.workers,
        "timestamp": stamp,
        "machine": mach,
        "throughput": tput,
        "raw_embedder": raw,
        "end_to_end": {k: r.summary() for k, r in runs.items()},
        "latency": {
            "requests": lat.requests,
            "rate": max(b.throughput / 2, 1.0),
            "percentiles": lat.percentiles_ms(),
            "latencies_ms": [round(x, 3) for x in lat.latencies_ms()],
            **lat.summary(),
        },
        "ratios": {
            r.name: r.as_json()
            for r in ratios(tput, raw["gflops"], roof, batch1, mach["device"] == "cuda")
        },
        "noticed": found,
    }
    name = args.model.replace("/", "_") + (f"-{args.tag}" if args.tag else "")
    write_json(results, args.out / f"throughput-{name}.json")
    plot(results, lat.latencies_ms(), args.out / f"throughput-{name}.png")
    print_report(results, found)
    print(f"wrote {args.out / f'throughput-{name}.json'} and .png")


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
