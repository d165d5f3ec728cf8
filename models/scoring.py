"""Zero-shot scoring: softmax over cosine similarities of inputs and labels.

>>> import numpy as np
>>> inputs = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
>>> labels = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
>>> p = zero_shot_probabilities(inputs, labels, temperature=0.1)
>>> [[round(float(v), 3) for v in row] for row in p]
[[0.982, 0.018], [0.0, 1.0]]
>>> np.allclose(p.sum(axis=1), 1.0)
True
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]


def l2_normalize(x: Matrix) -> Matrix:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    out: Matrix = (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out


def softmax(logits: npt.NDArray[np.floating], temperature: float = 1.0) -> Matrix:
    """Row-wise softmax of ``logits / temperature``, stable for large values.

    >>> softmax(np.array([[1000.0, 1000.0]])).tolist()
    [[0.5, 0.5]]
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: Matrix = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
    return out


def zero_shot_probabilities(inputs: Matrix, labels: Matrix, temperature: float) -> Matrix:
    """``(n_inputs, n_labels)`` probabilities; each row sums to 1.

    Both arguments are embeddings (rows); they are normalised here, so cosine
    similarity is a plain dot product.
    """
    cosine = l2_normalize(inputs) @ l2_normalize(labels).T
    return softmax(cosine, temperature)


def ranked(labels: list[str], probabilities: npt.NDArray[np.floating]) -> list[tuple[str, float]]:
    """Labels with their probability, most likely first (ties keep label order).

    >>> ranked(["a", "b", "c"], np.array([0.2, 0.5, 0.3]))
    [('b', 0.5), ('c', 0.3), ('a', 0.2)]
    """
    p = np.asarray(probabilities)
    order = np.argsort(-p, kind="stable")
    return list(zip([labels[i] for i in order.tolist()], p[order].tolist(), strict=True))
