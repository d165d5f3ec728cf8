"""Classifier records: codec round trips and idempotent application."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.fewshot import ClassLimitError
from state.classifiers import already_applied, apply_examples, learner, replayed_version
from state.records import ClassifierRecord, RecordFormatError, decode_record, encode_record

DIM = 6


def fresh() -> ClassifierRecord:
    rec = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=DIM, now=1.0)
    rec.hyper.update({"C": 1.0, "variant": "PA-I", "max_classes": 4, "warm_start": False})
    return rec


@given(
    arrays(np.float32, (10, DIM), elements=st.floats(-1, 1, width=32)),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=10, max_size=10),
    arrays(np.float32, (4, DIM), elements=st.floats(-1, 1, width=32)),
)
def test_encode_decode_gives_identical_predictions(
    X: np.ndarray, y: list[str], probe: np.ndarray
) -> None:
    rec = fresh()
    apply_examples(rec, X, y, num_iters=3, label_vectors=None, source="t:0", offset=7, now=2.0)
    again = decode_record(encode_record(rec))
    assert again.labels == rec.labels
    assert again.applied == {"t:0": 7}
    assert np.array_equal(
        learner(again).predict_proba_many(probe), learner(rec).predict_proba_many(probe)
    )


def test_a_scaling_learner_keeps_its_statistics_in_the_record() -> None:
    rng = np.random.default_rng(2)
    rec = fresh()
    rec.hyper.update({"center": True, "scale": True})
    X = rng.standard_normal((12, DIM)).astype(np.float32) + 1.0
    for part, (lo, hi) in enumerate([(0, 5), (5, 12)]):
        y = ["a", "b", "c"] * 4
        apply_examples(
            rec, X[lo:hi], y[lo:hi], num_iters=2, label_vectors=None, source="t:0",
            offset=part, now=2.0,
        )  # fmt: skip
    clf = learner(decode_record(encode_record(rec)))
    assert clf.scale
    assert clf.mean_count == 12
    centred = X.astype(np.float64) - X.mean(axis=0)
    assert clf.spread() == pytest.approx(np.sqrt(np.mean(np.sum(centred**2, axis=1))), rel=1e-5)


def test_offsets_make_application_idempotent() -> None:
    rec = fresh()
    X = np.eye(DIM, dtype=np.float32)[:2]
    apply_examples(
        rec, X, ["a", "b"], num_iters=2, label_vectors=None, source="t:1", offset=5, now=2.0
    )
    assert rec.version == 1
    assert already_applied(rec, "t:1", 5)
    assert already_applied(rec, "t:1", 4)
    assert not already_applied(rec, "t:1", 6)
    assert not already_applied(rec, "t:2", 0)
    assert replayed_version(rec, "t:1", 5) == 1


def test_class_limit_leaves_the_record_untouched() -> None:
    rec = fresh()
    X = np.eye(DIM, dtype=np.float32)
    apply_examples(
        rec,
        X[:3],
        ["a", "b", "c"],
        num_iters=1,
        label_vectors=None,
        source="t:0",
        offset=0,
        now=1.0,
    )
    before = encode_record(rec)
    with pytest.raises(ClassLimitError):
        apply_examples(
            rec,
            X[3:5],
            ["d", "e"],
            num_iters=1,
            label_vectors=None,
            source="t:0",
            offset=1,
            now=1.0,
        )
    assert encode_record(rec) == before


def test_warm_start_initialises_new_classes_from_label_vectors() -> None:
    rec = fresh()
    rec.hyper.update({"warm_start": True, "warm_start_scale": 10.0})
    e = np.eye(DIM, dtype=np.float32)
    apply_examples(
        rec, e[:1], ["a"], num_iters=1, label_vectors={"a": e[0]}, source="t:0", offset=0, now=1.0
    )
    apply_examples(
        rec, e[1:2], ["b"], num_iters=1, label_vectors={"b": e[1]}, source="t:0", offset=1, now=1.0
    )
    assert learner(rec).predict_many(e[:2]) == ["a", "b"]


def test_bad_bytes_are_refused() -> None:
    rec = fresh()
    apply_examples(
        rec,
        np.eye(DIM, dtype=np.float32)[:2],
        ["a", "b"],
        num_iters=1,
        label_vectors=None,
        source="t:0",
        offset=0,
        now=1.0,
    )
    good = encode_record(rec)
    wrong_version = good[:4] + (2).to_bytes(2, "little") + good[6:]
    for bad, match in (
        (b"", "too short"),
        (b"XXXX" + good[4:], "magic"),
        (wrong_version, "format 2"),
        (good[:-4], "weights"),
    ):
        with pytest.raises(RecordFormatError, match=match):
            decode_record(bad)


def test_image_only_models_get_their_own_cold_start_settings() -> None:
    from models.registry import ModelRegistry
    from state.classifiers import IMAGE_LEARNER, TEXT_LEARNER, default_learner

    registry = ModelRegistry(cache_dir=Path("unused"))
    assert default_learner(registry.resolve("efficientnet-lite0").modality) is IMAGE_LEARNER
    assert default_learner(registry.resolve("all-MiniLM-L6-v2").modality) is TEXT_LEARNER
    assert default_learner("text+image") is TEXT_LEARNER  # CLIP embeds labels: warm start
    assert not IMAGE_LEARNER.warm_start
    assert TEXT_LEARNER.warm_start
