"""Applying train requests to classifier records: pure, deterministic, idempotent.

A record remembers, per source partition, the last offset it applied, so a train record
that Kafka redelivers after a crash (at-least-once) changes nothing the second time:
exactly-once *effects* without transactions, on any Kafka.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.fewshot import PassiveAggressiveClassifier
from state.records import ClassifierRecord

PREQUENTIAL_WINDOW = 200
"""Examples in the windowed prequential accuracy."""
REPLAY_MEMORY = 64
"""Recent (offset, version) pairs kept to answer a redelivered request identically."""


@dataclass(frozen=True, slots=True)
class LearnerSettings:
    """Frozen into a record's ``hyper`` at creation, so a classifier keeps its behaviour.

    The defaults were tuned by ``python -m benchmarks.accuracy --tune`` on validation
    splits carved from the training pools of BBC news (541 items) and tweet sentiment
    (600), with multilingual-e5-small and all-MiniLM-L6-v2, 8 to 400 examples, 20 seeds,
    ``num_iters`` 10 (``benchmarks/results/accuracy-tuning.json``): centring (+3.9 F1
    points on average over the best uncentred setting), scaling by the running spread (one
    ``C`` then fits every model's embedding length), a small step cap ``C`` (the examples,
    not the step, should decide) and a warm start at twice the label embedding. Six
    configurations tie on mean validation F1 (within 0.1 points); this one falls least
    short of offline SVMs on the same cells. ``temperature`` has the lowest validation
    log-loss; it changes scores, never predictions. Image-only models have their own tuned
    values (:data:`IMAGE_LEARNER`, :func:`default_learner`).

    ``prototypes`` and ``grow`` (a class may keep several weight vectors, gaining one each
    ``grow`` examples: ``models.fewshot``) were chosen in a second stage on the same
    validation cells by the same rule, keeping the settings above
    (``python -m benchmarks.prototypes``, ``benchmarks/results/prototypes-validation.json``).
    The dataclass defaults are one linear score per class, as ``--tune`` measures;
    :data:`TEXT_LEARNER` grows up to 4 prototypes every 40 examples: +0.2 points of mean
    validation F1 over one, at most 0.1 below it in any cell, and 1.2 points closer to the
    RBF SVM on tweets at 400 examples with MiniLM. Records created before keep one
    prototype.

    ``warm_start_fade`` (a fourth stage, ``python -m benchmarks.prototypes --fade``,
    ``benchmarks/results/fading-validation.json``, text only): a class's warm start weighs
    ``g / (g + n)`` of itself after ``n`` examples. Every ``g`` from 10 to 80 ties none on
    mean validation F1 (0.7637 to 0.7644 against 0.7646); 10 falls least short of the SVMs,
    so :data:`TEXT_LEARNER` fades with 10. The trade: +0.2 to +0.6 points on BBC with
    MiniLM, up to 1.0 below none on tweets (32 examples, e5). Records created before keep
    their warm start whole (a worker from before learns a fading record's updates without
    fading: the setting is kept in the record, and nothing else about it).

    ``grow_misses`` (a fifth stage, ``python -m benchmarks.prototypes --misses``,
    ``benchmarks/results/misses-validation.json``): a class gains a prototype each
    ``grow_misses`` misses (examples of it predicted wrong just before they were learned)
    instead of each ``grow`` examples, so a class one linear score fits stays linear. For
    text, 3, 5 and 8 tie on mean validation F1 (0.7646 to 0.7655 against 0.7637 growing on
    examples); 5 falls least short of the SVMs: +0.8 to +1.0 points on tweets at 32 and 64
    examples, within 0.13 of growing on examples in every BBC cell. Records created before
    keep growing on examples; a worker from before grows a record that grows on misses
    every ``grow`` examples, as it did before (the counts live in ``hyper["_misses"]``).
    """

    C: float = 0.03
    variant: str = "PA-I"
    temperature: float = 0.2
    warm_start: bool = True
    warm_start_scale: float = 2.0
    max_classes: int = 16
    center: bool = True
    scale: bool = True
    prototypes: int = 1
    grow: int = 0
    whiten: float = 0.0
    warm_start_fade: float = 0.0
    grow_misses: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "grow_misses": self.grow_misses,
            "warm_start_fade": self.warm_start_fade,
            "prototypes": self.prototypes,
            "grow": self.grow,
            "whiten": self.whiten,
            "center": self.center,
            "scale": self.scale,
            "C": self.C,
            "variant": self.variant,
            "temperature": self.temperature,
            "warm_start": self.warm_start,
            "warm_start_scale": self.warm_start_scale,
            "max_classes": self.max_classes,
        }


TEXT_LEARNER = LearnerSettings(prototypes=4, grow=40, warm_start_fade=10.0, grow_misses=5)
IMAGE_LEARNER = LearnerSettings(
    C=0.3,
    variant="PA-II",
    warm_start=False,
    temperature=0.2,
    prototypes=2,
    grow=40,
    whiten=200.0,
    grow_misses=8,
)
"""For image-only models (no text tower, so no label embedding to start from). Tuned the
same way on a validation split of Fashion-MNIST (333 items) with efficientnet-lite0:
starting cold, larger steps win (C 0.3: +2.8 F1 points on average over the text setting
started cold). Five settings with C 0.3 or 1 tie within 0.1 points; PA-II with scaling
falls least short of the offline SVMs. A second prototype after 40 examples of a class
ties one prototype on mean validation F1 and falls least short of the SVMs (it only
appears at the largest size, 40 examples per class: 0.3 points closer there). Diagonal
whitening (third stage, ``python -m benchmarks.prototypes --whiten``,
``benchmarks/results/whitening-validation.json``): shrinkage 10, 50 and 200 tie on mean
validation F1 (+0.14 to +0.21 points over none); 200 falls least short of the SVMs and is
at most 0.05 points below none in any cell. Text learners do not whiten: every shrinkage
ties none there, and none falls least short. Growing on misses (fifth stage): every
8 misses has the best mean validation F1 of the sweep (0.7578 against 0.7570 on examples,
a tie) and is the only setting at or above both SVMs in every cell (+0.2 and +0.3 points
over growing on examples at 256 and 400)."""


def default_learner(modality: str) -> LearnerSettings:
    """The shipped settings for a model of ``modality`` (``models.registry`` modalities):
    image-only models get :data:`IMAGE_LEARNER`; text and CLIP-style models, which embed
    labels for a warm start, get :data:`TEXT_LEARNER`."""
    return IMAGE_LEARNER if modality == "image" else TEXT_LEARNER


def learner(record: ClassifierRecord) -> PassiveAggressiveClassifier:
    """The record's classifier (weights copied: the record is only changed on success)."""
    h = record.hyper
    mean = h.get("_mean")  # learning state of a centring classifier, kept beside _replay
    misses = list(h.get("_misses", []))  # fewer than classes if an older worker added some
    return PassiveAggressiveClassifier(
        dim=record.dim,
        C=float(h.get("C", 1.0)),
        variant=h.get("variant", "PA-I"),
        max_classes=int(h.get("max_classes", 16)),
        temperature=float(h.get("temperature", 1.0)),
        labels=list(record.labels),
        weights=record.weights.copy(),
        center=bool(h.get("center", False)),  # records from before centring keep raw scores
        mean=np.asarray(mean["mean"], dtype=np.float32) if mean else np.zeros(0, np.float32),
        mean_count=int(mean["count"]) if mean else 0,
        scale=bool(h.get("scale", False)),  # records from before scaling keep their scores
        sq_mean=float(mean.get("sq", 0.0)) if mean else 0.0,
        whiten=float(h.get("whiten", 0.0)),  # records from before whitening: none
        sq_dims=np.asarray(mean["sq_dims"], dtype=np.float32)
        if mean and "sq_dims" in mean
        else np.zeros(0, np.float32),
        prototypes=int(h.get("prototypes", 1)),  # records from before prototypes: linear
        grow=int(h.get("grow", 0)),
        rows=list(record.rows),
        seen=list(record.seen),
        fade=float(h.get("warm_start_fade", 0.0)),  # records from before fading: none
        # records from before grow on examples (as does an older worker: it ignores the key)
        grow_misses=int(h.get("grow_misses", 0)),
        misses=misses + [0] * (len(record.labels) - len(misses)),
    )


