"""Prototypes per class (models.fewshot) and their validation sweep (benchmarks/prototypes.py).

More prototypes appear only after ``grow`` examples of a class (or ``grow_misses`` misses)
and can then fit what one linear score per class cannot; with growth never reached the
classifier is the linear one.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from tqdm import tqdm

from benchmarks.accuracy import Task, class_indices, train_shipped
from benchmarks.prototypes import sweep
from models.fewshot import PassiveAggressiveClassifier
from state.classifiers import TEXT_LEARNER


def xor_task(n: int = 240, dim: int = 8, seed: int = 1) -> Task:
    """Class "a" lives in the blobs at (+1, +1) and (-1, -1) of the first two dimensions,
    class "b" at (+1, -1) and (-1, +1): no single linear score per class separates them,
    two prototypes per class can."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(2 * n, 2))
    X = rng.normal(0, 0.15, (2 * n, dim))
    X[:, :2] += signs
    y = (signs[:, 0] != signs[:, 1]).astype(np.int64)
    labels = np.zeros((2, dim))
    labels[0, 4], labels[1, 5] = 1.0, 1.0  # label vectors carry no information here
    return Task(["a", "b"], X[:n].astype(np.float32), y[:n], X[n:].astype(np.float32), labels)


def accuracy(task: Task, prototypes: int, grow: int) -> tuple[float, list[int]]:
    """Test accuracy on the XOR layout, and the prototypes each class ended with (growing
    on examples)."""
    settings = dataclasses.replace(TEXT_LEARNER, prototypes=prototypes, grow=grow, grow_misses=0)
    clf = train_shipped(task, settings)
    truth = (task.X_test[:, 0] * task.X_test[:, 1] < 0).astype(np.int64)
    return float(np.mean(class_indices(clf, task.classes, task.X_test) == truth)), clf.rows


def test_prototypes_grow_and_fit_a_non_linear_split() -> None:
    task = xor_task()
    one, rows_one = accuracy(task, 1, 0)
    two, rows_two = accuracy(task, 2, 10)
    assert rows_one == [1, 1]
    assert rows_two == [2, 2]
    assert one < 0.75  # one linear score per class cannot
    assert two > 0.95
    # never grown (each class sees fewer than `grow` examples): exactly the linear answer
    on_examples = dataclasses.replace(TEXT_LEARNER, grow_misses=0)
    never = train_shipped(task, dataclasses.replace(on_examples, prototypes=4, grow=10_000))
    linear = train_shipped(task, dataclasses.replace(on_examples, prototypes=1, grow=0))
    assert never.rows == [1, 1]
    np.testing.assert_array_equal(never.weights, linear.weights)


def test_growing_on_misses_leaves_a_class_linear_until_it_is_missed() -> None:
    # two classes one linear score separates: nothing is ever missed after the first
    # example of each, so neither class grows however many examples it learns
    clf = PassiveAggressiveClassifier(dim=2, C=1.0, prototypes=3, grow=1, grow_misses=2)
    for x, label in [([1, 0.1], "a"), ([-1, 0.1], "b")] * 20:
        clf.learn_one(x, label)
    assert (clf.rows, clf.misses, clf.seen) == ([1, 1], [0, 0], [20, 20])
    # the XOR layout keeps missing: classes grow, every second miss, up to 3 prototypes
    task = xor_task()
    xor = dataclasses.replace(TEXT_LEARNER, prototypes=3, grow=10_000, grow_misses=2)
    grown = train_shipped(task, xor)
    assert grown.rows == [3, 3]
    assert min(grown.misses) >= 4  # the third prototype came at the fourth miss
    truth = (task.X_test[:, 0] * task.X_test[:, 1] < 0).astype(np.int64)
    assert np.mean(class_indices(grown, task.classes, task.X_test) == truth) > 0.95
    # ``grow`` counts nothing when growing on misses: 10,000 examples were never reached
    never = dataclasses.replace(xor, grow_misses=0)
    assert train_shipped(task, never).rows == [1, 1]


def test_a_class_grows_at_each_multiple_of_grow_misses_after_its_step() -> None:
    # "a" learns at (1, 0) and "b" at (-1, 0); then each "a" at (-1, 0), deep in b's
    # half, is a miss that a small step (C 0.01) cannot undo
    clf = PassiveAggressiveClassifier(dim=2, C=0.01, prototypes=3, grow_misses=2)
    clf.learn_many([[1.0, 0.0], [-1.0, 0.0]] * 10, ["a", "b"] * 10, num_iters=10)
    rows = []
    for _ in range(5):
        first = clf.weights[0].copy()
        clf.learn_one([-1.0, 0.0], "a")
        rows.append(clf.rows[0])
        if rows == [1, 2]:
            # the new prototype: the first one after the step of the miss that grew it,
            # plus noise
            stepped = first + np.float32(0.01) * np.array([-1.0, 0.0], np.float32)
            np.testing.assert_allclose(clf.weights[0], stepped, rtol=1e-6)
            assert 0 < np.linalg.norm(clf.weights[1] - stepped) < 0.5
    assert clf.predict_one([-1.0, 0.0]) == "b"  # every one of the five was a miss
    assert clf.misses[0] == 5
    assert rows == [1, 2, 2, 3, 3]  # at 2 misses, then at 2 x 2 (the cap: 3)


