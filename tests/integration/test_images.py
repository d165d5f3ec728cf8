"""Images through Kafka: EfficientNet few-shot on Fashion-MNIST, the CLIP path, dead letters.

The shared worker has ``jina-clip-v1`` pointed at a tiny random CLIP folder and
127.0.0.1 on its image allow-list, so a local HTTP server can serve image URLs.
"""

from __future__ import annotations

import asyncio
import base64
import http.server
import random
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.images import encode_png
from streams.broker import EmbeddedBroker
from streams.client import Answer, ShotstreamClient
from streams.processes import WorkerProcess
from tests.data import FASHION_CLASSES, fashion_mnist, per_class
from tests.integration.conftest import API_KEYS, client_settings, with_client
from tests.local_server import serve

pytestmark = [pytest.mark.integration, pytest.mark.model]

KEY = API_KEYS["frank"]  # a key of their own: each key may own only 16 classifiers
RED_PNG = encode_png(Image.new("RGB", (64, 48), "red"))

FEW_SHOT_PER_CLASS = 20
FEW_SHOT_TEST_PER_CLASS = 10
MIN_ACCURACY = 0.70
"""Measured 0.80-0.83 in-process (3 orders, 20 train / 30 test per class) and 0.76 through
Kafka (10 test per class); asserted with a margin below that."""


class Images(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/red.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(RED_PNG)))
            self.end_headers()
            self.wfile.write(RED_PNG)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    with serve(Images) as url:
        yield url


def b64_png(array: np.ndarray) -> str:
    return base64.b64encode(encode_png(Image.fromarray(array))).decode()


def code(answer: Answer) -> str | None:
    return answer["error"]["code"] if "error" in answer else None


def test_efficientnet_few_shot_on_fashion_mnist_through_kafka(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    images, labels = fashion_mnist("t10k")
    train = per_class(labels, FEW_SHOT_PER_CLASS)
    test = per_class(labels, FEW_SHOT_TEST_PER_CLASS, skip=FEW_SHOT_PER_CLASS)
    random.Random(0).shuffle(train)
    examples = [{"image": b64_png(images[i]), "label": FASHION_CLASSES[labels[i]]} for i in train]
    cid = str(uuid.uuid4())

    async def go(c: ShotstreamClient) -> tuple[list[Answer], list[Answer]]:
        trained = []
        for start in range(0, len(examples), 100):
            trained.append(
                await c.train(
                    examples[start : start + 100],
                    classifier_id=cid,
                    api_key=KEY,
                    model="efficientnet-lite0",
                    num_iters=10,
                    timeout_s=300,
                )
            )
        batches = [test[i : i + 25] for i in range(0, len(test), 25)]
        answers = await asyncio.gather(
            *(
                c.classify(
                    [{"image": b64_png(images[i])} for i in batch],
                    classifier_id=cid,
                    api_key=KEY,
                    timeout_s=300,
                )
                for batch in batches
            )
        )
        return trained, list(answers)

    trained, answers = with_client(client_settings(broker), go)
    assert [code(t) for t in trained] == [None, None]
    assert trained[-1]["version"] == 2
    assert sorted(trained[-1]["labels"]) == sorted(FASHION_CLASSES)
    # 28x28 images: one 224 tile each = 1000 tokens, times num_iters
    assert trained[0]["usage"]["total_tokens"] == 100 * 1000 * 10
    predicted = [d["prediction"] for a in answers for d in a["data"]]
    for a in answers:
        assert code(a) is None
        assert [d["index"] for d in a["data"]] == list(range(len(a["data"])))
    truth = [FASHION_CLASSES[labels[i]] for i in test]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, truth, strict=True)]))
    print(f"fashion-mnist few-shot accuracy through Kafka: {accuracy:.3f}")
    assert accuracy >= MIN_ACCURACY


