"""Image inputs → preprocessed pixels: fetch concurrently, decode and preprocess off the loop.

A request's image items are fetched at once (URLs, bounded per worker by
``images.fetch_concurrency``) or base64-decoded, each then decoded and preprocessed for
the model in a small thread pool, never on the event loop. Any failure fails the request
with ``IMAGE_FETCH_FAILED`` or ``IMAGE_INVALID`` and a detail naming the input's index.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from models.images import (
    ImageDecodeError,
    ImageEncoder,
    Pixels,
    decode_base64,
    decode_scaled,
    image_tokens,
)
from streams.errors import ErrorCode, RequestError
from streams.fetch import FetchError, ImageFetcher
from streams.settings import ImageSettings

T = TypeVar("T")

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


@dataclass(frozen=True, slots=True)
class LoadedImages:
    pixels: list[Pixels]
    """Each image's model crop, uint8 ``(H, W, 3)`` (150 KB at 224 px): the encoder
    normalises it to float only in the batch that embeds it."""
    tokens: list[int]
    """Usage tokens of each image (tile rule, see ``ImageSettings``)."""


class Room:
    """A first-come-first-served budget of units taken several at a time: ``hold(n)`` waits
    until ``n`` are free and no earlier caller is still waiting, so a large request is not
    passed over for ever by small ones, and a request never holds part of what it needs
    while it waits for the rest (two such requests would wait on each other)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._waiting: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = min(n, self.total)
        if self._waiting or self.free < n:
            granted = asyncio.get_running_loop().create_future()
            entry = (n, granted)
            self._waiting.append(entry)
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._give_back(n)  # granted as it was cancelled
                else:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(entry)
                    self._wake()  # it may have been holding up smaller ones behind it
                raise
        else:
            self.free -= n
        try:
            yield
        finally:
            self._give_back(n)

    @property
    def waiting(self) -> int:
        """Callers waiting for room."""
        return len(self._waiting)

    def _give_back(self, n: int) -> None:
        self.free += n
        self._wake()

    def _wake(self) -> None:
        while self._waiting:
            n, granted = self._waiting[0]
            if granted.done():  # cancelled while waiting, not yet removed
                self._waiting.popleft()
                continue
            if n > self.free:
                return
            self._waiting.popleft()
            self.free -= n
            granted.set_result(None)


