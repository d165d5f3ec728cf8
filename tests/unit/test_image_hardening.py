"""Image path hardening: memory held per loaded image, JPEG scan bombs, every decoder
error an ``IMAGE_INVALID``, high bit depths scaled, colour-key transparency, generic
content types on fetch, and a failed request's other half cancelled."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image, ImageFile

from models.images import (
    MAX_JPEG_SCANS,
    ImageDecodeError,
    _PixelEncoder,
    center_crop_resize,
    decode_image,
    encode_png,
    jpeg_scans,
    to_eight_bits,
    to_rgb,
)
from models.runtime import Tokenized
from streams.errors import ErrorCode, RequestError
from streams.fetch import FetchError, ImageFetcher
from streams.images import ImageLoader
from streams.records import ImageInput, TextInput
from streams.service import ClassifyService
from streams.settings import ImageSettings, Settings
from tests.conftest import hash_registry
from tests.local_server import serve

DATA = Path(__file__).parent / "data"
MAX_PIXELS = 40_000_000


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def decoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> np.ndarray:
    out = decode_image(encoded(image, fmt, **options), max_pixels=MAX_PIXELS)
    assert out.mode == "RGB"
    return np.asarray(out)


# -- 1. memory: a loaded image holds its 8-bit crop, not float32 -------------------------


class Pixelwise(_PixelEncoder):
    """The real preprocessing and normalisation; ``_forward`` keeps what it was given."""

    size = 224
    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)
    dim = 3
    name = "pixelwise"

    def __init__(self) -> None:
        import torch

        self.device = torch.device("cpu")
        self._guard = contextlib.nullcontext()
        self.seen: list[np.ndarray] = []

    def _forward(self, pixels: Any) -> Any:
        self.seen.append(pixels.numpy().copy())
        return pixels.mean(dim=(2, 3))


def test_a_loaded_image_holds_its_8_bit_crop_not_float32() -> None:
    """1,024 1x1 PNGs (92 KiB of base64) held 602 KB of float32 each until the request
    was embedded: 588 MiB. The uint8 crop is a quarter of that."""
    tiny = base64.b64encode(encode_png(Image.new("RGB", (1, 1), "red"))).decode()
    loader = ImageLoader(ImageSettings())

    async def go() -> Any:
        try:
            return await loader.load([tiny] * 8, range(8), Pixelwise())
        finally:
            await loader.aclose()

    loaded = asyncio.run(go())
    assert len(loaded.pixels) == 8
    for pixels in loaded.pixels:
        assert pixels.dtype == np.uint8
        assert pixels.nbytes <= 224 * 224 * 3


def to_chw(image: Image.Image, mean: Any, std: Any) -> np.ndarray:
    """The float path images took before (``models.images.to_chw``): ``(x - mean) / std``
    per channel on 0-255 values, channels first, float32, made when preprocessed."""
    array = np.asarray(image, dtype=np.float32)
    scaled = (array - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1), dtype=np.float32)


def test_embed_pixels_normalises_as_the_float_path_did() -> None:
    """The model sees exactly what ``to_chw`` made before: ``(x - mean) / std``, CHW."""
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in [(300, 240), (224, 224), (50, 400)]
    ]
    encoder = Pixelwise()
    encoder.embed_pixels([encoder.preprocess(i) for i in images])
    expected = np.stack(
        [to_chw(center_crop_resize(i, 224), encoder.mean, encoder.std) for i in images]
    )
    (seen,) = encoder.seen
    assert seen.shape == (3, 3, 224, 224)
    assert seen.dtype == np.float32
    np.testing.assert_array_equal(seen, expected)


# -- 2. JPEG scan bombs ----------------------------------------------------------------


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, bytes) of each segment; an SOS segment carries its entropy-coded data."""
    pos, out = 2, []
    while pos < len(jpeg):
        marker = jpeg[pos + 1]
        if marker == 0xD9:
            break
        end = pos + 2 + int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            while not (
                jpeg[end] == 0xFF and jpeg[end + 1] != 0 and not 0xD0 <= jpeg[end + 1] <= 0xD7
            ):
                end += 1
        out.append((marker, jpeg[pos:end]))
        pos = end
    return out


