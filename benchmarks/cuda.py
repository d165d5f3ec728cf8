"""GPU checks: float16 and bfloat16 against float32, the micro-batcher on CUDA, raw speed.

Needs a CUDA device (it says so and exits 0 without one). For one text model:

1. **Numerics.** The model is loaded as a worker loads it (registry, aliases from the
   settings) on CUDA in float32 (TF32 off: the reference), float16 (a GPU worker's
   default) and bfloat16, and on the CPU in float32 for a sample. Every text of each set
   is embedded; reported per dtype: cosine to the reference (min, 0.1th percentile,
   mean), non-finite rows, zero-shot predictions that differ from the reference's, the
   largest change of a softmax score (the settings' temperature), and macro-F1 on the
   labelled sets.
2. **Micro-batcher on CUDA.** Requests of 1-48 inputs all submitted at once through the
   worker's ``EmbeddingRuntime`` (its batching settings on that device, and variants) in
   the default dtype: each
   answer's rows must be its own inputs' vectors (the nearest of all the set's vectors
   is its own text, cosine to a batch-of-one embedding ≥ 0.999); inputs/s against the
   same requests submitted one after another.
3. **Raw throughput.** texts/s of ``embed_ids`` per dtype and batch size over the
   length-sorted benchmark texts.

    python -m benchmarks.cuda --model multilingual-e5-small --texts .gpu/e5/texts.json

Writes ``<out>/cuda-<model>.json``, ``.md`` and ``.png`` (texts/s by batch size).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.accuracy import macro_f1
from benchmarks.batcher import workloads
from benchmarks.texts import ROUTING_LABELS, make_texts
from benchmarks.throughput import load_encoder, measure_raw
from models.embedders import TransformersTextEncoder, resolve_device
from models.scoring import softmax
from streams.settings import Settings

DTYPES = ("float32", "float16", "bfloat16")
BATCH_SIZES = (1, 8, 32, 128, 512)
CPU_SAMPLE = 200
"""Texts per set also embedded on the CPU (float32), to compare with CUDA float32."""
REQUESTS = 400
VARIANTS: tuple[tuple[str, dict[str, int]], ...] = (
    ("CPU defaults", {"max_batch_size": 64, "max_batch_tokens": 16384, "chunk_overhead": 64}),
    ("batch 256, overhead 1024", {"max_batch_size": 256, "chunk_overhead": 1024}),
    (
        "batch 1024, overhead 8192, 128k tokens",
        {"max_batch_size": 1024, "chunk_overhead": 8192, "max_batch_tokens": 131072},
    ),
)
"""Batching settings tried besides the worker's (a GPU call costs more than a CPU one)."""


def load(model: str, device: str, dtype: str) -> TransformersTextEncoder:
    return load_encoder(model, Settings().model_cache_dir, device, dtype)