class ImageLoader:
    """Turns ``{"image": ...}`` values into model inputs, with precise errors."""

    def __init__(self, settings: ImageSettings, fetcher: ImageFetcher | None = None) -> None:
        self.settings = settings
        self.fetcher = fetcher or ImageFetcher(settings)
        self._fetch_slots: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="image")
        self.room = Room(settings.max_waiting_images)
        """Images held between loading and embedding, across requests: hold room for a
        request's images around its load and its embedding (``images.max_waiting_images``).
        A request's pixels alone were up to 147 MiB, and a worker has up to 256 requests
        (1,024 on a GPU) in flight."""

    @contextlib.asynccontextmanager
    async def room_for(self, n: int) -> AsyncIterator[None]:
        """Room for ``n`` images, held for the ``with`` block (their load and embedding);
        waited for at most ``request_timeout_s``, then ``IMAGE_FETCH_FAILED``."""
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    await stack.enter_async_context(self.room.hold(n))
            except TimeoutError as exc:
                raise RequestError(
                    ErrorCode.SERVICE_UNAVAILABLE,
                    f"waited {self.settings.request_timeout_s:g} s for room for the request's "
                    f"{n} images among other requests' on this worker "
                    "(SHOTSTREAM_IMAGES__MAX_WAITING_IMAGES, SHOTSTREAM_IMAGES__REQUEST_TIMEOUT_S)",
                ) from exc
            yield

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def load(
        self, values: Sequence[str], indices: Sequence[int], encoder: ImageEncoder
    ) -> LoadedImages:
        """Preprocessed images for ``values`` (request positions ``indices``).

        Each item is fetched (or base64-decoded), decoded and preprocessed on its own, so
        only its pixels outlive it (its 8-bit crop: 150 KB at 224 px); a fetched body is
        decoded while it still holds its fetch slot, so at most ``fetch_concurrency``
        bodies are held per worker (all of a request's were, until the last one arrived:
        up to 1,024 x 8 MB). The first failure cancels the items after it; the lowest
        failing index is the one reported. All of it within ``request_timeout_s``."""
        tasks = [
            asyncio.ensure_future(self._one(value, index, encoder))
            for value, index in zip(values, indices, strict=True)
        ]
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                prepared = await _lowest_error_first(tasks)
        except TimeoutError as exc:
            ready = sum(1 for t in tasks if t.done() and not t.cancelled() and not t.exception())
            raise RequestError(
                ErrorCode.IMAGE_FETCH_FAILED,
                f"the request's images were not all fetched and decoded within "
                f"{self.settings.request_timeout_s:g} s ({ready} of {len(tasks)} were; "
                "SHOTSTREAM_IMAGES__REQUEST_TIMEOUT_S)",
            ) from exc
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return LoadedImages([p for p, _ in prepared], [t for _, t in prepared])

    async def _one(self, value: str, index: int, encoder: ImageEncoder) -> tuple[Pixels, int]:
        value = value.strip()
        loop = asyncio.get_running_loop()
        if not _URL.match(value):
            data = await self._base64(value, index)
            return await loop.run_in_executor(self._pool, self._prepare, data, index, encoder)
        if self._fetch_slots is None:
            self._fetch_slots = asyncio.Semaphore(self.settings.fetch_concurrency)
        async with self._fetch_slots:
            try:
                data = await self.fetcher.fetch(value)
            except FetchError as exc:
                raise RequestError(
                    ErrorCode.IMAGE_FETCH_FAILED, f"input[{index}]: {_shorten(value)}: {exc}"
                ) from exc
            # decoded with the slot held: a slot's body is dropped before the next comes
            return await loop.run_in_executor(self._pool, self._prepare, data, index, encoder)

    async def _base64(self, value: str, index: int) -> bytes:
        try:  # megabytes of base64: decoded in the pool, never on the event loop
            return await asyncio.get_running_loop().run_in_executor(
                self._pool,
                functools.partial(decode_base64, value, max_bytes=self.settings.max_bytes),
            )
        except ImageDecodeError as exc:
            raise RequestError(
                ErrorCode.IMAGE_INVALID,
                f"input[{index}] is neither an http(s) URL nor a valid base64 image / "
                f"data: URI: {exc}",
            ) from exc

    def _prepare(self, data: bytes, index: int, encoder: ImageEncoder) -> tuple[Pixels, int]:
        try:
            image, stored = decode_scaled(
                data,
                max_pixels=self.settings.max_pixels,
                side=encoder.size,
                max_aspect=self.settings.max_aspect_ratio,
            )
            tokens = image_tokens(
                *stored, tile=self.settings.tile_pixels, per_tile=self.settings.tokens_per_tile
            )
            return encoder.preprocess(image), tokens
        except ImageDecodeError as exc:
            raise RequestError(ErrorCode.IMAGE_INVALID, f"input[{index}]: {exc}") from exc


def _shorten(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


async def _lowest_error_first(tasks: Sequence[asyncio.Future[T]]) -> list[T]:
    """The tasks' results in order, or the error of the lowest failing index (the same one
    every time, whichever failed first). A failure cancels the tasks after it, which can no
    longer be the one reported; those before it run on, since one of them may fail too."""
    position = {task: k for k, task in enumerate(tasks)}
    failed = len(tasks)
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                failed = min(failed, position[task])
        later = {task for task in pending if position[task] > failed}
        for task in later:
            task.cancel()
        pending -= later
    if failed < len(tasks):
        error = tasks[failed].exception()
        assert error is not None  # noqa: S101 - it failed
        raise error
    return [task.result() for task in tasks]
