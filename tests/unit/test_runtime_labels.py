"""Label embeddings shared by concurrent requests survive the request that started them."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from models.embedders import HashTextEncoder
from models.runtime import EmbeddingRuntime


class Slow(HashTextEncoder):
    def embed_ids(self, batch):  # type: ignore[no-untyped-def]
        threading.Event().wait(0.2)
        return super().embed_ids(batch)


def test_a_cancelled_request_does_not_fail_others_waiting_on_its_labels() -> None:
    """Request A starts embedding two labels; B needs them too and waits on A's work; A's
    caller goes away. B still gets its labels (before, B failed with A's CancelledError,
    which escapes the handlers' ``except Exception``: no answer, no dead letter)."""

    async def go() -> tuple[bool, np.ndarray, np.ndarray]:
        runtime = EmbeddingRuntime(Slow(dim=8), max_wait_s=0.001)
        try:
            a = asyncio.create_task(runtime.labels(["sports", "politics"]))
            await asyncio.sleep(0.05)  # A is computing the labels
            b = asyncio.create_task(runtime.labels(["sports", "politics", "tech"]))
            await asyncio.sleep(0.01)  # B waits for A's two
            a.cancel()
            got = await asyncio.wait_for(b, 10)
            alone = await runtime.labels(["sports"])  # cached by the computation A began
            return a.cancelled(), got.vectors, alone.vectors
        finally:
            await runtime.aclose()

    a_cancelled, vectors, alone = asyncio.run(go())
    assert a_cancelled
    assert vectors.shape == (3, 8)
    np.testing.assert_array_equal(vectors[0], alone[0])


class Recording(HashTextEncoder):
    def __init__(self) -> None:
        super().__init__(dim=8, max_length=16)
        self.calls: list[list[int]] = []

    def embed_ids(self, batch):  # type: ignore[no-untyped-def]
        self.calls.append([len(ids) for ids in batch])
        return super().embed_ids(batch)


def test_inputs_longer_than_the_window_are_costed_at_the_window() -> None:
    """The model truncates to its window, so a batch of long inputs pads to the window:
    a 64-token budget holds 4 inputs of a 16-token window, however long they are
    (costed at full length, each ran alone: 8 calls instead of 2)."""
    encoder = Recording()

    async def go() -> np.ndarray:
        runtime = EmbeddingRuntime(encoder, max_batch_tokens=64, chunk_overhead=1, max_wait_s=0.05)
        try:
            return await runtime.embed([[1, *range(5, 1005), 2] for _ in range(8)])
        finally:
            await runtime.aclose()

    vectors = asyncio.run(go())
    assert vectors.shape == (8, 8)
    assert sorted(len(call) for call in encoder.calls) == [4, 4]
    assert all(n == 1002 for call in encoder.calls for n in call)  # the model truncates


def test_whole_label_lists_are_kept_within_the_label_cache_size() -> None:
    """The list cache holds no more labels in all than ``label_cache_size`` (it kept 1,024
    lists whatever the size: 384 MiB for lists of 256 labels at 384 dimensions), and
    counts a list asked for twice at once only once."""

    async def go() -> tuple[int, int, int]:
        runtime = EmbeddingRuntime(HashTextEncoder(dim=8), max_wait_s=0.001, label_cache_size=10)
        try:
            for k in range(6):  # six lists of 4: at most two fit in 10 labels
                await runtime.labels([f"l{k}-{i}" for i in range(4)])
            kept = len(runtime._label_sets)
            await asyncio.gather(*(runtime.labels(["a", "b"]) for _ in range(3)))
            await runtime.labels([f"x{i}" for i in range(11)])  # over the size: not kept
            return kept, len(runtime._label_sets), runtime._label_set_rows
        finally:
            await runtime.aclose()

    kept, after, rows = asyncio.run(go())
    assert kept == 2
    assert after == 3  # the newest two lists of 4 and ["a", "b"], counted once: 10 labels
    assert rows == 10


def test_long_labels_are_embedded_but_never_cached() -> None:
    """The caches count labels, not bytes: 40 requests of 256 labels of 40 kB took a worker
    from 37 to 481 MB. A label over 1,024 characters is embedded for each request."""

    async def go() -> tuple[int, int, int]:
        runtime = EmbeddingRuntime(HashTextEncoder(dim=8), max_wait_s=0.001)
        try:
            long = "word " * 2_000
            first = await runtime.labels(["short", long])
            again = await runtime.labels(["short", long])
            assert np.array_equal(first.vectors, again.vectors)
            assert first.tokens == again.tokens
            return (
                len(runtime._label_cache),
                len(runtime._label_sets),
                max((len(label) for label in runtime._label_cache), default=0),
            )
        finally:
            await runtime.aclose()

    cached, lists, longest = asyncio.run(go())
    assert (cached, lists, longest) == (1, 0, len("short"))


def test_long_inputs_keep_only_the_window_of_ids_and_count_in_full() -> None:
    """A 1,000-token input keeps the 16 ids its model embeds (first 15 and the end token),
    not 1,000 until it is answered; usage still counts 1,000, and the vector is the same."""
    encoder = HashTextEncoder(dim=8, max_length=16)
    text = " ".join(f"w{i}" for i in range(998))

    async def go() -> tuple[list[list[int]], list[int], int, np.ndarray, np.ndarray]:
        runtime = EmbeddingRuntime(encoder, max_wait_s=0.001)
        try:
            tokenized = await runtime.tokenize([text, "short one"])
            kept = await runtime.embed(tokenized.ids)
            full = await runtime.embed(encoder.tokenize([text, "short one"]))
            return tokenized.ids, tokenized.counts, tokenized.truncated, kept, full
        finally:
            await runtime.aclose()

    ids, counts, truncated, kept, full = asyncio.run(go())
    assert counts[0] == len(encoder.tokenize([text])[0]) > 16
    assert (len(ids[0]), ids[0][-1]) == (16, encoder.tokenize([text])[0][-1])
    assert ids[1] == encoder.tokenize(["short one"])[0]
    assert truncated == 1
    np.testing.assert_array_equal(kept, full)


def test_a_cached_label_keeps_its_own_row_not_its_whole_batch() -> None:
    """A label's vector was a row view of its request's whole (labels x dim) array, so one
    popular label kept alive a 256-label batch after the cache had evicted the other 255:
    up to ~100x the cache's memory (39 GB against 150 MB at 100,000 labels of 384-d)."""

    async def go() -> list[np.ndarray]:
        runtime = EmbeddingRuntime(HashTextEncoder(dim=384), max_wait_s=0.001)
        try:
            await runtime.labels([f"label {i}" for i in range(256)])
            return [vec for vec, _count in runtime._label_cache.values()]
        finally:
            await runtime.aclose()

    cached = asyncio.run(go())
    assert len(cached) == 256
    assert all(vec.base is None and vec.nbytes == 384 * 4 for vec in cached)