def scan_bomb(side: int, repeats: int) -> bytes:
    """A valid progressive JPEG with its smallest AC refinement scan repeated."""
    base = encoded(Image.new("L", (side, side), 0), "JPEG", progressive=True, quality=50)
    segments = _segments(base)
    scans = [s for m, s in segments if m == 0xDA]
    ac = [s for s in scans if s[5 + 2 * s[4]] > 0]  # spectral selection start > 0
    pick = min(ac, key=len)
    return b"\xff\xd8" + b"".join(s for _, s in segments) + pick * repeats + b"\xff\xd9"


def test_a_jpeg_repeating_a_tiny_scan_is_refused_before_decoding() -> None:
    """Within the size and pixel limits, 20,000 repeats of a 14-byte scan decoded for
    minutes (each is a pass over every pixel); a JPEG may have 64 scans."""
    bomb = scan_bomb(64, MAX_JPEG_SCANS)
    assert jpeg_scans(bomb) > MAX_JPEG_SCANS
    with pytest.raises(ImageDecodeError, match=f"more than {MAX_JPEG_SCANS} scans"):
        decode_image(bomb, max_pixels=MAX_PIXELS)
    big = scan_bomb(2000, 20_000)
    started = time.monotonic()
    with pytest.raises(ImageDecodeError, match="scans"):
        decode_image(big, max_pixels=MAX_PIXELS)
    assert time.monotonic() - started < 1.0