def may_read(record: ClassifierRecord, owner: str) -> bool:
    """Public classifiers are read by any valid key, private ones by their owner only."""
    return record.access == "public" or record.owner == owner


REPLAY_CLOCK_SKEW_S = 60.0
"""How far ahead of the worker's clock a producer's may run before a record older than the
replay memory, stamped later than the classifier's last update, counts as new."""


def already_applied(
    record: ClassifierRecord | None, source: str, offset: int, timestamp: float | None = None
) -> bool:
    """Whether the train record at ``source``/``offset`` was applied already: a redelivery
    (a crash before the offset commit, a rebalance) that must not be learned twice.

    Offsets decide, with the record's ``timestamp`` (and the replay memory of this
    classifier's last ``REPLAY_MEMORY`` applied offsets) to tell apart what offsets alone
    cannot:

    - a remembered offset is a redelivery unless its timestamp differs: the train topic
      was deleted and recreated, and a new record reuses the offset;
    - an offset inside the memory's range that is not remembered was never applied (its
      request failed: it fails again and gets its dead letter again, not a false answer);
      so is one below a memory that was never trimmed (fewer than ``REPLAY_MEMORY``
      entries: it holds every offset applied from this source);
    - an offset older than a trimmed memory is a redelivery unless it was produced later
      than the classifier's last update (plus ``REPLAY_CLOCK_SKEW_S``): a recreated topic.

    >>> rec = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=0.0)
    >>> rec.applied["t:0"] = 9
    >>> rec.updated_at = 100.0
    >>> rec.hyper["_replay"] = {"t:0": [[7, 1, 50.0], [9, 2, 60.0]]}
    >>> [already_applied(rec, "t:0", o, ts) for o, ts in [(9, 60.0), (9, 99.0), (8, 55.0)]]
    [True, False, False]
    >>> [already_applied(rec, "t:0", 3, ts) for ts in (40.0, 100.0 + 61)]  # never trimmed
    [False, False]
    >>> rec.hyper["_replay"]["t:0"] = [[o, o, 50.0] for o in range(10, 10 + REPLAY_MEMORY)]
    >>> rec.applied["t:0"] = 9 + REPLAY_MEMORY
    >>> [already_applied(rec, "t:0", 3, ts) for ts in (40.0, 100.0 + 61)]  # trimmed
    [True, False]
    """
    if record is None or record.applied.get(source, -1) < offset:
        return False
    memory = record.hyper.get("_replay", {}).get(source, [])
    # newest first: after a recreated topic, an offset may be remembered twice (the old
    # topic's entry, then the new one's), and the newest is the one a redelivery repeats
    for entry in reversed(memory):
        if entry[0] == offset:
            stamped = entry[2] if len(entry) > 2 else None
            return timestamp is None or stamped is None or stamped == timestamp
    if memory and (offset > min(entry[0] for entry in memory) or len(memory) < REPLAY_MEMORY):
        return False
    return timestamp is None or timestamp <= record.updated_at + REPLAY_CLOCK_SKEW_S