def test_clip_zero_shot_and_few_shot_mixed_through_kafka(
    broker: EmbeddedBroker, worker: WorkerProcess, image_server: str
) -> None:
    blue = base64.b64encode(encode_png(Image.new("RGB", (30, 30), "blue"))).decode()
    mixed = [
        "a photo of a cat",
        {"image": f"{image_server}/red.png"},
        {"text": "a green tree"},
        {"image": f"data:image/png;base64,{blue}"},
    ]
    labels = ["animal", "vehicle", "plant"]
    cid = str(uuid.uuid4())
    white = base64.b64encode(encode_png(Image.new("RGB", (30, 30), "white"))).decode()
    examples = [
        {"text": "a photo of a cat", "label": "animal"},
        {"image": f"{image_server}/red.png", "label": "animal"},
        {"text": "a red car", "label": "vehicle"},
        {"image": blue, "label": "vehicle"},
        {"text": "a green tree", "label": "plant"},
        {"image": white, "label": "plant"},
    ]

    async def go(c: ShotstreamClient) -> tuple[Answer, Answer, Answer]:
        zero = await c.classify(mixed, labels=labels, model="jina-clip-v1")
        # 100 passes: the random tiny CLIP puts the three solid-colour images close together
        # (cosine 0.66-0.87), and the shipped step cap (C=0.03, tuned on real embeddings)
        # needs more passes than 20 to separate them (measured: 20 leaves one wrong)
        trained = await c.train(
            examples, classifier_id=cid, api_key=KEY, model="jina-clip-v1", num_iters=100
        )
        few = await c.classify(
            [{k: v for k, v in e.items() if k != "label"} for e in examples],
            classifier_id=cid,
            api_key=KEY,
        )
        return zero, trained, few

    zero, trained, few = with_client(client_settings(broker), go)
    assert code(zero) is None, zero
    assert [d["index"] for d in zero["data"]] == [0, 1, 2, 3]
    for d in zero["data"]:
        assert abs(sum(p["score"] for p in d["predictions"]) - 1) < 1e-4
    assert zero["usage"]["total_tokens"] > 2000  # two images at 1000 tokens + texts + labels
    assert code(trained) is None, trained
    assert trained["labels"] == labels
    assert code(few) is None, few
    assert [d["prediction"] for d in few["data"]] == [e["label"] for e in examples]


def test_bad_images_get_dead_letters_naming_the_index(
    broker: EmbeddedBroker, worker: WorkerProcess, image_server: str
) -> None:
    red = base64.b64encode(RED_PNG).decode()
    cases = {
        "missing-url": (
            {
                "input": ["ok", {"image": f"{image_server}/nope.png"}],
                "model": "jina-clip-v1",
                "labels": ["a", "b"],
            },
            "IMAGE_FETCH_FAILED",
            "input[1]",
        ),
        "private-url": (
            {
                "input": [{"image": red}, {"image": "http://192.168.0.1/x.png"}],
                "model": "jina-clip-v1",
                "labels": ["a", "b"],
            },
            "IMAGE_FETCH_FAILED",
            "input[1]",
        ),
        "not-an-image": (
            {
                "input": [
                    {"image": red},
                    {"image": red},
                    {"image": base64.b64encode(b"hello").decode()},
                ],
                "model": "jina-clip-v1",
                "labels": ["a", "b"],
            },
            "IMAGE_INVALID",
            "input[2]",
        ),
        "image-to-text-model": (
            {"input": ["text", {"image": red}], "labels": ["a", "b"]},
            "INPUT_INVALID",
            "input[1]",
        ),
        "zero-shot-on-image-only-model": (
            {"input": [{"image": red}], "model": "efficientnet-lite0", "labels": ["a", "b"]},
            "MODEL_NOT_AVAILABLE",
            "model 'efficientnet-lite0' embeds images only",
        ),
    }

    async def go(c: ShotstreamClient) -> tuple[dict[str, Answer], Answer, Answer]:
        topic = c.settings.topic("classify")
        futures = {name: await c.send(topic, dict(body)) for name, (body, _, _) in cases.items()}
        text_to_image_model = await c.train(
            [{"text": "words", "label": "a"}, {"image": red, "label": "b"}],
            classifier_id=str(uuid.uuid4()),
            api_key=KEY,
            model="efficientnet-lite0",
        )
        alive = await c.classify([{"image": red}, "hi"], labels=["x", "y"], model="jina-clip-v1")
        answers = await asyncio.wait_for(asyncio.gather(*futures.values()), 120)
        return dict(zip(futures, answers, strict=True)), text_to_image_model, alive

    dead, text_to_image_model, alive = with_client(client_settings(broker), go)
    for name, (_, expected, detail) in cases.items():
        letter = dead[name]
        assert letter.topic.endswith("errors"), name
        assert letter["error"]["code"] == expected, (name, letter["error"])
        assert detail in letter["error"]["detail"], (name, letter["error"])
    assert code(text_to_image_model) == "INPUT_INVALID"
    assert text_to_image_model["error"]["detail"].startswith("input[0] is text")
    assert code(alive) is None
    assert worker.proc is not None
    assert worker.proc.poll() is None
