"""Embeddings of a data set, computed once per (data set, model) and cached as ``.npy``.

The encoder is loaded exactly as a worker loads it (registry, prefix, device, dtype), so
the study measures the vectors the stream processor would compute. The cache key hashes
the model name and every text, so a changed data set or split never reuses stale vectors.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from models.embedders import TextEncoder

Matrix = npt.NDArray[np.float32]

DEFAULT_CACHE = Path(".shotstream") / "bench-cache"


def cache_key(model: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(model.encode())
    for text in texts:
        h.update(b"\0" + text.encode())
    return h.hexdigest()[:16]


def embed_texts(
    encoder: TextEncoder, texts: Sequence[str], batch: int = 32, desc: str = "embed"
) -> Matrix:
    """Embed ``texts`` in length-sorted batches; rows in the input order."""
    ids = encoder.tokenize(list(texts))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), encoder.dim), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch), desc=desc, unit="batch", leave=False):
        rows = order[start : start + batch]
        out[rows] = encoder.embed_ids([ids[i] for i in rows])
    return out


class EmbeddingCache:
    """``<root>/<tag>-<model>-<key>.npy`` files; ``stats`` records seconds spent embedding."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stats: dict[str, float] = {}

    def get(
        self,
        tag: str,
        encoder_name: str,
        texts: Sequence[str],
        load_encoder: Callable[[], TextEncoder],
    ) -> Matrix:
        """Cached vectors of ``texts``, or embed them with ``load_encoder()`` and cache."""
        safe = encoder_name.replace("/", "_")
        path = self.root / f"{tag}-{safe}-{cache_key(encoder_name, texts)}.npy"
        if path.exists():
            cached: Matrix = np.load(path)
            return cached
        encoder = load_encoder()
        started = time.perf_counter()
        vectors = embed_texts(encoder, texts, desc=f"embed {tag} ({encoder_name})")
        self.stats[f"{tag}/{encoder_name}"] = time.perf_counter() - started
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
        return vectors
