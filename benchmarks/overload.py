"""Sustained overload: what callers with a deadline get from a flooded worker.

Run from the repository root::

    .venv/bin/python -m benchmarks.overload [--model multilingual-e5-small] [--rate 80]
        [--seconds 150] [--limits 0,10] [--via kafka|http] [--out benchmarks/results]

One embedded broker; for each ``SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S`` in ``--limits``
(0: off, a request is refused only when the work queued ahead would keep it past its
deadline) a fresh worker is flooded at ``--rate`` zero-shot requests per second
(``--inputs`` texts, 3 labels) for ``--seconds``, an open loop:

* ``--via kafka``: produced to the classify topic, each with a ``shotstream-deadline``
  header ``--deadline`` seconds after it was sent (what the gateway puts on its
  requests); answers read from the predictions and errors topics;
* ``--via http``: ``POST /v1/classify`` to a ``shotstream gateway`` process whose reply
  timeout is ``--deadline`` (one connection per request in flight).

Every request's answer is awaited, so nothing unanswered goes unseen. For each limit it
reports what came back: predictions (and how many in time), refusals by error code,
latency percentiles of each, the predictions per second during the flood and the
requests cut off at their deadline; then the ratios of each limit's figures to the
first's, measured in this run. Writes ``<out>/overload-<model>[-http].json``, ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from benchmarks.load import LoadClient, Request, RunResult
from benchmarks.report import div
from benchmarks.texts import ROUTING_LABELS, make_texts
from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.processes import GatewayProcess, WorkerProcess

OK = "answered"
"""The outcome of a request answered with predictions."""
HTTP_KEY = "overload-bench-key"
VIA = {"kafka": "over Kafka", "http": "through the HTTP gateway"}
TIMEOUTS = ("DEADLINE_EXCEEDED", "SERVICE_TIMEOUT")
"""The codes of requests that ran out of time: the worker's, and the gateway's 504."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="multilingual-e5-small")
    p.add_argument("--rate", type=float, default=80.0, help="requests per second sent")
    p.add_argument("--seconds", type=float, default=150.0, help="how long the flood lasts")
    p.add_argument("--inputs", type=int, default=8, help="texts per request")
    p.add_argument("--deadline", type=float, default=30.0, help="seconds each request has")
    p.add_argument(
        "--limits", default="0,10", help="SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S values (0: off)"
    )
    p.add_argument("--via", choices=("kafka", "http"), default="kafka")
    p.add_argument("--model-cache", type=Path, default=None)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--tag", default="", help="suffix for the result files")
    return p.parse_args(argv)


def flood_requests(
    tag: str, n: int, inputs: int, model: str, *, http: bool = False
) -> list[Request]:
    """``n`` zero-shot requests of ``inputs`` texts and the routing labels (for the
    gateway, Jina's body: no ``request_id``)."""
    texts = make_texts(2000)
    out: list[Request] = []
    for i in range(n):
        rid = f"{tag}-{i:06d}"
        chosen = [texts[(i * inputs + k) % len(texts)] for k in range(inputs)]
        body = {"model": model, "labels": ROUTING_LABELS, "input": chosen}
        record = body if http else {"request_id": rid, **body}
        out.append((rid, json.dumps(record, ensure_ascii=False).encode()))
    return out


def outcomes(result: RunResult, deadline_s: float) -> dict[str, Any]:
    """What the flood's callers got: per outcome (``answered`` or an error code) how many
    and their latency percentiles (seconds); predictions in time and per second."""
    points = timeline(result)
    span = max(result.sent.values()) - min(result.sent.values())  # the flood's length
    summary: dict[str, Any] = {
        "requests": result.requests,
        "unanswered": result.requests - len(result.received),
        "outcomes": {},
    }
    for outcome, pts in sorted(points.items()):
        p50, p90, p99 = np.percentile([latency for _, latency in pts], [50, 90, 99])
        summary["outcomes"][outcome] = {
            "count": len(pts),
            "p50_s": float(p50),
            "p90_s": float(p90),
            "p99_s": float(p99),
        }
    ok = points.get(OK, [])
    summary["in_time"] = sum(1 for _, latency in ok if latency <= deadline_s)
    during = sum(1 for sent, latency in ok if sent + latency <= span)
    summary["answered_per_s"] = during / span if span > 0 else 0.0
    return summary


