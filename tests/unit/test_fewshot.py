"""Property tests of the passive-aggressive learner (Crammer et al. 2006)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.fewshot import ClassLimitError, NonFiniteInputError, PassiveAggressiveClassifier

DIM = 8
vec = arrays(np.float32, DIM, elements=st.floats(-1, 1, width=32))


def trained(seed: int, n_classes: int = 3, variant: str = "PA-I") -> PassiveAggressiveClassifier:
    rng = np.random.default_rng(seed)
    clf = PassiveAggressiveClassifier(dim=DIM, C=0.5, variant=variant)  # type: ignore[arg-type]
    for i in range(12):
        clf.learn_one(rng.standard_normal(DIM), f"c{i % n_classes}")
    return clf


@given(st.integers(0, 1000), vec, st.integers(0, 2))
def test_no_update_when_the_loss_is_zero(seed: int, x: np.ndarray, y: int) -> None:
    clf = trained(seed)
    label = f"c{y}"
    assume(float(x @ x) > 1e-3)
    clf.learn_one(x, label, num_iters=50)  # drive the margin to >= 1
    assume(clf.margin(x, label) >= 1.0)
    before = clf.weights.copy()
    clf.learn_one(x, label)
    assert np.array_equal(before, clf.weights)


@given(st.integers(0, 1000), vec, st.integers(0, 2), st.sampled_from(["PA", "PA-I", "PA-II"]))
def test_learning_an_example_grows_its_margin(
    seed: int, x: np.ndarray, y: int, variant: str
) -> None:
    clf = trained(seed, variant=variant)
    label = f"c{y}"
    assume(float(x @ x) > 1e-3)
    before = clf.margin(x, label)
    clf.learn_one(x, label)
    after = clf.margin(x, label)
    assert after >= before - 1e-5
    if before < 1:
        assert after > before


@given(st.integers(0, 1000), vec, st.integers(0, 2))
def test_a_pa1_step_is_bounded_by_c(seed: int, x: np.ndarray, y: int) -> None:
    clf = trained(seed)
    assume(float(x @ x) > 1e-3)
    before = clf.weights.copy()
    clf.learn_one(x, f"c{y}", num_iters=1)
    moved = np.linalg.norm(clf.weights - before, axis=1)
    assert (moved <= clf.C * np.linalg.norm(x) + 1e-4).all()  # ‖τx‖ with τ ≤ C


@given(st.integers(0, 1000), arrays(np.float32, (5, DIM), elements=st.floats(-1, 1, width=32)))
def test_probabilities_sum_to_one(seed: int, X: np.ndarray) -> None:
    p = trained(seed).predict_proba_many(X)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_classes_are_added_online_up_to_the_limit() -> None:
    clf = PassiveAggressiveClassifier(dim=2, max_classes=3)
    clf.learn_one([1, 0], "a")
    clf.learn_one([0, 1], "b")
    old = clf.weights.copy()
    clf.add_class("c")
    assert np.array_equal(clf.weights[:2], old)  # a new class leaves the others alone
    with pytest.raises(ClassLimitError):
        clf.add_class("d")


def test_learns_a_separable_problem_and_num_iters_weights_examples() -> None:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16))
    X = np.vstack([c + 0.3 * rng.standard_normal((30, 16)) for c in centers])
    y = [f"k{i}" for i in range(4) for _ in range(30)]
    order = rng.permutation(len(y))
    clf = PassiveAggressiveClassifier(dim=16)
    prior = clf.learn_many(X[order], [y[i] for i in order], num_iters=5)
    assert sum(prior[-40:]) >= 36  # prequential accuracy climbs once classes are known
    assert np.mean(np.array(clf.predict_many(X)) == np.array(y)) > 0.95
    once, many = PassiveAggressiveClassifier(dim=2), PassiveAggressiveClassifier(dim=2)
    for clf2, iters in ((once, 1), (many, 10)):
        clf2.learn_one([1, 0], "a")
        clf2.learn_one([0, 1], "b")
        clf2.learn_one([0.9, 0.2], "b", num_iters=iters)
    assert many.margin([0.9, 0.2], "b") > once.margin([0.9, 0.2], "b")


@settings(max_examples=20)
@given(st.integers(0, 1000))
def test_warm_start_predicts_like_the_label_embeddings(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.standard_normal((3, DIM)).astype(np.float32)
    clf = PassiveAggressiveClassifier(dim=DIM)
    for i, row in enumerate(labels):
        clf.add_class(f"l{i}", init=20 * row)
    x = labels[1] + 0.01 * rng.standard_normal(DIM).astype(np.float32)
    cos = labels @ x / np.linalg.norm(labels, axis=1)
    assert clf.predict_one(x) == f"l{int(np.argmax(labels @ x))}"
    assert int(np.argmax(cos)) == 1  # x is label 1's, slightly moved


def test_centring_and_scaling_track_the_learned_inputs() -> None:
    """Learned in three batches, the running statistics equal those of all inputs."""
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((30, DIM)) + 2.0).astype(np.float32)
    clf = PassiveAggressiveClassifier(dim=DIM, center=True, scale=True)
    for chunk in np.array_split(np.arange(30), 3):
        clf.learn_many(X[chunk], [f"c{i % 3}" for i in chunk])
    mean = X.astype(np.float64).mean(axis=0)
    assert clf.mean_count == 30
    np.testing.assert_allclose(clf.mean, mean, rtol=1e-5)
    rms = np.sqrt(np.mean(np.sum((X - mean) ** 2, axis=1)))
    assert clf.spread() == pytest.approx(rms, rel=1e-5)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 1000), st.floats(0.05, 20.0))
def test_a_scaling_learner_does_not_depend_on_the_embedding_scale(seed: int, k: float) -> None:
    """With ``scale``, inputs k times longer give the same classifier (not so without
    it: the step cap and the unit margin would then mean different things)."""
    rng = np.random.default_rng(seed)
    labels = rng.standard_normal((3, DIM)).astype(np.float32)
    X = rng.standard_normal((20, DIM)).astype(np.float32)
    y = [f"l{i % 3}" for i in range(20)]
    probe = rng.standard_normal((5, DIM)).astype(np.float32)
    scores = []
    for factor in (1.0, k):
        clf = PassiveAggressiveClassifier(dim=DIM, C=0.05, center=True, scale=True)
        for i, row in enumerate(labels):
            clf.add_class(f"l{i}", init=row)
        clf.learn_many(np.float32(factor) * X, y, num_iters=5)
        scores.append(clf.decision_function(np.float32(factor) * probe))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-3, atol=1e-3)


def test_whitening_finds_a_narrow_signal_among_wide_noise() -> None:
    """One dimension tells the classes apart at a hundredth of the spread of 19 noise
    dimensions: scaled by the overall spread, the steps move mostly noise; whitened, each
    dimension weighs by its own spread."""

    def data(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 2, n)
        X = rng.standard_normal((n, 20))
        X[:, 0] = (2 * y - 1) * 0.05 + rng.normal(0, 0.01, n)
        return X.astype(np.float32), [f"c{v}" for v in y]

    X, y = data(200, 1)
    probe, truth = data(500, 2)
    accuracy = {}
    for whiten in (0.0, 10.0):
        clf = PassiveAggressiveClassifier(
            dim=20, C=0.3, variant="PA-II", center=True, scale=True, whiten=whiten
        )
        clf.learn_many(X, y, num_iters=10)
        accuracy[whiten] = np.mean(np.array(clf.predict_many(probe)) == np.array(truth))
    assert accuracy[10.0] > 0.98
    assert accuracy[0.0] < 0.8  # measured 0.6


def test_whitening_tracks_each_dimension_and_shrinks_towards_the_average() -> None:
    rng = np.random.default_rng(4)
    X = (rng.standard_normal((40, DIM)) * np.arange(1, DIM + 1) + 3.0).astype(np.float32)
    clf = PassiveAggressiveClassifier(dim=DIM, center=True, whiten=10.0)
    np.testing.assert_array_equal(clf.dim_scales(), np.ones(DIM))  # before any input
    for chunk in np.array_split(np.arange(40), 4):
        clf.learn_many(X[chunk], [f"c{i % 2}" for i in chunk])
    var = X.astype(np.float64).var(axis=0)
    shrunk = (40 * var + 10.0 * var.mean()) / 50.0
    np.testing.assert_allclose(clf.dim_scales(), 1 / np.sqrt(DIM * shrunk), rtol=1e-3)
    with pytest.raises(ValueError, match="whiten"):
        PassiveAggressiveClassifier(dim=DIM, whiten=10.0)  # needs centring


def test_whitening_after_one_input_or_after_scaling_starts_where_scaling_stood() -> None:
    """One input (or identical ones) has no variance: float32 rounding of the stored
    squares is not divided by (it gave scales of ~500). A learner that kept no squares
    (its inputs were learned while scaling) starts from its total spread, not zeros."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((1, DIM)) + 1.0).astype(np.float32)
    clf = PassiveAggressiveClassifier(dim=DIM, center=True, scale=True, whiten=200.0)
    clf.learn_many(x, ["a"])
    np.testing.assert_array_equal(clf.dim_scales(), np.ones(DIM))
    clf.learn_many(np.repeat(x, 4, axis=0), ["a"] * 4)
    np.testing.assert_array_equal(clf.dim_scales(), np.ones(DIM))
    X = (0.3 * rng.standard_normal((50, DIM)) + 2.0).astype(np.float32)
    scaled = PassiveAggressiveClassifier(dim=DIM, center=True, scale=True)
    scaled.learn_many(X, ["a", "b"] * 25)
    whitened = PassiveAggressiveClassifier(
        dim=DIM, center=True, scale=True, whiten=200.0, mean=scaled.mean,
        mean_count=scaled.mean_count, sq_mean=scaled.sq_mean,
    )  # fmt: skip
    np.testing.assert_allclose(whitened.dim_scales(), 1 / scaled.spread(), rtol=1e-4)


