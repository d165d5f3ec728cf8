"""Image throughput: images/s through Kafka vs the raw encoder, decoding included on both.

    .venv/bin/python -m benchmarks.images [--images 384] [--per-request 4] [--size 320x240]

Measured in one run on one machine, with the packaged EfficientNet-Lite0:

* (a) raw: base64 → decode (Pillow, EXIF, RGB; a large JPEG at a reduced scale, as a
  worker decodes it: ``models.images.decode_scaled``) → preprocess → ``embed_pixels`` in
  one process, best of batch 1-32 on one or two compute streams;
* (f) the same with every image decoded at full size (what a worker did before reduced
  decoding), so (a)/(f) is what reduced decoding gains on these images;
* (k) end to end: few-shot classify requests carrying ``--per-request`` base64 JPEG
  images each, produced at once to the embedded broker, one worker; images/s from the
  first send to the last answer.

The images are JPEG crops and flips (``--size``, default 320x240; 4032x3024 is a phone
camera's) of the photos Debian's ``darknet`` package ships (scripts/testdata.sh). Writes
``<out>/images-efficientnet-lite0.json`` and ``.png`` (``-<size>`` added to the name for
another size); prints (k)/(a) (target >= 0.85) and (a)/(f).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.load import Request, best_batch_rate, warm_then_burst
from benchmarks.throughput import load_model
from models.images import ImageEncoder, decode_base64, decode_scaled
from streams.broker import EmbeddedBroker
from streams.cli import free_port
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.settings import Settings
from tests.data import PHOTOS, photo

KEY = "bench-key"
MODEL = "efficientnet-lite0"
RAW_BATCHES = (1, 2, 4, 8, 16, 32)
"""Batch sizes (a) times; EfficientNet on a CPU is fastest at the small end."""


def make_images(n: int, seed: int = 0, size: tuple[int, int] = (320, 240)) -> list[str]:
    """``n`` base64 JPEGs (``size``) cut from the darknet photos."""
    rng = random.Random(seed)
    originals = [Image.open(photo(name)).convert("RGB") for name in PHOTOS]
    out = []
    for i in range(n):
        image = originals[i % len(originals)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = rng.randrange(0, w - cw + 1), rng.randrange(0, h - ch + 1)
        crop = image.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        buf = io.BytesIO()
        crop.save(buf, format="JPEG", quality=90)
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def raw_rate(
    encoder: ImageEncoder, images: Sequence[str], *, reduced: bool = True
) -> dict[str, Any]:
    """(a) with ``reduced`` (a worker's decoding), else (f): every image at full size."""
    max_bytes = Settings().images.max_bytes
    side = encoder.size if reduced else None

    def decode_and_embed(values: list[str]) -> object:
        raw = [decode_base64(v, max_bytes=max_bytes) for v in values]
        pixels = [
            encoder.preprocess(decode_scaled(data, max_pixels=10**8, side=side)[0]) for data in raw
        ]
        return encoder.embed_pixels(pixels)

    rates, best = best_batch_rate(decode_and_embed, images, batches=RAW_BATCHES)
    return {"by_batch": rates, "best_batch": best, "images_per_s": rates[best]}


def classify_requests(tag: str, images: Sequence[str], per_request: int, cid: str) -> list[Request]:
    out: list[Request] = []
    for n, i in enumerate(range(0, len(images) - per_request + 1, per_request)):
        body = {
            "request_id": f"{tag}-{n:05d}",
            "classifier_id": cid,
            "input": [{"image": v} for v in images[i : i + per_request]],
        }
        out.append((body["request_id"], json.dumps(body).encode()))
    return out


async def create_classifier(brokers: str, prefix: str, cid: str) -> None:
    examples = make_images(len(PHOTOS) * 2, seed=99)
    settings = Settings(brokers=brokers, topic_prefix=prefix)
    async with ShotstreamClient(settings) as client:
        answer = await client.train(
            [{"image": v, "label": PHOTOS[i % len(PHOTOS)]} for i, v in enumerate(examples)],
            classifier_id=cid,
            api_key=KEY,
            model=MODEL,
            timeout_s=300,
        )
    if answer.is_error:
        raise RuntimeError(f"training failed: {answer}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--per-request", type=int, default=4)
    parser.add_argument("--size", default="320x240", help="the JPEGs' width x height")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="shotstream-image-bench-"))
    images = make_images(args.images + 32, seed=1, size=(width, height))
    warm_images, run_images = images[:32], images[32:]
    print(f"(a) raw encoder on {len(run_images)} images ...", flush=True)
    encoder = load_model(MODEL, work / "models")
    assert isinstance(encoder, ImageEncoder), f"{MODEL} is an image model"
    raw = raw_rate(encoder, run_images)
    print("(f) the same, decoding at full size ...", flush=True)
    full = raw_rate(encoder, run_images, reduced=False)
    del encoder  # the worker loads its own
    cid = str(uuid.uuid4())
    warm = classify_requests("warm", warm_images, args.per_request, cid)
    run = classify_requests("run", run_images, args.per_request, cid)
    prefix = "ibench."
    with EmbeddedBroker(free_port()) as broker:
        env = {
            "SHOTSTREAM_BROKERS": broker.address,
            "SHOTSTREAM_DATA_DIR": str(work / "worker"),
            "SHOTSTREAM_MODEL_CACHE_DIR": str(work / "models"),
            "SHOTSTREAM_DEFAULT_MODEL": "all-MiniLM-L6-v2",  # loaded at start; small
            "SHOTSTREAM_TOPIC_PREFIX": prefix,
            "SHOTSTREAM_KAFKA__GROUP_ID": "ibench",
            "SHOTSTREAM_API_KEYS": KEY,
        }
        print("(k) starting a worker ...", flush=True)
        with WorkerProcess(env, work / "worker.log") as worker:
            worker.wait_ready(600)
            asyncio.run(create_classifier(broker.address, prefix, cid))
            e2e = asyncio.run(
                warm_then_burst(
                    broker.address,
                    prefix,
                    warm,
                    run,
                    "(k)",
                    headers=[("authorization", f"Bearer {KEY}".encode())],
                )
            )
    answered = e2e["answered"] * args.per_request
    e2e["images_per_s"] = answered / e2e["seconds"] if e2e["seconds"] else 0.0
    ratio = e2e["images_per_s"] / raw["images_per_s"]
    results = {
        "model": MODEL,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg())},
        "config": {
            "images": len(run_images),
            "images_per_request": args.per_request,
            "image_size": f"{width}x{height} JPEG, base64",
        },
        "raw": raw,
        "raw_full_decode": full,
        "ratio_reduced_vs_full_decode": raw["images_per_s"] / full["images_per_s"],
        "end_to_end": e2e,
        "ratio_end_to_end_vs_raw": ratio,
    }
    print(f"(a) raw encoder: {raw['images_per_s']:.1f} images/s ({raw['best_batch']})")
    print(
        f"(k) via Kafka:   {e2e['images_per_s']:.1f} images/s "
        f"({e2e['answered']}/{e2e['requests']} answered, {e2e['errors']} errors)"
    )
    print(f"(k)/(a) = {ratio:.2f} (target >= 0.85: {'PASS' if ratio >= 0.85 else 'MISS'})")
    print(
        f"(f) raw, full-size decoding: {full['images_per_s']:.1f} images/s; "
        f"(a)/(f) = {results['ratio_reduced_vs_full_decode']:.2f}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "" if (width, height) == (320, 240) else f"-{width}x{height}"
    path = args.out / f"images-{MODEL}{suffix}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, path.with_suffix(".png"))
    print(f"wrote {path} and .png")


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    raw = results["raw"]["images_per_s"]
    e2e = results["end_to_end"]["images_per_s"]
    full = results["raw_full_decode"]["images_per_s"]
    bars = ax.bar(
        [
            "(f) raw encoder,\nfull-size decode",
            "(a) raw encoder\n(decode included)",
            "(k) classify via Kafka",
        ],
        [full, raw, e2e],
        color=["#bbbbbb", "#888888", "#2a7ab9"],
    )
    ax.bar_label(
        bars, labels=[f"{full:.1f}/s", f"{raw:.1f}/s", f"{e2e:.1f}/s = {e2e / raw:.2f}x (a)"]
    )
    ax.axhline(0.85 * raw, color="red", linestyle="--", label="target 0.85 x (a)")
    ax.set_ylim(0, 1.25 * max(full, raw, e2e))
    ax.set_ylabel("images / s")
    ax.set_title(
        f"image throughput, {results['model']}, {results['config']['image_size']}\n"
        "(one run, 2 shared cores)"
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
