from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from streams.settings import GPU_BATCHING, Settings


def test_env_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("k-file-1\n# comment\n\nk-file-2\n")
    env = {
        "SHOTSTREAM_BROKERS": "kafka-1:9092, kafka-2:9092",
        "SHOTSTREAM_DATA_DIR": str(tmp_path),
        "SHOTSTREAM_TOPIC_PREFIX": "acme.",
        "SHOTSTREAM_PARTITIONS": "12",
        "SHOTSTREAM_METRICS_PORT": "0",
        "SHOTSTREAM_HTTP_PORT": "8081",
        "SHOTSTREAM_API_KEYS": "k1,k2",
        "SHOTSTREAM_API_KEY_FILE": str(keys),
        "SHOTSTREAM_DEFAULT_MODEL": "all-MiniLM-L6-v2",
        "SHOTSTREAM_DEVICE": "cpu",
        "SHOTSTREAM_BATCHING__MAX_BATCH_SIZE": "32",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.brokers == ("kafka-1:9092", "kafka-2:9092")
    assert s.topic("classify") == "acme.classify"
    assert s.partitions == 12
    assert s.metrics_port == 0
    assert s.all_api_keys() == ("k1", "k2", "k-file-1", "k-file-2")
    assert "k1" not in repr(s)  # secrets stay secret
    assert s.default_model_name == "all-MiniLM-L6-v2"
    assert s.model_device == "cpu"
    assert s.batching.max_batch_size == 32
    assert s.embedded_broker is False
    assert s.model_cache_dir == tmp_path / "models"


def test_defaults_and_embedded_detection() -> None:
    s = Settings()
    assert s.brokers == ("127.0.0.1:9092",)
    assert s.topic("predictions") == "shotstream.predictions"
    assert s.limits.max_labels == 256
    assert s.limits.max_inputs == 1024
    assert s.embedded_broker is True
    assert Settings(brokers="localhost:1").embedded_broker is True
    assert Settings(brokers="127.0.0.1:1", kafka={"embedded": "no"}).embedded_broker is False


def test_settings_are_frozen_and_validated() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.partitions = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Settings(brokers="no-port")
    with pytest.raises(ValidationError):
        Settings(partitions=0)


@pytest.mark.parametrize(
    ("env", "device", "cores", "expected"),
    [
        ({}, "cpu", 2, (2, 1)),  # default on a CPU: two streams of half the threads
        ({}, "cpu", 8, (2, 4)),
        ({}, "cpu", 1, (1, 1)),  # one core: nothing to split
        ({}, "cuda", 8, (1, 8)),  # a GPU: one stream, torch's threads untouched
        ({"models": {"torch_threads": 3}}, "cpu", 8, (1, 3)),  # threads set: one stream
        ({"batching": {"compute_streams": 4}}, "cpu", 8, (4, 2)),
        ({"batching": {"compute_streams": 1}}, "cpu", 2, (1, 2)),
    ],
)
def test_plan_compute_splits_cores_among_streams(
    env: dict[str, dict[str, int]],
    device: str,
    cores: int,
    expected: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    from streams import worker
    from streams.worker import plan_compute

    monkeypatch.setattr(worker, "cpu_limit", lambda: None)  # this machine's own is not asked

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        streams = plan_compute(Settings(**env), device)  # type: ignore[arg-type]
        assert (streams, torch.get_num_threads()) == expected
    finally:
        torch.set_num_threads(before)


def _env_names(model: type[BaseModel], prefix: str = "SHOTSTREAM_") -> set[str]:
    """Every environment variable a settings model reads (nested with ``__``)."""
    names: set[str] = set()
    for name, info in model.model_fields.items():
        if info.alias:
            names.add(info.alias)
            continue
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and prefix == "SHOTSTREAM_":
            names |= _env_names(kind, f"{prefix}{name.upper()}__")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


NEEDS = {
    f"SHOTSTREAM_KAFKA__{name}": {"SHOTSTREAM_KAFKA__SECURITY_PROTOCOL": "SSL"}
    for name in ("SSL_CAFILE", "SSL_CERTFILE")
} | {
    "SHOTSTREAM_KAFKA__SSL_KEYFILE": {
        "SHOTSTREAM_KAFKA__SECURITY_PROTOCOL": "SSL",
        "SHOTSTREAM_KAFKA__SSL_CERTFILE": "/etc/shotstream/worker.pem",
    }
}
"""Commented examples that only validate beside another setting (TLS files need TLS)."""


def _example() -> tuple[dict[str, str], dict[str, str]]:
    """``deploy/worker.env.example``: its settings, and its commented examples."""
    path = Path(__file__).parents[2] / "deploy" / "worker.env.example"
    values: dict[str, str] = {}
    examples: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        commented = line.startswith("# SHOTSTREAM_")
        if not (line.startswith("SHOTSTREAM_") or commented):
            assert not line.strip() or line.startswith("#"), line
            continue
        name, _, value = line.removeprefix("# ").partition("=")
        assert name not in values, f"{name} twice"
        assert name not in examples, f"{name} twice"
        (examples if commented else values)[name] = value
    return values, examples


def test_the_example_env_file_names_every_setting_and_shows_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deploy example is what operators copy: it must name every setting (and no
    setting that does not exist), its uncommented values must be the defaults (read as
    an env file reads them: as they are), and each commented example must validate."""
    import os

    from streams.settings import Settings

    for name in list(os.environ):
        if name.startswith("SHOTSTREAM_"):
            monkeypatch.delenv(name)
    values, examples = _example()
    client = {"SHOTSTREAM_API_KEY"}  # the CLI client's key, not a worker setting
    assert set(values) | set(examples) == _env_names(Settings) | client
    defaults = Settings().model_dump()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert Settings().model_dump() == defaults
    for name, value in examples.items():
        if name in client:
            continue
        with monkeypatch.context() as patch:
            for needed, needed_value in NEEDS.get(name, {}).items():
                patch.setenv(needed, needed_value)
            patch.setenv(name, value)
            assert Settings().model_dump() != defaults, name


def test_gpu_batching_defaults_apply_only_to_knobs_left_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOTSTREAM_BATCHING__MAX_BATCH_SIZE", "96")
    batching = Settings().batching
    assert batching.for_device("cpu") is batching  # the CPU defaults stand
    gpu = batching.for_device("cuda")
    assert gpu.max_batch_size == 96  # set explicitly: kept
    assert gpu.max_batch_tokens == GPU_BATCHING["max_batch_tokens"] != batching.max_batch_tokens
    assert gpu.chunk_overhead_tokens == GPU_BATCHING["chunk_overhead_tokens"]
    assert gpu.max_in_flight == GPU_BATCHING["max_in_flight"]
    assert gpu.max_wait_ms == batching.max_wait_ms  # no GPU default


@pytest.mark.parametrize(
    ("kafka", "problem"),
    [
        ({"security_protocol": "SASL_SSL"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}, "sasl_password"),
        ({"ssl_cafile": "/ca.pem"}, "security_protocol PLAINTEXT does not use TLS"),
        ({"security_protocol": "SSL", "ssl_keyfile": "/k.pem"}, "ssl_keyfile without"),
    ],
)
def test_kafka_security_settings_are_complete(kafka: dict[str, str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Settings(kafka=kafka)


def test_the_sasl_password_is_never_shown(tmp_path: Path) -> None:
    from streams.broker import kafka_security

    settings = Settings(
        kafka={"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": "s3cret"}
    )
    assert "s3cret" not in repr(settings) + settings.model_dump_json()
    security = kafka_security(settings.kafka)
    assert security["sasl_plain_password"] == "s3cret"  # noqa: S105 - a test value
    assert security["ssl_context"].verify_mode.name == "CERT_REQUIRED"


def test_group_timeouts_default_per_broker_and_can_be_set() -> None:
    """The embedded broker needs short group timeouts (it holds joins for half the
    session); Kafka keeps faust's unless set, and a set value wins on either."""
    from streams.app import app_config

    def timeouts(**kafka: object) -> tuple[object, object, object]:
        config = app_config(Settings(kafka=kafka))
        names = ("broker_session_timeout", "broker_heartbeat_interval", "broker_rebalance_timeout")
        return tuple(config.get(name) for name in names)  # type: ignore[return-value]

    import faust.types.settings

    from streams.app import FAUST_HEARTBEAT_S

    assert faust.types.settings.Settings("x").broker_heartbeat_interval == FAUST_HEARTBEAT_S

    assert timeouts(embedded="yes") == (6.0, 1.0, 6.0)
    assert timeouts(embedded="no") == (None, None, None)  # faust's 60 / 3 / 60
    assert timeouts(embedded="no", session_timeout_s=15, rebalance_timeout_s=30) == (
        15.0,
        3.0,  # faust's, set since the session is
        30.0,
    )
    assert timeouts(embedded="yes", heartbeat_interval_s=2) == (6.0, 2.0, 6.0)
    # a session set alone brings the heartbeat within a third of it
    assert timeouts(embedded="no", session_timeout_s=6) == (6.0, 2.0, None)
    assert timeouts(embedded="no", session_timeout_s=30) == (30.0, 3.0, None)
    with pytest.raises(ValidationError, match="over a third of session_timeout_s"):
        Settings(kafka={"session_timeout_s": 6, "heartbeat_interval_s": 3})


def test_an_encrypted_client_key_needs_its_passphrase_and_never_prompts(tmp_path: Path) -> None:
    """OpenSSL asks on the terminal for a passphrase it was not given: a worker would
    block there, or fail with a misleading error without one."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    from streams.broker import KafkaSecurityError, ssl_context

    issued = trustme.CA().issue_cert("worker")
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    )
    cert, keyfile = tmp_path / "worker.pem", tmp_path / "worker.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    keyfile.write_bytes(encrypted)
    tls = {"security_protocol": "SSL", "ssl_certfile": cert, "ssl_keyfile": keyfile}
    with pytest.raises(KafkaSecurityError, match="SHOTSTREAM_KAFKA__SSL_PASSWORD"):
        ssl_context(Settings(kafka=tls).kafka)
    assert ssl_context(Settings(kafka={**tls, "ssl_password": "s3cret"}).kafka)


def test_workers_create_no_topic_that_exists() -> None:
    """faust declares every topic it uses with a CreateTopics request, even one that exists,
    and Kafka answers TOPIC_AUTHORIZATION_FAILED to a client without the CREATE permission
    whether or not the topic exists: topics an admin made beforehand did not let such a
    worker start. The workers make only the missing ones (``ensure_topics`` lists first),
    and faust's leader topic, unused, is not made at all."""
    from streams.app import app_config

    config = app_config(Settings())
    assert config["topic_allow_declare"] is False
    assert config["topic_disable_leader"] is True


@pytest.mark.parametrize(
    ("broker", "fetch_wait_ms"), [("kafka-1:9092", 1500), ("127.0.0.1:9092", 25)]
)
def test_workers_read_only_committed_records(
    tmp_path: Path, broker: str, fetch_wait_ms: int
) -> None:
    """faust reads ``read_uncommitted`` unless its ``exactly_once`` is on: a request or
    example in a transaction its producer aborted would be answered or learned. The
    consumer faust builds for a worker (built here as faust builds it, not started) reads
    committed records only, and waits 25 ms per fetch on the embedded broker only. (The
    embedded broker does not filter aborted records: not testable end to end here.)"""
    from types import SimpleNamespace

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from streams.app import create_app

    async def build() -> tuple[str, int]:
        app, _ = create_app(Settings(brokers=(broker,), data_dir=tmp_path))
        thread = SimpleNamespace(app=app, consumer=SimpleNamespace(in_transaction=False))
        consumer = AIOKafkaConsumerThread._create_worker_consumer(thread, app.transport)  # type: ignore[arg-type]
        await consumer.stop()
        return consumer._isolation_level, consumer._fetch_max_wait_ms

    assert asyncio.run(build()) == ("read_committed", fetch_wait_ms)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_container_s_cpu_limit_is_read_from_its_cgroup(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    from streams.worker import cpu_limit

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_limit(tmp_path) == expected


def test_torch_threads_follow_a_container_s_cpu_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch counts the host's cores: limited to 2 CPUs on a 64-core node, a worker ran two
    streams of 32 threads, throttled most of each period. A limit below the count plans
    for the limit; set threads are left alone."""
    import torch

    from streams import worker

    before = torch.get_num_threads()
    monkeypatch.setattr(worker, "cpu_limit", lambda: 2)
    try:
        torch.set_num_threads(8)
        assert worker.plan_compute(Settings(), "cpu") == 2
        assert torch.get_num_threads() == 1
        torch.set_num_threads(8)
        assert worker.plan_compute(Settings(models={"torch_threads": 6}), "cpu") == 1
        assert torch.get_num_threads() == 6
    finally:
        torch.set_num_threads(before)


def test_the_classifier_table_opens_rocksdb_with_bounded_memory(tmp_path: Path) -> None:
    """faust's defaults (3 write buffers of 64 MiB and a 2 GiB cache per partition's
    database) grew a process by 966-973 MB over 16 partitions; the table's stores now get
    SHOTSTREAM_ROCKSDB__* (147 MB)."""
    from streams.worker import build_worker

    settings = Settings(data_dir=tmp_path, rocksdb={"write_buffer_bytes": 4 * 2**20})
    app, _, _ = build_worker(settings)
    store = app.tables["classifiers"].data
    opened = store.rocksdb_options  # type: ignore[attr-defined]
    assert (opened.write_buffer_size, opened.max_write_buffer_number) == (4 * 2**20, 2)
    assert opened.block_cache_size == 16 * 2**20
    assert settings.rocksdb.options() is not settings.rocksdb.options()  # faust pops from it
