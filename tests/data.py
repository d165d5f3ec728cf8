"""Test data shipped in Debian packages (unpacked by scripts/testdata.sh into .testdata/)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
ROOTS = (Path("/"), REPO / ".testdata")

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")


def debian_file(path: str) -> Path:
    """``usr/share/...`` from a system install or from ``.testdata/``."""
    for root in ROOTS:
        candidate = root / path
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path} not found: run scripts/testdata.sh (Debian packages)")


def fashion_mnist(split: str = "t10k") -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Fashion-MNIST images ``(n, 28, 28)`` and labels ``(n,)`` from the idx.gz files."""
    folder = "usr/share/datasets/fashion-mnist"
    with gzip.open(debian_file(f"{folder}/{split}-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(debian_file(f"{folder}/{split}-labels-idx1-ubyte.gz")) as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return images, labels


def per_class(labels: npt.NDArray[np.uint8], n: int, skip: int = 0) -> list[int]:
    """Indices of ``n`` examples of each class (after skipping ``skip`` of each)."""
    chosen: list[int] = []
    for k in range(int(labels.max()) + 1):
        chosen += np.flatnonzero(labels == k)[skip : skip + n].tolist()
    return chosen


def photo(name: str) -> Path:
    return debian_file(f"usr/share/darknet/data/{name}.jpg")
