"""Text encoders: tokenize once, embed token ids, return L2-normalised vectors.

An encoder splits the work in two so that the caller can count tokens (usage, limits)
before any model compute and then embed the *same* token ids without tokenizing twice:

>>> enc = HashTextEncoder(dim=16)
>>> ids = enc.tokenize(["hello world", "hello"])
>>> [len(i) for i in ids]
[4, 3]
>>> vecs = enc.embed_ids(ids)
>>> vecs.shape
(2, 16)
>>> bool(abs(float((vecs[0] ** 2).sum()) - 1.0) < 1e-6)
True
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
TokenIds = list[int]


@runtime_checkable
class TextEncoder(Protocol):
    """What the batcher and the scorer need from a text model."""

    name: str
    dim: int
    max_length: int
    """The model's window in tokens; longer inputs are truncated to it."""

    def tokenize(self, texts: Sequence[str], *, keep_gil: bool = False) -> list[TokenIds]:
        """Token ids of each text as the model sees it (prefix and special tokens included),
        never truncated, so that ``len`` is the text's token count. ``keep_gil``: the
        caller is the event loop, which must not give the GIL up (see :func:`encode_ids`)."""
        ...

    def embed_ids(self, batch: Sequence[TokenIds]) -> Vectors:
        """Embed token-id sequences (truncated to ``max_length``); rows are L2-normalised."""
        ...


def encode_ids(backend: Any, texts: Sequence[str], keep_gil: bool) -> list[TokenIds]:
    """Token ids from a Hugging Face ``tokenizers`` backend.

    ``encode_batch`` releases the GIL while Rust tokenizes, which suits a tokenizer thread.
    On the event loop it costs a switch interval: the loop gets the GIL back only when a
    compute thread running Python (a GPU worker's, launching kernels) hands it over, 5 ms
    later. With one thread spinning in Python, a 1-text ``encode_batch`` took 5.3 ms here
    and ``encode``, which keeps the GIL, 85 µs. So ``keep_gil`` encodes text by text.
    """
    if keep_gil:
        return [list(backend.encode(t).ids) for t in texts]
    return [list(e.ids) for e in backend.encode_batch(list(texts))]


def truncate(ids: TokenIds, max_length: int) -> TokenIds:
    """Keep the first ``max_length - 1`` tokens and the final (end-of-sequence) token.

    >>> truncate([0, 5, 6, 7, 2], 4)
    [0, 5, 6, 2]
    >>> truncate([0, 5, 2], 4)
    [0, 5, 2]
    """
    if len(ids) <= max_length:
        return ids
    return [*ids[: max_length - 1], ids[-1]]


def fast_tokenizer(path: str | Path, *, local_files_only: bool) -> Any:
    """The folder's Hugging Face tokenizer, which must be a fast (Rust) one; its backend is
    set to neither truncate nor pad (the batcher truncates and pads, see :func:`padded`)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=local_files_only)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{path}: shotstream needs a fast (Rust) tokenizer")
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    return tokenizer


def hub_cached_file(repo_id: str, filename: str) -> Path | None:
    """``filename`` of a Hugging Face repo from the local hub cache (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    found = try_to_load_from_cache(repo_id, filename)
    return Path(found) if isinstance(found, str) else None


def resolve_device(requested: str, dtype: str = "auto") -> tuple[str, str]:
    """``(device, dtype)`` for the device setting (``auto``/``cpu``/``cuda``) and the dtype
    setting (``auto``: float16 on CUDA, float32 on a CPU)."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SHOTSTREAM_DEVICE=cuda but torch sees no CUDA device")
    device = (
        "cuda"
        if requested == "cuda" or (requested == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    if dtype == "auto":
        dtype = "float16" if device == "cuda" else "float32"
    return device, dtype


def forward_guard(device: Any) -> contextlib.AbstractContextManager[object]:
    """What a forward pass holds. On a GPU a lock: one batch in device memory at a time
    (and cuDNN attention off, :func:`_without_cudnn_attention`).
    On a CPU nothing: inference-mode forwards of one model are safe to run at once, and
    a batcher's compute streams run them side by side."""
    if str(device).startswith("cpu"):
        return contextlib.nullcontext()
    if str(device).startswith("cuda"):
        _without_cudnn_attention()
    return threading.Lock()


def _without_cudnn_attention() -> None:
    """Turn off cuDNN's attention kernels (process-wide). torch's SDPA picks them for
    float16/bfloat16 on recent GPUs, and they plan every new input shape once, for tens
    of milliseconds: a worker's batches come in ever new (rows, tokens) shapes and paid
    it again and again (H100, all-MiniLM-L6-v2 in float16, length-sorted texts at batch
    32: 86 ms per call on the first pass, 7 ms on a later one). The flash and
    memory-efficient kernels SDPA falls back on need no plan."""
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)


