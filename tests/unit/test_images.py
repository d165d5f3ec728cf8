"""Decoding and preprocessing images; the packaged EfficientNet-Lite0 on real photos."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.images import (
    EfficientNetLiteEncoder,
    ImageDecodeError,
    decode_base64,
    decode_image,
    decode_scaled,
    encode_png,
    image_tokens,
)
from models.registry import ModelRegistry
from tests.data import PHOTOS, photo


def encoded(image: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def test_base64_forms() -> None:
    png = encode_png(Image.new("RGB", (4, 4), "blue"))
    b64 = base64.b64encode(png).decode()
    assert decode_base64(b64, max_bytes=10_000) == png
    assert decode_base64(f"data:image/png;base64,{b64}", max_bytes=10_000) == png
    assert decode_base64(b64.rstrip("="), max_bytes=10_000) == png  # padding optional
    wrapped = "\n".join(b64[i : i + 16] for i in range(0, len(b64), 16))
    assert decode_base64(wrapped, max_bytes=10_000) == png  # MIME line breaks
    urlsafe = base64.urlsafe_b64encode(png).decode()
    assert decode_base64(urlsafe, max_bytes=10_000) == png


def test_an_image_of_exactly_the_limit_passes_in_base64_as_by_url() -> None:
    """The size check before decoding must not count the padding: 1 to 2 bytes over."""
    for size in (4, 5, 7, 1000):
        raw = bytes(range(256)) * 4
        value = base64.b64encode(raw[:size]).decode()
        assert decode_base64(value, max_bytes=size) == raw[:size]
        with pytest.raises(ImageDecodeError, match="larger than"):
            decode_base64(value, max_bytes=size - 1)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("not base64 at all!", "not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png,rawbytes", "base64-encoded"),
        ("", "empty"),
        ("A" * 2000, "larger than 1000 bytes"),
    ],
)
def test_bad_base64(value: str, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_base64(value, max_bytes=1000)


def test_rgb_conversion_alpha_and_grayscale() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    out = decode_image(encoded(rgba), max_pixels=100)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # composited on white
    gray = decode_image(encoded(Image.new("L", (4, 4), 77)), max_pixels=100)
    assert gray.mode == "RGB"
    assert gray.getpixel((1, 1)) == (77, 77, 77)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), "green")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out = decode_image(encoded(image, "JPEG", exif=exif), max_pixels=10_000)
    assert out.size == (20, 40)


def photo_sized(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A darknet photo resized to ``width`` x ``height`` (a phone camera's, say)."""
    image = Image.open(photo("dog")).convert("RGB")
    return encoded(image.resize((width, height), Image.Resampling.BICUBIC), fmt)


def test_a_large_jpeg_for_a_model_is_decoded_at_a_reduced_scale() -> None:
    """A JPEG is decoded at 1/2, 1/4 or 1/8 scale, never below twice the model's crop
    on either side; its stored size (what usage counts) is returned with it."""
    big = photo_sized(4032, 3024)
    image, stored = decode_scaled(big, max_pixels=10**8, side=224)
    assert stored == (4032, 3024)
    assert image.size == (1008, 756)  # 1/4: 1/8 would be 504 x 378, below 448
    assert image.mode == "RGB"
    assert decode_scaled(big, max_pixels=10**8, side=512)[0].size == (2016, 1512)  # 1/2
    assert decode_image(big, max_pixels=10**8).size == (4032, 3024)  # no model: full size
    mpo = io.BytesIO()  # a multi-picture JPEG (a phone's photo with a depth map, say)
    first = Image.open(io.BytesIO(big))
    first.save(mpo, "MPO", save_all=True, append_images=[first.resize((400, 300))])
    assert Image.open(io.BytesIO(mpo.getvalue())).format == "MPO"
    assert decode_scaled(mpo.getvalue(), max_pixels=10**8, side=224)[0].size == (1008, 756)
    small = photo_sized(640, 480)
    assert decode_scaled(small, max_pixels=10**8, side=224)[0].size == (640, 480)
    png = photo_sized(1600, 1200, "PNG")  # PNG has no reduced decoding
    assert decode_scaled(png, max_pixels=10**8, side=224) == (
        decode_image(png, max_pixels=10**8),
        (1600, 1200),
    )