def timeline(result: RunResult) -> dict[str, list[list[float]]]:
    """Per outcome, ``[seconds since the flood began, latency]`` of each request."""
    start = min(result.sent.values())
    out: dict[str, list[list[float]]] = {}
    for rid, t in result.received.items():
        sent = result.sent[rid]
        out.setdefault(result.codes.get(rid, OK), []).append(
            [round(sent - start, 3), round(t - sent, 3)]
        )
    return out


def relative(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each limit's predictions per second, in time, and p50 latency of predictions, as a
    ratio to the first limit's (measured in this run)."""
    names = list(runs)
    base = runs[names[0]]
    out: dict[str, dict[str, float]] = {}
    for name in names[1:]:
        run, ok, base_ok = runs[name], runs[name]["outcomes"], base["outcomes"]
        out[name] = {
            "answered_per_s": div(run["answered_per_s"], base["answered_per_s"]),
            "in_time": div(run["in_time"], base["in_time"]),
            "answered_p50": div(
                ok.get(OK, {}).get("p50_s", float("nan")),
                base_ok.get(OK, {}).get("p50_s", float("nan")),
            ),
        }
    return out


def cut_off(points: list[list[float]], deadline_s: float) -> int:
    """Refusals that came within a second of the deadline: requests taken in and then cut
    off unanswered when it passed (the others were refused when a worker took them)."""
    return sum(1 for _sent, latency in points if latency >= deadline_s - 1.0)


def label_of(limit: str) -> str:
    return "off" if float(limit) == 0 else f"{float(limit):g} s"


def markdown(results: dict[str, Any]) -> str:
    """The results as a table per limit, then the ratios."""
    a = results["args"]
    lines = [
        f"# Sustained overload: {a['model']}, {a['rate']:g} requests/s of {a['inputs']} texts "
        f"for {a['seconds']:g} s, {a['deadline']:g} s deadline",
        "",
        f"{results['timestamp']}; {results['machine']['usable_cpus']} usable CPUs; "
        f"one worker, {VIA[a.get('via', 'kafka')]} (embedded broker).",
        "",
        "| MAX_QUEUE_WAIT_S | requests | predictions (in time) | predictions/s during "
        "the flood | p50 / p90 / p99 of predictions | refusals: count, p50 | cut off at "
        "the deadline | unanswered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for limit, run in results["runs"].items():
        ok = run["outcomes"].get(OK, {"count": 0})
        lat = f"{ok['p50_s']:.1f} / {ok['p90_s']:.1f} / {ok['p99_s']:.1f} s" if ok["count"] else "-"
        refusals = "; ".join(
            f"{code} {o['count']:,}, {o['p50_s']:.2f} s"
            for code, o in run["outcomes"].items()
            if code != OK
        )
        timelines = results["timelines"][limit]
        cut = sum(cut_off(timelines.get(code, []), a["deadline"]) for code in TIMEOUTS)
        lines.append(
            f"| {label_of(limit)} | {run['requests']:,} | {ok['count']:,} ({run['in_time']:,}) "
            f"| {run['answered_per_s']:.1f} | {lat} | {refusals or '-'} | {cut:,} "
            f"| {run['unanswered']} |"
        )
    if results["ratios"]:
        first = label_of(next(iter(results["runs"])))
        lines += ["", f"Ratios to {first}, same run:", ""]
        for limit, r in results["ratios"].items():
            lines.append(
                f"- {label_of(limit)}: predictions/s {r['answered_per_s']:.2f}x, in time "
                f"{r['in_time']:.2f}x, p50 latency of predictions {r['answered_p50']:.2f}x"
            )
        lines += [
            "",
            "Predictions in time include those answered after the flood stopped: the work "
            "queued then (up to the limit's worth, or the deadline's with it off) is "
            "answered after it.",
        ]
    return "\n".join(lines) + "\n"


COLORS = {
    OK: "#2ca02c",
    "DEADLINE_EXCEEDED": "#d62728",
    "SERVICE_TIMEOUT": "#8c564b",
    "SERVICE_UNAVAILABLE": "#ff7f0e",
}


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per limit: each request's latency against when it was sent, by outcome."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 5), sharey=True, squeeze=False)
    for ax, (limit, run) in zip(axes[0], runs.items(), strict=True):
        for outcome, points in sorted(results["timelines"][limit].items()):
            xs, ys = zip(*points, strict=True) if points else ((), ())
            n = run["outcomes"][outcome]["count"]
            ax.scatter(
                xs, ys, s=3, alpha=0.5, color=COLORS.get(outcome, "#7f7f7f"),
                label=f"{outcome} ({n:,})",
            )  # fmt: skip
        ax.axhline(results["args"]["deadline"], color="#555555", linestyle=":", linewidth=1)
        if float(limit):
            ax.axhline(float(limit), color="#ff7f0e", linestyle="--", linewidth=1)
        ax.set_title(
            f"MAX_QUEUE_WAIT_S {label_of(limit)}: {run['answered_per_s']:.1f} predictions/s, "
            f"{run['in_time']:,} in time"
        )
        ax.set_xlabel("sent at (s since the flood began)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", markerscale=3)
    axes[0][0].set_ylabel("answer time - send time (s)")
    a = results["args"]
    fig.suptitle(
        f"{a['model']}: one worker flooded {VIA[a.get('via', 'kafka')]} at {a['rate']:g} "
        f"requests/s of {a['inputs']} texts "
        f"for {a['seconds']:g} s, {a['deadline']:g} s deadline "
        f"({results['machine']['usable_cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def flood(brokers: str, prefix: str, args: argparse.Namespace, tag: str) -> RunResult:
    """Warm the worker (no deadline), then the flood over Kafka; every answer awaited."""
    n = int(args.rate * args.seconds)
    async with LoadClient(brokers, prefix, stall_s=max(120.0, 2 * args.deadline)) as warm:
        await warm.burst(flood_requests(f"{tag}-warm", 16, args.inputs, args.model), "warm")
    async with LoadClient(
        brokers, prefix, stall_s=max(120.0, 2 * args.deadline), deadline_s=args.deadline
    ) as load:
        requests = flood_requests(tag, n, args.inputs, args.model)
        return await load.paced(requests, args.rate, f"flood {tag}")


async def flood_http(base: str, args: argparse.Namespace, tag: str) -> RunResult:
    """Warm the worker through the gateway, then the flood: one POST per request at its
    time, each its own connection; an answer's outcome is its body's ``code`` (``answered``
    for a 200)."""
    import aiohttp

    headers = {"Authorization": f"Bearer {HTTP_KEY}", "Content-Type": "application/json"}
    result = RunResult(f"flood {tag}")
    timeout = aiohttp.ClientTimeout(total=args.deadline + 60)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as http:

        async def post(rid: str, body: bytes, record: bool) -> None:
            sent = time.perf_counter()
            try:
                async with http.post("/v1/classify", data=body, headers=headers) as r:
                    answer = await r.json(content_type=None)
                    code = None if r.status == 200 else str(answer.get("code", r.status))
            except (aiohttp.ClientError, TimeoutError) as exc:
                code = f"client {type(exc).__name__}"
            if record:
                result.sent[rid], result.received[rid] = sent, time.perf_counter()
                if code is not None:
                    result.codes[rid] = code
                    result.errors += 1

        warm = flood_requests(f"{tag}-warm", 16, args.inputs, args.model, http=True)
        await asyncio.gather(*(post(rid, body, False) for rid, body in warm))
        n = int(args.rate * args.seconds)
        requests = flood_requests(tag, n, args.inputs, args.model, http=True)
        bar = tqdm(total=len(requests), desc=f"flood {tag}", unit="req", leave=False)
        tasks = []
        start = time.perf_counter()
        for i, (rid, body) in enumerate(requests):
            delay = start + i / args.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(post(rid, body, True))
            task.add_done_callback(lambda _: bar.update())
            tasks.append(task)
        await asyncio.gather(*tasks)
        bar.close()
    return result


def via_gateway(env: dict[str, str], log: Path, args: argparse.Namespace, tag: str) -> RunResult:
    """The HTTP flood through a gateway of the worker's settings, with no rate limits."""
    port = free_port()
    gateway_env = {
        **env,
        "SHOTSTREAM_API_KEYS": HTTP_KEY,
        "SHOTSTREAM_HTTP_PORT": str(port),
        "SHOTSTREAM_GATEWAY__REPLY_TIMEOUT_S": str(args.deadline),
        "SHOTSTREAM_GATEWAY__TIERS": json.dumps({"free": {"rpm": 10**9, "tpm": 10**12}}),
    }
    with GatewayProcess(gateway_env, log) as gateway:
        gateway.wait_ready(120)
        return asyncio.run(flood_http(f"http://127.0.0.1:{port}", args, tag))


def to_json(results: dict[str, Any]) -> str:
    """The results, indented, with each timeline on one line (24,000 points)."""
    text = json.dumps({**results, "timelines": None}, indent=1)
    timelines = json.dumps(results["timelines"], separators=(",", ":"))
    return text.replace('"timelines": null', f'"timelines": {timelines}', 1) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    limits = [s.strip() for s in args.limits.split(",") if s.strip()]
    run_id = f"{int(time.time())}{os.getpid()}"
    results: dict[str, Any] = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "usable_cpus": len(os.sched_getaffinity(0)),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "runs": {},
        "timelines": {},
    }
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shotstream-overload-")))
        cache = args.model_cache or work / "models"
        broker = stack.enter_context(EmbeddedBroker(free_port()))
        for i, limit in enumerate(limits):
            prefix = f"overload.{run_id}.{i}."
            env = {
                "SHOTSTREAM_BROKERS": broker.address,
                "SHOTSTREAM_DATA_DIR": str(work / f"worker-{i}"),
                "SHOTSTREAM_MODEL_CACHE_DIR": str(cache),
                "SHOTSTREAM_DEFAULT_MODEL": args.model,
                "SHOTSTREAM_TOPIC_PREFIX": prefix,
                "SHOTSTREAM_KAFKA__GROUP_ID": f"overload-{run_id}-{i}",
                "SHOTSTREAM_METRICS_PORT": "0",
                "SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S": limit,
            }
            print(f"MAX_QUEUE_WAIT_S={limit}: starting a worker ...", flush=True)
            with WorkerProcess(env, work / f"worker-{i}.log") as worker:
                worker.wait_ready(600)
                if args.via == "kafka":
                    result = asyncio.run(flood(broker.address, prefix, args, f"{run_id}-{i}"))
                else:
                    result = via_gateway(env, work / f"gateway-{i}.log", args, f"{run_id}-{i}")
            summary = outcomes(result, args.deadline)
            results["runs"][limit] = summary
            results["timelines"][limit] = timeline(result)
            print(json.dumps(summary, indent=1), flush=True)
    results["ratios"] = relative(results["runs"])
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"overload-{args.model.replace('/', '_')}" + ("-http" if args.via == "http" else "")
    name += f"-{args.tag}" if args.tag else ""
    (args.out / f"{name}.json").write_text(to_json(results))
    (args.out / f"{name}.md").write_text(markdown(results))
    plot(results, args.out / f"{name}.png")
    print(markdown(results))
    print(f"wrote {args.out / name}.json, .md and .png")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
