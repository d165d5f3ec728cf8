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
