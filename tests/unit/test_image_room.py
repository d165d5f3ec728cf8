"""Images held between loading and embedding are bounded per worker, first come first
served, across requests (``images.max_waiting_images``)."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from streams.images import ImageLoader, Room
from streams.records import ImageInput
from streams.service import ClassifyService
from streams.settings import ImageSettings, Settings
from tests.conftest import hash_registry


def test_room_is_taken_whole_and_first_come_first_served() -> None:
    async def go() -> list[str]:
        room = Room(4)
        order: list[str] = []
        release = {name: asyncio.Event() for name in "abcd"}

        async def user(name: str, n: int) -> None:
            async with room.hold(n):
                order.append(f"{name} in (free {room.free})")
                await release[name].wait()
            order.append(f"{name} out")

        a = asyncio.create_task(user("a", 3))
        await asyncio.sleep(0)
        b = asyncio.create_task(user("b", 3))  # waits for a
        await asyncio.sleep(0)
        c = asyncio.create_task(user("c", 1))  # 1 is free, but b came first
        await asyncio.sleep(0.01)
        assert room.waiting == 2
        release["a"].set()
        await asyncio.sleep(0.01)
        d = asyncio.create_task(user("d", 9))  # more than there is: all of it
        await asyncio.sleep(0.01)
        release["b"].set()
        release["c"].set()
        await asyncio.sleep(0.01)
        release["d"].set()
        await asyncio.gather(a, b, c, d)
        assert room.free == 4
        return order

    assert asyncio.run(go()) == [
        "a in (free 1)",
        "a out",
        "b in (free 0)",
        "c in (free 0)",
        "b out",
        "c out",
        "d in (free 0)",
        "d out",
    ]


def test_a_waiter_that_goes_away_gives_its_turn_to_the_next() -> None:
    async def go() -> tuple[int, int]:
        room = Room(4)
        big_started = asyncio.Event()

        async def holder() -> None:
            async with room.hold(2):
                big_started.set()
                await asyncio.sleep(0.05)

        async def small() -> str:
            async with room.hold(2):
                return "in"

        first = asyncio.create_task(holder())
        await big_started.wait()
        blocked = asyncio.create_task(small())  # fits, goes in
        assert await blocked == "in"
        big = asyncio.create_task(room.hold(4).__aenter__())  # waits for the holder
        await asyncio.sleep(0)
        after = asyncio.create_task(small())  # behind big
        await asyncio.sleep(0.01)
        assert not after.done()
        big.cancel()
        assert await asyncio.wait_for(after, 1) == "in"  # no longer held up
        await first
        return room.free, room.waiting

    assert asyncio.run(go()) == (4, 0)


def png() -> str:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


class Runtime:
    name, dim = "fake", 3

    def __init__(self, loader: ImageLoader) -> None:
        self.loader = loader
        self.image = Pixelwise()
        self.peak = 0

    async def embed_images(self, pixels: Any) -> np.ndarray:
        await asyncio.sleep(0.02)  # others load meanwhile, if they may
        held = self.loader.room.total - self.loader.room.free
        self.peak = max(self.peak, held)
        return np.ones((len(pixels), 3), dtype=np.float32)


class Pixelwise:
    name, dim, size = "pixels", 3, 224

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image, dtype=np.uint8)

    def embed_pixels(self, batch: Any) -> np.ndarray:
        raise NotImplementedError


def test_requests_hold_room_for_their_images_until_they_are_embedded(tmp_path: Path) -> None:
    """Six requests of 3 images on a worker with room for 4: one at a time from load to
    embedding. Before, each loaded at once and held its pixels until embedded (a request
    of 1,024 images 147 MiB, up to 256 requests in flight)."""
    loader = ImageLoader(ImageSettings(max_waiting_images=4))
    service = ClassifyService(Settings(data_dir=tmp_path), hash_registry(tmp_path), images=loader)
    runtime = Runtime(loader)
    loads: list[int] = []
    real_load = loader.load

    async def load(*args: Any, **kw: Any) -> Any:
        loads.append(loader.room.total - loader.room.free)
        return await real_load(*args, **kw)

    loader.load = load  # type: ignore[method-assign]
    image = png()

    async def go() -> None:
        try:
            await asyncio.gather(
                *(
                    service.embed_items(cast(Any, runtime), [ImageInput(image)] * 3)
                    for _ in range(6)
                )
            )
        finally:
            await loader.aclose()

    asyncio.run(go())
    assert loads == [3] * 6  # each loaded with only its own room taken
    assert runtime.peak == 3
    assert loader.room.free == 4


def test_the_wait_for_room_is_bounded_and_says_why(tmp_path: Path) -> None:
    from streams.errors import ErrorCode, RequestError

    loader = ImageLoader(ImageSettings(max_waiting_images=4, request_timeout_s=0.05))

    async def go() -> RequestError:
        try:
            async with loader.room.hold(4):  # another request's images
                try:
                    async with loader.room_for(2):
                        raise AssertionError("no room was free")
                except RequestError as exc:
                    assert loader.room.waiting == 0  # gave up its place
                    return exc
            raise AssertionError("not refused")
        finally:
            await loader.aclose()

    error = asyncio.run(go())
    assert error.code == ErrorCode.SERVICE_UNAVAILABLE  # the worker's state, not the image's
    assert "MAX_WAITING_IMAGES" in error.detail
    assert loader.room.free == 4
