"""Embeddings of a data set, computed once per (data set, model) and cached as ``.npy``.

The encoder is loaded exactly as a worker loads it (registry, prefix, device, dtype), so
the study measures the vectors the stream processor would compute. The cache key hashes
the model name and every text (or every image's pixels), so a changed data set or split
never reuses stale vectors. Images go the worker's way too: an RGB Pillow image
(``models.images.to_rgb``), the encoder's ``preprocess``, then ``embed_pixels`` in batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

from models.embedders import TextEncoder
from models.images import ImageEncoder

Matrix = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]
E = TypeVar("E")

DEFAULT_CACHE = Path(".shotstream") / "bench-cache"
IMAGE_BATCH = 16
"""Images per ``embed_pixels`` call (the fastest for EfficientNet-Lite0 on CPU)."""


def cache_key(model: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(model.encode())
    for text in texts:
        h.update(b"\0" + text.encode())
    return h.hexdigest()[:16]


def image_cache_key(model: str, images: Pixels) -> str:
    """A hash of the model name, the array's shape and every pixel."""
    h = hashlib.sha256(model.encode())
    h.update(b"\0" + repr(images.shape).encode() + b"\0")
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
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


def embed_images(
    encoder: ImageEncoder, images: Pixels, batch: int = IMAGE_BATCH, desc: str = "embed"
) -> Matrix:
    """Embed uint8 images (grayscale ``(n, h, w)`` or RGB ``(n, h, w, 3)``) as a worker
    does: RGB Pillow image, ``preprocess``, ``embed_pixels``; rows in the input order."""
    from PIL import Image

    from models.images import to_rgb

    out = np.zeros((len(images), encoder.dim), dtype=np.float32)
    for start in tqdm(range(0, len(images), batch), desc=desc, unit="batch", leave=False):
        pixels = [
            encoder.preprocess(to_rgb(Image.fromarray(np.asarray(a, dtype=np.uint8))))
            for a in images[start : start + batch]
        ]
        out[start : start + len(pixels)] = encoder.embed_pixels(pixels)
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
        return self._cached(
            tag,
            encoder_name,
            cache_key(encoder_name, texts),
            load_encoder,
            lambda encoder: embed_texts(encoder, texts, desc=f"embed {tag} ({encoder_name})"),
        )

    def get_images(
        self,
        tag: str,
        encoder_name: str,
        images: Pixels,
        load_encoder: Callable[[], ImageEncoder],
    ) -> Matrix:
        """Cached vectors of ``images``, or embed them with ``load_encoder()`` and cache."""
        return self._cached(
            tag,
            encoder_name,
            image_cache_key(encoder_name, images),
            load_encoder,
            lambda encoder: embed_images(encoder, images, desc=f"embed {tag} ({encoder_name})"),
        )

    def _cached(
        self,
        tag: str,
        encoder_name: str,
        key: str,
        load_encoder: Callable[[], E],
        embed: Callable[[E], Matrix],
    ) -> Matrix:
        """The ``.npy`` for ``key``, or ``embed(load_encoder())`` (timed without the
        load) written there."""
        safe = encoder_name.replace("/", "_")
        path = self.root / f"{tag}-{safe}-{key}.npy"
        if path.exists():
            cached: Matrix = np.load(path)
            return cached
        encoder = load_encoder()
        started = time.perf_counter()
        vectors = embed(encoder)
        self.stats[f"{tag}/{encoder_name}"] = time.perf_counter() - started
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)
        return vectors