def replayed_version(record: ClassifierRecord, source: str, offset: int) -> int:
    """The version an already-applied request produced (best effort for old ones)."""
    for entry in reversed(record.hyper.get("_replay", {}).get(source, [])):  # newest first
        if entry[0] == offset:
            return int(entry[1])
    return record.version


def as_spelled(known: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Each example label as the classifier (or an example before it) first spelled it, if
    it is the same text in another Unicode form: NFC and NFD "café" are one class, not two
    look-alikes that split its score and count twice towards the class limit.

    >>> as_spelled(["café"], ["cafe\u0301", "tea"])
    ['café', 'tea']
    """
    spelled: dict[str, str] = {}
    for label in (*known, *labels):
        spelled.setdefault(unicodedata.normalize("NFC", label), label)
    return [spelled[unicodedata.normalize("NFC", label)] for label in labels]


def apply_examples(
    record: ClassifierRecord,
    vectors: npt.NDArray[np.float32],
    labels: Sequence[str],
    *,
    num_iters: int,
    label_vectors: Mapping[str, npt.NDArray[np.float32]] | None,
    source: str,
    offset: int,
    now: float,
    timestamp: float | None = None,
) -> list[bool]:
    """Learn ``vectors``/``labels`` into ``record`` (in place) and stamp the source offset
    (with the source record's ``timestamp``, which tells a redelivery from a reused offset).

    Raises ``ClassLimitError`` or ``NonFiniteInputError`` (and leaves the record untouched)
    when the new labels would exceed the class limit or a vector is not finite. Returns the
    prequential outcome of each example.
    """
    given = labels
    labels = as_spelled(record.labels, given)
    if label_vectors is not None:
        label_vectors = {label: label_vectors[g] for g, label in zip(given, labels, strict=True)}
    clf = learner(record)
    clf.check_examples(vectors, labels)  # before the warm start adds classes
    new = [label for label in dict.fromkeys(labels) if label not in record.labels]
    warm = bool(record.hyper.get("warm_start", True)) and label_vectors is not None
    scale = float(record.hyper.get("warm_start_scale", 20.0))
    if warm:
        assert label_vectors is not None  # noqa: S101 - narrowed above
        clf.priors = {label: scale * label_vectors[label] for label in dict.fromkeys(labels)}
        for label in new:
            clf.add_class(label, init=clf.priors[label])
    prior = clf.learn_many(vectors, labels, num_iters=num_iters)
    record.labels = list(clf.labels)
    record.weights = clf.weights
    record.rows = list(clf.rows)
    record.seen = list(clf.seen)
    if clf.grow_misses > 0:
        record.hyper["_misses"] = list(clf.misses)
    if clf.center:
        record.hyper["_mean"] = {"count": clf.mean_count, "mean": clf.mean.copy()}
        if clf.scale:
            record.hyper["_mean"]["sq"] = clf.sq_mean
        if clf.whiten > 0:
            record.hyper["_mean"]["sq_dims"] = clf.sq_dims.copy()
    record.version += 1
    record.samples_seen += len(labels)
    record.updated_at = now
    record.applied[source] = offset
    record.recent = (record.recent + [int(p) for p in prior])[-PREQUENTIAL_WINDOW:]
    replay = record.hyper.setdefault("_replay", {})
    entry = [offset, record.version] if timestamp is None else [offset, record.version, timestamp]
    replay[source] = ([*replay.get(source, []), entry])[-REPLAY_MEMORY:]
    return prior
