"""The micro-batcher's own speed, paired against other code trees in one run.

    .venv/bin/python -m benchmarks.batcher [--model free|all-MiniLM-L6-v2|…] [--device cpu|cuda]
        [--against TREE …] [--rounds 3]

Two workloads go through the worker's batching, with the device's batching settings
(``Settings().batching.for_device``): **w1**, 400 requests of 1-48 inputs submitted at
once (``benchmarks.cuda``'s), and **w2**, 2,000 requests of 8 inputs with 1,024 in flight
(a flood's shape). ``--model free`` embeds for nothing (zeros), so inputs/s is what the
batcher alone can pass: its planning, queueing and delivery on the event loop. With a
real model it is the runtime a worker uses (``EmbeddingRuntime``), timed best of 5.

With ``--model free`` no device is used: ``--device cuda`` only picks the GPU batching
settings (batches of 512 inputs), whose planning costs the most.

Each code tree (this checkout, then every ``--against``: a ``git worktree`` or an
unpacked ``git archive`` of another commit) runs in a child process that imports
``models`` and ``streams`` from that tree; the trees alternate for ``--rounds`` rounds,
so machine drift falls on all of them. Writes ``batcher-<model>-<device>.json``, ``.md``
and ``.png`` (inputs/s per tree and workload).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
REPEATS = 5
W2_IN_FLIGHT = 1024


def workloads(n: int, seed: int = 0, w1_requests: int = 400) -> dict[str, list[list[int]]]:
    """Requests as lists of indexes into ``n`` inputs."""
    rng = random.Random(seed)
    w1 = []
    for _ in range(w1_requests):
        k = rng.randint(1, 48)
        s = rng.randrange(0, n - k)
        w1.append(list(range(s, s + k)))
    w2 = []
    for _ in range(2000):
        s = rng.randrange(0, n - 8)
        w2.append(list(range(s, s + 8)))
    return {"w1": w1, "w2": w2}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """In a tree's process: time each workload ``REPEATS`` times (models from cwd)."""
    # this file's folder holds modules named like libraries (datasets.py): not on the path
    sys.path[:] = [os.getcwd(), *(p for p in sys.path if Path(p or ".").resolve() != HERE.parent)]
    import numpy as np

    from models.batching import MicroBatcher
    from streams.settings import Settings

    b = Settings().batching.for_device(spec["device"])
    options = {
        "max_wait_s": b.max_wait_ms / 1000,
        "max_queue": b.max_queue,
        "max_batch_size": b.max_batch_size,
        "max_batch_tokens": b.max_batch_tokens,
        "chunk_overhead": b.chunk_overhead_tokens,
    }
    ids: list[list[int]] = spec["ids"]
    if spec["model"] == "free":

        def make() -> Any:
            return MicroBatcher(lambda items: np.zeros((len(items), 8), np.float32), **options)

        async def embed(runtime: Any, request: list[list[int]]) -> Any:
            return await runtime.submit(request)

        async def close(runtime: Any) -> None:
            await runtime.aclose()
    else:
        from benchmarks.cuda import load
        from models.runtime import EmbeddingRuntime

        encoder = load(spec["model"], spec["device"], spec["dtype"])

        def make() -> Any:
            return EmbeddingRuntime(encoder, **options)

        async def embed(runtime: Any, request: list[list[int]]) -> Any:
            return await runtime.embed(request)

        async def close(runtime: Any) -> None:
            await runtime.batcher.aclose()

    async def once(requests: list[list[list[int]]], in_flight: int) -> float:
        runtime = make()
        await asyncio.gather(*(embed(runtime, r) for r in requests[:16]))  # warm up
        gate = asyncio.Semaphore(in_flight)

        async def one(request: list[list[int]]) -> Any:
            async with gate:
                return await embed(runtime, request)

        started = time.perf_counter()
        await asyncio.gather(*(one(r) for r in requests))
        seconds = time.perf_counter() - started
        await close(runtime)
        return seconds

    out: dict[str, Any] = {}
    for name, requests in spec["workloads"].items():
        batch = [[ids[i] for i in r] for r in requests]
        inputs = sum(len(r) for r in batch)
        in_flight = W2_IN_FLIGHT if name == "w2" else len(batch)
        rates = [inputs / asyncio.run(once(batch, in_flight)) for _ in range(REPEATS)]
        out[name] = {"inputs": inputs, "inputs_per_s": statistics.median(rates), "runs": rates}
    return out


