"""Memory and write rate of the classifier table's RocksDB stores: faust's default options
against the worker's (``SHOTSTREAM_ROCKSDB__*``).

    .venv/bin/python -m benchmarks.rocksdb_memory [--partitions 16] [--writes 1200]

A worker holds one RocksDB database per train-topic partition it is given (active or
standby). Each round opens ``--partitions`` of them as faust's store does
(``RocksDBOptions.open``) and overwrites one classifier-sized value (109,442 bytes: a
16-class, 4-prototype, 384-dimension record) ``--writes`` times in each, reading it back,
as training does. Measured in one run, alternating the two options twice: the process's
peak RSS growth and writes per second, and their ratios.

Writes ``<out>/rocksdb-memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

VALUE_BYTES = 109_442


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def measure(options: dict[str, int], partitions: int, writes: int) -> dict[str, float]:
    """Peak RSS growth (MB) and writes/s of one round, in a child process (RocksDB's
    memory is not all given back to the allocator when its databases close)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, float] = pool.apply(_round, (options, partitions, writes))
    return result


def _round(options: dict[str, int], partitions: int, writes: int) -> dict[str, float]:
    from faust.stores.rocksdb import RocksDBOptions

    root = Path(tempfile.mkdtemp(prefix="rocksdb-memory-"))
    try:
        opened = RocksDBOptions(use_rocksdict=True, **options)
        dbs = [opened.open(root / f"classifiers-{p}.db") for p in range(partitions)]
        value = os.urandom(VALUE_BYTES)
        start, peak = rss_mb(), 0.0
        began = time.perf_counter()
        for i in range(writes):
            for p, db in enumerate(dbs):
                key = b"classifier-%d" % p
                db[key] = value[:-8] + i.to_bytes(8, "little")
                assert len(db[key]) == VALUE_BYTES
            if (i + 1) % 100 == 0:
                peak = max(peak, rss_mb() - start)
        rate = partitions * writes / (time.perf_counter() - began)
        for db in dbs:
            db.close()
        return {"peak_rss_growth_mb": round(peak, 1), "writes_per_s": round(rate, 1)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from streams.settings import RocksDBSettings

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=16)
    parser.add_argument("--writes", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    configs = {"faust_default": {}, "shotstream": RocksDBSettings().options()}
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for _ in range(2):
        for name, options in configs.items():
            rounds[name].append(measure(options, args.partitions, args.writes))
            print(name, rounds[name][-1], flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rounds[name])

    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "partitions": args.partitions,
        "writes_per_partition": args.writes,
        "value_bytes": VALUE_BYTES,
        "options": configs,
        "rounds": rounds,
        "memory_ratio_shotstream_to_default": round(
            median("shotstream", "peak_rss_growth_mb")
            / median("faust_default", "peak_rss_growth_mb"),
            3,
        ),
        "write_rate_ratio_shotstream_to_default": round(
            median("shotstream", "writes_per_s") / median("faust_default", "writes_per_s"), 3
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rocksdb-memory.json").write_text(json.dumps(result, indent=1) + "\n")
    memory = result["memory_ratio_shotstream_to_default"]
    rate = result["write_rate_ratio_shotstream_to_default"]
    print(f"shotstream / faust default: peak RSS growth {memory}, writes/s {rate}")
    return result


if __name__ == "__main__":
    main()
