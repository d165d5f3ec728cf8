"""The classify path, shared by the Kafka agents and the HTTP gateway.

``ClassifyService.classify`` takes a validated request and returns the response body;
it knows nothing of Kafka or HTTP. Models load lazily, once, off the event loop.
Requests mix text and image items freely; ``embed_items`` embeds each kind through its
own micro-batcher of the same model and puts the rows back in request order.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from models.fewshot import NonFiniteInputError, check_finite
from models.registry import IMAGE, TEXT, ModelRegistry, ModelSpec
from models.runtime import EmbeddingRuntime, Tokenized
from models.scoring import ranked, softmax
from state.classifiers import learner, may_read
from streams.errors import ErrorCode, RequestError
from streams.images import ImageLoader
from streams.observer import Observer, lane_label
from streams.records import ClassifyRequest, ImageInput, InputItem, TextInput
from streams.replica import ClassifierReplica
from streams.settings import Settings


class ClassifyService:
    """Embeds, scores and builds responses; one per worker process."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        observer: Observer | None = None,
        classifiers: ClassifierReplica | None = None,
        images: ImageLoader | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.observer = observer or Observer()
        self.classifiers = classifiers
        self.images = images or ImageLoader(settings.images)
        self._runtimes: dict[str, EmbeddingRuntime] = {}
        self._loading: dict[str, asyncio.Lock] = {}

    # -- models -----------------------------------------------------------------------

    async def runtime(self, spec: ModelSpec) -> EmbeddingRuntime:
        """The running model for ``spec``, loaded on first use in a thread."""
        runtime = self._runtimes.get(spec.name)
        if runtime is not None:
            return runtime
        lock = self._loading.setdefault(spec.name, asyncio.Lock())
        async with lock:
            runtime = self._runtimes.get(spec.name)
            if runtime is None:
                encoder = await asyncio.to_thread(self.registry.load, spec)
                b = self.settings.batching
                runtime = EmbeddingRuntime(
                    encoder,
                    max_batch_size=b.max_batch_size,
                    max_wait_s=b.max_wait_ms / 1000,
                    max_batch_tokens=b.max_batch_tokens,
                    max_queue=b.max_queue,
                    chunk_overhead=b.chunk_overhead_tokens,
                    label_cache_size=self.settings.models.label_cache_size,
                    on_batch=functools.partial(self.observer.on_batch, spec.name),
                    on_image_batch=functools.partial(
                        self.observer.on_batch, lane_label(spec.name, "image")
                    ),
                    image_max_batch_size=self.settings.images.max_batch_size,
                    streams=self.registry.streams,
                    max_label_tokens=self.settings.limits.max_tokens_per_input,
                    max_queue_wait_s=b.max_queue_wait_s or None,
                )
                self._runtimes[spec.name] = runtime
                self.observer.on_model_loaded(
                    spec.name,
                    spec.source,
                    str(getattr(encoder, "device", "cpu")),
                    encoder.dim,
                    {
                        lane: functools.partial(getattr, batcher, "queue_depth")
                        for lane, batcher in runtime.lanes().items()
                    },
                    streams=self.registry.streams,
                    image_streams=self.registry.streams if runtime.image_batcher else 0,
                    queue_capacity=b.max_queue,
                    queue_waits={
                        lane: functools.partial(getattr, batcher, "queue_wait_s")
                        for lane, batcher in runtime.lanes().items()
                    },
                    queue_wait_limit_s=b.max_queue_wait_s,
                )
        return runtime

    async def aclose(self) -> None:
        for runtime in self._runtimes.values():
            await runtime.aclose()
        await self.images.aclose()

    # -- classify ---------------------------------------------------------------------

    async def tokenize_checked(
        self, runtime: EmbeddingRuntime, texts: list[str], indices: Sequence[int] | None = None
    ) -> Tokenized:
        """Tokenize, enforce the per-input token limit, count truncations.

        ``indices`` are the texts' positions in the request (for error details)."""
        limit = self.settings.limits.max_tokens_per_input
        where = indices if indices is not None else range(len(texts))
        for index, text in zip(where, texts, strict=True):
            # over by its length or by a prefix: refused without being tokenized whole
            has = await runtime.over_limit(text, limit) if len(text) > limit else None
            if has is not None:
                raise RequestError(ErrorCode.INPUT_TOO_LONG, f"input[{index}] has {has}")
        tokenized = await runtime.tokenize(texts)
        for index, count in zip(where, tokenized.counts, strict=True):
            if count > limit:
                raise RequestError(
                    ErrorCode.INPUT_TOO_LONG,
                    f"input[{index}] has {count} tokens, at most {limit} allowed",
                )
        if tokenized.truncated:
            self.observer.on_truncated(runtime.name, tokenized.truncated)
        return tokenized

    async def classify(self, request: ClassifyRequest, owner: str | None = None) -> dict[str, Any]:
        """Answer one classify request (DESIGN.md response body, ``request_id`` first).

        ``owner`` is the caller's key hash (few-shot needs one).
        """
        if request.classifier_id is not None:
            return await self._few_shot(request, owner)
        return await self._zero_shot(request)

    async def _few_shot(self, request: ClassifyRequest, owner: str | None) -> dict[str, Any]:
        assert request.classifier_id is not None  # noqa: S101 - the caller checked
        if owner is None:
            raise RequestError(
                ErrorCode.AUTH_MISSING_API_KEY,
                "few-shot classification needs a valid 'authorization: Bearer <key>' header",
            )
        record = None
        if self.classifiers is not None:
            await classifiers_loaded(self.classifiers, self.settings.limits.changelog_wait_s)
            record = self.classifiers.get(request.classifier_id) or (
                await self.classifiers.wait_for(
                    request.classifier_id, self.settings.limits.visibility_wait_s
                )
            )
        if record is not None and not may_read(record, owner) and self.classifiers is not None:
            # a train request that just made it public may not have replicated yet: before
            # denying, wait (as for an unknown id) for a newer version of the record
            record = await self.classifiers.wait_for(
                request.classifier_id,
                self.settings.limits.visibility_wait_s,
                min_version=record.version + 1,
            )
        if record is None or not may_read(record, owner):
            raise RequestError(
                ErrorCode.CLASSIFIER_NOT_FOUND, f"classifier {request.classifier_id!r} not found"
            )
        spec = self.registry.resolve(record.model)
        check_modalities(request.inputs, spec)
        runtime = await self.runtime(spec)
        embedded = await self.embed_items(runtime, request.inputs)
        probabilities = learner(record).predict_proba_many(embedded.vectors)
        tokens = embedded.tokens
        self.observer.on_tokens(spec.name, "few-shot", tokens)
        return {
            "request_id": request.request_id,
            "classifier_id": record.classifier_id,
            "version": record.version,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "data": [
                _prediction(i, list(record.labels), row) for i, row in enumerate(probabilities)
            ],
        }

    async def _zero_shot(self, request: ClassifyRequest) -> dict[str, Any]:
        spec = self.registry.resolve(request.model)
        if spec.modality == IMAGE:
            raise RequestError(
                ErrorCode.MODEL_NOT_AVAILABLE,
                f"model {spec.name!r} embeds images only and cannot embed labels, so it has no "
                "zero-shot: name a CLIP model ('jina-clip-v1' once SHOTSTREAM_IMAGES__CLIP_MODEL "
                f"is set, or a CLIP folder), or train a few-shot classifier with {spec.name!r}",
            )
        check_modalities(request.inputs, spec)
        labels = request.all_labels
        self._refuse_huge_answer(request, labels)
        runtime = await self.runtime(spec)
        inputs = asyncio.ensure_future(self.embed_items(runtime, request.inputs))
        try:
            label_vectors = await runtime.labels(labels)
        except BaseException:  # a label too long: the inputs need not be embedded either
            inputs.cancel()
            inputs.add_done_callback(lambda task: task.cancelled() or task.exception())
            raise
        embedded = await inputs
        check_embedded(label_vectors.vectors, spec.name, "label", labels)
        # encoders return L2-normalised rows (their contract): a dot product is cosine
        cosine = embedded.vectors @ label_vectors.vectors.T
        temperature = self.settings.models.temperature
        if request.label_groups is not None:
            position = {label: i for i, label in enumerate(labels)}
            data = _grouped_data(cosine, request.label_groups, position, temperature)
        else:
            probabilities = softmax(cosine, temperature)
            data = [_prediction(i, list(labels), row) for i, row in enumerate(probabilities)]
        tokens = embedded.tokens + label_vectors.tokens
        self.observer.on_tokens(spec.name, "zero-shot", tokens)
        return {
            "request_id": request.request_id,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "data": data,
        }

    def _refuse_huge_answer(self, request: ClassifyRequest, labels: Sequence[str]) -> None:
        """``RESPONSE_TOO_LARGE`` before any work when the answer cannot fit a record: it
        was built first and measured after, and a 527 KB request (1,024 inputs, 256 labels
        of 2,000 characters) built 550 MB; with long group names, tens of GB, which ended
        the worker (orjson does not raise when memory runs out) at every redelivery."""
        limit = self.settings.kafka.max_message_bytes
        floor = answer_floor(len(request.inputs), labels, request.label_groups)
        if floor > limit:
            raise RequestError(
                ErrorCode.RESPONSE_TOO_LARGE,
                f"the answer would hold at least {floor:,} bytes ({len(request.inputs)} inputs "
                f"x {len(labels)} labels), over the {limit:,}-byte message limit: send fewer "
                "inputs or labels per request, or shorter labels",
            )

    async def embed_items(self, runtime: EmbeddingRuntime, items: Sequence[InputItem]) -> Embedded:
        """Embed text and image items (each kind in its own batches), rows in item order.

        Texts are tokenized and checked first (cheap), then the text embedding and the
        image fetch → decode → embedding run concurrently."""
        texts = [(i, it.text) for i, it in enumerate(items) if isinstance(it, TextInput)]
        images = [(i, it.image) for i, it in enumerate(items) if isinstance(it, ImageInput)]
        vectors = np.zeros((len(items), runtime.dim), dtype=np.float32)
        tokens = 0
        tokenized = None
        if texts:
            tokenized = await self.tokenize_checked(
                runtime, [t for _, t in texts], [i for i, _ in texts]
            )
            tokens += sum(tokenized.counts)
            if not images:  # the common case, texts only: no row placement, no gather
                vectors = await runtime.embed(tokenized.ids)
                check_embedded(vectors, runtime.name, "input")
                return Embedded(vectors, tokens)

        async def embed_texts() -> None:
            if tokenized is not None:
                vectors[[i for i, _ in texts]] = await runtime.embed(tokenized.ids)

        async def embed_images() -> int:
            if not images:
                return 0
            assert runtime.image is not None  # noqa: S101 - check_modalities ran
            async with self.images.room_for(len(images)):  # pixels held: bounded per worker
                loaded = await self.images.load(
                    [v for _, v in images], [i for i, _ in images], runtime.image
                )
                vectors[[i for i, _ in images]] = await runtime.embed_images(loaded.pixels)
                return sum(loaded.tokens)

        _, image_tokens = await _together(embed_texts(), embed_images())
        check_embedded(vectors, runtime.name, "input")
        return Embedded(vectors, tokens + image_tokens)


