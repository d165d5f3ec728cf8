"""Online few-shot learning: multiclass passive-aggressive classifiers.

The learner keeps one weight vector per class (or a few, below) and scores
``s_k = w_k · x``. For an example ``(x, y)`` let ``r`` be the best-scoring wrong class;
the multiclass hinge loss is

.. math:: \\ell = \\max(0,\\ 1 - (s_y - s_r))

and the passive-aggressive step (Crammer, Dekel, Keshet, Shalev-Shwartz & Singer, *Online
Passive-Aggressive Algorithms*, JMLR 7, 2006, section 6) moves ``w_y`` towards ``x`` and
``w_r`` away from it by

.. math::
    \\tau = \\frac{\\ell}{2\\lVert x \\rVert^2} \\quad\\text{(PA)},\\qquad
    \\tau = \\min\\Big(C, \\frac{\\ell}{2\\lVert x \\rVert^2}\\Big) \\quad\\text{(PA-I)},\\qquad
    \\tau = \\frac{\\ell}{2\\lVert x \\rVert^2 + \\frac{1}{2C}} \\quad\\text{(PA-II)}

(the 2 is ``‖Φ(x, y) - Φ(x, r)‖²`` for the multi-prototype feature map). The update is
passive when the loss is zero and never larger than ``C`` for PA-I.

``num_iters`` is how many passes each example gets, which weights examples as Jina's
Classifier API describes: more passes for trusted or recent examples, fewer for doubtful
ones. A batch is learned in ``num_iters`` epochs over its examples, in order.

Classes can be added at any time (up to ``max_classes``). A new class starts at zero, or,
with ``warm_start``, at ``warm_start_scale`` times its label's embedding, so a fresh
classifier with meaningful labels predicts like zero-shot and improves from there.

With ``fade`` above 0 that warm start fades as its class learns: after ``n`` examples of
the class (first passes) it weighs ``fade / (fade + n)`` of itself, as a prior worth
``fade`` examples would. Left in full, the label embedding held a class's weights near
the label's direction long after its examples said otherwise, and with steps capped at a
small ``C`` it outweighed hundreds of them: on BBC news with all-MiniLM-L6-v2 the learner
stayed 0.3 to 0.5 macro-F1 points under LinearSVC from 64 to 128 examples on two test
splits. The label vectors come with each train request (``priors``), so nothing more is
stored; a label embedded differently later (another device or dtype) fades by its new
vector, leaving the small difference in the weights.

With ``center=True`` the classifier scores ``w_k · (x - μ)``, where ``μ`` is the running
mean of every input it has learned (zero before the first). Sentence embeddings share a
large common component (all cosines of e5 embeddings lie around 0.7 to 0.9); an update along
raw ``x`` mostly moves that component, which shifts a class's score on *every* input.
Centring makes each step move only what distinguishes the example (measured: about one
macro-F1 point on BBC news and tweet sentiment, ``benchmarks/accuracy.py``). Before the
first input ``μ = 0``, so a warm-started classifier still starts as zero-shot. A batch is
folded into ``μ`` before it is learned.

With ``scale=True`` as well, centred inputs are divided by their running RMS distance to
the mean, ``s = sqrt(mean ‖x‖² - ‖μ‖²)`` over the learned inputs, so scores are
``w_k · (x - μ) / s``. That makes the step cap ``C`` and the hinge's unit margin mean the
same for every model: centred e5-small sentence embeddings are ~0.4 long, all-MiniLM-L6-v2
ones ~0.9, so without it one ``C`` gives e5 less than half MiniLM's step. At 400
examples on validation splits (``benchmarks/accuracy.py --tune``, 20 seeds) e5 then falls
0.4 (BBC) and 0.9 (tweets) points short of the better offline SVM; scaled, 0.1 on both.
A fresh classifier has ``s = 1``, so it still starts as zero-shot.

With ``whiten`` above 0 (instead of ``scale``), each centred dimension is divided by its
own running standard deviation, shrunk towards the average over dimensions by ``whiten``
pseudo-examples (diagonal whitening). Image features (EfficientNet-Lite0's, averaged after
a ReLU) spread very unevenly over their 1,280 dimensions, and a few wide ones dominated
every step; whitened, on a Fashion-MNIST validation split the image learner gains 0.14
to 0.21 macro-F1 points on average over sizes (``benchmarks/prototypes.py --whiten``). On
sentence embeddings it ties none, so text learners do not whiten.

With ``prototypes`` above 1 a class may keep up to that many weight vectors and scores as
the largest of them, ``s_k = max_j w_kj · x``: a piecewise-linear, non-linear classifier
that still stores no examples. A class starts with one prototype and gains the next each
time it has learned ``grow`` more examples (counted on first passes), or with
``grow_misses`` above 0 each time it has been missed that many more times (an example of
the class that the state just before it did not predict, on first passes), as a copy of
its first prototype plus noise of RMS ``PROTOTYPE_NOISE`` (seeded by the class and prototype
index, so replaying the same requests gives the same weights). A step then moves the
best prototype of the true class and of the best rival (as in Aiolli & Sperduti,
*Multiclass Classification with Multi-Prototype Support Vector Machines*, JMLR 6, 2005).
Growing late keeps small training sets linear, where one prototype per class is the
better model; on tweet sentiment at 400 examples up to four prototypes add 2 to 3
macro-F1 points and put the learner ahead of the offline SVMs
(``benchmarks/prototypes.py`` chooses them on validation; ``benchmarks/accuracy.py``
measures them on the test split). Growing on misses lets a class that one linear
score already fits stay linear and gives prototypes to the classes that keep being
missed; on the validation cells it ties growing on examples at most sizes and adds about
1 point on tweet sentiment at 32 and 64 examples (``benchmarks/prototypes.py --misses``).

>>> import numpy as np
>>> clf = PassiveAggressiveClassifier(dim=2, C=1.0)
>>> clf.learn_one(np.array([1.0, 0.0]), "left")
>>> clf.learn_one(np.array([0.0, 1.0]), "right")
>>> clf.predict_one(np.array([0.9, 0.1]))
'left'
>>> p = clf.predict_proba_one(np.array([0.1, 0.9]))
>>> max(p, key=p.get), round(sum(p.values()), 6)
('right', 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]
Variant = Literal["PA", "PA-I", "PA-II"]

PROTOTYPE_NOISE = 0.1
"""RMS length of the noise that separates a new prototype from its class's first one (in
the learner's input units: centred and scaled inputs are about 1 long)."""