def test_the_settings_that_grow_on_misses_are_checked() -> None:
    PassiveAggressiveClassifier(dim=2, prototypes=2, grow=0, grow_misses=3)  # grow unused
    for bad in ({"grow_misses": -1}, {"misses": [0]}, {"misses": [0, -2]}):
        kwargs: dict[str, Any] = {"labels": ["a", "b"], "prototypes": 2, "grow_misses": 3}
        with pytest.raises(ValueError, match="miss"):
            PassiveAggressiveClassifier(dim=2, **(kwargs | bad))


def test_misses_are_counted_on_first_passes_only() -> None:
    # an "a" deep in b's half stays missed through all three small steps: one miss, as
    # its prequential outcome is one, by either way in
    for one_by_one in (False, True):
        clf = PassiveAggressiveClassifier(dim=2, C=0.01, prototypes=2, grow_misses=5)
        clf.learn_many([[1.0, 0.0], [-1.0, 0.0]] * 10, ["a", "b"] * 10, num_iters=10)
        assert clf.misses == [0, 0]
        if one_by_one:
            clf.learn_one([-1.0, 0.0], "a", num_iters=3)
        else:
            assert clf.learn_many([[-1.0, 0.0]], ["a"], num_iters=3) == [False]
        assert clf.predict_one([-1.0, 0.0]) == "b"  # still missed after the three passes
        assert clf.misses == [1, 0]


def test_scores_are_each_class_best_prototype() -> None:
    clf = PassiveAggressiveClassifier(dim=2, C=1.0, prototypes=2, grow=2)
    for x, label in [([1, 0], "a"), ([0, 1], "b"), ([-1, 0], "a"), ([0, -1], "b")] * 3:
        clf.learn_one(x, label)
    assert clf.rows == [2, 2]
    probe = np.array([[0.5, -0.2], [-0.7, 0.1]], dtype=np.float32)
    rows = probe @ clf.weights.T  # a's two prototypes, then b's
    expected = np.stack([rows[:, :2].max(axis=1), rows[:, 2:].max(axis=1)], axis=1)
    np.testing.assert_allclose(clf.decision_function(probe), expected, rtol=1e-6)
    p = clf.predict_proba_many(probe)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert clf.margin(probe[0], "a") == pytest.approx(expected[0, 0] - expected[0, 1], rel=1e-5)


def test_growth_needs_a_step() -> None:
    with pytest.raises(ValueError, match="grow"):
        PassiveAggressiveClassifier(dim=2, prototypes=3, grow=0)


def test_the_sweep_chooses_prototypes_where_they_help() -> None:
    cells = []
    for seed in range(3):
        task = xor_task(n=120, seed=seed)
        truth = (task.X_test[:, 0] * task.X_test[:, 1] < 0).astype(np.int64)
        cells.append(("xor/toy", 120, task, truth))
    with tqdm(disable=True) as bar:
        result = sweep(cells, TEXT_LEARNER, bar)
    rows = {(r["settings"]["prototypes"], r["settings"]["grow"]): r for r in result["grid"]}
    assert rows[1, 0]["mean_f1"] < 0.8
    assert result["chosen"]["prototypes"] > 1
    chosen = rows[result["chosen"]["prototypes"], result["chosen"]["grow"]]
    assert chosen["mean_f1"] > 0.95
    assert chosen["worst_vs_first"] > 0.1  # better than one prototype in every cell
    assert result["base"] == TEXT_LEARNER.as_dict()


def test_each_stage_sweeps_on_the_settings_it_was_chosen_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The prototypes were chosen before whitening, fading and growing on misses, so their
    stage runs without them (and reproduces its recorded results); the whitening stage
    runs without fading or misses, the fading stage (text only) without misses, and the
    misses stage on the shipped settings."""
    import benchmarks.prototypes as stages
    from state.classifiers import IMAGE_LEARNER

    bases: dict[str, list[Any]] = {}

    def spy(cells: Any, base: Any, bar: Any, stage: Any) -> dict[str, Any]:
        bases.setdefault(cells, []).append((base, stage))
        return {}

    monkeypatch.setattr(stages, "sweep", spy)
    monkeypatch.setattr(
        stages,
        "validation_cells",
        lambda study: ({"text": "text", "image": "image"}, {"text": [], "image": []}, {}),
    )
    study = stages.Study(datasets=[], models=[])
    for name in ("prototypes", "whiten", "fade", "misses"):
        stages.run(study, stage=stages.STAGES[name], progress=False)
    (early, prototypes), (late, whitening), (image_shipped, misses) = bases["image"]
    assert prototypes == stages.SETTINGS
    assert early.whiten == 0.0
    assert whitening == stages.WHITEN_SETTINGS
    assert late == dataclasses.replace(IMAGE_LEARNER, grow_misses=0)
    assert late.whiten > 0
    assert misses == stages.MISSES_SETTINGS
    assert image_shipped == IMAGE_LEARNER
    (text_early, _), (text_late, _), (before_misses, fading), (shipped, _) = bases["text"]
    assert fading == stages.FADE_SETTINGS
    assert before_misses == dataclasses.replace(TEXT_LEARNER, grow_misses=0)
    assert shipped == TEXT_LEARNER
    assert shipped.grow_misses > 0
    assert text_early.warm_start_fade == text_late.warm_start_fade == 0.0
    assert text_early.grow_misses == text_late.grow_misses == 0
