"""The CLIP path through the shared service and batcher, with a tiny random CLIPModel.

Random weights make the predictions meaningless, so the tests check what the path must
do whatever the weights: rows back in request order (the service's answer equals the
encoder's own embeddings item by item), usage, image batching, few-shot learning from
text and image examples together, and errors naming the right index.
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from models.images import ClipEncoder, decode_base64, decode_image, encode_png
from models.registry import TEXT_IMAGE, ModelRegistry
from models.scoring import softmax
from state.classifiers import apply_examples
from state.records import ClassifierRecord
from streams.errors import ErrorCode, RequestError
from streams.observer import Observer
from streams.records import ClassifyRequest, ImageInput, InputItem, TextInput
from streams.replica import ClassifierReplica
from streams.service import ClassifyService
from streams.settings import Settings

OWNER = "owner-hash"


class Batches(Observer):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def on_batch(self, model: str, stats: Any) -> None:
        self.calls.append((model, stats.items, stats.requests))


def b64(color: str, size: tuple[int, int] = (40, 30)) -> str:
    return base64.b64encode(encode_png(Image.new("RGB", size, color))).decode()


def noise(seed: int) -> str:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    return base64.b64encode(encode_png(Image.fromarray(array))).decode()


def make_service(settings: Settings, folder: Path, observer: Observer) -> ClassifyService:
    registry = ModelRegistry(cache_dir=settings.model_cache_dir, clip_model=str(folder))
    replica = ClassifierReplica("127.0.0.1:1", "unused")  # filled by hand, never started
    replica.loaded.set()
    return ClassifyService(settings, registry, observer, replica)


def run(service: ClassifyService, coro_fn: Any) -> Any:
    async def go() -> Any:
        try:
            return await coro_fn()
        finally:
            await service.aclose()

    return asyncio.run(go())


MIXED: tuple[InputItem, ...] = (
    TextInput("a photo of a red car"),
    ImageInput(b64("red")),
    TextInput("the blue sea"),
    ImageInput(f"data:image/png;base64,{b64('blue', (300, 200))}"),
)
LABELS = ("animal", "vehicle", "colour")


def test_jina_clip_alias_resolves_to_the_configured_model(
    settings: Settings, tiny_clip: Path
) -> None:
    registry = ModelRegistry(cache_dir=settings.model_cache_dir, clip_model=str(tiny_clip))
    spec = registry.resolve("jina-clip-v1")
    assert spec.modality == TEXT_IMAGE
    assert registry.resolve(str(tiny_clip)).modality == TEXT_IMAGE  # the folder itself
    assert isinstance(registry.load(spec), ClipEncoder)


def test_mixed_zero_shot_matches_the_encoder_item_by_item(
    settings: Settings, tiny_clip: Path
) -> None:
    observer = Batches()
    service = make_service(settings, tiny_clip, observer)
    request = ClassifyRequest("r1", MIXED, model="jina-clip-v1", labels=LABELS)
    out = run(service, lambda: service.classify(request))
    encoder = ClipEncoder(tiny_clip, name="direct")
    rows = []
    for item in MIXED:
        if isinstance(item, TextInput):
            rows.append(encoder.embed_ids(encoder.tokenize([item.text]))[0])
        else:
            data = decode_base64(item.image, max_bytes=settings.images.max_bytes)
            image = decode_image(data, max_pixels=settings.images.max_pixels)
            rows.append(encoder.embed_pixels([encoder.preprocess(image)])[0])
    label_rows = encoder.embed_ids(encoder.tokenize(list(LABELS)))
    expected = softmax(np.stack(rows) @ label_rows.T, settings.models.temperature)
    assert [d["index"] for d in out["data"]] == [0, 1, 2, 3]
    for d, probs in zip(out["data"], expected, strict=True):
        got = {p["label"]: p["score"] for p in d["predictions"]}
        np.testing.assert_allclose([got[lb] for lb in LABELS], probs, atol=2e-4)
        assert abs(sum(got.values()) - 1) < 1e-4
    text_tokens = sum(len(encoder.tokenize([t.text])[0]) for t in MIXED[::2])
    label_tokens = sum(len(ids) for ids in encoder.tokenize(list(LABELS)))
    # images: 1000 tokens per started 224x224 tile; 40x30 → 1 tile, 300x200 → 2 tiles
    assert out["usage"]["total_tokens"] == text_tokens + label_tokens + 1000 + 2000
    models = {m for m, _, _ in observer.calls}
    assert models == {
        service.registry.resolve("jina-clip-v1").name + "/image",
        service.registry.resolve("jina-clip-v1").name,
    }


def test_concurrent_image_requests_share_image_batches(settings: Settings, tiny_clip: Path) -> None:
    observer = Batches()
    service = make_service(settings, tiny_clip, observer)
    requests = [
        ClassifyRequest(
            f"r{i}",
            (ImageInput(noise(i)), ImageInput(noise(100 + i))),
            model="jina-clip-v1",
            labels=LABELS,
        )
        for i in range(12)
    ]

    async def go() -> list[dict[str, Any]]:
        return await asyncio.gather(*(service.classify(r) for r in requests))

    outs = run(service, go)
    assert [o["request_id"] for o in outs] == [r.request_id for r in requests]
    image_calls = [(n, k) for m, n, k in observer.calls if m.endswith("/image")]
    assert sum(n for n, _ in image_calls) == 24
    assert len(image_calls) < 12  # fewer model calls than requests
    assert max(k for _, k in image_calls) > 1  # one call served several requests


def test_few_shot_learns_from_text_and_images_together(settings: Settings, tiny_clip: Path) -> None:
    service = make_service(settings, tiny_clip, Observer())
    examples: list[tuple[InputItem, str]] = [
        (TextInput("a photo of a cat"), "animal"),
        (ImageInput(b64("red")), "animal"),
        (TextInput("a red car"), "vehicle"),
        (ImageInput(b64("blue")), "vehicle"),
        (TextInput("a green tree"), "plant"),
        (ImageInput(b64("white")), "plant"),
    ]

    async def go() -> tuple[dict[str, Any], int]:
        spec = service.registry.resolve("jina-clip-v1")
        runtime = await service.runtime(spec)
        embedded = await service.embed_items(runtime, [item for item, _ in examples])
        labels = ["animal", "vehicle", "plant"]
        label_vectors = await runtime.labels(labels)
        record = ClassifierRecord.new(
            "c1", model=spec.name, owner=OWNER, access="private", dim=runtime.dim, now=0.0
        )
        apply_examples(
            record,
            embedded.vectors,
            [label for _, label in examples],
            num_iters=20,
            label_vectors=dict(zip(labels, label_vectors.vectors, strict=True)),
            source="t:0",
            offset=0,
            now=0.0,
        )
        assert service.classifiers is not None
        service.classifiers.records["c1"] = record
        request = ClassifyRequest("q", tuple(item for item, _ in examples), classifier_id="c1")
        return await service.classify(request, OWNER), embedded.tokens

    out, tokens = run(service, go)
    assert out["classifier_id"] == "c1"
    assert [d["prediction"] for d in out["data"]] == [label for _, label in examples]
    assert out["usage"]["total_tokens"] == tokens
    assert tokens > 3 * 1000  # three images at 1000 tokens each, plus the texts


def test_bad_images_fail_the_request_naming_the_index(settings: Settings, tiny_clip: Path) -> None:
    service = make_service(settings, tiny_clip, Observer())

    async def attempt(items: tuple[InputItem, ...]) -> RequestError:
        request = ClassifyRequest("r", items, model="jina-clip-v1", labels=LABELS)
        with pytest.raises(RequestError) as caught:
            await service.classify(request)
        return caught.value

    async def go() -> list[RequestError]:
        return [
            await attempt((TextInput("ok"), ImageInput("%%% not base64"))),
            await attempt((TextInput("ok"), TextInput("ok"), ImageInput("http://10.0.0.1/a.png"))),
            await attempt(
                (ImageInput(b64("red")), ImageInput(base64.b64encode(b"GIF89a").decode()))
            ),
        ]

    invalid, fetch, corrupt = run(service, go)
    assert invalid.code == ErrorCode.IMAGE_INVALID
    assert invalid.detail.startswith("input[1]")
    assert fetch.code == ErrorCode.IMAGE_FETCH_FAILED
    assert fetch.detail.startswith("input[2]")
    assert "private" in fetch.detail
    assert corrupt.code == ErrorCode.IMAGE_INVALID
    assert corrupt.detail.startswith("input[1]")


def test_the_image_lane_has_its_own_busy_fraction_denominator(
    settings: Settings, tiny_clip: Path
) -> None:
    """Image batches are timed as `<model>/image`, but compute streams were exported for
    `<model>` only: the dashboard's busy fraction had no line for image work."""
    from streams.metrics import PrometheusObserver

    observer = PrometheusObserver()
    service = make_service(settings, tiny_clip, observer)
    spec = service.registry.resolve("jina-clip-v1")
    run(service, lambda: service.runtime(spec))

    def streams(model: str) -> float | None:
        return observer.registry.get_sample_value("shotstream_compute_streams", {"model": model})

    assert streams(spec.name) == service.registry.streams
    assert streams(f"{spec.name}/image") == service.registry.streams


