"""Settings: one frozen object, read from ``SHOTSTREAM_*`` variables, passed explicitly.

The flat names are the operating contract in DESIGN.md (``SHOTSTREAM_BROKERS``,
``SHOTSTREAM_DATA_DIR`` ...). Finer knobs live in nested sections and are set with a
double underscore, e.g. ``SHOTSTREAM_BATCHING__MAX_BATCH_SIZE=64``.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_FROZEN = ConfigDict(frozen=True, extra="forbid")


GPU_BATCHING: dict[str, int] = {
    "max_batch_size": 512,
    "max_batch_tokens": 65536,
    "chunk_overhead_tokens": 4096,
    "max_in_flight": 1024,
}
"""Batching defaults on a GPU (``BatchingSettings.for_device``), for knobs not set. A GPU
model call costs milliseconds whatever its size, so batches should be large and rarely
split: on an H100, 400 concurrent requests (9,643 inputs, e5 in float16) went through
the batcher at 2,627 inputs/s with the CPU defaults and 11,319/s with these
(``benchmarks/results/cuda-multilingual-e5-small.md``; 33,955/s since its batch planning
went to numpy, ``batcher-multilingual-e5-small-cuda-h100.md``)."""


class BatchingSettings(BaseModel):
    """Micro-batcher knobs (see ``models/batching.py``). On a GPU, the knobs left unset
    take :data:`GPU_BATCHING`'s values instead of these CPU defaults."""

    model_config = _FROZEN

    max_batch_size: int = Field(64, ge=1)
    """Most inputs coalesced into one model call."""
    max_wait_ms: float = Field(5.0, ge=0)
    """How long the first input of a batch may wait for company."""
    max_batch_tokens: int = Field(16384, ge=512)
    """Padded tokens per forward pass; a batch is cut into length-sorted chunks below it."""
    chunk_overhead_tokens: int = Field(64, ge=0)
    """Cost of one model call in padded tokens: a batch is split by length only where that
    saves more padding than this."""
    max_queue: int = Field(8192, ge=1)
    """Inputs waiting for the model; producers wait (backpressure) when it is full, except
    a request with none waiting, which always gets one in. Inputs are taken in turn from
    the oldest requests that fill a batch (at least 8 of them), requests of up to
    ``max_batch_size`` inputs and larger ones alternating."""
    max_in_flight: int = Field(256, ge=1)
    """Requests a worker processes at once (their inputs share batches)."""
    max_queue_wait_s: float = Field(10.0, ge=0)
    """A request with a deadline (the gateway's, or a ``shotstream-deadline`` header) is
    refused ``SERVICE_UNAVAILABLE`` at once when the inputs queued for the model ahead of
    it would take longer than this (estimated from the model's recent seconds per input);
    requests without one wait their turn. 0: off (only the deadline refuses)."""
    compute_streams: int = Field(0, ge=0)
    """Batches a model computes at once, each on its own thread. 0: two on a CPU with two
    or more cores (each gets half of torch's threads; neither waits at the other's
    barriers, so a core taken by Kafka work slows one stream instead of both), one on a
    GPU or when ``SHOTSTREAM_MODELS__TORCH_THREADS`` is set."""

    def for_device(self, device: str) -> BatchingSettings:
        """These settings on ``device``: on ``cuda``, :data:`GPU_BATCHING` for every knob
        not set explicitly."""
        if device != "cuda":
            return self
        unset = {k: v for k, v in GPU_BATCHING.items() if k not in self.model_fields_set}
        return self.model_copy(update=unset)


