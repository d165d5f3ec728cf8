"""Test data shipped in Debian packages (unpacked by scripts/testdata.sh into .testdata/).

The Fashion-MNIST reader and the Debian file lookup live in ``benchmarks/datasets.py``
(the accuracy study reads the same files); they are re-exported here for the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from benchmarks.datasets import FASHION_CLASSES, debian_file, fashion_mnist

__all__ = ["FASHION_CLASSES", "PHOTOS", "debian_file", "fashion_mnist", "per_class", "photo"]

PHOTOS = ("dog", "eagle", "giraffe", "horses", "kite", "person", "scream")


def per_class(labels: npt.NDArray[np.uint8], n: int, skip: int = 0) -> list[int]:
    """Indices of ``n`` examples of each class (after skipping ``skip`` of each)."""
    chosen: list[int] = []
    for k in range(int(labels.max()) + 1):
        chosen += np.flatnonzero(labels == k)[skip : skip + n].tolist()
    return chosen


def photo(name: str) -> Path:
    return debian_file(f"usr/share/darknet/data/{name}.jpg")
