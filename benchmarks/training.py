"""Few-shot training throughput: examples/s through Kafka vs the raw embedder; PA updates/s.

    .venv/bin/python -m benchmarks.training [--model all-MiniLM-L6-v2] [--requests 150]

Measured in one run on one machine:

* (p) the passive-aggressive learner at dimension 384 with 16 classes, one core (numpy):
  examples per second through the shipped text learner (centring, scaling, 4 prototypes
  per class, all grown) as a train request drives it in its turn (``apply_examples`` on
  the record), 1 or 8 examples per request, 1 or 10 passes; and the bare update kernel
  (no centring, no bookkeeping) for comparison;
* (a) the raw embedder on the training texts (length-sorted, best of batch 16/32/64 on one
  or two compute streams);
* (t) end to end: train requests (``--examples`` labelled texts each, ``num_iters=10``)
  for ``--classifiers`` classifiers produced at once to the embedded broker, one worker,
  examples/s from the first send to the last train response.

Writes ``<out>/training-<model>.json`` and ``.png``; prints (t)/(a) (target ≥ 0.90).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import Request, best_batch_rate, warm_then_burst
from benchmarks.texts import make_texts
from benchmarks.throughput import load_encoder
from models.fewshot import PassiveAggressiveClassifier
from state.classifiers import TEXT_LEARNER, apply_examples
from state.records import ClassifierRecord
from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.processes import WorkerProcess

KEY = "bench-key"


def pa_rate(dim: int = 384, classes: int = 16, n: int = 40_000) -> dict[str, float]:
    """(p) Examples per second through the shipped text learner (``TEXT_LEARNER``:
    centring, scaling, 4 prototypes per class, all grown) on the path a train request
    takes in its turn (``apply_examples`` on a ``ClassifierRecord``: the learner made
    from the record, its update, the record written back; not the codec), in requests of
    1 and of 8 examples, one pass and 10; and the update kernel alone (``_update``: no
    centring, no bookkeeping), with one prototype per class and with 4."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = rng.integers(0, classes, n)
    labels = [f"c{k}" for k in y.tolist()]
    names = [f"c{k}" for k in range(classes)]
    label_vectors = dict(zip(names, X[:classes], strict=True))
    settings = TEXT_LEARNER

    def grown_record() -> ClassifierRecord:
        record = ClassifierRecord.new(
            "bench", model="m", owner="o", access="private", dim=dim, now=0.0
        )
        record.weights = np.zeros((0, dim), dtype=np.float32)
        # grown on examples, which these repeated ones never miss, then timed as shipped
        record.hyper.update(dataclasses.replace(settings, grow_misses=0).as_dict())
        for offset in range(settings.prototypes * settings.grow):  # every class at its most
            apply_examples(
                record, X[:classes], names, num_iters=1, label_vectors=label_vectors,
                source="bench:0", offset=offset, now=0.0,
            )  # fmt: skip
        assert record.rows == [settings.prototypes] * classes
        record.hyper.update(settings.as_dict())
        return record

    rates: dict[str, float] = {}
    for per_request, passes, count in ((1, 1, n // 2), (8, 1, n), (8, 10, n // 5)):
        record = grown_record()
        start = time.perf_counter()
        for offset, i in enumerate(range(0, count, per_request), start=1 << 20):
            apply_examples(
                record, X[i : i + per_request], labels[i : i + per_request],
                num_iters=passes, label_vectors=label_vectors, source="bench:0",
                offset=offset, now=0.0, timestamp=1.0,
            )  # fmt: skip
        rates[f"shipped_examples_per_s_{per_request}_per_request_{passes}_iters"] = count / (
            time.perf_counter() - start
        )
    for prototypes in (1, settings.prototypes):
        clf = PassiveAggressiveClassifier(dim=dim, prototypes=prototypes, grow=1)
        for k in range(classes):  # every class at its most prototypes before timing
            for _ in range(prototypes):
                clf.learn_one(X[k], f"c{k}")
        start = time.perf_counter()
        for row, k in zip(X, y.tolist(), strict=True):
            clf._update(row, k, 1.0)
        rates[f"kernel_updates_per_s_{prototypes}_prototypes"] = n / (time.perf_counter() - start)
    return rates


def raw_rate(model: str, cache: Path, texts: Sequence[str]) -> dict[str, Any]:
    encoder = load_encoder(model, cache)
    ids = sorted(encoder.tokenize(list(texts)), key=len)
    rates, best = best_batch_rate(encoder.embed_ids, ids)
    return {"by_batch": rates, "best_batch": best, "examples_per_s": rates[best]}


def train_requests(
    tag: str,
    texts: Sequence[str],
    per_request: int,
    ids: Sequence[str],
    model: str | None,
    num_iters: int,
) -> list[Request]:
    """Requests of ``per_request`` texts, round-robin over classifier ``ids``."""
    out: list[Request] = []
    for i in range(0, len(texts) - per_request + 1, per_request):
        n = i // per_request
        cid = ids[n % len(ids)]
        body: dict[str, Any] = {
            "request_id": f"{tag}-{n:05d}",
            "classifier_id": cid,
            "num_iters": num_iters,
            "input": [
                {"text": t, "label": f"label{(i + j) % 5}"}
                for j, t in enumerate(texts[i : i + per_request])
            ],
        }
        if model is not None:
            body["model"] = model
        out.append((body["request_id"], json.dumps(body, ensure_ascii=False).encode()))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--requests", type=int, default=150)
    parser.add_argument("--examples", type=int, default=8)
    parser.add_argument("--classifiers", type=int, default=16)
    parser.add_argument("--num-iters", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--model-cache", type=Path, default=None)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="shotstream-train-bench-"))
    cache = args.model_cache or work / "models"
    texts = make_texts((args.requests + args.classifiers) * args.examples, seed=7)
    warm_texts = texts[: args.classifiers * args.examples]
    run_texts = texts[args.classifiers * args.examples :]
    print("(p) passive-aggressive update rate ...", flush=True)
    pa = pa_rate()
    print(f"(a) raw embedder on {len(run_texts)} training texts ...", flush=True)
    raw = raw_rate(args.model, cache, run_texts)
    ids = [str(uuid.uuid4()) for _ in range(args.classifiers)]
    # the warm-up creates the classifiers (with a model); the measured run updates them
    warm = train_requests("warm", warm_texts, args.examples, ids, args.model, args.num_iters)
    run = train_requests("run", run_texts, args.examples, ids, None, args.num_iters)
    with EmbeddedBroker(free_port()) as broker:
        env = {
            "SHOTSTREAM_BROKERS": broker.address,
            "SHOTSTREAM_DATA_DIR": str(work / "worker"),
            "SHOTSTREAM_MODEL_CACHE_DIR": str(cache),
            "SHOTSTREAM_DEFAULT_MODEL": args.model,
            "SHOTSTREAM_TOPIC_PREFIX": "tbench.",
            "SHOTSTREAM_KAFKA__GROUP_ID": "tbench",
            "SHOTSTREAM_API_KEYS": KEY,
        }
        print("(t) starting a worker ...", flush=True)
        with WorkerProcess(env, work / "worker.log") as worker:
            worker.wait_ready(600)
            e2e = asyncio.run(
                warm_then_burst(
                    broker.address,
                    "tbench.",
                    warm,
                    run,
                    "(t)",
                    request_topic="train",
                    answer_topics=("train-results", "errors"),
                    headers=[("authorization", f"Bearer {KEY}".encode())],
                )
            )
    examples = e2e["answered"] * args.examples
    e2e["examples_per_s"] = examples / e2e["seconds"] if e2e["seconds"] else 0.0
    ratio = e2e["examples_per_s"] / raw["examples_per_s"]
    results = {
        "model": args.model,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "config": {
            "requests": len(run),
            "examples_per_request": args.examples,
            "classifiers": args.classifiers,
            "num_iters": args.num_iters,
        },
        "pa": pa,
        "raw": raw,
        "end_to_end": e2e,
        "ratio_end_to_end_vs_raw": ratio,
    }
    print("\n(p) d=384, 16 classes, 1 core (target >= 100,000 single-example updates/s):")
    for name, rate in pa.items():
        print(f"  {name}: {rate:,.0f}" + (" (PASS)" if rate >= 1e5 else " (MISS)"))
    print(f"(a) raw embedder: {raw['examples_per_s']:.1f} examples/s ({raw['best_batch']})")
    print(
        f"(t) end to end:  {e2e['examples_per_s']:.1f} examples/s "
        f"({e2e['answered']}/{e2e['requests']} answered, {e2e['errors']} errors)"
    )
    print(f"(t)/(a) = {ratio:.2f} (target >= 0.90: {'PASS' if ratio >= 0.9 else 'MISS'})")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"training-{args.model}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and .png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    raw = results["raw"]["examples_per_s"]
    e2e = results["end_to_end"]["examples_per_s"]
    bars = left.bar(
        ["(a) raw embedder", "(t) train via Kafka"], [raw, e2e], color=["#888888", "#2a7ab9"]
    )
    left.bar_label(bars, labels=["1.00", f"{e2e / raw:.2f}"])
    left.set_ylabel("examples / s")
    left.set_title(f"few-shot training, {results['model']}")
    pa = results["pa"]
    names = {
        "shipped_examples_per_s_1_per_request_1_iters": "shipped\n1/request",
        "shipped_examples_per_s_8_per_request_1_iters": "shipped\n8/request",
        "shipped_examples_per_s_8_per_request_10_iters": "shipped\n8/req. x10",
        "kernel_updates_per_s_1_prototypes": "kernel\n1 prototype",
        f"kernel_updates_per_s_{TEXT_LEARNER.prototypes}_prototypes": (
            f"kernel\n{TEXT_LEARNER.prototypes} prototypes"
        ),
    }
    shown = [k for k in names if k in pa]
    bars = right.bar(
        [names[k] for k in shown],
        [pa[k] for k in shown],
        color=["#5aa05a" if k.startswith("shipped") else "#aaaaaa" for k in shown],
    )
    right.bar_label(bars, fmt="{:,.0f}", fontsize=7)
    right.tick_params(axis="x", labelsize=7)
    right.axhline(100_000, color="red", linestyle="--", label="target 100k/s")
    right.set_ylabel("per second")
    right.set_title("passive-aggressive (d=384, 16 classes)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