def test_a_rotated_large_jpeg_is_reduced_and_turned() -> None:
    image = Image.open(photo("dog")).convert("RGB").resize((2000, 1000))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    out, stored = decode_scaled(encoded(image, "JPEG", exif=exif), max_pixels=10**8, side=224)
    assert stored == (2000, 1000)
    assert out.size == (500, 1000)  # 1/2, then turned upright


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (6, 6), c) for c in ("red", "blue", "green")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(buf.getvalue(), max_pixels=100)
    r, g, b = out.getpixel((2, 2))
    assert (r > 200, g < 50, b < 50) == (True, True, True)  # red, the first frame


def test_pixel_limit_is_checked_before_decoding() -> None:
    big = encoded(Image.new("L", (5000, 4000)))  # 20 M pixels, a few kB of PNG
    assert len(big) < 100_000
    with pytest.raises(ImageDecodeError, match="20000000 pixels, at most 1000000"):
        decode_image(big, max_pixels=1_000_000)


def test_pillow_decompression_bomb_guard_is_an_invalid_image() -> None:
    bomb = encoded(Image.new("1", (20_000, 10_000)))  # over Pillow's own 89 M pixel limit
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(bomb, max_pixels=10**9)


def test_corrupt_and_truncated_images() -> None:
    png = encode_png(Image.effect_noise((64, 64), 50).convert("RGB"))
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_image(b"GIF89a but not really", max_pixels=10_000)
    with pytest.raises(ImageDecodeError, match="corrupt or truncated"):
        decode_image(png[: len(png) // 2], max_pixels=10_000)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"])
def test_web_image_formats_decode(fmt: str) -> None:
    size = (32, 24)
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 40)).save(buf, format=fmt)
    image = decode_image(buf.getvalue(), max_pixels=10_000)
    assert image.mode == "RGB"
    assert image.size == size