def test_each_lane_s_queue_is_measured_against_its_own_capacity(
    settings: Settings, tiny_clip: Path
) -> None:
    """A model with a text and an image lane has two queues of SHOTSTREAM_BATCHING__MAX_QUEUE
    each; their depths were summed and divided by one queue's capacity, so the queue alert
    fired at 80 % with both lanes 41 % full. Each lane is now its own series."""
    from streams.metrics import PrometheusObserver

    observer = PrometheusObserver()
    service = make_service(settings, tiny_clip, observer)
    spec = service.registry.resolve("jina-clip-v1")
    runtime = run(service, lambda: service.runtime(spec))
    runtime.lanes()["image"]._queue._small.queued = 3  # as if 3 images waited, no text

    def sample(metric: str, model: str) -> float | None:
        return observer.registry.get_sample_value(metric, {"model": model})

    capacity = settings.batching.max_queue
    assert sample("shotstream_batcher_queue_capacity", spec.name) == capacity
    assert sample("shotstream_batcher_queue_capacity", f"{spec.name}/image") == capacity
    assert sample("shotstream_batcher_queue_depth", spec.name) == 0
    assert sample("shotstream_batcher_queue_depth", f"{spec.name}/image") == 3
    runtime.lanes()["image"]._queue._small.queued = 0
