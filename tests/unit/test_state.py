"""Classifier records: codec round trips and idempotent application."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.fewshot import ClassLimitError, NonFiniteInputError
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


def test_a_whitening_learner_keeps_its_statistics_in_the_record() -> None:
    """The per-dimension squares go through the codec; a restart between requests gives
    the same state as none (a replay depends on it)."""
    rng = np.random.default_rng(6)
    X = (rng.standard_normal((12, DIM)) * np.arange(1, DIM + 1)).astype(np.float32)
    y = ["a", "b", "c"] * 4
    hyper: dict[str, object] = {"center": True, "scale": True, "whiten": 10.0}
    states = [
        encode_record(trained(hyper, X, y, [(0, 5), (5, 12)], restart=restart, num_iters=2))
        for restart in (False, True)
    ]
    assert states[0] == states[1]
    # format 3: a worker that reads 1 and 2 only refuses it instead of learning it
    # unwhitened and dropping its per-dimension statistics
    assert int.from_bytes(states[1][4:6], "little") == 3
    clf = learner(decode_record(states[1]))
    assert clf.whiten == 10.0
    np.testing.assert_allclose(clf.sq_dims, (X.astype(np.float64) ** 2).mean(axis=0), rtol=1e-5)


def test_a_record_from_before_whitening_does_not_whiten() -> None:
    rec = fresh()
    rec.hyper.update({"center": True, "scale": True})
    X = np.eye(DIM, dtype=np.float32)[:3]
    apply_examples(
        rec, X, ["a", "b", "c"], num_iters=1, label_vectors=None, source="t:0", offset=0, now=2.0
    )
    assert "sq_dims" not in rec.hyper["_mean"]
    assert int.from_bytes(encode_record(rec)[4:6], "little") == 2  # old workers read it
    assert learner(decode_record(encode_record(rec))).whiten == 0.0


def test_a_label_in_another_unicode_form_is_the_same_class() -> None:
    """NFC and NFD "café" (the model reads them alike) were two classes shown alike, with
    one warm start, splitting their score and counting twice towards the class limit. An
    example's label is its class's first spelling; the warm start is looked up by either."""
    rec = fresh()
    X = np.eye(DIM, dtype=np.float32)[:4]
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    vectors = {label: np.eye(DIM, dtype=np.float32)[i] for i, label in enumerate([nfd, "tea"])}
    apply_examples(
        rec, X[:2], [nfd, "tea"], num_iters=1, label_vectors=vectors, source="t:0", offset=0,
        now=2.0,
    )  # fmt: skip
    apply_examples(
        rec, X[2:], [nfc, "tea"], num_iters=1, label_vectors={nfc: X[0], "tea": X[1]},
        source="t:0", offset=1, now=2.0,
    )  # fmt: skip
    assert rec.labels == [nfd, "tea"]  # as first spelled, whatever came next
    assert rec.seen == [2, 2]


def test_offsets_make_application_idempotent() -> None:
    rec = fresh()
    X = np.eye(DIM, dtype=np.float32)[:2]
    apply_examples(
        rec, X, ["a", "b"], num_iters=2, label_vectors=None, source="t:1", offset=5, now=2.0
    )
    assert rec.version == 1
    assert already_applied(rec, "t:1", 5)
    assert not already_applied(rec, "t:1", 4)  # the memory holds every applied offset
    assert not already_applied(rec, "t:1", 6)
    assert not already_applied(rec, "t:2", 0)
    assert replayed_version(rec, "t:1", 5) == 1


def test_timestamps_tell_a_redelivery_from_a_recreated_topic() -> None:
    """Offsets 10 and 12 applied (11 failed); then the train topic is deleted and made
    again, and new records reuse offsets 0.. while the classifier survives."""
    rec = fresh()
    X = np.eye(DIM, dtype=np.float32)[:2]

    def learn(offset: int, ts: float) -> None:
        apply_examples(
            rec, X, ["a", "b"], num_iters=1, label_vectors=None, source="t:0",
            offset=offset, now=ts + 0.5, timestamp=ts,
        )  # fmt: skip

    learn(10, 1000.0)
    learn(12, 1001.0)
    assert already_applied(rec, "t:0", 12, 1001.0)  # redelivered: same record
    assert already_applied(rec, "t:0", 10, 1000.0)
    assert not already_applied(rec, "t:0", 11, 1000.7)  # failed before: not learned
    assert not already_applied(rec, "t:0", 5, 990.0)  # below a memory never trimmed
    assert not already_applied(rec, "t:0", 12, 5000.0)  # a new record at a reused offset
    assert not already_applied(rec, "t:0", 0, 5000.0)  # recreated topic, early offsets
    learn(0, 5000.0)
    assert rec.version == 3
    assert already_applied(rec, "t:0", 0, 5000.0)  # the new record, redelivered
    assert not already_applied(rec, "t:0", 1, 5001.0)
    assert replayed_version(rec, "t:0", 0) == 3


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


def test_a_warm_start_fades_as_its_class_learns_examples() -> None:
    """With ``warm_start_fade`` g, a class's warm start weighs g / (g + n) of itself after
    n examples of it, over requests (the label vectors come with each); examples the
    classifier already gets right with room to spare change nothing else."""
    rec = fresh()
    rec.hyper.update({"warm_start": True, "warm_start_scale": 10.0, "warm_start_fade": 2.0})
    e = np.eye(DIM, dtype=np.float32)
    labels = {"a": e[0], "b": e[1]}
    apply_examples(rec, e[:2], ["a", "b"], num_iters=3, label_vectors=labels, source="t:0",
                   offset=0, now=1.0)  # fmt: skip
    assert learner(rec).fade == 2.0
    np.testing.assert_allclose(rec.weights, 10.0 * 2 / 3 * e[:2], atol=1e-6)  # n = 1
    apply_examples(rec, e[:1], ["a"] * 1, num_iters=1, label_vectors={"a": e[0]}, source="t:0",
                   offset=1, now=1.0)  # fmt: skip
    np.testing.assert_allclose(rec.weights[0], 10.0 * 2 / 4 * e[0], atol=1e-6)  # n = 2
    np.testing.assert_allclose(rec.weights[1], 10.0 * 2 / 3 * e[1], atol=1e-6)  # still 1
    unfaded = fresh()
    unfaded.hyper.update({"warm_start": True, "warm_start_scale": 10.0})  # from before: 0
    apply_examples(unfaded, e[:2], ["a", "b"], num_iters=3, label_vectors=labels,
                   source="t:0", offset=0, now=1.0)  # fmt: skip
    assert learner(unfaded).fade == 0.0
    np.testing.assert_allclose(unfaded.weights, 10.0 * e[:2], atol=1e-6)


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
    wrong_version = good[:4] + (4).to_bytes(2, "little") + good[6:]
    for bad, match in (
        (b"", "too short"),
        (b"XXXX" + good[4:], "magic"),
        (wrong_version, "format 4"),
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


V1_RECORD = (
    b'SSCR\x01\x00\xe4\x00\x00\x00{"classifier_id":"v1","model":"m","owner":"o","access":"public",'
    b'"dim":2,"n_classes":2,"labels":["a","b"],"version":3,"created_at":0.0,"updated_at":0.0,'
    b'"samples_seen":4,"applied":{},"recent":[],"hyper":{"C":1.0,"variant":"PA-I"}}'
    b"\x00\x00\x80?\x00\x00\x00\xbf\x00\x00\x80>\x00\x00\x00@"
)
"""A record written by the version 1 codec (commit 822141a), byte for byte."""


def test_version_1_records_still_decode_and_learn() -> None:
    rec = decode_record(V1_RECORD)
    assert rec.labels == ["a", "b"]
    assert rec.weights.tolist() == [[1.0, -0.5], [0.25, 2.0]]
    assert (rec.rows, rec.seen, rec.version) == ([1, 1], [0, 0], 3)
    clf = learner(rec)
    assert (clf.prototypes, clf.linear) == (1, True)  # no "prototypes" in its hyper: linear
    apply_examples(
        rec, np.array([[0.0, 1.0]], np.float32), ["a"], num_iters=1, label_vectors=None,
        source="t:0", offset=0, now=1.0,
    )  # fmt: skip
    again = decode_record(encode_record(rec))  # written back as version 2
    assert int.from_bytes(encode_record(rec)[4:6], "little") == 2
    assert (again.rows, again.seen, again.version) == ([1, 1], [1, 0], 4)
    np.testing.assert_array_equal(again.weights, rec.weights)


def trained(
    hyper: dict[str, object],
    X: np.ndarray,
    y: list[str],
    requests: list[tuple[int, int]],
    *,
    restart: bool,
    num_iters: int = 1,
) -> ClassifierRecord:
    """A fresh record with ``hyper`` trained on ``X``/``y`` split into ``requests``
    (start, stop), round-tripped through the codec between requests when ``restart`` (as
    a restarted worker reads its state back)."""
    rec = fresh()
    rec.hyper.update(hyper)
    for offset, (lo, hi) in enumerate(requests):
        apply_examples(
            rec, X[lo:hi], y[lo:hi], num_iters=num_iters, label_vectors=None, source="t:0",
            offset=offset, now=2.0,
        )  # fmt: skip
        if restart:
            rec = decode_record(encode_record(rec))
    return rec


def grown(requests: list[tuple[int, int]], *, restart: bool = True) -> ClassifierRecord:
    """A prototype learner (up to 3 per class, growing every 4 examples) trained on the
    same 30 examples split into ``requests``."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((30, DIM)).astype(np.float32)
    hyper: dict[str, object] = {"prototypes": 3, "grow": 4, "center": True, "scale": True}
    return trained(hyper, X, ["a", "b", "c"] * 10, requests, restart=restart)


