"""What the worker's micro-batcher did during a phase, from its Prometheus metrics.

>>> text = '''shotstream_batch_size_sum{model="m"} 130.0
... shotstream_batch_size_count{model="m"} 4.0
... shotstream_batch_tokens_total{kind="real",model="m"} 900.0
... shotstream_batch_tokens_total{kind="padded",model="m"} 1800.0
... shotstream_embedding_seconds_sum{model="m"} 2.0'''
>>> before = parse(text)
>>> after = {**before, "batches": 6.0, "items": 194.0, "embed_seconds": 3.0}
>>> round(batch_stats(before, after, seconds=2.0)["mean_batch_size"], 1)
32.0
"""

from __future__ import annotations

import re
import urllib.request
from typing import Any

_METRICS = {
    "shotstream_batch_size_sum": "items",
    "shotstream_batch_size_count": "batches",
    "shotstream_embedding_seconds_sum": "embed_seconds",
}
_LINE = re.compile(r"^(\w+)(?:\{([^}]*)\})?\s+(\S+)$")


def parse(text: str) -> dict[str, float]:
    """Totals over all models: items, batches, embed_seconds, real_tokens, padded_tokens."""
    out = dict.fromkeys([*_METRICS.values(), "real_tokens", "padded_tokens"], 0.0)
    for line in text.splitlines():
        found = _LINE.match(line.strip())
        if not found:
            continue
        name, labels, value = found.groups()
        if name in _METRICS:
            out[_METRICS[name]] += float(value)
        elif name == "shotstream_batch_tokens_total" and labels:
            kind = "real" if 'kind="real"' in labels else "padded"
            out[f"{kind}_tokens"] += float(value)
    return out


def scrape(port: int) -> dict[str, float]:
    """The worker's counters now (blocking: call it off the event loop)."""
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse(response.read().decode())


def batch_stats(
    before: dict[str, float], after: dict[str, float], seconds: float
) -> dict[str, Any]:
    """Model calls between two scrapes: batch sizes, padding, share of the time computing."""
    d = {k: after[k] - before[k] for k in after}
    return {
        "model_calls": int(d["batches"]),
        "mean_batch_size": d["items"] / d["batches"] if d["batches"] else 0.0,
        "padding_ratio": d["padded_tokens"] / d["real_tokens"] if d["real_tokens"] else 0.0,
        "embed_seconds": d["embed_seconds"],
        "model_busy": d["embed_seconds"] / seconds if seconds > 0 else 0.0,
    }