def test_a_fresh_scaling_learner_scores_like_its_label_embeddings() -> None:
    rng = np.random.default_rng(5)
    labels = rng.standard_normal((3, DIM)).astype(np.float32)
    clf = PassiveAggressiveClassifier(dim=DIM, center=True, scale=True)
    for i, row in enumerate(labels):
        clf.add_class(f"l{i}", init=row)
    x = rng.standard_normal((4, DIM)).astype(np.float32)
    assert clf.spread() == 1.0
    np.testing.assert_allclose(clf.decision_function(x), x @ labels.T, rtol=1e-6)


def _state(clf: PassiveAggressiveClassifier) -> tuple:
    return (list(clf.labels), clf.weights.tobytes(), clf.mean.tobytes(), clf.mean_count,
            clf.sq_mean, list(clf.seen))  # fmt: skip


def test_a_non_finite_input_is_refused_and_nothing_changes() -> None:
    clf = PassiveAggressiveClassifier(dim=3, center=True, scale=True)
    clf.learn_many(np.eye(3, dtype=np.float32)[:2], ["a", "b"], num_iters=3)
    before = _state(clf)
    bad = np.array([[1, 0, 0], [0, np.nan, 0], [np.inf, 0, 0]], dtype=np.float32)
    with pytest.raises(NonFiniteInputError) as info:
        clf.learn_many(bad, ["a", "b", "c"], num_iters=3)
    assert info.value.rows == [1, 2]
    assert _state(clf) == before
    assert np.isfinite(clf.predict_proba_many(np.eye(3, dtype=np.float32))).all()