def test_prototypes_grow_with_examples_and_survive_the_codec() -> None:
    rec = grown([(0, 6), (6, 30)])
    assert rec.seen == [10, 10, 10]
    assert rec.rows == [3, 3, 3]  # a second prototype at 4 examples, a third at 8
    assert rec.weights.shape == (9, DIM)
    early = grown([(0, 6)])
    assert (early.rows, early.seen) == ([1, 1, 1], [2, 2, 2])


def test_growth_is_deterministic_so_a_replay_gives_the_same_state() -> None:
    # the noise of a new prototype is seeded by its class and index, not by a global
    # random state, and the counts that decide growth live in the record: the same
    # requests give bit-identical state with or without a restart between them
    requests = [(0, 7), (7, 19), (19, 30)]
    kept, restarted = grown(requests, restart=False), grown(requests)
    assert kept.rows == restarted.rows == [3, 3, 3]
    assert encode_record(kept) == encode_record(restarted)


def test_miss_counts_live_in_the_record_so_growth_survives_a_restart() -> None:
    # classes that keep being missed (random labels): they grow on misses, and the counts
    # that decide it are read back from the record after every request
    rng = np.random.default_rng(3)
    X = rng.standard_normal((60, DIM)).astype(np.float32)
    y = [str(v) for v in rng.choice(["a", "b", "c"], 60)]
    hyper: dict[str, object] = {
        "prototypes": 3, "grow": 1_000, "grow_misses": 3, "center": True, "scale": True,
    }  # fmt: skip
    requests = [(0, 9), (9, 31), (31, 60)]
    kept = trained(hyper, X, y, requests, restart=False)
    restarted = trained(hyper, X, y, requests, restart=True)
    assert encode_record(kept) == encode_record(restarted)
    misses = restarted.hyper["_misses"]
    assert len(misses) == 3
    assert min(misses) >= 6  # so each class reached its third row
    assert restarted.rows == [3, 3, 3]
    # a record that grows on examples keeps no miss counts
    on_examples = trained({"prototypes": 2, "grow": 4}, X, y, requests, restart=True)
    assert "_misses" not in on_examples.hyper


