"""Assemble and run one worker: settings → model registry → service → faust app."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import IO, Any

import faust
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from faust.types import TP, TableT

from models.embedders import resolve_device
from models.registry import ModelRegistry
from state.records import RecordFormatError, without_sources
from streams.agents import ClassifyHandler, RequestAgent
from streams.app import EXIT_MARGIN_S, ShotstreamApp, classifier_changelog_topic, create_app
from streams.auth import NO_KEYS, KeyRing
from streams.broker import (
    TopicCreationError,
    check_port_free,
    ensure_topics,
    kafka_security,
    loses_old_records,
    partition_counts,
    topic_configs,
    wait_for_broker,
)
from streams.lag import LAG_INTERVAL_S, LagReader
from streams.logs import announce
from streams.metrics import PrometheusObserver
from streams.producer import OutputProducer
from streams.replica import ClassifierReplica
from streams.service import ClassifyService
from streams.settings import EMBEDDED_FETCH_MAX_WAIT_MS, TOPICS, Settings
from streams.training import TrainHandler
from streams.usage import UsageCounter

log = logging.getLogger("shotstream.worker")

USAGE_LAST_S = 5.0
"""How long a stopping worker tries to report its last few-shot uses."""


def cpu_limit(cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The CPUs this process's cgroup may use (a container's CPU limit, rounded up), or
    ``None`` without a limit. torch counts the host's cores: a worker limited to 2 CPUs
    on a 64-core node ran 64 threads, throttled by the kernel most of each period."""
    quota_period: list[str] = []
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota_period = (cgroup / "cpu.max").read_text().split()
    except OSError:
        try:  # cgroup v1: -1 when unlimited
            quota_period = [
                (cgroup / "cpu" / name).read_text().strip()
                for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")
            ]
        except OSError:
            return None
    try:
        quota, period = int(quota_period[0]), int(quota_period[1])
    except (ValueError, IndexError):  # "max", or unreadable
        return None
    if quota <= 0 or period <= 0:
        return None
    return max(1, -(-quota // period))


def plan_compute(settings: Settings, device: str) -> int:
    """Set torch's threads per compute stream; return the streams (see the settings)."""
    import torch

    threads = settings.models.torch_threads
    streams = settings.batching.compute_streams
    cores = torch.get_num_threads()
    limit = cpu_limit()
    if limit is not None and limit < cores and device == "cpu" and not threads:
        log.info(
            "a CPU limit of %d (torch counts %d cores): threads planned for %d", limit, cores, limit
        )
        cores = limit
    if not streams:
        streams = 2 if device == "cpu" and not threads and cores >= 2 else 1
    if not threads and device == "cpu":
        threads = max(1, cores // streams)
    if threads:
        torch.set_num_threads(threads)
    log.info("%d compute stream(s) of %d torch thread(s)", streams, torch.get_num_threads())
    return streams


def make_registry(settings: Settings, device: str, dtype: str) -> ModelRegistry:
    return ModelRegistry(
        cache_dir=settings.model_cache_dir,
        default=settings.default_model_name,
        aliases=settings.models.aliases,
        device=device,
        dtype=dtype,
        clip_model=settings.images.clip_model,
        streams=plan_compute(settings, device),
        max_loaded=settings.models.max_loaded,
        max_model_bytes=settings.models.max_model_bytes,
    )


def build_worker(settings: Settings) -> tuple[ShotstreamApp, ClassifyService, PrometheusObserver]:
    """The faust app with its agents and table, ready for ``faust.Worker``."""
    device, dtype = resolve_device(settings.model_device, settings.models.dtype)
    settings = settings.model_copy(update={"batching": settings.batching.for_device(device)})
    observer = PrometheusObserver(classifier_series=settings.metrics_classifier_series)
    observer.declare_topics([settings.topic("classify"), settings.topic("train")])
    app, topics = create_app(settings)
    table: TableT[bytes, bytes] = app.Table(
        "classifiers",
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
        options=settings.rocksdb.options(),
    )  # raw bytes: the app's default serializers; values use state.records' codec
    assert table.changelog_topic.get_topic_name() == classifier_changelog_topic(settings)  # noqa: S101
    replica = ClassifierReplica(
        ",".join(settings.brokers),
        classifier_changelog_topic(settings),
        fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else 500,
        security=kafka_security(settings.kafka),
    )
    service = ClassifyService(settings, make_registry(settings, device, dtype), observer, replica)
    keys = KeyRing(settings.all_api_keys())
    if not len(keys):
        log.warning("%s: every few-shot classify and train record is refused", NO_KEYS)
    output = OutputProducer(settings, observer)
    usage = UsageCounter() if settings.usage_flush_s > 0 else None
    classify = ClassifyHandler(settings, service, keys, output, observer, usage=usage)
    train = TrainHandler(
        settings,
        service,
        table,
        replica,
        keys,
        output,
        observer,
        partition_count=functools.partial(subscribed_partitions, app),
    )
    replica.on_stale = train.restate
    in_flight = settings.batching.max_in_flight
    classify_runner = RequestAgent(classify, max_in_flight=in_flight, observer=observer)
    train_runner = RequestAgent(train, max_in_flight=in_flight, observer=observer)
    app.runners += [classify_runner, train_runner]
    observer.on_agent(
        settings.topic("classify"), classify_runner.in_flight, classify_runner.oldest_s
    )
    observer.on_agent(settings.topic("train"), train_runner.in_flight, train_runner.oldest_s)
    observer.on_classifiers(lambda: len(replica.records), replica.loaded.is_set)

    async def classify_agent(stream: faust.StreamT[Any]) -> None:
        await classify_runner(stream)

    async def train_agent(stream: faust.StreamT[Any]) -> None:
        await train_runner(stream)

    app.agent(topics.classify, name="shotstream.classify")(classify_agent)
    app.agent(topics.train, name="shotstream.train")(train_agent)

    @app.timer(1.0)  # type: ignore[untyped-decorator]  # faust types it loosely
    async def _heartbeat() -> None:
        observer.on_heartbeat()

    lag = LagReader(
        ",".join(settings.brokers), settings.kafka.group_id, security=kafka_security(settings.kafka)
    )
    held: set[TP] = set()
    request_topics = {topics.classify.get_topic_name(), topics.train.get_topic_name()}

    @app.timer(LAG_INTERVAL_S)  # type: ignore[untyped-decorator]  # faust types it loosely
    async def _read_lag() -> None:
        try:
            behind = await lag.read([TopicPartition(tp.topic, tp.partition) for tp in held])
        except Exception as exc:  # reported again at the next tick; the series stay as read
            log.warning("could not read the consumer lag from Kafka (%s)", type(exc).__name__)
            return
        observer.on_consumer_lag(
            {tp: n for tp, n in behind.items() if tp in held}  # held still, after the wait
        )

    if usage is not None:

        @app.timer(settings.usage_flush_s)  # type: ignore[untyped-decorator]  # faust types it loosely
        async def _report_usage() -> None:
            await usage.report(output, settings.topic("train"))

    @app.task  # type: ignore[untyped-decorator]  # faust types it loosely
    async def _follow_classifiers() -> None:
        await replica.start()

    @app.task  # type: ignore[untyped-decorator]  # faust types it loosely
    async def _default_runtime() -> None:
        # loaded before faust starts (run_worker); its runtime now, so the dashboard and
        # the queue alert see the default model before its first request
        await service.runtime(service.registry.resolve(None))

    announced = False

    @app.on_rebalance_complete.connect  # type: ignore[arg-type]  # faust types receivers as sync
    async def _ready(sender: faust.App, **_: object) -> None:
        nonlocal announced
        observer.on_state("ready")
        if not announced:
            announced = True
            announce(
                log,
                settings.log_level,
                "shotstream worker ready: consuming %s with model %s (group %s)",
                topics.classify.get_topic_name(),
                settings.default_model_name,
                settings.kafka.group_id,
            )

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # faust types receivers as sync
    async def _owned(sender: faust.App, assigned: set[TP], **_: object) -> None:
        classify_runner.reassigned(assigned)
        train_runner.reassigned(assigned)
        held.clear()  # the request topics' (faust assigns the changelog's too: not committed)
        held.update(tp for tp in assigned if tp.topic in request_topics)
        train_topic = topics.train.get_topic_name()
        train.owned = {tp.partition for tp in assigned if tp.topic == train_topic}
        observer.on_train_partitions(train.owned)

    # /readyz says so from the start of the drain, not from its end (on_before_shutdown)
    app.stopping_hooks.append(lambda: observer.on_state("stopping"))

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # faust types receivers as sync
    async def _close(sender: faust.App, **_: object) -> None:
        if usage is not None:  # the uses not reported yet; a broker away must not hold this
            try:
                await asyncio.wait_for(usage.report(output, settings.topic("train")), USAGE_LAST_S)
            except TimeoutError:
                log.warning("could not report the last uses of few-shot classifiers in time")
        await service.aclose()
        await replica.stop()
        await lag.stop()
        await output.stop()

    return app, service, observer


def subscribed_partitions(app: ShotstreamApp, topic: str) -> int | None:
    """Partitions of a topic this worker consumes, from its consumer's cluster metadata
    (every group member has it; faust's ``topic_partitions`` reads the assignment snapshot
    only the group's leader fills in). ``None`` before the consumer runs."""
    consumer: Any = app.consumer
    found = consumer._thread._ensure_consumer().partitions_for_topic(topic)
    return len(found) if found else None


async def prepare_broker(settings: Settings) -> list[str]:
    """Wait for the brokers and create shotstream's topics where missing; the ones created."""
    security = kafka_security(settings.kafka)
    await wait_for_broker(
        settings.brokers, timeout_s=settings.kafka.request_timeout_s, security=security
    )
    changelog = classifier_changelog_topic(settings)
    topics = [*(settings.topic(t) for t in TOPICS), changelog]
    created = await ensure_topics(
        settings.brokers,
        topics,
        settings.partitions,
        settings.kafka.replication_factor,
        compacted=[changelog],
        max_message_bytes=settings.kafka.max_message_bytes,
        security=security,
        retention_ms=settings.kafka.retention_ms,
    )
    if created:
        log.info("created topics %s (%d partitions)", ", ".join(created), settings.partitions)
    train = settings.topic("train")
    deadline = time.monotonic() + settings.kafka.request_timeout_s
    while True:  # on a cluster, a broker learns of a topic created a moment ago shortly after
        counts = await partition_counts(settings.brokers, topics, security)
        missing = [t for t in (train, changelog) if t not in counts]
        if not missing:
            break
        if time.monotonic() > deadline:
            raise TopicLayoutError(f"the topics {', '.join(missing)} do not exist after creation")
        await asyncio.sleep(0.5)
    if counts.get(train) != counts.get(changelog):
        raise TopicLayoutError(
            f"{train} has {counts.get(train)} partitions and the classifier changelog "
            f"{changelog} has {counts.get(changelog)}: they must have as many. A classifier's "
            "state lives in the changelog partition of its id's train partition, so the "
            "train topic's partition count is fixed once classifiers exist (to scale "
            "few-shot training beyond it, use a new SHOTSTREAM_TOPIC_PREFIX and group)"
        )
    try:
        configs = await topic_configs(settings.brokers, topics, security)
    except KafkaError as exc:  # a broker without DescribeConfigs: said, not fatal
        configs = dict.fromkeys(topics, f"{type(exc).__name__}: {exc}")
    kept = configs.get(changelog)
    check_changelog_kept(changelog, "not described" if kept is None else kept)
    for topic, config in sorted(configs.items()):
        warn_record_size(topic, config, settings.kafka.max_message_bytes)
    for topic, count in sorted(counts.items()):
        if count != settings.partitions:
            log.warning(
                "topic %s has %d partitions, SHOTSTREAM_PARTITIONS says %d: it applies only "
                "to topics shotstream creates (existing ones keep theirs, so at most %d "
                "workers share this one)",
                topic,
                count,
                settings.partitions,
                count,
            )
    return created


class TopicLayoutError(RuntimeError):
    """The topics are laid out so that classifier state would be read wrong."""


def warn_record_size(topic: str, config: dict[str, str] | str, produced: int) -> None:
    """Warn about a topic whose ``max.message.bytes`` is below the largest record workers
    produce: topics made beforehand with Kafka's default (1 MB) refuse records between the
    two, a large answer becoming a ``RESPONSE_TOO_LARGE`` dead letter and a large request
    (from the gateway) a 413, with nothing said at start."""
    limit = config.get("max.message.bytes") if isinstance(config, dict) else None
    if limit is not None and limit.isdigit() and int(limit) < produced:
        log.warning(
            "topic %s takes records up to max.message.bytes=%s, below "
            "SHOTSTREAM_KAFKA__MAX_MESSAGE_BYTES=%d: answers and requests between the two "
            "are refused (RESPONSE_TOO_LARGE dead letters, HTTP 413); raise the topic's "
            "limit (kafka-configs.sh --alter --entity-type topics --entity-name %s "
            "--add-config max.message.bytes=%d) or lower the setting to match",
            topic,
            limit,
            produced,
            topic,
            produced,
        )


def check_changelog_kept(changelog: str, config: dict[str, str] | str) -> None:
    """Refuse a classifier changelog that Kafka empties by age or size: the workers create
    it compacted, but one made beforehand (by an admin, for workers without CREATE) with
    Kafka's default ``cleanup.policy=delete`` loses every classifier not updated within
    ``retention.ms`` (7 days by default) the next time its partition is restored."""
    if isinstance(config, str):  # not allowed to read it: said, not fatal
        log.warning(
            "cannot check that the classifier changelog %s is compacted: %s", changelog, config
        )
        return
    if loses_old_records(config):
        policy = config.get("cleanup.policy", "delete (Kafka's default)")
        raise TopicLayoutError(
            f"the classifier changelog {changelog} has cleanup.policy={policy}: Kafka would "
            f"delete classifiers not updated within its retention. Make it compacted only "
            f"(kafka-configs.sh --alter --entity-type topics --entity-name {changelog} "
            f"--add-config cleanup.policy=compact), then start the worker again"
        )


#: The key under which faust's RocksDB store keeps the last changelog offset it wrote.
FAUST_OFFSET_KEY = b"__faust\0offset__"


def partition_tables(tables: Path, pattern: str = "classifiers-*.db") -> Iterator[tuple[int, Path]]:
    """``(partition, path)`` of each ``classifiers`` table file under ``tables`` matching
    ``pattern``, in path order."""
    for path in sorted(tables.glob(pattern)):
        partition = path.name.removeprefix("classifiers-").removesuffix(".db")
        if partition.isdigit():
            yield int(partition), path


def open_table(path: Path, *, write: bool = False) -> Any:
    """One partition's RocksDB table as faust's store keeps it (raw bytes)."""
    from rocksdict import AccessType, Options, Rdict

    access = AccessType.read_write() if write else AccessType.read_only()
    return Rdict(str(path), options=Options(raw_mode=True), access_type=access)


def local_changelog_offsets(tables: Path) -> dict[int, int]:
    """Per partition, the last changelog offset the local ``classifiers`` tables hold."""
    offsets: dict[int, int] = {}
    for partition, path in partition_tables(tables, "v*/tables/classifiers-*.db"):
        try:
            db = open_table(path)
        except Exception:  # faust reports an unusable table itself when it opens it
            log.warning("could not open %s to compare it with its changelog", path, exc_info=True)
            continue
        try:
            value = db.get(FAUST_OFFSET_KEY)
        finally:
            db.close()
        if value is not None:
            offset = int(value)
            offsets[partition] = max(offset, offsets.get(partition, offset))
    return offsets


async def changelog_end_offsets(settings: Settings) -> dict[int, int]:
    """Per partition, the end offset of the ``classifiers`` changelog topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    topic = classifier_changelog_topic(settings)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.brokers),
        enable_auto_commit=False,
        **kafka_security(settings.kafka),
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata partitions_for_topic reads
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(tps) if tps else {}
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()


def tables_ahead_of(local: dict[int, int], ends: dict[int, int]) -> list[int]:
    """The partitions whose local tables hold an offset their changelog never reached.

    Offsets only grow in a Kafka partition (compaction and retention keep the end), so a
    local offset at or past the topic's end means the topic was made anew after the tables
    were written.
    """
    return sorted(p for p, offset in local.items() if offset >= ends.get(p, 0))


def set_aside_stale_tables(
    settings: Settings, created: list[str], ends: dict[int, int]
) -> Path | None:
    """Move the local tables aside when they are older than their changelog topic.

    The changelog is the tables' source of truth. A new one (the embedded broker keeps
    nothing across its restarts; on Kafka, the topic was deleted) with old local tables
    would leave classifiers this worker serves but no other worker or replica knows, whose
    stamped train offsets belong to the old topics, so new train records at those offsets
    would be taken for replays and not learned. The tables are older when this worker
    created the changelog, or when they hold an offset the changelog (``ends``: its end
    offsets) has not reached, which also catches a worker that lost the race to create
    it. They are renamed, not deleted (on Kafka they may be the last copy); the worker
    starts empty, consistent with its topics. (``shotstream dev`` writes them into its new
    changelog instead: :func:`reseed_changelog`.)
    """
    tables = settings.data_dir / "faust"
    if not tables.is_dir() or not any(path.is_file() for path in tables.rglob("*")):
        return None  # nothing stored yet
    changelog = classifier_changelog_topic(settings)
    if changelog in created:
        why = "it was just created"
    else:
        ahead = tables_ahead_of(local_changelog_offsets(tables), ends)
        if not ahead:
            return None
        why = f"it ends before their offsets in partitions {ahead}"
    stale = tables.with_name(f"faust.stale-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    tables.rename(stale)
    log.warning(
        "the tables in %s are older than their changelog topic %s (%s): moved them to %s "
        "(classifiers start empty, as the topics do; delete it when it is not needed)",
        tables,
        changelog,
        why,
        stale,
    )
    return stale


TABLES_SUBDIR = Path("v1") / "tables"
"""Where faust keeps the tables under its data directory (``v{version}``: the app sets no
version, so faust's default 1; a unit test holds this to the app's ``tabledir``)."""

Send = Callable[[str, bytes, bytes, int], Awaitable[int]]
"""Produce ``(topic, key, value, partition)`` and return the record's offset."""


class ReseedRefused(Exception):
    """The local tables cannot be written into the new changelog as they are."""


def read_tables(tables: Path, partitions: int) -> dict[int, list[tuple[bytes, bytes]]]:
    """Per partition, the classifier records a stopped worker's tables hold (faust's own
    offset key left out); :class:`ReseedRefused` when a record sits in a partition its key
    no longer maps to (the partition count changed)."""
    from streams.training import key_partition

    found: dict[int, list[tuple[bytes, bytes]]] = {}
    for p, path in partition_tables(tables):
        try:
            db = open_table(path)
        except Exception as exc:
            raise ReseedRefused(f"{path} cannot be opened ({exc})") from exc
        try:
            records = [(bytes(k), bytes(v)) for k, v in db.items() if k != FAUST_OFFSET_KEY]
        finally:
            db.close()
        for key, _ in records:
            if (mapped := key_partition(key, partitions)) != p:
                raise ReseedRefused(
                    f"classifier {key.decode('utf-8', 'replace')!r} is stored in partition "
                    f"{p}, but with {partitions} partitions its id maps to {mapped} "
                    "(SHOTSTREAM_PARTITIONS changed)"
                )
        found[p] = records
    return found


def write_tables(
    tables: Path, found: dict[int, list[tuple[bytes, bytes]]], last: dict[int, int]
) -> None:
    """Store ``found`` (the records as reseeded) in each partition's table, and the
    changelog offset it has read up to (``last``; none where nothing was written), as
    faust does after a restore: faust then reads nothing back, and its next write follows
    on."""
    for partition, records in found.items():
        db = open_table(tables / f"classifiers-{partition}.db", write=True)
        try:
            for key, value in records:
                db[key] = value
            if partition in last:
                db[FAUST_OFFSET_KEY] = str(last[partition]).encode()
            elif FAUST_OFFSET_KEY in db:
                del db[FAUST_OFFSET_KEY]
        finally:
            db.close()


GROUP_MARK = "written-by-shotstream-worker"
"""A file in the faust data directory, left by ``shotstream worker`` (not ``dev``): its
tables may hold partitions a group took from it, at versions long overtaken, which
``dev`` must not write back as current."""


def forget_sources(key: bytes, value: bytes) -> bytes:
    """The record with its old topics' offsets forgotten (:func:`without_sources`): the
    new train topic's offsets start again at 0, and a record remembering offsets past them
    would take new requests for replays. A record this worker cannot read is kept as it
    is (its owner can still delete it)."""
    try:
        return without_sources(value)
    except RecordFormatError as exc:
        log.warning("classifier %r kept as it is: %s", key.decode("utf-8", "replace"), exc)
        return value


async def reseed_changelog(settings: Settings, send: Send) -> int | None:
    """Write the local tables' classifiers into a changelog topic made anew (``shotstream
    dev`` restarted: its in-memory broker kept nothing), so they survive the restart.

    The tables are the state a single worker left: every classifier, at the version it
    wrote last. Each record, its old topics' offsets forgotten (:func:`forget_sources`),
    goes to the partition its table holds it in, one at a time (the embedded broker reads
    multi-record batches' offsets wrong); then the tables store the records as sent and
    are marked read up to their last one, so faust neither restores them again nor sees
    a gap. Returns how many were written; ``None`` when there were no tables, or when they
    cannot be reseeded (said in the log; the caller then sets them aside). Each step can
    be repeated: a start cut off midway reseeds from the tables again."""
    faust_dir = settings.data_dir / "faust"
    tables = faust_dir / TABLES_SUBDIR
    if not any(partition_tables(tables)):
        return None
    try:
        if (faust_dir / GROUP_MARK).exists():
            raise ReseedRefused(
                "a `shotstream worker` wrote them, and its tables may hold partitions its "
                "group took from it"
            )
        found = read_tables(tables, settings.partitions)
    except ReseedRefused as exc:
        log.warning("cannot restore the classifiers of %s into the new changelog: %s", tables, exc)
        return None
    found = {p: [(k, forget_sources(k, v)) for k, v in records] for p, records in found.items()}
    changelog = classifier_changelog_topic(settings)
    total = sum(len(records) for records in found.values())
    if total:
        log.info("restoring %d classifier(s) from %s into %s", total, tables, changelog)
    last: dict[int, int] = {}
    for partition, records in found.items():
        for key, value in records:
            last[partition] = await send(changelog, key, value, partition)
    write_tables(tables, found, last)
    log.info(
        "the broker is new: restored %d classifier(s) from the tables in %s into its changelog %s",
        total,
        tables,
        changelog,
    )
    return total


async def reseed_with_producer(settings: Settings) -> int | None:
    """:func:`reseed_changelog` through an aiokafka producer (acks from all replicas)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=",".join(settings.brokers),
        acks="all",
        max_request_size=settings.kafka.max_message_bytes,
        request_timeout_ms=int(settings.kafka.request_timeout_s * 1000),
        **kafka_security(settings.kafka),
    )
    await producer.start()
    try:

        async def send(topic: str, key: bytes, value: bytes, partition: int) -> int:
            sent = await producer.send_and_wait(topic, value, key=key, partition=partition)
            return int(sent.offset)

        return await reseed_changelog(settings, send)
    finally:
        await producer.stop()


async def prepare_tables(settings: Settings, *, reseed: bool = False) -> Path | None:
    """Make the topics, then move the local tables aside if they are older than them;
    with ``reseed`` (``shotstream dev``: one worker, the tables hold every classifier),
    a changelog this worker just made is filled from the tables instead."""
    created = await prepare_broker(settings)
    new_changelog = classifier_changelog_topic(settings) in created
    if reseed and new_changelog and await reseed_with_producer(settings) is not None:
        return None
    return set_aside_stale_tables(settings, created, await changelog_end_offsets(settings))


class HangupStopsWorker(faust.Worker):
    """faust's worker, stopping on SIGHUP (a closed terminal, a dropped ssh session) as on
    SIGTERM: drained, offsets committed. mode handles SIGINT and SIGTERM only, so a hangup
    took the default action (no drain), and in ``shotstream dev`` the command's own handler
    raised ``SystemExit`` inside whatever task of the worker was running."""

    def _install_signal_handlers_unix(self) -> None:
        super()._install_signal_handlers_unix()
        self.loop.add_signal_handler(signal.SIGHUP, self._on_sigterm)


class DataDirInUseError(RuntimeError):
    """Another worker runs on this data directory."""


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir`` for this worker (an exclusive ``flock``, released when the process
    ends, however it ends): two workers on one data directory would open the same RocksDB
    tables, and one setting the tables aside (a new embedded broker) would move the other's
    live database, whose next flush then corrupts both. Returns the open lock file: keep it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "worker.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise DataDirInUseError(
            f"the data directory {data_dir} is in use by another worker (pid {holder}); "
            "give each worker its own SHOTSTREAM_DATA_DIR"
        ) from None
    except OSError as exc:  # a file system without locks (some FUSE, SMB mounts)
        log.warning("cannot lock the data directory %s (%s): not guarded", data_dir, exc)
        return lock
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def run_worker(
    settings: Settings, *, reseed: bool = False, on_prepared: Callable[[], None] | None = None
) -> None:
    """Run until SIGINT/SIGTERM. Loads the default model first so traffic never waits.
    ``reseed``: fill a changelog made anew from the local tables (:func:`prepare_tables`);
    ``on_prepared`` is called once the topics and tables are ready (``dev`` starts its
    gateway there, so that it never lists the classifiers half reseeded)."""
    try:
        held = lock_data_dir(settings.data_dir)  # held while it runs
    except DataDirInUseError as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(2) from None
    try:
        _run_worker(settings, reseed=reseed, on_prepared=on_prepared)
    finally:
        held.close()


def _run_worker(
    settings: Settings, *, reseed: bool, on_prepared: Callable[[], None] | None
) -> None:
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app, service, observer = build_worker(settings)
    spec = service.registry.resolve(None)  # an unknown default fails before any topic is made
    if settings.metrics_port is not None:
        check_port_free(settings.metrics_host, settings.metrics_port, "SHOTSTREAM_METRICS_PORT")
        port = observer.serve(settings.metrics_port, settings.metrics_host)
        announce(
            log, settings.log_level, "metrics port %d", port
        )  # port 0 picks one: said at any log level
    try:
        asyncio.run(prepare_tables(settings, reseed=reseed))
    except (TopicLayoutError, TopicCreationError) as exc:
        log.error("not starting: %s", exc)
        raise SystemExit(2) from None
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    if not reseed:
        (settings.data_dir / "faust" / GROUP_MARK).touch()
    if on_prepared is not None:
        on_prepared()
    log.info("loading default model %s (%s)", spec.name, spec.source)
    service.registry.load(spec)
    # bounded however faust's shutdown goes: the process ends on its own, logged
    app.exit_after_s = settings.kafka.drain_timeout_s + EXIT_MARGIN_S
    worker = HangupStopsWorker(
        app,
        loglevel=settings.log_level.upper(),
        override_logging=False,  # the CLI's handler and format (SHOTSTREAM_LOG_FORMAT)
        quiet=True,
        redirect_stdouts=False,
        stdout=sys.stdout,
        stderr=sys.stderr,
    )
    worker.spinner = None  # its end wrote a terminal escape into the log
    worker.execute_from_commandline()