def test_ordinary_jpegs_pass_the_scan_count() -> None:
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    progressive = encoded(photo, "JPEG", progressive=True)
    assert 3 <= jpeg_scans(progressive) <= 12
    assert jpeg_scans(encoded(photo, "JPEG")) == 1
    assert decode_image(progressive, max_pixels=MAX_PIXELS).size == (64, 48)
    # restart markers and stuffed 0xFF bytes inside scans are not markers
    restarts = encoded(photo, "JPEG", progressive=True, restart_marker_blocks=1)
    assert jpeg_scans(restarts) == jpeg_scans(progressive)
    assert decode_image(restarts, max_pixels=MAX_PIXELS).size == (64, 48)
    assert decode_image(scan_bomb(64, MAX_JPEG_SCANS // 2), max_pixels=MAX_PIXELS)


def test_the_scan_count_sees_through_fill_bytes_and_stray_bytes() -> None:
    sos = bytes.fromhex("ffda0008010100003f00") + b"\x12\xff\x00\x34"
    padded = b"\xff\xd8" + (b"\xff\xff\xff" + sos + b"\x00\x01") * (MAX_JPEG_SCANS + 1)
    assert jpeg_scans(padded) == MAX_JPEG_SCANS + 1
    started = time.monotonic()
    assert jpeg_scans(b"\xff\xd8" + b"\xff" * 8_000_000 + b"\xd9") == 0
    assert time.monotonic() - started < 0.5


# -- 3. whatever Pillow raises on bad bytes is IMAGE_INVALID ------------------------------


@pytest.mark.parametrize(
    "name", ["corrupt-avif-runtimeerror.avif", "corrupt-1bit-tiff-typeerror.tif"]
)
def test_decoder_errors_of_any_type_are_invalid_images(name: str) -> None:
    """A corrupt AVIF raised RuntimeError and a corrupt 1-bit TIFF TypeError (fuzzed
    files): an INTERNAL_ERROR with a traceback, where the input was simply invalid."""
    data = (DATA / name).read_bytes()
    with pytest.raises(ImageDecodeError, match="corrupt"):
        decode_image(data, max_pixels=MAX_PIXELS)
    loader = ImageLoader(ImageSettings())

    async def go() -> None:
        try:
            await loader.load([base64.b64encode(data).decode()], [3], Pixelwise())
        finally:
            await loader.aclose()

    with pytest.raises(RequestError) as caught:
        asyncio.run(go())
    assert caught.value.code == ErrorCode.IMAGE_INVALID
    assert caught.value.detail.startswith("input[3]: ")


def test_memory_errors_are_not_called_invalid_images(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(self: Image.Image) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", out_of_memory)
    with pytest.raises(MemoryError):
        decode_image(encode_png(Image.new("RGB", (2, 2))), max_pixels=MAX_PIXELS)


# -- 4. high bit depths are scaled, not clipped ----------------------------------------

GRADIENT16 = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))


def test_16_bit_grayscale_is_scaled_to_8_bits() -> None:
    """Pillow clips 16-bit values to 255: a 16-bit PNG came out almost white."""
    for image, fmt in [
        (Image.fromarray(GRADIENT16), "PNG"),  # I;16
        (Image.fromarray(GRADIENT16.astype(">u2")), "TIFF"),  # I;16B
        (Image.fromarray(GRADIENT16.astype(np.int32)), "TIFF"),  # I, 16-bit values
    ]:
        pixels = decoded(image, fmt)
        np.testing.assert_array_equal(pixels[0, :, 0], GRADIENT16[0] >> 8)
        assert 120 < pixels.mean() < 135


def test_int32_and_float_images_are_scaled_by_their_range() -> None:
    wide = (GRADIENT16.astype(np.int32) - 32768) * 1000  # -32 M .. +32 M
    assert abs(decoded(Image.fromarray(wide), "TIFF").mean() - 127.5) < 1
    unit = (GRADIENT16 / 65535).astype(np.float32)  # 0..1: was black
    pixels = decoded(Image.fromarray(unit), "TIFF")
    assert pixels.max() == 255
    assert abs(pixels.mean() - 127.5) < 1
    eight = (GRADIENT16 >> 8).astype(np.float32)  # 0..255 floats stay as they are
    np.testing.assert_array_equal(decoded(Image.fromarray(eight), "TIFF")[..., 0], eight)
    # one pixel past 255 changes the image by 255/256, not by a factor of 256
    near = np.array([[0, 128, 256]], dtype=np.int32)
    assert decoded(Image.fromarray(near), "TIFF")[0, :, 0].tolist() == [0, 128, 255]
    assert (
        to_eight_bits(Image.fromarray(np.array([[0, 128, 255]], dtype=np.int32))).getpixel((1, 0))
        == 128
    )
    odd = unit.copy()
    odd[0, :3] = [np.nan, np.inf, -np.inf]
    assert decoded(Image.fromarray(odd), "TIFF").shape == (4, 256, 3)


# -- 5. colour keys and premultiplied alpha are transparency ---------------------------


def test_colour_keys_and_premultiplied_alpha_composite_on_white() -> None:
    """A tRNS colour key on a grayscale or RGB PNG, and RGBa/La images, came out black."""
    assert decoded(Image.new("L", (8, 8), 0), transparency=0).min() == 255
    assert decoded(Image.new("RGB", (8, 8), (0, 0, 0)), transparency=(0, 0, 0)).min() == 255
    half = decoded(Image.new("RGB", (8, 8), (0, 0, 0)), transparency=(1, 2, 3))
    assert half.max() == 0  # a key no pixel has: nothing transparent
    keyed16 = Image.fromarray(np.zeros((8, 8), dtype=np.uint16))
    assert decoded(keyed16, transparency=0).min() == 255
    for mode, clear in [("RGBa", (0, 0, 0, 0)), ("La", (0, 0))]:
        assert np.asarray(to_rgb(Image.new(mode, (4, 4), clear))).min() == 255
    opaque = to_rgb(Image.new("RGBa", (4, 4), (10, 20, 30, 255)))
    assert opaque.getpixel((0, 0)) == (10, 20, 30)


# -- 6. generic binary content types are fetched ---------------------------------------

PNG = encode_png(Image.new("RGB", (8, 8), "red"))


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        types = {
            "/octet": "application/octet-stream",
            "/binary": "binary/octet-stream; charset=binary",
            "/none": None,
            "/html": "text/html",
            "/json": "application/json",
        }
        self.send_response(200)
        ctype = types.get(self.path)
        if ctype is not None:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serve(Handler) as url:
        yield url


def fetch(url: str) -> bytes:
    async def go() -> bytes:
        fetcher = ImageFetcher(ImageSettings(allow_list=("127.0.0.1/32",)))
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.aclose()

    return asyncio.run(go())


def test_generic_binary_content_types_are_fetched(server: str) -> None:
    """S3 and CDNs often serve images as application/octet-stream or with no type."""
    for path in ["/octet", "/binary", "/none"]:
        assert fetch(server + path) == PNG
    for path, ctype in [("/html", "text/html"), ("/json", "application/json")]:
        with pytest.raises(FetchError, match=f"'{ctype}' is not an image"):
            fetch(server + path)


# -- 7. a failed half of a mixed request cancels the other ------------------------------


class SlowFetcher:
    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def fetch(self, url: str) -> bytes:
        self.started += 1
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return PNG

    async def aclose(self) -> None:
        pass


class Runtime:
    """What ``embed_items`` uses of a runtime; text embedding fails or hangs on demand."""

    name, dim = "fake", 3

    def __init__(self, text: str) -> None:
        self.text = text
        self.image = Pixelwise()
        self.text_cancelled = False

    async def tokenize(self, texts: list[str]) -> Tokenized:
        return Tokenized([[1, 2]] * len(texts), [2] * len(texts), 0)

    async def embed(self, ids: Any) -> np.ndarray:
        try:
            await asyncio.sleep(0.05)
            if self.text == "fail":
                raise RequestError(ErrorCode.EMBEDDING_NOT_FINITE, "texts failed")
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.text_cancelled = True
            raise
        return np.ones((len(ids), 3), dtype=np.float32)

    async def embed_images(self, pixels: Any) -> np.ndarray:
        return np.ones((len(pixels), 3), dtype=np.float32)


def embed_mixed(tmp_path: Path, runtime: Runtime, images: list[str]) -> tuple[Any, int, bool]:
    """The error, and the fetches and text embedding cancelled when it was raised (before
    ``asyncio.run`` cancels whatever is left)."""
    fetcher = SlowFetcher()
    loader = ImageLoader(ImageSettings(), cast(Any, fetcher))
    service = ClassifyService(Settings(data_dir=tmp_path), hash_registry(tmp_path), images=loader)
    items = [TextInput("hello"), *(ImageInput(i) for i in images)]

    async def go() -> tuple[Any, int, bool]:
        try:
            result = await service.embed_items(cast(Any, runtime), items)
        except RequestError as exc:
            result = exc
        snapshot = (result, fetcher.cancelled, runtime.text_cancelled)
        await loader.aclose()
        return snapshot

    return asyncio.run(go())


def test_failed_texts_cancel_the_image_fetches(tmp_path: Path) -> None:
    """``asyncio.gather`` let the images of a request whose texts had failed be fetched
    and decoded on, for nobody."""
    error, fetches_cancelled, _ = embed_mixed(tmp_path, Runtime("fail"), ["http://x/a.png"] * 3)
    assert isinstance(error, RequestError)
    assert error.code == ErrorCode.EMBEDDING_NOT_FINITE
    assert fetches_cancelled == 3


def test_failed_images_cancel_the_text_embedding(tmp_path: Path) -> None:
    error, _, text_cancelled = embed_mixed(tmp_path, Runtime("hang"), ["not an image!"])
    assert isinstance(error, RequestError)
    assert error.code == ErrorCode.IMAGE_INVALID
    assert text_cancelled


def _jpeg_with_comments(count: int, payload: bytes) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(out, format="JPEG")
    data = out.getvalue()
    comment = b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + comment * count + data[2:]


def test_a_jpeg_of_endless_segments_is_refused_without_walking_them_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Walking 2 million empty comment segments took 1.2 s of a decode thread; past
    10,000 segments a JPEG counts as too many. One with few SOS byte pairs is not walked."""
    import models.images as images

    crafted = _jpeg_with_comments(20_000, b"\xff\xda")  # SOS bytes inside comments
    assert jpeg_scans(crafted) == MAX_JPEG_SCANS + 1
    with pytest.raises(ImageDecodeError, match="10,000 segments"):
        decode_image(crafted, max_pixels=10_000)
    plain = _jpeg_with_comments(20_000, b"hello")
    monkeypatch.setattr(images, "jpeg_scans", lambda *_a, **_k: pytest.fail("walked"))
    assert decode_image(plain, max_pixels=10_000).size == (16, 16)