def test_a_class_an_older_worker_added_starts_with_no_misses() -> None:
    # a worker from before growing on misses keeps ``_misses`` as it found it while it
    # appends classes: the next worker reads the shorter list, the new classes at none
    rec = fresh()
    rec.hyper.update({"prototypes": 2, "grow": 40, "grow_misses": 2})
    X = np.eye(3, DIM, dtype=np.float32)
    apply_examples(
        rec, X[:2], ["a", "b"], num_iters=1, label_vectors=None, source="t:0", offset=0,
        now=1.0,
    )  # fmt: skip
    rec.hyper["_misses"] = [3, 1]  # what the newer worker kept
    rec.labels.append("c")  # what the older worker added (one zero prototype)
    rec.rows.append(1)
    rec.seen.append(1)
    rec.weights = np.concatenate([rec.weights, np.zeros((1, DIM), np.float32)])
    back = decode_record(encode_record(rec))
    assert learner(back).misses == [3, 1, 0]
    apply_examples(
        back, X[2:], ["c"], num_iters=1, label_vectors=None, source="t:0", offset=1, now=2.0,
    )  # fmt: skip
    assert back.hyper["_misses"][:2] == [3, 1]
    assert len(back.hyper["_misses"]) == 3


def test_corrupt_miss_counts_are_refused() -> None:
    rec = fresh()
    rec.hyper.update({"prototypes": 2, "grow": 1, "grow_misses": 2})
    apply_examples(
        rec, np.eye(2, DIM, dtype=np.float32), ["a", "b"], num_iters=1, label_vectors=None,
        source="t:0", offset=0, now=1.0,
    )  # fmt: skip
    assert rec.hyper["_misses"] == [0, 0]
    for bad in ([0, 0, 0], [0, -1], [0, "x"], "00"):  # more counts than classes, ...
        rec.hyper["_misses"] = bad
        with pytest.raises(RecordFormatError, match="corrupt record header"):
            decode_record(encode_record(rec))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"rows":[1,1]', b'"rows":["x",1]'),  # a count that is not a number
        (b'"rows":[1,1]', b'"rows":[1,0]'),  # a class without a prototype
        (b'"seen":[1,0]', b'"seen":[1]'),  # counts for fewer classes than labels
        (b'"applied":{}', b'"applied":[]'),  # a field of the wrong kind
        (b'"dim":2,', b""),  # a field missing
        (b'"labels":["a","b"]', b'"labels":["a","a"]'),  # two classes of one name
        (b'"labels":["a","b"]', b'"labels":["a","b","c"]'),  # more labels than classes
        (b'"labels":["a","b"]', b'"labels":["a",2]'),  # a label that is not text
        (b'"seen":[1,0]', b'"seen":[1,-7]'),  # a negative count
        (b'"dim":2', b'"dim":2.7'),  # int() would have truncated it
        (b'"version":4', b'"version":true'),
        (b'"access":"public"', b'"access":"admin"'),
        (b'"recent":[0]', b'"recent":[5]'),  # an outcome is 0 or 1
    ],
)
def test_corrupt_headers_are_refused_as_record_format_errors(old: bytes, new: bytes) -> None:
    rec = decode_record(V1_RECORD)
    apply_examples(
        rec, np.array([[0.0, 1.0]], np.float32), ["a"], num_iters=1, label_vectors=None,
        source="t:0", offset=0, now=1.0,
    )  # fmt: skip
    rec.applied = {}
    good = encode_record(rec)
    assert old in good
    head_len = int.from_bytes(good[6:10], "little")
    head, weights = good[10 : 10 + head_len], good[10 + head_len :]

    def repacked(header: bytes) -> bytes:
        return good[:6] + len(header).to_bytes(4, "little") + header + weights

    assert decode_record(repacked(head)).labels == ["a", "b"]  # the repacking itself is sound
    with pytest.raises(RecordFormatError, match="corrupt record header"):
        decode_record(repacked(head.replace(old, new)))