def l2_rows(features: object) -> Vectors:
    """A ``(n, dim)`` torch tensor as float32 numpy rows of unit length."""
    import torch

    assert isinstance(features, torch.Tensor)  # noqa: S101 - callers pass tensors
    pooled = torch.nn.functional.normalize(features.float(), dim=-1)
    return pooled.cpu().numpy().astype(np.float32, copy=False)


def padded(batch: Sequence[TokenIds], max_length: int, pad_id: int) -> tuple[Any, Any]:
    """Token id rows (each truncated to ``max_length``) → right-padded ``input_ids`` and
    ``attention_mask`` tensors (torch, long) of the batch's longest row.

    Built in numpy in one pass over the tokens: row by row in torch it cost ~8 ms for 512
    rows, twice the model's own time on a GPU.

    >>> ids, mask = padded([[0, 5, 2], [0, 2]], 4, pad_id=1)
    >>> ids.tolist(), mask.tolist()
    ([[0, 5, 2], [0, 2, 1]], [[1, 1, 1], [1, 1, 0]])
    """
    import torch

    rows = [truncate(ids, max_length) for ids in batch]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = int(lengths.max())
    mask = np.arange(width)[None, :] < lengths[:, None]
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    # row-major order: each row's tokens fill the leading True cells of its mask row
    ids[mask] = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


class HashTextEncoder:
    """A deterministic, dependency-free encoder for fast tests and demos.

    Each whitespace token maps to a fixed pseudo-random unit vector (seeded by its
    hash); a text is the normalised sum of its tokens' vectors, so texts sharing
    words are similar. Token ids are ``[1] + hashed words + [2]``.
    """

    def __init__(self, dim: int = 64, max_length: int = 512, name: str = "hash") -> None:
        self.name = name
        self.dim = dim
        self.max_length = max_length
        self._vocab = 1 << 20

    def tokenize(self, texts: Sequence[str], *, keep_gil: bool = False) -> list[TokenIds]:
        out: list[TokenIds] = []
        for text in texts:
            words = [
                3
                + int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little")
                % self._vocab
                for w in text.lower().split()
            ]
            out.append([1, *words, 2])
        return out

    def embed_ids(self, batch: Sequence[TokenIds]) -> Vectors:
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for row, ids in enumerate(batch):
            for tok in truncate(ids, self.max_length)[1:-1]:
                out[row] += np.random.default_rng(tok).standard_normal(self.dim)
            if not out[row].any():
                out[row] = np.random.default_rng(0).standard_normal(self.dim)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out


PADDING_OFFSET_MODELS = frozenset(
    {
        "camembert",
        "data2vec-text",
        "esm",
        "ibert",
        "longformer",
        "luke",
        "mpnet",
        "roberta",
        "roberta-prelayernorm",
        "xlm-roberta",
        "xlm-roberta-xl",
        "xmod",
    }
)
"""Encoders whose position ids start after the padding id (transformers'
``create_position_ids_from_input_ids``): ``max_position_embeddings`` minus that offset is
their window (514 → 512); one token more ran off the position table and failed."""


def st_file(path: str | Path, filename: str, *, local_files_only: bool = True) -> Path | None:
    """``filename`` of a model: from its folder, or for a Hugging Face id from the local hub
    cache (and from the hub where downloads are allowed); ``None`` where it has none."""
    folder = Path(str(path)).expanduser()
    if folder.is_dir():
        found = folder / filename
        return found if found.is_file() else None
    cached = hub_cached_file(str(path), filename)
    if cached is not None or local_files_only:
        return cached
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(path), filename))
    except Exception:  # absent from the repository, or no network
        return None


POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
POOLINGS = ("mean", "cls", "max", "lasttoken")
"""The poolings :class:`TransformersTextEncoder` computes."""