class NonFiniteInputError(ValueError):
    """An input vector holds NaN or infinity (learning it would poison the classifier)."""

    def __init__(self, rows: Sequence[int]) -> None:
        super().__init__(f"input vector(s) {list(rows)[:10]} hold NaN or infinity")
        self.rows = list(rows)


def check_finite(M: npt.NDArray[np.float32]) -> None:
    """Raise :class:`NonFiniteInputError` naming the rows of ``M`` that are not finite."""
    finite = np.isfinite(M).all(axis=1)
    if not finite.all():
        raise NonFiniteInputError(np.flatnonzero(~finite).tolist())


class ClassLimitError(ValueError):
    """Learning a new class would exceed ``max_classes``."""


@dataclass
class PassiveAggressiveClassifier:
    """A multiclass passive-aggressive classifier over fixed-size embeddings.

    Parameters
    ----------
    dim
        Embedding size.
    C
        Aggressiveness (PA-I: the largest step; PA-II: the slack penalty).
    variant
        ``"PA"``, ``"PA-I"`` (default) or ``"PA-II"``.
    max_classes
        Most classes (Jina's limit is 16).
    temperature
        Softmax temperature of ``predict_proba_*``.
    center
        Score ``w · (x - mean)`` with ``mean`` the running mean of learned inputs.
    scale
        With ``center``, also divide by the running RMS distance to the mean.
    whiten
        With ``center``, above 0: divide each centred dimension by its own running spread
        instead, shrunk towards the average over dimensions with this many pseudo-examples
        (diagonal whitening; supersedes ``scale``). 0: off.
    prototypes
        Most weight vectors per class (1: a linear classifier).
    grow
        With ``prototypes`` above 1, a class gains a prototype each ``grow`` examples.
    grow_misses
        Above 0 (with ``prototypes`` above 1): a class gains a prototype each
        ``grow_misses`` misses instead (examples of it predicted wrong before they were
        learned, first passes); ``grow`` is then unused.
    fade
        Above 0: a class's warm start weighs ``fade / (fade + n)`` of itself after ``n``
        examples of it (needs ``priors``). 0: it never fades.
    labels, weights, mean, mean_count, sq_mean, sq_dims, rows, seen, misses
        Existing state (from a codec); empty for a new classifier. ``sq_mean`` is the
        running mean of ``‖x‖²`` (kept only when scaling), ``sq_dims`` that of each
        ``x_d²`` (kept only when whitening); ``rows`` the prototypes each
        class has (its rows are consecutive in ``weights``, classes in label order; empty
        means one each), ``seen`` the examples each class has learned and ``misses``
        how many of them it missed (a record keeps them only when growing on misses;
        empty means none).
    """

    dim: int
    C: float = 1.0
    variant: Variant = "PA-I"
    max_classes: int = 16
    temperature: float = 1.0
    labels: list[str] = field(default_factory=list)
    weights: Matrix = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    center: bool = False
    mean: Vector = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    mean_count: int = 0
    scale: bool = False
    sq_mean: float = 0.0
    whiten: float = 0.0
    sq_dims: Vector = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    prototypes: int = 1
    grow: int = 0
    rows: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    fade: float = 0.0
    grow_misses: int = 0
    misses: list[int] = field(default_factory=list)
    priors: dict[str, Vector] = field(default_factory=dict, repr=False, compare=False)
    """Each class's warm start (its scaled label embedding) where known, for ``fade``:
    given for the call (a train request embeds its labels), never stored."""

    def __post_init__(self) -> None:
        self.rows = list(self.rows) or [1] * len(self.labels)
        self.seen = list(self.seen) or [0] * len(self.labels)
        self.misses = list(self.misses) or [0] * len(self.labels)
        if min(self.rows, default=1) < 1 or min(self.seen + self.misses, default=0) < 0:
            raise ValueError(
                f"every class needs a prototype and counts >= 0: rows {self.rows}, "
                f"seen {self.seen}, misses {self.misses}"
            )
        if {len(self.rows), len(self.seen), len(self.misses)} != {len(self.labels)}:
            raise ValueError(
                f"{len(self.rows)} row counts, {len(self.seen)} example counts and "
                f"{len(self.misses)} miss counts for {len(self.labels)} labels"
            )
        if self.weights.size == 0:
            self.weights = np.zeros((sum(self.rows), self.dim), dtype=np.float32)
        self.weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        if self.weights.shape != (sum(self.rows), self.dim):
            raise ValueError(
                f"weights {self.weights.shape} do not match {sum(self.rows)} rows "
                f"({len(self.labels)} labels) x {self.dim}"
            )
        if self.C <= 0:
            raise ValueError("C must be > 0")
        step = max(self.grow, self.grow_misses)
        if self.prototypes < 1 or self.grow < 0 or (self.prototypes > 1 and step < 1):
            raise ValueError(
                "prototypes must be >= 1, and grow (or grow_misses) >= 1 when prototypes > 1"
            )
        if self.mean.size == 0:
            self.mean = np.zeros(self.dim, dtype=np.float32)
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        if self.mean.shape != (self.dim,):
            raise ValueError(f"mean {self.mean.shape} does not match dim {self.dim}")
        if self.fade < 0 or self.grow_misses < 0:
            raise ValueError("fade and grow_misses must be >= 0")
        if self.whiten < 0 or (self.whiten > 0 and not self.center):
            raise ValueError("whiten must be >= 0, and needs center")
        if self.whiten > 0 and self.sq_dims.size == 0:
            # none kept (a new classifier, or inputs learned without whitening): start from
            # what is known, the mean and the total spread, spread evenly over dimensions,
            # so whitening starts where scaling stood rather than from zero squares
            mean = self.mean.astype(np.float64)
            spread = max(self._variance(), 0.0) if self.mean_count else 0.0
            self.sq_dims = (mean * mean + spread / self.dim).astype(np.float32)
        self.sq_dims = np.ascontiguousarray(self.sq_dims, dtype=np.float32)
        if self.whiten > 0 and self.sq_dims.shape != (self.dim,):
            raise ValueError(f"sq_dims {self.sq_dims.shape} does not match dim {self.dim}")
        self._index = {label: i for i, label in enumerate(self.labels)}
        self._starts = self._first_rows()

    def _first_rows(self) -> npt.NDArray[np.intp]:
        return np.cumsum([0, *self.rows])[:-1].astype(np.intp)

    @property
    def linear(self) -> bool:
        """One prototype per class (the fast path)."""
        return bool(self.weights.shape[0] == len(self.labels))

    # -- classes ----------------------------------------------------------------------

    def add_class(self, label: str, init: Vector | None = None) -> int:
        """Add ``label`` (idempotent) with an optional initial weight vector; its index."""
        index = self._index.get(label)
        if index is not None:
            return index
        if len(self.labels) >= self.max_classes:
            raise ClassLimitError(
                f"label {label!r} would be class {len(self.labels) + 1}; "
                f"at most {self.max_classes} classes allowed"
            )
        row = np.zeros((1, self.dim), dtype=np.float32)
        if init is not None:
            row[0] = np.asarray(init, dtype=np.float32)
        self.weights = np.concatenate([self.weights, row])
        self.labels.append(label)
        self.rows.append(1)
        self.seen.append(0)
        self.misses.append(0)
        self._starts = np.append(self._starts, self.weights.shape[0] - 1)
        self._index[label] = len(self.labels) - 1
        return len(self.labels) - 1

    def _count(self, y: int) -> None:
        """Count an example of class ``y`` (first pass), fade its warm start, and grow the
        class when it is due (growing on examples)."""
        prior = self.priors.get(self.labels[y]) if self.fade > 0 else None
        if prior is not None:
            # the warm start weighs fade / (fade + n) of itself after n examples
            n, g = self.seen[y], self.fade
            first = int(self._starts[y])
            step = g / (g + n + 1) - g / (g + n)
            self.weights[first : first + self.rows[y]] += (step * prior).astype(np.float32)
        self.seen[y] += 1
        if self.grow_misses == 0 and self.seen[y] >= self.grow * self.rows[y]:
            self._grow(y)

    def _missed(self, y: int) -> None:
        """Count a miss of class ``y`` (first pass, after its step) and grow the class when
        it is due (growing on misses)."""
        self.misses[y] += 1
        if self.grow_misses > 0 and self.misses[y] >= self.grow_misses * self.rows[y]:
            self._grow(y)

    def _grow(self, y: int) -> None:
        """Give class ``y`` another prototype (up to ``prototypes``): a copy of its first
        plus seeded noise."""
        have = self.rows[y]
        if have >= self.prototypes:
            return
        first = int(self._starts[y])
        noise = np.random.default_rng((y, have)).standard_normal(self.dim)
        row = self.weights[first] + (PROTOTYPE_NOISE / np.sqrt(self.dim)) * noise
        self.weights = np.insert(self.weights, first + have, row.astype(np.float32), axis=0)
        self.rows[y] += 1
        self._starts = self._first_rows()

    # -- learning ---------------------------------------------------------------------

    def _step_size(self, loss: float, sq_norm: float) -> float:
        if self.variant == "PA":
            return loss / (2 * sq_norm)
        if self.variant == "PA-I":
            return min(self.C, loss / (2 * sq_norm))
        return loss / (2 * sq_norm + 1 / (2 * self.C))

    def _update(self, x: Vector, y: int, sq_norm: float) -> tuple[float, bool]:
        """One PA step on ``(x, y)``; returns the loss before the step and whether
        ``y`` was the strict top class before it."""
        if not self.linear:
            return self._update_prototypes(x, y, sq_norm)
        weights = self.weights
        if weights.shape[0] == 1:
            # a single class competes with an implicit zero prototype, so the first
            # class learns from its examples before a second class exists
            true = float(weights[0] @ x)
            loss = 1.0 - true
            if loss > 0.0 and sq_norm > 0.0:
                weights[0] += self._step_size(loss, sq_norm / 2) * x  # ‖Φ‖² = ‖x‖²
            return max(loss, 0.0), True
        scores = weights @ x
        true = float(scores[y])
        scores[y] = -np.inf
        rival = int(scores.argmax())
        gap = true - float(scores[rival])
        loss = 1.0 - gap
        if loss <= 0.0 or sq_norm == 0.0:
            return max(loss, 0.0), gap > 0
        tau = self._step_size(loss, sq_norm)
        step = tau * x
        weights[y] += step
        weights[rival] -= step
        return loss, gap > 0

    def _update_prototypes(self, x: Vector, y: int, sq_norm: float) -> tuple[float, bool]:
        """:meth:`_update` when some class has several prototypes: the best prototype of
        ``y`` and of the best rival class move."""
        scores = self.weights @ x
        top = np.maximum.reduceat(scores, self._starts)
        true = float(top[y])
        if len(top) == 1:  # against the implicit zero prototype, as in the linear case
            gap = true
            rival = -1
        else:
            top[y] = -np.inf
            rival = int(top.argmax())
            gap = true - float(top[rival])
        loss = 1.0 - gap
        if loss <= 0.0 or sq_norm == 0.0:
            return max(loss, 0.0), gap > 0 or rival < 0
        tau = self._step_size(loss, sq_norm if rival >= 0 else sq_norm / 2)
        step = tau * x
        self.weights[self._best_row(scores, y)] += step
        if rival >= 0:
            self.weights[self._best_row(scores, rival)] -= step
        return loss, gap > 0 or rival < 0

    def _best_row(self, scores: Vector, k: int) -> int:
        start = int(self._starts[k])
        return start + int(scores[start : start + self.rows[k]].argmax())

    def _centred(self, M: Matrix, *, learn: bool) -> Matrix:
        """``M - mean``, divided by the spread when scaling (after folding ``M`` into the
        running statistics when learning)."""
        if not self.center:
            return M
        if learn and len(M):
            total = self.mean_count + len(M)
            mean = self.mean.astype(np.float64)
            mean += (M.sum(axis=0, dtype=np.float64) - len(M) * mean) / total
            self.mean = mean.astype(np.float32)
            if self.scale:
                sq = float(np.einsum("ij,ij->", M, M, dtype=np.float64))
                self.sq_mean += (sq - len(M) * self.sq_mean) / total
            if self.whiten > 0:
                sq_dims = self.sq_dims.astype(np.float64)
                sq_dims += (
                    np.einsum("ij,ij->j", M, M, dtype=np.float64) - len(M) * sq_dims
                ) / total
                self.sq_dims = sq_dims.astype(np.float32)
            self.mean_count = total
        out: Matrix = M - self.mean
        if self.whiten > 0:
            out *= self.dim_scales()
        elif self.scale:
            out /= np.float32(self.spread())
        return out

    def dim_scales(self) -> Vector:
        """What whitening multiplies each centred dimension by: ``1 / sqrt(D v_d)``, with
        ``v_d`` the dimension's running variance shrunk towards the average ``v̄`` over
        dimensions, ``(n v_d + whiten v̄) / (n + whiten)`` after ``n`` inputs (so centred
        inputs are about 1 long, as with ``scale``). Ones before any input, or when the
        inputs do not vary."""
        mean = self.mean.astype(np.float64)
        sq_dims = self.sq_dims.astype(np.float64)
        var = sq_dims - mean * mean
        # both are rounded to float32 when stored: a variance within their rounding (one
        # input, or identical ones) is none, not noise to divide by
        var[var <= 1e-6 * sq_dims] = 0.0
        average = float(var.mean()) if var.size else 0.0
        if self.mean_count == 0 or average * self.dim <= 1e-12:
            return np.ones(self.dim, dtype=np.float32)
        n = self.mean_count
        shrunk = (n * var + self.whiten * average) / (n + self.whiten)
        out: Vector = (1.0 / np.sqrt(self.dim * shrunk)).astype(np.float32)
        return out

    def spread(self) -> float:
        """The RMS distance of learned inputs to their mean (1 before there is any)."""
        var = self._variance()
        return float(np.sqrt(var)) if var > 1e-12 else 1.0

    def _variance(self) -> float:
        """Mean squared distance of learned inputs to their mean, from the running
        statistics (``sq_mean``, kept when scaling)."""
        mean = self.mean.astype(np.float64)
        return self.sq_mean - float(mean @ mean)

    def learn_one(self, x: npt.ArrayLike, label: str, num_iters: int = 1) -> None:
        """Learn one example with ``num_iters`` passes (the class must exist or fit)."""
        vec = np.ascontiguousarray(x, dtype=np.float32)
        if self.center:
            vec = self._centred(vec[None, :], learn=True)[0]
        sq_norm = float(vec @ vec)
        y, loss, _ = self._first_pass(vec, label, sq_norm)
        for _ in range(num_iters - 1):
            if loss == 0.0:
                break  # passive from here on: later passes would not move either
            loss = self._update(vec, y, sq_norm)[0]

    def _first_pass(self, x: Vector, label: str, sq_norm: float) -> tuple[int, float, bool]:
        """An example's first pass: its class (added if new), counted, a step, and a miss
        counted when the state just before predicted another class. Returns the class,
        the loss before the step, and whether the prediction before it was right."""
        known = label in self._index
        y = self.add_class(label)
        self._count(y)
        loss, correct = self._update(x, y, sq_norm)
        if known and not correct:
            self._missed(y)
        return y, loss, known and correct

    def check_examples(self, M: npt.NDArray[np.float32], labels: Sequence[str]) -> None:
        """Refuse, before anything changes, examples that are not finite
        (:class:`NonFiniteInputError`) or whose new labels exceed ``max_classes``
        (:class:`ClassLimitError`)."""
        check_finite(M)
        new = [label for label in dict.fromkeys(labels) if label not in self._index]
        if len(self.labels) + len(new) > self.max_classes:
            raise ClassLimitError(
                f"{len(self.labels) + len(new)} classes requested, at most {self.max_classes} "
                "allowed per classifier"
            )

    def learn_many(self, X: npt.ArrayLike, labels: Sequence[str], num_iters: int = 1) -> list[bool]:
        """Learn a batch in ``num_iters`` epochs; return, per example, whether it was
        predicted correctly *before* learning it (prequential evaluation)."""
        M = np.ascontiguousarray(X, dtype=np.float32)
        if M.ndim != 2 or M.shape[1] != self.dim or len(M) != len(labels):
            raise ValueError(f"expected ({len(labels)}, {self.dim}) examples, got {M.shape}")
        if num_iters < 1:
            raise ValueError("num_iters must be >= 1")
        self.check_examples(M, labels)
        M = self._centred(M, learn=True)
        prior_correct: list[bool] = []
        sq_norms = np.einsum("ij,ij->i", M, M).tolist()
        # first epoch: classes appear as their first example arrives, and each example
        # is predicted by the state just before it is learned (prequential)
        moved = False
        for row, label, sq in zip(M, labels, sq_norms, strict=True):
            _y, loss, correct = self._first_pass(row, label, sq)
            prior_correct.append(correct)
            moved = moved or loss > 0.0
        ys = [self._index[label] for label in labels]
        for _ in range(num_iters - 1):
            if not moved:
                break  # an epoch without loss: every later epoch would be passive too
            moved = False
            for row, y, sq in zip(M, ys, sq_norms, strict=True):
                if self._update(row, y, sq)[0] > 0.0:
                    moved = True
        return prior_correct

    # -- prediction -------------------------------------------------------------------

    def decision_function(self, X: npt.ArrayLike) -> Matrix:
        """Class scores, ``(n, n_classes)`` (each class's best prototype)."""
        M = self._centred(np.atleast_2d(np.asarray(X, dtype=np.float32)), learn=False)
        out: Matrix = M @ self.weights.T
        if not self.linear:
            out = np.maximum.reduceat(out, self._starts, axis=1)
        return out

    def predict_proba_many(self, X: npt.ArrayLike) -> Matrix:
        """Softmax over class scores; rows sum to 1."""
        scores = self.decision_function(X).astype(np.float64) / self.temperature
        scores -= scores.max(axis=1, keepdims=True)
        e = np.exp(scores)
        out: Matrix = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return out

    def predict_proba_one(self, x: npt.ArrayLike) -> dict[str, float]:
        row = self.predict_proba_many(x)[0]
        return {label: float(p) for label, p in zip(self.labels, row, strict=True)}

    def predict_many(self, X: npt.ArrayLike) -> list[str]:
        if not self.labels:
            raise ValueError("the classifier has no classes yet")
        return [self.labels[i] for i in self.decision_function(X).argmax(axis=1)]

    def predict_one(self, x: npt.ArrayLike) -> str:
        return self.predict_many(x)[0]

    def margin(self, x: npt.ArrayLike, label: str) -> float:
        """``s_y - max_{k≠y} s_k`` (positive: predicted correctly with that margin)."""
        scores = self.decision_function(x)[0].astype(np.float64)
        y = self._index[label]
        true = scores[y]
        scores[y] = -np.inf
        return float(true - scores.max()) if len(scores) > 1 else float("inf")