@pytest.mark.parametrize("fmt", ["EPS", "PCX", "SGI", "TGA", "PPM", "ICO"])
def test_other_pillow_formats_are_refused(fmt: str) -> None:
    """Pillow reads them all (EPS through Ghostscript, when installed): untrusted bytes
    reach only the web formats' decoders."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format=fmt)
    assert Image.open(io.BytesIO(buf.getvalue())).format == fmt  # Pillow itself reads it
    with pytest.raises(ImageDecodeError, match="not an image in a readable format"):
        decode_image(buf.getvalue(), max_pixels=10_000)


@pytest.mark.parametrize("size", [(1, 100_000), (100_000, 1), (3, 5_000)])
def test_a_thin_image_is_cropped_before_it_is_resized(size: tuple[int, int]) -> None:
    """A few hundred bytes of PNG, 1 x 100,000 pixels: resized whole to a 224-pixel short
    side it would take 15 GB (a worker OOM); cropped first it is a 224 x 224 image."""
    from models.images import center_crop_resize

    image = Image.new("RGB", size, (10, 200, 30))
    assert len(encode_png(image)) < 2_000
    out = center_crop_resize(image, 224)
    assert out.size == (224, 224)
    assert out.getpixel((112, 112)) == (10, 200, 30)


def test_ordinary_images_keep_resize_then_crop() -> None:
    from models.images import center_crop_resize

    gradient = Image.fromarray(np.tile(np.arange(300) % 256, (200, 1)).astype(np.uint8))
    gradient = gradient.convert("RGB")
    expected = gradient.resize((336, 224), Image.Resampling.BICUBIC).crop((56, 0, 280, 224))
    assert np.array_equal(np.asarray(center_crop_resize(gradient, 224)), np.asarray(expected))


def test_tile_token_rule() -> None:
    assert image_tokens(224, 224, tile=224, per_tile=1000) == 1000
    assert image_tokens(225, 224, tile=224, per_tile=1000) == 2000
    assert image_tokens(28, 28, tile=224, per_tile=1000) == 1000


@pytest.fixture(scope="module")
def efficientnet(tmp_path_factory: pytest.TempPathFactory) -> EfficientNetLiteEncoder:
    registry = ModelRegistry(cache_dir=tmp_path_factory.mktemp("models"))
    encoder = registry.load(registry.resolve("efficientnet-lite0"))
    assert isinstance(encoder, EfficientNetLiteEncoder)
    return encoder


def embed(encoder: EfficientNetLiteEncoder, images: list[Image.Image]) -> np.ndarray:
    return encoder.embed_pixels([encoder.preprocess(i) for i in images])


@pytest.mark.model
def test_efficientnet_near_duplicates_score_higher_than_unrelated_photos(
    efficientnet: EfficientNetLiteEncoder,
) -> None:
    originals = [decode_image(Path(photo(n)).read_bytes(), max_pixels=10**8) for n in PHOTOS]
    variants = []
    for i, image in enumerate(originals):
        w, h = image.size
        variant = [
            image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            image.crop((w // 10, h // 10, w - w // 10, h - h // 10)),
            Image.eval(image, lambda v: min(255, int(v * 1.2) + 10)),
        ][i % 3]
        variants.append(variant)
    a = embed(efficientnet, originals)
    b = embed(efficientnet, variants)
    assert a.shape == (len(PHOTOS), 1280)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    similarity = b @ a.T
    for i in range(len(PHOTOS)):
        others = np.delete(similarity[i], i)
        assert similarity[i, i] > others.max() + 0.1, (PHOTOS[i], similarity[i].round(2))


@pytest.mark.model
def test_a_reduced_decode_embeds_like_the_full_one(efficientnet: EfficientNetLiteEncoder) -> None:
    full, reduced = [], []
    for name in PHOTOS[:4]:
        image = Image.open(photo(name)).convert("RGB").resize((4032, 3024))
        data = encoded(image, "JPEG", quality=92)
        full.append(efficientnet.preprocess(decode_image(data, max_pixels=10**8)))
        small, _ = decode_scaled(data, max_pixels=10**8, side=efficientnet.size)
        assert small.size == (1008, 756)
        reduced.append(efficientnet.preprocess(small))
    cosines = (efficientnet.embed_pixels(full) * efficientnet.embed_pixels(reduced)).sum(axis=1)
    assert cosines.min() > 0.999  # measured: 0.9995 to 0.9999


def test_image_batches_have_their_own_size_cap() -> None:
    """Images are batched apart from text, at most ``image_max_batch_size`` per call."""
    import asyncio

    from models.runtime import EmbeddingRuntime

    class Counting:
        name, dim, size = "counting", 3, 2
        calls: list[int] = []  # noqa: RUF012 - one instance per test

        def preprocess(self, image: Image.Image) -> np.ndarray:
            return np.zeros((3, 2, 2), dtype=np.float32)

        def embed_pixels(self, batch: list[np.ndarray]) -> np.ndarray:
            self.calls.append(len(batch))
            return np.tile(np.array([1.0, 0.0, 0.0], dtype=np.float32), (len(batch), 1))

    encoder = Counting()

    async def go() -> None:
        runtime = EmbeddingRuntime(encoder, max_batch_size=64, image_max_batch_size=4)
        pixels = [encoder.preprocess(Image.new("RGB", (2, 2))) for _ in range(10)]
        vectors = await asyncio.gather(*(runtime.embed_images([p]) for p in pixels))
        assert all(v.shape == (1, 3) for v in vectors)
        await runtime.aclose()

    asyncio.run(go())
    assert sum(encoder.calls) == 10
    assert max(encoder.calls) <= 4
