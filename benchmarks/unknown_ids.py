"""Few-shot requests for unknown classifier ids must not slow anyone else's requests.

    .venv/bin/python -m benchmarks.unknown_ids [--n 1000] [--rounds 3]

One worker on the embedded broker. Per round: ``--n`` few-shot classify requests for
ids no classifier has, produced at once, then (half a second later, while they are in
flight) one zero-shot request. Measured in one run: the zero-shot request's answer time
behind the flood, the same request's answer time alone, their ratio, and how long the
flood took to be answered (each of its requests gets ``CLASSIFIER_NOT_FOUND``). A worker
reads the classifier changelog to its end before calling an id unknown
(``ClassifierReplica.wait_for``); before that, each unknown id waited out the whole
visibility wait (2 s) holding one of the worker's 256 in-flight slots.

Writes ``<out>/unknown-ids.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.settings import Settings

KEY = "bench-key"
ZERO_SHOT = {"inputs": ["the match went to extra time"], "labels": ["sports", "politics"]}


async def measure(client: ShotstreamClient, n: int) -> dict[str, float]:
    """One round: the zero-shot request alone, then behind ``n`` unknown ids."""
    started = time.perf_counter()
    await client.classify(ZERO_SHOT["inputs"], labels=ZERO_SHOT["labels"], timeout_s=300)
    alone = time.perf_counter() - started
    started = time.perf_counter()
    flood = [
        asyncio.create_task(
            client.classify(["x"], classifier_id=str(uuid.uuid4()), api_key=KEY, timeout_s=300)
        )
        for _ in range(n)
    ]
    await asyncio.sleep(0.5)
    asked = time.perf_counter()
    await client.classify(ZERO_SHOT["inputs"], labels=ZERO_SHOT["labels"], timeout_s=300)
    behind = time.perf_counter() - asked
    answers = await asyncio.gather(*flood)
    flood_s = time.perf_counter() - started
    codes = {a["error"]["code"] if "error" in a else None for a in answers}
    if codes != {"CLASSIFIER_NOT_FOUND"}:
        raise RuntimeError(f"unexpected answers to unknown ids: {codes}")
    return {"zero_shot_alone_s": alone, "zero_shot_behind_s": behind, "flood_s": flood_s}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    rounds: list[dict[str, float]] = []
    with EmbeddedBroker(free_port()) as broker, tempfile.TemporaryDirectory() as tmp:
        env = {
            "SHOTSTREAM_BROKERS": broker.address,
            "SHOTSTREAM_DATA_DIR": tmp,
            "SHOTSTREAM_API_KEYS": KEY,
        }
        with WorkerProcess(env, Path(tmp) / "worker.log") as worker:
            worker.wait_ready(600)

            async def go() -> None:
                async with ShotstreamClient(Settings(brokers=broker.address)) as client:
                    for _ in range(args.rounds):
                        rounds.append(await measure(client, args.n))
                        print(
                            "zero-shot alone {zero_shot_alone_s:.2f} s, behind the flood "
                            "{zero_shot_behind_s:.2f} s; flood answered in {flood_s:.2f} s".format(
                                **rounds[-1]
                            )
                        )

            asyncio.run(go())
    median = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratio = median["zero_shot_behind_s"] / median["zero_shot_alone_s"]
    results: dict[str, Any] = {
        "unknown_ids": args.n,
        "rounds": rounds,
        "median": median,
        "behind_over_alone": ratio,
        "cpus": os.cpu_count(),
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "unknown-ids.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"median: zero-shot {median['zero_shot_alone_s']:.2f} s alone, "
        f"{median['zero_shot_behind_s']:.2f} s behind {args.n} unknown ids ({ratio:.1f}x); "
        f"the {args.n} answered in {median['flood_s']:.2f} s"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
