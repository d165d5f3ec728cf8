"""The classify path, shared by the Kafka agents and the HTTP gateway.

``ClassifyService.classify`` takes a validated request and returns the response body;
it knows nothing of Kafka or HTTP. Models load lazily, once, off the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.registry import ModelRegistry, ModelSpec
from models.runtime import EmbeddingRuntime, Tokenized
from models.scoring import ranked, softmax
from state.classifiers import learner
from streams.errors import ErrorCode, RequestError
from streams.observer import Observer
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
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.observer = observer or Observer()
        self.classifiers = classifiers
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
                )
                self._runtimes[spec.name] = runtime
                self.observer.on_model_loaded(
                    spec.name,
                    spec.source,
                    str(getattr(encoder, "device", "cpu")),
                    encoder.dim,
                    lambda: runtime.batcher.queue_depth if runtime else 0,
                )
        return runtime

    async def aclose(self) -> None:
        for runtime in self._runtimes.values():
            await runtime.aclose()

    # -- classify ---------------------------------------------------------------------

    async def tokenize_checked(self, runtime: EmbeddingRuntime, texts: list[str]) -> Tokenized:
        """Tokenize, enforce the per-input token limit, count truncations."""
        tokenized = await runtime.tokenize(texts)
        limit = self.settings.limits.max_tokens_per_input
        for index, count in enumerate(tokenized.counts):
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
                ErrorCode.UNAUTHORIZED,
                "few-shot classification needs a valid 'authorization: Bearer <key>' header",
            )
        record = None
        if self.classifiers is not None:
            record = self.classifiers.get(request.classifier_id) or (
                await self.classifiers.wait_for(
                    request.classifier_id, self.settings.limits.visibility_wait_s
                )
            )
        if record is None or (record.access != "public" and record.owner != owner):
            raise RequestError(
                ErrorCode.CLASSIFIER_NOT_FOUND, f"classifier {request.classifier_id!r} not found"
            )
        spec = self.registry.resolve(record.model)
        runtime = await self.runtime(spec)
        tokenized = await self.tokenize_checked(runtime, texts_only(request.inputs, spec.name))
        vectors = await runtime.embed(tokenized.ids)
        probabilities = learner(record).predict_proba_many(vectors)
        tokens = sum(tokenized.counts)
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
        texts = texts_only(request.inputs, spec.name)
        runtime = await self.runtime(spec)
        tokenized = await self.tokenize_checked(runtime, texts)
        labels = request.all_labels
        vectors, label_vectors = await asyncio.gather(
            runtime.embed(tokenized.ids), runtime.labels(labels)
        )
        # encoders return L2-normalised rows (TextEncoder's contract): a dot product is cosine
        cosine = vectors @ label_vectors.vectors.T
        temperature = self.settings.models.temperature
        if request.label_groups is not None:
            position = {label: i for i, label in enumerate(labels)}
            data = _grouped_data(cosine, request.label_groups, position, temperature)
        else:
            probabilities = softmax(cosine, temperature)
            data = [_prediction(i, list(labels), row) for i, row in enumerate(probabilities)]
        tokens = sum(tokenized.counts) + label_vectors.tokens
        self.observer.on_tokens(spec.name, "zero-shot", tokens)
        return {
            "request_id": request.request_id,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
            "data": data,
        }


def texts_only(items: Sequence[InputItem], model: str) -> list[str]:
    """The texts of ``items``; an image is an error for a text-only model."""
    texts: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, ImageInput):
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"input[{index}] is an image but model {model!r} embeds text only; "
                "name an image-capable model in 'model'",
            )
        assert isinstance(item, TextInput)  # noqa: S101 - exhaustive union
        texts.append(item.text)
    return texts


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