def test_non_finite_weights_are_refused() -> None:
    rec = decode_record(V1_RECORD)
    rec.weights = rec.weights.copy()
    rec.weights[0, 0] = np.nan
    with pytest.raises(RecordFormatError, match="NaN or infinity"):
        decode_record(encode_record(rec))


def test_a_non_finite_example_leaves_the_record_untouched() -> None:
    rec = decode_record(V1_RECORD)
    before = encode_record(rec)
    with pytest.raises(NonFiniteInputError):
        apply_examples(
            rec, np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32), ["a", "c"], num_iters=1,
            label_vectors=None, source="t:0", offset=9, now=2.0,
        )  # fmt: skip
    assert encode_record(rec) == before


def test_the_running_mean_is_an_array_in_memory_and_checked_when_read() -> None:
    """The mean was a list of `dim` Python floats in every decoded record (~12 kB per
    classifier on every replica, converted both ways per train request). It is a float32
    array now, written as the same JSON list (the format is unchanged), read back exactly,
    and a mean of the wrong length is a corrupt record, not a failure at the next train."""
    rng = np.random.default_rng(3)
    rec = fresh()
    rec.hyper.update({"center": True, "scale": True})
    X = rng.standard_normal((6, DIM)).astype(np.float32)
    apply_examples(
        rec, X, ["a", "b", "c"] * 2, num_iters=2, label_vectors=None, source="t:0",
        offset=0, now=2.0,
    )  # fmt: skip
    data = encode_record(rec)
    back = decode_record(data)
    mean = back.hyper["_mean"]["mean"]
    assert isinstance(mean, np.ndarray)
    assert mean.dtype == np.float32
    np.testing.assert_array_equal(mean, rec.hyper["_mean"]["mean"])
    assert encode_record(back) == data
    rec.hyper["_mean"]["mean"] = np.zeros(DIM - 1, np.float32)
    with pytest.raises(RecordFormatError, match="running mean"):
        decode_record(encode_record(rec))
    rec.hyper["_mean"]["mean"] = np.zeros(DIM, np.float32)
    rec.hyper["_mean"]["sq_dims"] = [0.0] * (DIM + 1)  # a whitening learner's squares too
    with pytest.raises(RecordFormatError, match="running sq_dims"):
        decode_record(encode_record(rec))