A = TypeVar("A")
B = TypeVar("B")


async def _together(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Both results, or the first failure with the other side cancelled (and awaited):
    ``asyncio.gather`` alone lets it run on, so a request whose texts had failed kept
    fetching and decoding its images."""
    tasks = (asyncio.ensure_future(first), asyncio.ensure_future(second))
    try:
        a, b = await asyncio.gather(tasks[0], tasks[1])
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return a, b


@dataclass(frozen=True, slots=True)
class Embedded:
    vectors: npt.NDArray[np.float32]
    """One L2-normalised row per item, in request order."""
    tokens: int
    """Usage: text tokens plus image tokens (tile rule)."""


def check_embedded(
    vectors: npt.NDArray[np.float32],
    model: str,
    what: str,
    names: Sequence[str] | None = None,
) -> None:
    """``EMBEDDING_NOT_FINITE`` naming the rows the model embedded to NaN or infinity.

    A real encoder does this only when its arithmetic overflows (float16 on a GPU), and
    softmax over NaN would answer scores of ``null``: better a precise error."""
    try:
        check_finite(vectors)
    except NonFiniteInputError as exc:
        where = [names[i] for i in exc.rows] if names is not None else exc.rows
        raise RequestError(
            ErrorCode.EMBEDDING_NOT_FINITE,
            f"model {model!r} embedded {what}(s) {where[:10]} to NaN or infinity; nothing "
            "was answered or learned. On a GPU in float16 try "
            "SHOTSTREAM_MODELS__DTYPE=bfloat16 or float32",
        ) from exc


def check_modalities(items: Sequence[InputItem], spec: ModelSpec) -> None:
    """Refuse items the model cannot embed (before any model is loaded)."""
    for index, item in enumerate(items):
        if isinstance(item, ImageInput) and spec.modality == TEXT:
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"input[{index}] is an image but model {spec.name!r} embeds text only; name an "
                "image model in 'model': a CLIP model for zero-shot ('jina-clip-v1' once "
                "SHOTSTREAM_IMAGES__CLIP_MODEL is set) or 'efficientnet-lite0' for few-shot",
            )
        if isinstance(item, TextInput) and spec.modality == IMAGE:
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"input[{index}] is text but model {spec.name!r} embeds images only; use a "
                "CLIP model for text and images in one classifier",
            )


def _prediction(
    index: int, labels: list[str], probabilities: npt.NDArray[np.floating]
) -> dict[str, Any]:
    ordered = ranked(labels, probabilities)
    return {
        "object": "classification",
        "index": index,
        "prediction": ordered[0][0],
        "score": ordered[0][1],
        "predictions": [{"label": label, "score": score} for label, score in ordered],
    }


_SCORED = len(b'{"label":"","score":0.0},')
"""The least a label's entry in ``predictions`` adds beside the label's characters."""


def answer_floor(
    inputs: int, labels: Sequence[str], groups: Mapping[str, Sequence[str]] | None
) -> int:
    """Bytes a zero-shot answer holds at least: every label with a score in every input's
    predictions, and every group name (quoted) three times per input. A character takes at
    least one byte in JSON, so lengths in characters bound it from below, without encoding
    anything."""
    per_input = sum(map(len, labels)) + _SCORED * len(labels)
    if groups:
        per_input += 3 * (sum(map(len, groups)) + 2 * len(groups))
    return inputs * per_input


def _grouped_data(
    cosine: npt.NDArray[np.float32],
    groups: Mapping[str, Sequence[str]],
    position: Mapping[str, int],
    temperature: float,
) -> list[dict[str, Any]]:
    """One prediction per group per input: dicts keyed by group name (Jina's shape)."""
    per_group = {
        name: softmax(cosine[:, [position[label] for label in labels]], temperature)
        for name, labels in groups.items()
    }
    data = []
    for index in range(cosine.shape[0]):
        item: dict[str, Any] = {
            "object": "classification",
            "index": index,
            "prediction": {},
            "score": {},
            "predictions": {},
        }
        for name, labels in groups.items():
            single = _prediction(index, list(labels), per_group[name][index])
            item["prediction"][name] = single["prediction"]
            item["score"][name] = single["score"]
            item["predictions"][name] = single["predictions"]
        data.append(item)
    return data


async def classifiers_loaded(replica: ClassifierReplica, wait_s: float) -> None:
    """Wait until ``replica`` has read the classifier changelog to where it ended at start
    (a worker just started knows none of them before), for at most ``wait_s``: a worker
    that cannot read it must not hold its requests (and the zero-shot ones behind them)
    for good."""
    if replica.loaded.is_set():
        return
    try:
        await asyncio.wait_for(replica.loaded.wait(), wait_s)
    except TimeoutError:
        raise RequestError(
            ErrorCode.SERVICE_UNAVAILABLE,
            f"this worker has not read the classifier changelog yet ({wait_s:g} s; it has "
            "just started, or cannot reach the changelog): try again later",
        ) from None
