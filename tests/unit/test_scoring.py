from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.scoring import l2_normalize, ranked, softmax, zero_shot_probabilities

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)


@given(arrays(np.float32, (3, 5), elements=finite), st.floats(0.01, 10))
def test_softmax_rows_sum_to_one_and_are_monotone(logits: np.ndarray, temperature: float) -> None:
    p = softmax(logits, temperature)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()
    for row_l, row_p in zip(logits, p, strict=True):  # monotone: a larger logit never loses
        for i in range(5):
            for j in range(5):
                if row_l[i] > row_l[j]:
                    assert row_p[i] >= row_p[j]


def test_lower_temperature_sharpens() -> None:
    logits = np.array([[0.8, 0.7, 0.6]])
    assert softmax(logits, 0.05)[0, 0] > softmax(logits, 1.0)[0, 0] > 1 / 3


@given(
    arrays(np.float32, (4, 8), elements=st.floats(-1, 1, width=32)),
    arrays(np.float32, (3, 8), elements=st.floats(-1, 1, width=32)),
)
def test_zero_shot_picks_the_most_similar_label(inputs: np.ndarray, labels: np.ndarray) -> None:
    inputs = inputs + 1e-3  # avoid all-zero rows
    labels = labels + 1e-3
    p = zero_shot_probabilities(inputs, labels, temperature=0.05)
    cosine = l2_normalize(inputs) @ l2_normalize(labels).T
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    for row_c, row_p in zip(cosine, p, strict=True):
        assert row_c[int(np.argmax(row_p))] >= row_c.max() - 1e-5


def test_ranked_is_descending() -> None:
    out = ranked(["a", "b", "c"], np.array([0.1, 0.6, 0.3]))
    assert [label for label, _ in out] == ["b", "c", "a"]
