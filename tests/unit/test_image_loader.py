"""A request's images: each fetched, decoded and dropped on its own; the first failure
stops the rest; one deadline for the request. A scripted fetcher stands in for the web."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from models.images import encode_png
from streams.errors import ErrorCode, RequestError
from streams.fetch import FetchError
from streams.images import ImageLoader
from streams.settings import ImageSettings

PNG = encode_png(Image.new("RGB", (8, 8), "blue"))


class Fetcher:
    """``http://x/<seconds>`` answers after that long; ``.../fail`` fails at once."""

    def __init__(self) -> None:
        self.held = 0  # bodies fetched and not yet preprocessed
        self.most_held = 0
        self.cancelled: list[str] = []

    async def fetch(self, url: str) -> bytes:
        last = url.rsplit("/", 1)[1]
        if last == "fail":
            raise FetchError("HTTP 404 Not Found")
        try:
            await asyncio.sleep(float(last))
        except asyncio.CancelledError:
            self.cancelled.append(url)
            raise
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        return PNG

    async def aclose(self) -> None:
        pass


class Encoder:
    size = 224

    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self.sizes: list[tuple[int, int]] = []

    def preprocess(self, image: Image.Image) -> np.ndarray:
        self.fetcher.held -= 1  # decoded: the body is no longer needed
        self.sizes.append(image.size)
        return np.zeros((3, 2, 2), dtype=np.float32)


def load(urls: list[str], **settings: Any) -> tuple[Any, Fetcher, float]:
    fetcher = Fetcher()
    loader = ImageLoader(ImageSettings(**settings), cast(Any, fetcher))

    async def go() -> Any:
        try:
            return await loader.load(urls, range(len(urls)), cast(Any, Encoder(fetcher)))
        except RequestError as exc:
            return exc
        finally:
            await loader.aclose()

    started = time.monotonic()
    result = asyncio.run(go())
    return result, fetcher, time.monotonic() - started


def test_a_slot_holds_one_body_at_a_time() -> None:
    """All of a request's bodies were held until the last arrived (1,024 x 8 MB at most);
    now a body is decoded before its slot takes the next."""
    loaded, fetcher, _ = load([f"http://x/{i}/0.01" for i in range(12)], fetch_concurrency=2)
    assert len(loaded.pixels) == 12
    assert fetcher.most_held <= 2


def test_the_first_failure_stops_the_items_after_it_and_the_lowest_index_is_reported() -> None:
    urls = ["http://x/a/0.3", "http://x/b/fail", "http://x/c/30", "http://x/d/fail"]
    error, fetcher, took = load(urls)
    assert isinstance(error, RequestError)
    assert error.code == ErrorCode.IMAGE_FETCH_FAILED
    assert error.detail.startswith("input[1]: http://x/b/fail")
    assert "http://x/c/30" in fetcher.cancelled  # not waited for: 30 s
    assert "http://x/a/0.3" not in fetcher.cancelled  # it might have failed first in order
    assert took < 10


def test_a_request_of_many_slow_images_has_one_deadline() -> None:
    """Each fetch stays under its own timeout; the request as a whole does not."""
    urls = [f"http://x/{i}/0.2" for i in range(20)]
    error, fetcher, took = load(urls, fetch_concurrency=1, request_timeout_s=0.5)
    assert isinstance(error, RequestError)
    assert error.code == ErrorCode.IMAGE_FETCH_FAILED
    assert "within 0.5 s" in error.detail
    assert "REQUEST_TIMEOUT_S" in error.detail
    assert fetcher.cancelled  # the rest was called off
    assert took < 3


@pytest.mark.parametrize("bad", ["not base64 at all!", "aGVsbG8="])
def test_base64_items_still_fail_with_their_index(bad: str) -> None:
    error, _, _ = load(["http://x/a/0.01", bad])
    assert isinstance(error, RequestError)
    assert error.code == ErrorCode.IMAGE_INVALID
    assert error.detail.startswith("input[1]")


def test_a_large_jpeg_is_decoded_reduced_and_charged_at_its_full_size() -> None:
    """Usage counts the image as sent (tiles of its stored size), not the reduced decode
    the model is given."""
    import base64
    import io

    from models.images import image_tokens

    out = io.BytesIO()
    Image.new("RGB", (3000, 2000), "red").save(out, "JPEG")
    fetcher = Fetcher()
    fetcher.held = 1  # a base64 item has no fetch; preprocess still counts one down
    encoder = Encoder(fetcher)
    loader = ImageLoader(ImageSettings(), cast(Any, fetcher))

    async def go() -> Any:
        try:
            return await loader.load(
                [base64.b64encode(out.getvalue()).decode()], [0], cast(Any, encoder)
            )
        finally:
            await loader.aclose()

    loaded = asyncio.run(go())
    settings = ImageSettings()
    assert encoder.sizes == [(750, 500)]  # 1/4: 1/8 would be 375 x 250, below 448
    assert loaded.tokens == [
        image_tokens(3000, 2000, tile=settings.tile_pixels, per_tile=settings.tokens_per_tile)
    ]


@pytest.mark.parametrize(
    ("size", "tokens"), [((64 * 223, 223), 64_000), ((64, 1), 1_000), ((1, 65), None)]
)
def test_a_strip_far_longer_than_wide_is_refused_not_charged_by_the_tile(
    size: tuple[int, int], tokens: int | None
) -> None:
    """A 39,000,000 x 1 PNG (38 kB, under the pixel cap) was charged 174,108,000 tokens, one
    224 px tile per 224 pixels of its length (a key's tokens per minute for 2.9 hours over
    HTTP), though the model sees one square of it. Sides over 64 times one another are
    IMAGE_INVALID from the header; at 64 a strip under 224 px counts 64,000 at most."""
    import base64

    fetcher = Fetcher()
    fetcher.held = 1  # a base64 item has no fetch; preprocess still counts one down
    loader = ImageLoader(ImageSettings(), cast(Any, fetcher))
    png = base64.b64encode(encode_png(Image.new("RGB", size, "red"))).decode()

    async def go() -> Any:
        try:
            return await loader.load([png], [0], cast(Any, Encoder(fetcher)))
        except RequestError as exc:
            return exc
        finally:
            await loader.aclose()

    loaded = asyncio.run(go())
    if tokens is None:
        assert isinstance(loaded, RequestError)
        assert loaded.code == ErrorCode.IMAGE_INVALID
        assert loaded.detail == "input[0]: image is 1x65: one side over 64 times the other"
    else:
        assert loaded.tokens == [tokens]
