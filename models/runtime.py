"""One loaded model at work: token counting, micro-batched embedding, a label cache.

Zero-shot requests repeat their labels; each label is tokenized and embedded once per
model and then served from an LRU cache (concurrent misses of the same label share one
computation). A model with an image tower gets a second micro-batcher of its own for
preprocessed images, so text and image items never share a model call.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.batching import DEADLINE, BatchStats, MicroBatcher, Vectors
from models.embedders import TextEncoder, TokenIds, truncate
from models.images import ImageEncoder, Pixels

Encoder = TextEncoder | ImageEncoder

LABEL_SET_CACHE = 1024
"""Distinct label lists kept whole (each also lives in the per-label cache), and never
more labels in all of them than ``label_cache_size``: 1,024 lists of 256 long labels
would otherwise hold ~384 MiB of vectors whatever that setting says."""


@dataclass(frozen=True, slots=True)
class Tokenized:
    """Token ids of some texts, with what usage and limits need."""

    ids: list[TokenIds]
    counts: list[int]
    truncated: int
    """How many exceed the model window (they are embedded truncated)."""


@dataclass(frozen=True, slots=True)
class LabelVectors:
    vectors: Vectors
    tokens: int


LABEL_CACHE_MAX_CHARS = 1024
"""Longer labels are embedded for each request, never cached: the cache counts labels, and
100,000 of them at 40 kB each would hold 4 GB of strings."""

MAX_CHARS_PER_TOKEN = 32
"""A text longer than this many characters per allowed token is refused without being
tokenized. Real text runs 3 to 6 characters per token; what goes past 32 is runs of
spaces or control characters, which cost the tokenizer thread time for almost no tokens
(16 MB of spaces: 15 s and 1.2 GB for 6 tokens, so a token limit alone bounds nothing)."""


PREFIX_GROWTH = 4
"""A text longer than its token limit in characters is first counted on prefixes of the
limit in characters, then this many times longer each time, up to its own length."""
PREFIX_SLACK = 16
"""Tokens a prefix may have over the limit and still be counted whole: a word cut at its
end can split into a few more tokens than it has in the whole text."""
TOKENIZE_CHUNK_CHARS = 65_536
"""Characters (at least one text) tokenized per call of the tokenizer thread: what one
call holds (its Rust encodings keep every token, ~200 bytes each) stays bounded, and
other requests' texts are tokenized between one long request's calls."""


def prefix_at_space(text: str, size: int) -> str:
    """The first ``size`` characters of ``text``, less a word cut at their end where a
    space comes in their last quarter.

    >>> prefix_at_space("one two three", 9)
    'one two'
    >>> prefix_at_space("abcdefghij", 4)
    'abcd'
    """
    prefix = text[:size]
    if len(text) > size and not text[size].isspace():
        space = prefix.rfind(" ", size - size // 4)
        if space > 0:
            return prefix[:space]
    return prefix


def over_char_cap_detail(text: str, limit: int) -> str:
    """What a refusal of ``text`` for its length alone (over :data:`MAX_CHARS_PER_TOKEN`
    characters per allowed token) says of it."""
    cap = MAX_CHARS_PER_TOKEN * limit
    return f"{len(text):,} characters, at most {cap:,} ({MAX_CHARS_PER_TOKEN} per token) allowed"


class LabelTooLongError(ValueError):
    """A label over ``max_label_tokens``: refused after tokenizing, before embedding."""

    def __init__(self, label: str, has: str) -> None:
        shown = f"{label[:40]!r}{'…' if len(label) > 40 else ''}"
        super().__init__(f"label {shown} has {has}")


class EmbeddingRuntime:
    """An encoder behind a micro-batcher (one per modality), with a label cache.

    Parameters
    ----------
    encoder
        The loaded model: a text encoder, an image encoder, or both (CLIP).
    batcher_options
        Passed to :class:`~models.batching.MicroBatcher`.
    label_cache_size
        Labels kept (0 disables the cache).
    tokenizer_threads
        Threads tokenizing off the event loop (Rust tokenizers release the GIL).
    image_max_batch_size
        Images per model call (default: ``max_batch_size``).
    streams
        Model calls run at once per batcher (a worker picks it: ``streams.worker.plan_compute``).
    max_label_tokens
        Labels longer than this are refused (``LabelTooLongError``) before they are embedded
        (the per-input limit: a longer label would be billed for a vector of its first
        window of tokens).
    max_queue_wait_s
        Both batchers' :class:`~models.batching.MicroBatcher` ``max_queue_wait_s``.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.005,
        max_batch_tokens: int = 16384,
        max_queue: int = 8192,
        chunk_overhead: int = 64,
        label_cache_size: int = 100_000,
        tokenizer_threads: int = 1,
        inline_tokenize_chars: int = 2048,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_image_batch: Callable[[BatchStats], None] | None = None,
        image_max_batch_size: int | None = None,
        streams: int = 1,
        max_label_tokens: int | None = None,
        max_queue_wait_s: float | None = None,
    ) -> None:
        self.encoder = encoder
        self.max_label_tokens = max_label_tokens
        self.text: TextEncoder | None = encoder if isinstance(encoder, TextEncoder) else None
        self.image: ImageEncoder | None = encoder if isinstance(encoder, ImageEncoder) else None
        if self.text is None and self.image is None:
            raise TypeError(f"{type(encoder).__name__} is neither a text nor an image encoder")
        self._batcher: MicroBatcher[TokenIds] | None = None
        if self.text is not None:
            window = self.text.max_length
            self._batcher = MicroBatcher(
                self.text.embed_ids,
                max_batch_size=max_batch_size,
                max_wait_s=max_wait_s,
                max_batch_tokens=max_batch_tokens,
                max_queue=max_queue,
                chunk_overhead=chunk_overhead,
                # the model truncates inputs to its window, so a longer one costs (and
                # pads to) the window: costed in full, 2,000-token inputs would run 8 per
                # call where 32 fit the budget
                length=lambda ids: min(len(ids), window),
                on_batch=on_batch,
                name=f"embed-{encoder.name}",
                streams=streams,
                max_queue_wait_s=max_queue_wait_s,
            )
        self.image_batcher: MicroBatcher[Pixels] | None = None
        if self.image is not None:
            # images are all the same size once preprocessed: each costs one unit, a model
            # call costs more than that, so a batch is never split
            image_batch = image_max_batch_size or max_batch_size
            self.image_batcher = MicroBatcher(
                self.image.embed_pixels,
                max_batch_size=image_batch,
                max_wait_s=max_wait_s,
                max_batch_tokens=image_batch,
                max_queue=max_queue,
                chunk_overhead=image_batch,
                length=lambda _pixels: 1,
                on_batch=on_image_batch or on_batch,
                name=f"image-{encoder.name}",
                streams=streams,
                max_queue_wait_s=max_queue_wait_s,
            )
        self.inline_tokenize_chars = inline_tokenize_chars
        self._tokenizer_pool = ThreadPoolExecutor(tokenizer_threads, thread_name_prefix="tok")
        self._label_cache: OrderedDict[str, tuple[Vectors, int]] = OrderedDict()
        self._label_cache_size = label_cache_size
        self._label_sets: OrderedDict[tuple[str, ...], LabelVectors] = OrderedDict()
        self._label_set_rows = 0
        """Labels in all of ``_label_sets`` (bounded by ``label_cache_size``)."""
        self._label_inflight: dict[str, asyncio.Future[tuple[Vectors, int]]] = {}
        self._label_tasks: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def batcher(self) -> MicroBatcher[TokenIds]:
        """The text batcher; ``TypeError`` for an image-only model."""
        if self._batcher is None:
            raise TypeError(f"model {self.name!r} embeds images only")
        return self._batcher

    def lanes(self) -> dict[str, MicroBatcher[Any]]:
        """This model's batchers by lane (``text``, ``image``), each with its own queue."""
        lanes: dict[str, MicroBatcher[Any]] = {}
        if self._batcher is not None:
            lanes["text"] = self._batcher
        if self.image_batcher is not None:
            lanes["image"] = self.image_batcher
        return lanes

    def _text(self) -> TextEncoder:
        if self.text is None:
            raise TypeError(f"model {self.name!r} embeds images only")
        return self.text

    async def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids and counts; long inputs are tokenized off the event loop, at most
        :data:`TOKENIZE_CHUNK_CHARS` characters (or one text) per call.

        Short requests are tokenized inline and keep the GIL: a few microseconds of Rust
        beat a thread hop (executor submit plus a cross-thread wake-up) by an order of
        magnitude, and a release of the GIL too (:func:`models.embedders.encode_ids`).
        """
        text = self._text()
        window = text.max_length
        ids: list[TokenIds] = []
        counts: list[int] = []
        for chunk, size in self._chunks(texts):
            if size <= self.inline_tokenize_chars:
                got = text.tokenize(chunk, keep_gil=True)
            else:
                loop = asyncio.get_running_loop()
                got = await loop.run_in_executor(self._tokenizer_pool, text.tokenize, chunk)
            counts += [len(i) for i in got]
            # the model embeds the window only: holding more (156 MiB for 1,024 inputs of
            # 4,000 tokens) until the answer would only cost memory; usage keeps the counts
            ids += [truncate(i, window) if len(i) > window else i for i in got]
        return Tokenized(ids, counts, sum(1 for c in counts if c > window))

    @staticmethod
    def _chunks(texts: Sequence[str]) -> Iterator[tuple[list[str], int]]:
        """Runs of texts of at most :data:`TOKENIZE_CHUNK_CHARS` characters (or one text),
        with their characters."""
        chunk: list[str] = []
        size = 0
        for t in texts:
            if chunk and size + len(t) > TOKENIZE_CHUNK_CHARS:
                yield chunk, size
                chunk, size = [], 0
            chunk.append(t)
            size += len(t)
        if chunk:
            yield chunk, size

    async def over_limit(self, text: str, limit: int) -> str | None:
        """Whether ``text`` is shown to be over ``limit`` tokens without tokenizing it
        whole, and what a refusal says then; ``None`` if neither its length (over
        :data:`MAX_CHARS_PER_TOKEN` per allowed token) nor a prefix shorter than it shows so.

        Prefixes of ``limit`` characters, then :data:`PREFIX_GROWTH` times longer, are
        counted: a text far over the limit is refused for the price of a prefix. Counted
        whole, 262,144 characters of U+FDFA (4 tokens each once normalised) held the
        tokenizer thread for 1.2 s and 200 MB, and 20 of them in one request 24 s and 4 GB.
        """
        if len(text) > MAX_CHARS_PER_TOKEN * limit:
            return over_char_cap_detail(text, limit)  # by its length alone, untokenized
        size = limit
        while len(text) > size:
            prefix = prefix_at_space(text, size)
            (count,) = (await self.tokenize([prefix])).counts
            if count > limit + PREFIX_SLACK:
                seen = f"{count:,} in its first {len(prefix):,} characters"
                return f"more than {limit} tokens ({seen}), at most {limit} allowed"
            size *= PREFIX_GROWTH
        return None

    async def embed(self, ids: Sequence[TokenIds]) -> Vectors:
        """Embed token ids through the shared micro-batcher."""
        return await self.batcher.submit(ids)

    async def embed_images(self, pixels: Sequence[Pixels]) -> Vectors:
        """Embed preprocessed images through this model's image micro-batcher."""
        if self.image_batcher is None:
            raise TypeError(f"model {self.name!r} embeds text only")
        return await self.image_batcher.submit(pixels)

    async def labels(self, labels: Sequence[str]) -> LabelVectors:
        """Embeddings of ``labels`` (cached) and their total token count.

        Requests tend to repeat the same label list, so whole lists are cached too: a
        repeated list of 256 labels costs one dictionary lookup, not 256 plus a stack.
        """
        key = tuple(labels)
        hit = self._label_sets.get(key)
        if hit is not None:
            self._label_sets.move_to_end(key)
            return hit
        found = await self._labels(labels)
        if 0 < len(key) <= self._label_cache_size and all(
            len(label) <= LABEL_CACHE_MAX_CHARS for label in key
        ):
            if key not in self._label_sets:  # (a request for the same list may be first)
                self._label_set_rows += len(key)
            self._label_sets[key] = found
            while (
                len(self._label_sets) > LABEL_SET_CACHE
                or self._label_set_rows > self._label_cache_size
            ):
                evicted, _ = self._label_sets.popitem(last=False)
                self._label_set_rows -= len(evicted)
        return found

    async def _labels(self, labels: Sequence[str]) -> LabelVectors:
        results: dict[str, tuple[Vectors, int]] = {}
        missing: list[str] = []
        waiting: dict[str, asyncio.Future[tuple[Vectors, int]]] = {}
        for label in dict.fromkeys(labels):
            hit = self._label_cache.get(label)
            if hit is not None:
                self._label_cache.move_to_end(label)
                results[label] = hit
            elif label in self._label_inflight:
                waiting[label] = self._label_inflight[label]
            else:
                missing.append(label)
        if missing:
            await self._compute_labels(missing, results)
        for label, future in waiting.items():
            results[label] = await asyncio.shield(future)
        vectors = np.stack([results[label][0] for label in labels])
        tokens = sum(results[label][1] for label in labels)
        return LabelVectors(vectors.astype(np.float32, copy=False), tokens)

    async def _compute_labels(
        self, missing: list[str], results: dict[str, tuple[Vectors, int]]
    ) -> None:
        loop = asyncio.get_running_loop()
        futures = {label: loop.create_future() for label in missing}
        self._label_inflight.update(futures)
        # its own task: a caller that goes away (cancelled) leaves the computation running
        # for the other requests waiting on these labels, instead of failing them with it;
        # and out of its caller's deadline, which is not theirs
        context = contextvars.copy_context()
        context.run(DEADLINE.set, None)
        task = asyncio.create_task(self._embed_labels(missing, futures), context=context)
        self._label_tasks.add(task)
        task.add_done_callback(self._label_task_done)
        await asyncio.shield(task)
        for label in missing:
            results[label] = futures[label].result()

    def _label_task_done(self, task: asyncio.Task[None]) -> None:
        self._label_tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has it through its future

    async def _embed_labels(
        self, missing: list[str], futures: dict[str, asyncio.Future[tuple[Vectors, int]]]
    ) -> None:
        kept = missing
        try:
            limit = self.max_label_tokens
            if limit is not None:
                for label in missing:
                    has = await self.over_limit(label, limit) if len(label) > limit else None
                    if has is not None:
                        futures[label].set_exception(LabelTooLongError(label, has))
                        futures[label].exception()  # consumed here; waiters re-raise it
                kept = [label for label in missing if not futures[label].done()]
            tokenized = await self.tokenize(kept)
            if limit is not None and max(tokenized.counts, default=0) > limit:
                # only the long ones fail (never cached): another request may wait on the rest
                keep = []
                for i, (label, count) in enumerate(zip(kept, tokenized.counts, strict=True)):
                    if count > limit:
                        has = f"{count} tokens, at most {limit} allowed"
                        futures[label].set_exception(LabelTooLongError(label, has))
                        futures[label].exception()  # consumed here; waiters re-raise it
                    else:
                        keep.append(i)
                kept = [kept[i] for i in keep]
                tokenized = Tokenized(
                    [tokenized.ids[i] for i in keep], [tokenized.counts[i] for i in keep], 0
                )
            vectors = await self.embed(tokenized.ids) if kept else np.zeros((0, 0))
        except BaseException as exc:
            for future in futures.values():
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()  # shutting down
                else:
                    future.set_exception(exc)
                    future.exception()  # consumed here; waiters re-raise it
            raise
        finally:
            for label in missing:
                self._label_inflight.pop(label, None)
        for label, vec, count in zip(kept, vectors, tokenized.counts, strict=True):
            entry = (vec.copy(), count)  # a row of the whole batch: a view would keep it all
            futures[label].set_result(entry)
            if self._label_cache_size and len(label) <= LABEL_CACHE_MAX_CHARS:
                self._label_cache[label] = entry
        while len(self._label_cache) > self._label_cache_size:
            self._label_cache.popitem(last=False)

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
        if self.image_batcher is not None:
            await self.image_batcher.aclose()
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)
