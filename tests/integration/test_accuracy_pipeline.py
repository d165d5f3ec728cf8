"""The accuracy study's few-shot configuration, through the real pipeline.

Labelled examples go to the train topic and test items to the classify topic of the
embedded broker; the worker's predictions must score the same macro-F1 as the study's
offline path (``benchmarks.accuracy.train_shipped``: the same ``apply_examples`` on
vectors from the same encoder), within floating-point noise — so the streaming system
learns what the study measures.

Configuration (small, to stay fast): BBC news, the lead of each article (title and first
~40 words: the full articles are 512 tokens, too slow to embed twice in a test), 40
stratified training examples (seed 0), 100 stratified test items from the held-out split.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from benchmarks.accuracy import (
    Task,
    class_indices,
    macro_f1,
    train_shipped,
    training_set,
)
from benchmarks.datasets import load_bbc, stratified_subset
from benchmarks.embeddings import embed_texts
from benchmarks.throughput import load_encoder
from streams.broker import EmbeddedBroker
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from tests.integration.conftest import API_KEYS, client_settings, with_client

pytestmark = [pytest.mark.integration, pytest.mark.model]

MODEL = "multilingual-e5-small"
TRAIN, TEST, NUM_ITERS = 40, 100, 10


def lead(text: str, words: int = 40) -> str:
    return " ".join(text.split()[:words])


def test_pipeline_learns_what_the_offline_study_measures(
    broker: EmbeddedBroker, worker: WorkerProcess, model_cache: Path
) -> None:
    ds = load_bbc()
    train = training_set(ds, ds.pool, TRAIN, seed=0)
    test = stratified_subset(ds, ds.test, TEST, np.random.default_rng(0))
    train_texts = [lead(ds.texts[i]) for i in train]
    test_texts = [lead(ds.texts[i]) for i in test]
    truth = ds.y[test]
    cid = str(uuid.uuid4())
    key = API_KEYS["alice"]

    async def go(c: ShotstreamClient) -> tuple[dict, list[dict]]:
        examples = [
            {"text": t, "label": ds.classes[k]}
            for t, k in zip(train_texts, ds.y[train], strict=True)
        ]
        trained = await c.train(
            examples, classifier_id=cid, api_key=key, model=MODEL, num_iters=NUM_ITERS
        )
        answers = [
            await c.classify(test_texts[i : i + 20], classifier_id=cid, api_key=key)
            for i in range(0, TEST, 20)
        ]
        return trained, answers

    trained, answers = with_client(client_settings(broker), go)
    assert trained["num_samples"] == TRAIN, trained
    assert all("error" not in a for a in answers), answers
    index = {name: k for k, name in enumerate(ds.classes)}
    streamed = np.array([index[d["prediction"]] for a in answers for d in a["data"]])

    # the offline path of the study, on the same texts, embedded in this process
    encoder = load_encoder(MODEL, model_cache)
    task = Task(
        classes=ds.classes,
        X_train=embed_texts(encoder, train_texts),
        y_train=ds.y[train],
        X_test=embed_texts(encoder, test_texts),
        label_vectors=embed_texts(encoder, ds.classes),
    )
    offline = class_indices(train_shipped(task, num_iters=NUM_ITERS), ds.classes, task.X_test)

    f1_stream, f1_offline = macro_f1(truth, streamed), macro_f1(truth, offline)
    assert abs(f1_stream - f1_offline) <= 0.011, (f1_stream, f1_offline)  # ≤ 1 item of 100
    assert (streamed == offline).mean() >= 0.99
    assert f1_stream >= 0.7  # chance is 0.2 with five balanced topics