def test_a_batch_over_the_class_limit_changes_nothing() -> None:
    clf = PassiveAggressiveClassifier(dim=2, max_classes=2, center=True)
    clf.learn_many(np.eye(2, dtype=np.float32)[:1], ["a"])
    before = _state(clf)
    with pytest.raises(ClassLimitError):
        clf.learn_many(np.eye(2, dtype=np.float32), ["b", "c"])
    assert _state(clf) == before


def test_every_class_needs_a_prototype() -> None:
    with pytest.raises(ValueError, match="every class needs a prototype"):
        PassiveAggressiveClassifier(
            dim=2, labels=["a", "b", "c"], rows=[2, 0, 1], weights=np.zeros((3, 2), np.float32)
        )


def test_a_fading_warm_start_fades_in_every_prototype_of_its_class() -> None:
    """Rows grown from the first copy its warm start as faded so far, and later fades
    reach every row: after n examples each row holds g / (g + n) of it, the rest as
    without fading (the examples here are passive: only the fade moves weights)."""
    g, dim, scale = 4.0, 8, 100.0
    e = np.eye(dim, dtype=np.float32)

    def trained(fade: float) -> PassiveAggressiveClassifier:
        clf = PassiveAggressiveClassifier(dim=dim, prototypes=3, grow=2, fade=fade)
        for k, label in enumerate("ab"):
            clf.add_class(label, init=scale * e[k])
        clf.priors = {label: scale * e[k] for k, label in enumerate("ab")}
        clf.learn_many(np.stack([e[0]] * 5 + [e[1]]), ["a"] * 5 + ["b"], num_iters=2)
        return clf

    faded, whole = trained(g), trained(0.0)
    assert faded.rows == whole.rows == [3, 1]  # class a grew twice
    diff = faded.weights - whole.weights
    for row in diff[:3]:  # every row of a: 5 examples
        np.testing.assert_allclose(row, (g / (g + 5) - 1) * scale * e[0], atol=1e-4)
    np.testing.assert_allclose(diff[3], (g / (g + 1) - 1) * scale * e[1], atol=1e-4)