def token_ids(model: str, device: str, dtype: str) -> list[list[int]]:
    """2,000 benchmark texts as the model tokenizes them; for ``free``, fake ids of
    realistic lengths (5-40 tokens)."""
    from benchmarks.texts import make_texts

    if model == "free":
        rng = random.Random(1)
        return [[1] * rng.randint(5, 40) for _ in range(2000)]
    from benchmarks.cuda import load

    return [list(i) for i in load(model, device, dtype).tokenize(make_texts(2000))]


def run_tree(tree: Path, spec_file: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE), "--child", str(spec_file)],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(results: dict[str, Any]) -> str:
    lines = [
        f"# Micro-batcher speed: {results['model']}, {results['device']} batching settings",
        "",
        f"{results['timestamp']}; `{results['command']}` at {results.get('checkout')}; "
        f"{results['machine']}.",
        "",
        "| tree | " + " | ".join(f"{w} inputs/s" for w in results["ratios"]) + " |",
        "|---|" + "---|" * len(results["ratios"]),
    ]
    for tree, by_w in results["trees"].items():
        cells = [f"{statistics.median(by_w[w]):,.0f}" for w in results["ratios"]]
        lines.append(f"| {tree} | " + " | ".join(cells) + " |")
    if results.get("note"):
        lines += ["", results["note"]]
    lines += ["", "inputs/s: median of the rounds (each the median of 5 timings)."]
    lines += ["", "Ratios, this checkout ÷ each other tree, per round (paired):", ""]
    for w, by_tree in results["ratios"].items():
        for tree, values in by_tree.items():
            shown = ", ".join(f"{v:.2f}" for v in values)
            lines.append(f"- {w}, ÷ {tree}: median {statistics.median(values):.2f} ({shown})")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trees = list(results["trees"])
    names = list(results["ratios"])
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(trees)
    for k, tree in enumerate(trees):
        values = [results["trees"][tree][w] for w in names]
        mids = [statistics.median(v) for v in values]
        low = [m - min(v) for m, v in zip(mids, values, strict=True)]
        high = [max(v) - m for m, v in zip(mids, values, strict=True)]
        xs = [i + k * width for i in range(len(names))]
        ax.bar(xs, mids, width, yerr=[low, high], capsize=3, label=tree)
    ax.set_xticks([i + width * (len(trees) - 1) / 2 for i in range(len(names))], names)
    ax.set_ylabel("inputs/s (median of rounds; bars: min to max)")
    ax.set_title(f"micro-batcher: {results['model']}, {results['device']} batching settings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["--child"]:
        print(json.dumps(child(json.loads(Path(args_in[1]).read_text()))))
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks.batcher", description=__doc__)
    p.add_argument("--model", default="free", help="free (embeds for nothing) or a model name")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default=None, help="default: float16 on cuda, float32 on cpu")
    p.add_argument("--against", nargs="*", default=[], help="other code trees: PATH or LABEL=PATH")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(args_in)
    dtype = args.dtype or ("float16" if args.device == "cuda" else "float32")
    ids = token_ids(args.model, args.device, dtype)
    spec = {
        "model": args.model,
        "device": args.device,
        "dtype": dtype,
        "ids": ids,
        "workloads": workloads(len(ids)),
    }
    trees = {"this checkout": ROOT}
    for tree in args.against:
        label, _, path = tree.rpartition("=")
        trees[label or path] = Path(path).resolve()
    runs: dict[str, dict[str, list[float]]] = {t: {"w1": [], "w2": []} for t in trees}
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec))
        for r in range(args.rounds):
            for name, tree in trees.items():
                result = run_tree(tree, spec_file)
                for w in runs[name]:
                    runs[name][w].append(result[w]["inputs_per_s"])
                rates = ", ".join(f"{w} {result[w]['inputs_per_s']:,.0f}" for w in runs[name])
                print(f"round {r + 1}/{args.rounds} {name}: inputs/s {rates}", flush=True)
    mine = runs["this checkout"]
    results: dict[str, Any] = {
        "model": args.model,
        "device": args.device,
        "dtype": dtype,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.batcher " + " ".join(args_in),
        "machine": f"{platform.platform()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "checkout": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "trees": runs,
        "ratios": {
            w: {
                t: [a / b for a, b in zip(mine[w], runs[t][w], strict=True)]
                for t in trees
                if t != "this checkout"
            }
            for w in mine
        },
    }
    name = f"batcher-{args.model.replace('/', '_')}-{args.device}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"{name}.md").write_text(report(results))
    plot(results, args.out / f"{name}.png")
    print(report(results))


if __name__ == "__main__":
    main()