def empty_cache(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()


def embed_all(encoder: TransformersTextEncoder, ids: Sequence[list[int]], bs: int = 64) -> Any:
    """Vectors of ``ids`` in their order, computed in length-sorted batches."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    for s in range(0, len(order), bs):
        chunk = order[s : s + bs]
        out[chunk] = encoder.embed_ids([ids[i] for i in chunk])
    return out


def load_sets(path: Path | None) -> dict[str, Any]:
    if path is not None:
        sets: dict[str, Any] = json.loads(path.read_text())
        return sets
    return {"bench": {"texts": make_texts(4000), "labels": ROUTING_LABELS}}


def numerics(model: str, sets: dict[str, Any], temperature: float, device: str) -> dict[str, Any]:
    """Per set and dtype: agreement with CUDA float32 (and CPU float32 on a sample)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    vectors: dict[str, dict[str, Any]] = {}
    tokenized: dict[str, tuple[list[list[int]], list[list[int]]]] = {}
    for dtype in DTYPES:
        encoder = load(model, device, dtype)
        for name, s in sets.items():
            if name not in tokenized:
                tokenized[name] = (encoder.tokenize(s["texts"]), encoder.tokenize(s["labels"]))
            texts, labels = tokenized[name]
            vectors.setdefault(name, {})[dtype] = (
                embed_all(encoder, texts),
                embed_all(encoder, labels),
            )
        del encoder
        empty_cache(device)
    cpu = load(model, "cpu", "float32")
    out: dict[str, Any] = {}
    for name, s in sets.items():
        texts, _ = tokenized[name]
        ref, ref_labels = vectors[name]["float32"]
        ref_scores = softmax(ref @ ref_labels.T / temperature)
        ref_pred = ref_scores.argmax(axis=1)
        sample = embed_all(cpu, texts[:CPU_SAMPLE])
        row: dict[str, Any] = {
            "texts": len(texts),
            "mean_tokens": float(np.mean([min(len(t), cpu.max_length) for t in texts])),
            "cpu_float32_vs_cuda_float32_min_cosine": float(
                np.min(np.sum(sample * ref[:CPU_SAMPLE], axis=1))
            ),
        }
        for dtype in DTYPES:
            vecs, labs = vectors[name][dtype]
            finite = np.isfinite(vecs).all(axis=1)
            cos = np.sum(vecs * ref, axis=1)[finite]
            scores = softmax(vecs @ labs.T / temperature)
            pred = scores.argmax(axis=1)
            stats: dict[str, Any] = {
                "nonfinite_rows": int((~finite).sum()),
                "cosine_min": float(cos.min()),
                "cosine_p0.1": float(np.percentile(cos, 0.1)),
                "cosine_mean": float(cos.mean()),
                "predictions_changed": int(np.sum(pred != ref_pred)),
                "max_score_change": float(np.max(np.abs(scores - ref_scores))),
            }
            if "y" in s:
                stats["macro_f1"] = macro_f1(np.asarray(s["y"]), pred)
                stats["accuracy"] = float(np.mean(pred == np.asarray(s["y"])))
            row[dtype] = stats
        out[name] = row
    return out


def throughput(model: str, texts: Sequence[str], device: str) -> dict[str, dict[str, float]]:
    """texts/s of ``embed_ids`` per dtype and batch size (``measure_raw``)."""
    out: dict[str, dict[str, float]] = {}
    for dtype in DTYPES:
        encoder = load(model, device, dtype)
        raw = measure_raw(encoder, texts, BATCH_SIZES)["batch_sizes"]
        out[dtype] = {bs: r["texts_per_s"] for bs, r in raw.items()}
        del encoder
        empty_cache(device)
    return out


async def _through_batcher(runtime: Any, requests: list[list[list[int]]], together: bool) -> Any:
    if together:
        return await asyncio.gather(*(runtime.embed(r) for r in requests))
    return [await runtime.embed(r) for r in requests]


def batcher(
    model: str, texts: Sequence[str], device: str, requests_n: int = REQUESTS, seed: int = 0
) -> dict[str, Any]:
    """Concurrent requests through the worker's runtime on CUDA: routing, coalescing."""
    from models.batching import BatchStats
    from models.runtime import EmbeddingRuntime

    settings = Settings()
    device, dtype = resolve_device(device, settings.models.dtype)
    encoder = load(model, device, dtype)
    ids = encoder.tokenize(list(texts))
    single = np.concatenate([encoder.embed_ids([i]) for i in ids])  # batch of one each
    spans = [(r[0], len(r)) for r in workloads(len(ids), seed, requests_n)["w1"]]
    requests = [ids[s : s + n] for s, n in spans]
    b = settings.batching.for_device(device)
    result: dict[str, Any] = {
        "dtype": dtype,
        "requests": requests_n,
        "inputs": sum(n for _, n in spans),
    }
    defaults = {
        "max_batch_size": b.max_batch_size,
        "max_batch_tokens": b.max_batch_tokens,
        "chunk_overhead": b.chunk_overhead_tokens,
    }
    runs = [("one_by_one", False, defaults), ("together", True, defaults)] + [
        (f"together {name}", True, {**defaults, **changes}) for name, changes in VARIANTS
    ]
    for mode, together, options in runs:
        calls: list[BatchStats] = []
        runtime = EmbeddingRuntime(
            encoder,
            max_wait_s=b.max_wait_ms / 1000,
            max_queue=b.max_queue,
            on_batch=calls.append,
            max_batch_size=options["max_batch_size"],
            max_batch_tokens=options["max_batch_tokens"],
            chunk_overhead=options["chunk_overhead"],
        )

        async def run(
            runtime: Any = runtime, together: bool = together, calls: list[BatchStats] = calls
        ) -> Any:
            await _through_batcher(runtime, requests[:8], together)  # warm up
            calls.clear()
            started = time.perf_counter()
            answers = await _through_batcher(runtime, requests, together)
            seconds = time.perf_counter() - started
            await runtime.batcher.aclose()
            return answers, seconds

        answers, seconds = asyncio.run(run())
        own = nearest_ok = 0
        worst = 1.0
        for (s, n), vecs in zip(spans, answers, strict=True):
            cos = np.sum(vecs * single[s : s + n], axis=1)
            worst = min(worst, float(cos.min()))
            nearest = (vecs @ single.T).argmax(axis=1)
            nearest_ok += int(np.sum(nearest == np.arange(s, s + n)))
            own += n
        result[mode] = {
            "options": options,
            "seconds": seconds,
            "inputs_per_s": result["inputs"] / seconds,
            "model_calls": len(calls),
            "inputs_per_call": float(np.mean([c.items for c in calls])) if calls else 0.0,
            "requests_per_call": float(np.mean([c.requests for c in calls])) if calls else 0.0,
            "padded_share": 1
            - sum(c.tokens for c in calls) / max(1, sum(c.padded_tokens for c in calls)),
            "min_cosine_to_batch_of_one": worst,
            "rows_nearest_to_own_input": f"{nearest_ok}/{own}",
            "routed_ok": nearest_ok == own and worst >= 0.999,
        }
    result["speedup_together_vs_one_by_one"] = (
        result["together"]["inputs_per_s"] / result["one_by_one"]["inputs_per_s"]
    )
    return result


def report(results: dict[str, Any]) -> str:
    lines = [
        f"# CUDA checks: {results['model']} on {results['machine']['gpu']}",
        "",
        f"{results['timestamp']}, torch {results['machine']['torch']}. "
        f"Weights: {results['weights']}. Reproduce: `{results['command']}`.",
        "",
        "## float16 / bfloat16 against float32 (CUDA, TF32 off)",
        "",
        "| set | texts | mean tokens | dtype | cos min | cos p0.1 | cos mean | non-finite "
        "| predictions changed | max score change | macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["numerics"].items():
        for dtype in DTYPES:
            s = row[dtype]
            f1 = f"{s['macro_f1']:.4f}" if "macro_f1" in s else ""
            lines.append(
                f"| {name} | {row['texts']} | {row['mean_tokens']:.0f} | {dtype} "
                f"| {s['cosine_min']:.5f} | {s['cosine_p0.1']:.5f} | {s['cosine_mean']:.6f} "
                f"| {s['nonfinite_rows']} | {s['predictions_changed']} "
                f"| {s['max_score_change']:.4f} | {f1} |"
            )
    lines += ["", "CPU float32 vs CUDA float32, min cosine over a sample of each set: "]
    lines += [
        f"{name} {row['cpu_float32_vs_cuda_float32_min_cosine']:.6f}"
        for name, row in results["numerics"].items()
    ]
    b = results["batcher"]
    lines += [
        "",
        f"## Micro-batcher on CUDA ({b['dtype']}, {b['requests']} requests, {b['inputs']} inputs)",
        "",
        "| submitted | inputs/s | model calls | inputs/call | requests/call | padding "
        "| min cos to batch-of-one | rows nearest their own input |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, m in b.items():
        if not isinstance(m, dict):
            continue
        lines.append(
            f"| {mode.replace('_', ' ')} | {m['inputs_per_s']:.0f} | {m['model_calls']} "
            f"| {m['inputs_per_call']:.1f} | {m['requests_per_call']:.1f} "
            f"| {m['padded_share']:.0%} "
            f"| {m['min_cosine_to_batch_of_one']:.5f} | {m['rows_nearest_to_own_input']} |"
        )
    lines += [
        "",
        f"Together / one by one: {b['speedup_together_vs_one_by_one']:.1f}x.",
        "",
        "## Raw embed_ids, texts/s (benchmark texts, length-sorted)",
        "",
        "| dtype | " + " | ".join(f"batch {bs}" for bs in BATCH_SIZES) + " |",
        "|---|" + "---|" * len(BATCH_SIZES),
    ]
    for dtype, per in results["throughput"].items():
        lines.append(
            f"| {dtype} | " + " | ".join(f"{per[str(bs)]:.0f}" for bs in BATCH_SIZES) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype, per in results["throughput"].items():
        ax.plot(BATCH_SIZES, [per[str(bs)] for bs in BATCH_SIZES], marker="o", label=dtype)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("texts/s")
    ax.set_title(f"{results['model']}: raw embed_ids on {results['machine']['gpu']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(prog="python -m benchmarks.cuda", description=__doc__)
    p.add_argument("--model", default="multilingual-e5-small")
    p.add_argument("--texts", type=Path, default=None, help="texts.json (benchmarks.pack)")
    p.add_argument("--weights", default="as packaged", help="what the weights are, for the record")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of this script")
    p.add_argument("--requests", type=int, default=REQUESTS, help="micro-batcher requests")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    sets = load_sets(args.texts)
    settings = Settings()
    results: dict[str, Any] = {
        "model": args.model,
        "weights": args.weights,
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.cuda " + " ".join(argv or __import__("sys").argv[1:]),
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "platform": platform.platform(),
        },
        "temperature": settings.models.temperature,
    }
    print("numerics ...", flush=True)
    results["numerics"] = numerics(args.model, sets, settings.models.temperature, args.device)
    print("micro-batcher ...", flush=True)
    results["batcher"] = batcher(
        args.model, sets["bench"]["texts"][:2000], args.device, args.requests
    )
    print("throughput ...", flush=True)
    results["throughput"] = throughput(args.model, sets["bench"]["texts"], args.device)
    name = args.model.replace("/", "_")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cuda-{name}.json").write_text(json.dumps(results, indent=1))
    (args.out / f"cuda-{name}.md").write_text(report(results))
    plot(results, args.out / f"cuda-{name}.png")
    print(report(results))


if __name__ == "__main__":
    main()
