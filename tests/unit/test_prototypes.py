"""The research prototype learner (benchmarks/prototypes.py): with one prototype per
class it is exactly the shipped learner; more prototypes appear only after ``grow``
examples of a class and can then fit what one linear score per class cannot."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.accuracy import Task, class_indices, train_shipped
from benchmarks.prototypes import prototype_pa


def xor_task(n: int = 240, dim: int = 8) -> Task:
    """Class "a" lives in the blobs at (+1, +1) and (-1, -1) of the first two dimensions,
    class "b" at (+1, -1) and (-1, +1): no single linear score per class separates them,
    two prototypes per class can."""
    rng = np.random.default_rng(1)
    signs = rng.choice([-1.0, 1.0], size=(2 * n, 2))
    X = rng.normal(0, 0.15, (2 * n, dim))
    X[:, :2] += signs
    y = (signs[:, 0] != signs[:, 1]).astype(np.int64)
    labels = np.zeros((2, dim))
    labels[0, 4], labels[1, 5] = 1.0, 1.0  # label vectors carry no information here
    return Task(["a", "b"], X[:n].astype(np.float32), y[:n], X[n:].astype(np.float32), labels)


def test_one_prototype_is_the_shipped_learner() -> None:
    rng = np.random.default_rng(2)
    labels = rng.normal(size=(3, 16))
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    y = rng.integers(0, 3, 90)
    X = labels[y] + rng.normal(0, 0.8, (90, 16))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    task = Task(
        ["x", "y", "z"], X[:60].astype(np.float32), y[:60], X[60:].astype(np.float32), labels
    )
    shipped = class_indices(train_shipped(task), task.classes, task.X_test)
    assert np.array_equal(prototype_pa(task, prototypes=1, grow=0), shipped)


def test_prototypes_grow_and_fit_a_non_linear_split() -> None:
    task = xor_task()
    truth = (task.X_test[:, 0] * task.X_test[:, 1] < 0).astype(np.int64)
    one = np.mean(prototype_pa(task, prototypes=1, grow=0) == truth)
    two = np.mean(prototype_pa(task, prototypes=2, grow=10) == truth)
    assert one < 0.75  # one linear score per class cannot
    assert two > 0.95
    # never grown (each class sees fewer than `grow` examples): the one-prototype answer
    never = prototype_pa(task, prototypes=2, grow=10_000)
    assert np.array_equal(never, prototype_pa(task, prototypes=1, grow=0))


def test_image_sets_are_refused() -> None:
    task = xor_task()
    with pytest.raises(ValueError, match="label vectors"):
        prototype_pa(
            Task(task.classes, task.X_train, task.y_train, task.X_test, None), prototypes=2, grow=1
        )