class LimitSettings(BaseModel):
    """Request limits; defaults are Jina's (DESIGN.md)."""

    model_config = _FROZEN

    max_labels: int = Field(256, ge=1)
    max_label_groups: int = Field(8, ge=1)
    max_labels_per_group: int = Field(64, ge=1)
    max_inputs: int = Field(1024, ge=1)
    max_tokens_per_input: int = Field(8192, ge=1)
    max_classes: int = Field(16, ge=2)
    max_classifiers_per_key: int = Field(16, ge=1)
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    visibility_wait_s: float = Field(2.0, ge=0)
    """Longest a few-shot classify waits for an unknown classifier id to replicate: it
    reads the changelog to where it ended when asked, then answers; this bounds that
    when Kafka is slow or away."""
    changelog_wait_s: float = Field(20.0, gt=0)
    """Longest a few-shot classify or train request waits for a starting worker to read
    the classifier changelog (to where it ended at start); then ``SERVICE_UNAVAILABLE``,
    which a retry gets past. Unbounded, such requests held every in-flight slot while a
    worker could not read it, and zero-shot requests behind them waited too."""


class ModelSettings(BaseModel):
    """Which model serves which name, and how it runs."""

    model_config = _FROZEN

    default: str = "multilingual-e5-small"
    aliases: dict[str, str] = Field(
        default_factory=lambda: {"jina-embeddings-v3": "multilingual-e5-small"}
    )
    """Extra names → a built-in name, a Hugging Face id or a local folder."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    """``auto``: float16 on CUDA, float32 on CPU."""
    temperature: float = Field(0.05, gt=0)
    """Zero-shot softmax temperature over cosine similarities."""
    label_cache_size: int = Field(100_000, ge=0)
    max_loaded: int = Field(4, ge=0)
    """Most models named by requests (local folders, cached hub ids) a worker loads, besides
    the built-in ones and the operator's (default, aliases, CLIP); each stays loaded.
    Another one is ``MODEL_NOT_AVAILABLE``."""
    max_model_bytes: int = Field(2 * 1024**3, ge=1)
    """Largest weights (bytes on disk) of a folder or hub model a request may name (the
    operator's own models are not checked)."""
    torch_threads: int = Field(0, ge=0)
    """torch's threads per compute stream. 0: the cores divided among the streams."""


class KafkaSettings(BaseModel):
    """Client settings; ``embedded`` applies the Tansu workarounds (notes/embedded-broker.md)."""

    model_config = _FROZEN

    embedded: Literal["auto", "yes", "no"] = "auto"
    """``auto``: embedded when every broker is a loopback address."""
    group_id: str = "shotstream"
    replication_factor: int = Field(1, ge=1)
    request_timeout_s: float = Field(30.0, gt=0)
    output_linger_ms: int = Field(2, ge=0)
    """How long answers wait to share a produce request."""
    drain_timeout_s: float = Field(15.0, ge=0)
    """On shutdown or when partitions move, how long requests in flight may take to be
    answered; those still running then are cancelled unacknowledged, so Kafka redelivers
    them (to this worker after a restart, or to the partition's new owner). When
    partitions move, also at most half the rebalance timeout (``streams.app``)."""
    commit_interval_s: float = Field(1.0, gt=0)
    """How often a worker commits the offsets of the records it has answered (faust's
    ``broker_commit_interval``). A crash delivers up to this much again: train records
    already applied are recognised and not learned twice, classify records answered again."""
    max_message_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024)
    """The largest record shotstream produces (its producers' ``max_request_size``), and
    ``max.message.bytes`` of the topics it creates. A 1,024-input, 256-label answer is
    about 15 MB; Kafka's own default is 1 MB. An answer over it (or over a lower limit of
    the broker) is a ``RESPONSE_TOO_LARGE`` dead letter; a gateway request over it, 413."""
    retention_ms: int | None = Field(None, ge=-1)
    """``retention.ms`` of the request and answer topics shotstream creates (classify,
    predictions, train, train-results, errors; not the compacted classifier changelog,
    and not topics that exist already). Unset: the broker's default (7 days on Kafka).
    Request records hold callers' texts and, in a header, their API keys: a shorter
    retention keeps them for less long. -1 keeps them for good."""
    session_timeout_s: float | None = Field(None, gt=0)
    """How long the group waits for a silent worker (a crash, a cut network) before giving
    its partitions to the others: their requests wait that long. Unset: 6 s on the
    embedded broker, faust's 60 s on Kafka (whose brokers accept 6 s to 30 min by
    default). Shorter fails over sooner; too short takes a worker paused that long (a
    stalled host, a long GC) for dead, and the group rebalances."""
    heartbeat_interval_s: float | None = Field(None, gt=0)
    """How often a worker tells the group it is alive; at most a third of the session
    timeout. Unset: 1 s on the embedded broker, faust's 3 s on Kafka."""
    rebalance_timeout_s: float | None = Field(None, gt=0)
    """How long a rebalance waits for members to rejoin. Unset: 6 s on the embedded
    broker, faust's 60 s on Kafka."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How every client of a worker, gateway or CLI talks to the brokers (Kafka's
    ``security.protocol``): ``SSL`` encrypts (and, with a client certificate, authenticates),
    ``SASL_*`` authenticates with a user name and password."""
    ssl_cafile: Path | None = None
    """CA certificates (PEM) that sign the brokers' certificates; the system's when unset."""
    ssl_certfile: Path | None = None
    """This client's certificate (PEM), for brokers that ask for one (mutual TLS)."""
    ssl_keyfile: Path | None = None
    """Its private key (PEM), when not in ``ssl_certfile``."""
    ssl_password: SecretStr | None = None
    """The passphrase of an encrypted private key (never logged or shown)."""
    ssl_check_hostname: bool = True
    """Whether a broker's certificate must name the host it was reached at."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    """Never logged or shown (``SHOTSTREAM_KAFKA__SASL_PASSWORD``)."""

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> KafkaSettings:
        session, beat = self.session_timeout_s, self.heartbeat_interval_s
        if session is not None and beat is not None and beat * 3 > session:
            raise ValueError(
                f"heartbeat_interval_s {beat:g} is over a third of session_timeout_s "
                f"{session:g}: one late heartbeat would end the session"
            )
        return self

    @model_validator(mode="after")
    def _security_complete(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (not self.sasl_username or self.sasl_password is None):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_username and "
                "sasl_password (SHOTSTREAM_KAFKA__SASL_USERNAME, SHOTSTREAM_KAFKA__SASL_PASSWORD)"
            )
        files = {
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        named = {name: path for name, path in files.items() if path is not None}
        if named and not self.security_protocol.endswith("SSL"):
            raise ValueError(
                f"{', '.join(named)} set, but security_protocol {self.security_protocol} "
                "does not use TLS (SSL or SASL_SSL)"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile without ssl_certfile")
        return self


class ImageSettings(BaseModel):
    """Image inputs: safe fetching and decoding, the CLIP model, usage counting."""

    model_config = _FROZEN

    allow_list: tuple[str, ...] = ()
    """Networks (CIDRs, e.g. ``["10.1.0.0/16"]``) that URLs may reach although they are
    loopback, private, link-local, multicast or reserved (refused otherwise)."""
    schemes: tuple[str, ...] = ("https", "http")
    ca_file: Path | None = None
    """A PEM file of certificate authorities trusted for HTTPS image hosts besides the
    public ones (certifi's), e.g. the internal CA of hosts on the allow-list."""
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(10.0, gt=0)
    """Longest wait for the next bytes of a response."""
    total_timeout_s: float = Field(20.0, gt=0)
    """Longest a whole fetch (all redirects and the body) may take: cuts off slow drips."""
    max_redirects: int = Field(3, ge=0)
    max_bytes: int = Field(8 * 1024 * 1024, ge=1)
    """Largest image, fetched or base64 (Jina's 8 MB)."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Largest decoded image (width x height), checked before decoding."""
    max_aspect_ratio: float = Field(64.0, ge=1)
    """Most times one side of an image may be longer than the other, checked before
    decoding. Usage counts each 224 px tile an image covers, so a strip 1 pixel high and
    39 million wide (a 38 kB PNG under the pixel cap) counted 174 million tokens, though
    the model sees one square of it; at 64, a strip under 224 px counts 64,000 at most."""
    fetch_concurrency: int = Field(16, ge=1)
    """URLs fetched (and their images decoded) at once per worker."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Longest all of one request's images may take to fetch and decode (``total_timeout_s``
    bounds each fetch; this, a request of many slow ones)."""
    max_batch_size: int = Field(4, ge=1)
    """Images per model call. On a CPU EfficientNet-Lite0 is fastest at 1-4 (its
    activations at 224 px stay in cache): 69-84 images/s at batch 4 on two compute
    streams, 45-49 at 16, 20 at 64, decoding included, 2 cores. Raise it on a GPU."""
    decode_threads: int = Field(2, ge=1)
    """Threads decoding and preprocessing images off the event loop."""
    max_waiting_images: int = Field(2048, ge=1)
    """Images a worker holds at once between loading and embedding, across requests (each
    waits as its model crop, 150 KB at 224 px: 294 MiB at the default). A request takes
    room for all its images before it loads any, first come first served; one with more
    images than this takes all of it."""
    clip_model: str | None = None
    """What ``jina-clip-v1`` means: a local CLIP folder or a cached Hugging Face id."""
    tile_pixels: int = Field(224, ge=1)
    tokens_per_tile: int = Field(1000, ge=0)
    """Usage: an image counts ``tokens_per_tile`` per ``tile_pixels``² tile it covers."""

    @field_validator("allow_list")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        return value


class RateTier(BaseModel):
    """Requests and tokens one caller may use per minute, and requests at once (Jina's
    RPM, TPM and concurrency)."""

    model_config = _FROZEN

    rpm: int = Field(ge=1)
    tpm: int = Field(ge=1)
    concurrency: int | None = Field(None, ge=1)
    """Requests one caller may have in flight at once (unset: no limit)."""


def _default_tiers() -> dict[str, RateTier]:
    # Jina's published tiers (reference OpenAPI): free, tier1, tier2
    return {
        "free": RateTier(rpm=500, tpm=1_000_000, concurrency=5),
        "tier1": RateTier(rpm=500, tpm=10_000_000, concurrency=50),
        "tier2": RateTier(rpm=5_000, tpm=100_000_000, concurrency=500),
    }


class RocksDBSettings(BaseModel):
    """The worker's classifier table: one RocksDB database per train-topic partition it
    holds (active or standby). faust's defaults give each 3 write buffers of 64 MiB and a
    block cache of 2 GiB: measured, 16 partitions each overwriting one 109 kB classifier
    grew a process by 966-973 MB; with these, by 147 MB, and wrote no slower (1.49x the
    writes/s; ``python -m benchmarks.rocksdb_memory``)."""

    model_config = _FROZEN

    write_buffer_bytes: int = Field(8 * 1024 * 1024, ge=1024 * 1024)
    """Size of one write buffer (memtable), per partition."""
    write_buffers: int = Field(2, ge=2)
    """Write buffers per partition (one is written while another is flushed)."""
    block_cache_bytes: int = Field(16 * 1024 * 1024, ge=0)
    """Block cache per partition (classifiers read for training)."""

    def options(self) -> dict[str, int]:
        """faust's ``Table(options=...)`` (a new dict each call: faust's store pops from it)."""
        return {
            "write_buffer_size": self.write_buffer_bytes,
            "max_write_buffer_number": self.write_buffers,
            "block_cache_size": self.block_cache_bytes,
        }


class GatewaySettings(BaseModel):
    """The HTTP gateway (``shotstream gateway``): Jina's Classifier API over the topics."""

    model_config = _FROZEN

    host: str = "127.0.0.1"
    """Address uvicorn binds (``0.0.0.0`` to serve other hosts); the port is ``http_port``."""
    reply_timeout_s: float = Field(30.0, gt=0)
    """How long a request waits for its answer on the reply topics before a 504."""
    kafka_timeout_s: float = Field(10.0, ge=1)
    """How long Kafka itself may take to take a request (or, for a listing, to say where
    the classifier changelog ends) before a 503: with the brokers away, a caller learns it
    in this time instead of aiokafka's 40 s (up to about twice it when the brokers do not
    refuse connections but never answer: one attempt may wait behind another). A request
    the producer still holds then is dropped, not sent later; one already sent may still
    have been written (and a train request learned although it answered 503)."""
    anonymous_zero_shot: bool = False
    """Let callers without a key classify zero-shot (rate-limited per client address)."""
    tiers: dict[str, RateTier] = Field(default_factory=_default_tiers)
    default_tier: str = "free"
    """The tier of every key not listed in ``key_tiers``."""
    anonymous_tier: str = "free"
    key_tiers: dict[str, str] = Field(default_factory=dict)
    """SHA-256 hex of an API key (its owner id) → tier name."""
    startup_timeout_s: float = Field(120.0, gt=0)
    """How long the gateway waits for the topics (a worker creates them) at start."""
    max_connections: int = Field(4096, ge=1)
    """HTTP connections open at once; more are closed as they arrive (also capped by the
    file descriptor limit, ``ulimit -n``, less 128 kept for Kafka): connections that never
    finished their headers once took every descriptor the gateway had."""

    @model_validator(mode="after")
    def _tiers_exist(self) -> GatewaySettings:
        named = {self.default_tier, self.anonymous_tier, *self.key_tiers.values()}
        missing = sorted(named - set(self.tiers))
        if missing:
            raise ValueError(f"unknown rate-limit tier(s) {missing}; known: {sorted(self.tiers)}")
        return self


EMBEDDED_FETCH_MAX_WAIT_MS = 25
"""The embedded broker holds a fetch for about half of ``fetch_max_wait_ms`` even when
records arrive meanwhile; faust hard-codes 1,500 ms, which added ~750 ms to every request."""


class KeyFileError(ValueError):
    """``SHOTSTREAM_API_KEY_FILE`` cannot be read (checked where the keys are needed: a
    client command does not read it)."""


class Settings(BaseSettings):
    """Everything a shotstream process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="SHOTSTREAM_",
        env_nested_delimiter="__",
        frozen=True,
        extra="ignore",
    )

    brokers: Annotated[tuple[str, ...], NoDecode] = ("127.0.0.1:9092",)
    data_dir: Path = Path(".shotstream")
    topic_prefix: str = "shotstream."
    partitions: int = Field(4, ge=1)
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """None: no metrics server; 0: pick a free port and log it."""
    model_cache_dir_override: Path | None = Field(None, alias="SHOTSTREAM_MODEL_CACHE_DIR")
    """Where packaged weights are converted to (default: ``$SHOTSTREAM_DATA_DIR/models``)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics server binds (``0.0.0.0`` to let a remote Prometheus scrape)."""
    metrics_classifier_series: int = Field(1000, ge=0)
    """Most classifiers a worker exports its own prequential-accuracy series for (the most
    recently trained; 0: none)."""
    http_port: int = Field(8080, ge=0, le=65535)
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    api_key_file: Path | None = None
    default_model: str | None = None
    """Shortcut for ``models.default``."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Shortcut for ``models.device``."""
    log_level: str = "info"
    log_format: Literal["text", "json"] = "text"
    """How every log line is written: ``text`` (time, level, logger, message), or ``json``
    (one object per line: time, level, logger, message, pid, exception) for a log shipper."""
    usage_flush_s: float = Field(10.0, ge=0)
    """How often a worker reports its few-shot classify counts per classifier (the listing's
    ``used_number`` and ``used_at``) to the classifiers' owners; 0: never (no counts)."""

    batching: BatchingSettings = BatchingSettings()
    limits: LimitSettings = LimitSettings()
    models: ModelSettings = ModelSettings()
    kafka: KafkaSettings = KafkaSettings()
    images: ImageSettings = ImageSettings()
    rocksdb: RocksDBSettings = RocksDBSettings()

    gateway: GatewaySettings = GatewaySettings()

    @field_validator("brokers", mode="before")
    @classmethod
    def _split_brokers(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("log_level")
    @classmethod
    def _check_log_level(cls, value: str) -> str:
        if not isinstance(logging.getLevelName(value.upper()), int):
            raise ValueError(f"{value!r} is not a log level (debug, info, warning, error)")
        return value

    @field_validator("brokers")
    @classmethod
    def _check_brokers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one broker host:port is required")
        for broker in value:
            host, sep, port = broker.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"broker {broker!r} is not host:port")
        return value

    # -- derived values -------------------------------------------------------------------

    def shared_group_warning(self) -> str | None:
        """Why this deployment may share state with another on the cluster: a topic prefix
        of its own with the default consumer group shares the group and the classifier
        changelog (``<group>-classifiers-changelog``) with every other such deployment
        (their classifiers, and the per-key classifier limit, mix)."""
        default_prefix = type(self).model_fields["topic_prefix"].default
        default_group = KafkaSettings.model_fields["group_id"].default
        if self.topic_prefix == default_prefix or self.kafka.group_id != default_group:
            return None
        return (
            f"SHOTSTREAM_TOPIC_PREFIX={self.topic_prefix} with the default consumer group "
            f"{default_group!r}: another deployment on this cluster with the default group "
            f"shares its group and its classifier changelog ({default_group}-classifiers-"
            "changelog); set SHOTSTREAM_KAFKA__GROUP_ID to keep them apart"
        )

    @classmethod
    def unknown_variables(cls, environ: Mapping[str, str]) -> dict[str, str | None]:
        """``SHOTSTREAM_*`` variables no setting reads (a typo is otherwise ignored in
        silence: ``SHOTSTREAM_BROKER`` left the brokers at their default), each with the
        closest known name."""
        import difflib

        known = {"SHOTSTREAM_API_KEY"}  # the client commands' key
        nested = set()
        for name, field in cls.model_fields.items():
            known.add(field.alias or f"SHOTSTREAM_{name.upper()}")
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.add(f"SHOTSTREAM_{name.upper()}__")
                known |= {
                    f"SHOTSTREAM_{name.upper()}__{inner.upper()}"
                    for inner in annotation.model_fields
                }
        return {
            variable: next(iter(difflib.get_close_matches(variable, known, 1, 0.75)), None)
            for variable in environ
            if variable.startswith("SHOTSTREAM_")
            and variable not in known
            and not any(variable.startswith(prefix) for prefix in nested)
        }

    @property
    def default_model_name(self) -> str:
        return self.default_model or self.models.default

    @property
    def model_device(self) -> str:
        return self.device or self.models.device

    @property
    def embedded_broker(self) -> bool:
        """Whether to apply the embedded broker's workarounds."""
        if self.kafka.embedded != "auto":
            return self.kafka.embedded == "yes"
        return all(_is_loopback(b.rpartition(":")[0]) for b in self.brokers)

    @property
    def model_cache_dir(self) -> Path:
        return self.model_cache_dir_override or self.data_dir / "models"

    def topic(self, name: str) -> str:
        """Full topic name for one of ``classify``, ``predictions``, ``train`` ..."""
        return f"{self.topic_prefix}{name}"

    def all_api_keys(self) -> tuple[str, ...]:
        """Keys from ``SHOTSTREAM_API_KEYS`` and ``SHOTSTREAM_API_KEY_FILE`` (one per line)."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_key_file is not None:
            try:
                text = self.api_key_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise KeyFileError(f"SHOTSTREAM_API_KEY_FILE {self.api_key_file}: {exc}") from exc
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return tuple(keys)


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TOPICS = ("classify", "predictions", "train", "train-results", "errors")
"""Logical topic names (DESIGN.md); the full name is ``topic_prefix + name``."""