def st_pooling(path: str | Path, *, local_files_only: bool = True) -> str:
    """The pooling a sentence-transformers model was trained with (its ``modules.json`` and
    pooling config), ``"mean"`` for a plain transformers model. A model with modules
    beyond a transformer, one pooling and normalisation (a ``Dense`` projection, say) is
    refused: its vectors would silently differ from the ones it was trained to give."""
    modules_file = st_file(path, "modules.json", local_files_only=local_files_only)
    if modules_file is None:
        return "mean"
    pooling = "mean"
    for module in json.loads(modules_file.read_text()):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind in ("Transformer", "Normalize"):
            continue
        if kind != "Pooling":
            raise ValueError(
                f"its sentence-transformers module {kind or module!r} "
                f"({module.get('path', '')}) is not supported: shotstream computes a "
                "transformer, one pooling and L2 normalisation"
            )
        config_file = st_file(
            path,
            f"{module.get('path', '1_Pooling')}/config.json",
            local_files_only=local_files_only,
        )
        if config_file is None:
            continue
        config = json.loads(config_file.read_text())
        stated = config.get("pooling_mode")  # newer sentence-transformers: a name or a list
        if stated is not None:
            modes = [stated] if isinstance(stated, str) else [str(m) for m in stated]
            modes = [POOLING_KEYS.get(f"pooling_mode_{m}", m) for m in modes]
        else:  # before: one flag per mode
            modes = [mode for key, mode in POOLING_KEYS.items() if config.get(key)] or ["mean"]
        if len(modes) != 1 or modes[0] not in POOLINGS:
            raise ValueError(
                f"its pooling {'+'.join(modes) or 'none'} is not supported "
                f"(one of {', '.join(POOLINGS)})"
            )
        pooling = modes[0]
    return pooling


def pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """Token states ``(batch, tokens, dim)`` → one row per text, by ``pooling``; ``mask``
    marks the real (right-padded) tokens."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "lasttoken":
        last = mask.sum(dim=1).clamp(min=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "max":
        return hidden.masked_fill(mask.unsqueeze(-1) == 0, torch.finfo(hidden.dtype).min).amax(1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class TransformersTextEncoder:
    """Any transformers encoder folder: ``AutoModel`` + pooling (mean, or what a
    sentence-transformers model states) + L2 normalisation.

    Parameters
    ----------
    path
        A local folder (or, where the user has network or a warm cache, a Hugging Face
        id) holding a model and its tokenizer.
    name
        The name requests use for it.
    prefix
        Prepended to every text (``"query: "`` for e5 models, which compare inputs and
        labels symmetrically).
    device, dtype
        ``"cpu"``/``"cuda"``; ``"float32"``/``"float16"``/``"bfloat16"``.
    local_files_only
        Never reach a hub (the default: shotstream's built-ins ship inside packages).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str,
        prefix: str = "",
        device: str = "cpu",
        dtype: str = "float32",
        local_files_only: bool = True,
        model_kwargs: Mapping[str, object] | None = None,
    ) -> None:
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped upstream

        self.name = name
        self.prefix = prefix
        self.device = torch.device(device)
        self._torch_dtype = getattr(torch, dtype)
        tokenizer = fast_tokenizer(path, local_files_only=local_files_only)
        self._backend = tokenizer.backend_tokenizer
        self.pad_id = int(tokenizer.pad_token_id or 0)
        model = AutoModel.from_pretrained(
            str(path),
            local_files_only=local_files_only,
            dtype=self._torch_dtype,
            **dict(model_kwargs or {}),
        )
        model.eval()
        self.model = model.to(self.device)
        config = model.config
        window = int(getattr(config, "max_position_embeddings", 512))
        # RoBERTa-style models number positions from the padding id + 1
        if getattr(config, "model_type", "") in PADDING_OFFSET_MODELS:
            window -= int(getattr(config, "pad_token_id", None) or 1) + 1
        tok_max = int(getattr(tokenizer, "model_max_length", window) or window)
        self.max_length = min(window, tok_max) if tok_max < 1_000_000 else window
        st_config = st_file(path, "sentence_bert_config.json", local_files_only=local_files_only)
        if st_config is not None:  # sentence-transformers models state the trained length
            st_max = json.loads(st_config.read_text()).get("max_seq_length")
            if isinstance(st_max, int) and st_max > 0:
                self.max_length = min(self.max_length, st_max)
        self.pooling = st_pooling(path, local_files_only=local_files_only)
        self.dim = int(config.hidden_size)
        self._guard = forward_guard(self.device)
        log.info(
            "loaded %s from %s on %s (%s, window %d, dim %d, %s pooling)",
            name,
            path,
            self.device,
            dtype,
            self.max_length,
            self.dim,
            self.pooling,
        )

    def tokenize(self, texts: Sequence[str], *, keep_gil: bool = False) -> list[TokenIds]:
        return encode_ids(self._backend, [self.prefix + t for t in texts], keep_gil)

    def embed_ids(self, batch: Sequence[TokenIds]) -> Vectors:
        import torch

        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = padded(batch, self.max_length, self.pad_id)
        with self._guard, torch.inference_mode():
            ids, mask = ids.to(self.device), mask.to(self.device)
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            return l2_rows(pool(hidden, mask, self.pooling))
