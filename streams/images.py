"""Image inputs → preprocessed pixels: fetch concurrently, decode and preprocess off the loop.

A request's image items are fetched at once (URLs, bounded per worker by
``images.fetch_concurrency``) or base64-decoded, then decoded and preprocessed for the
model in a small thread pool, never on the event loop. Any failure fails the request
with ``IMAGE_FETCH_FAILED`` or ``IMAGE_INVALID`` and a detail naming the input's index.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

from models.images import (
    ImageDecodeError,
    ImageEncoder,
    Pixels,
    decode_base64,
    decode_image,
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
    tokens: list[int]
    """Usage tokens of each image (tile rule, see ``ImageSettings``)."""


class ImageLoader:
    """Turns ``{"image": ...}`` values into model inputs, with precise errors."""

    def __init__(self, settings: ImageSettings, fetcher: ImageFetcher | None = None) -> None:
        self.settings = settings
        self.fetcher = fetcher or ImageFetcher(settings)
        self._fetch_slots: asyncio.Semaphore | None = None
        self._pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="image")

    async def aclose(self) -> None:
        await self.fetcher.aclose()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def load(
        self, values: Sequence[str], indices: Sequence[int], encoder: ImageEncoder
    ) -> LoadedImages:
        """Preprocessed images for ``values`` (request positions ``indices``)."""
        raw = _first_error_in_order(
            await asyncio.gather(
                *(self._bytes(value, index) for value, index in zip(values, indices, strict=True)),
                return_exceptions=True,
            )
        )
        loop = asyncio.get_running_loop()
        prepared = _first_error_in_order(
            await asyncio.gather(
                *(
                    loop.run_in_executor(self._pool, self._prepare, data, index, encoder)
                    for data, index in zip(raw, indices, strict=True)
                ),
                return_exceptions=True,
            )
        )
        return LoadedImages([p for p, _ in prepared], [t for _, t in prepared])

    async def _bytes(self, value: str, index: int) -> bytes:
        value = value.strip()
        if _URL.match(value):
            if self._fetch_slots is None:
                self._fetch_slots = asyncio.Semaphore(self.settings.fetch_concurrency)
            try:
                async with self._fetch_slots:
                    data = await self.fetcher.fetch(value)
            except FetchError as exc:
                raise RequestError(
                    ErrorCode.IMAGE_FETCH_FAILED, f"input[{index}]: {_shorten(value)}: {exc}"
                ) from exc
            return data
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
            image = decode_image(data, max_pixels=self.settings.max_pixels)
            tokens = image_tokens(
                *image.size, tile=self.settings.tile_pixels, per_tile=self.settings.tokens_per_tile
            )
            return encoder.preprocess(image), tokens
        except ImageDecodeError as exc:
            raise RequestError(ErrorCode.IMAGE_INVALID, f"input[{index}]: {exc}") from exc


def _shorten(url: str, limit: int = 120) -> str:
    return url if len(url) <= limit else url[: limit - 1] + "…"


def _first_error_in_order(results: list[T | BaseException]) -> list[T]:
    """The results, or the error of the lowest failing index (the same one every time,
    whichever fetch failed first)."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast("list[T]", results)
