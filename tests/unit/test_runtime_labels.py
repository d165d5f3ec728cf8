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
