"""The faust app, built from settings (no module-level app, no globals).

The embedded broker's quirks (notes/embedded-broker.md) are handled here and only when
``settings.embedded_broker`` is true: one record per produce batch (its ListOffsets
answer is wrong for multi-record batches, which breaks table recovery) and short group
timeouts (it holds a join for half the session timeout).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import faust

from streams.broker import kafka_security
from streams.lenient_records import install as read_undecodable_header_keys
from streams.settings import EMBEDDED_FETCH_MAX_WAIT_MS, KafkaSettings, Settings
from streams.table import ClassifierTable

log = logging.getLogger(__name__)

EMBEDDED_BROKER_OVERRIDES: dict[str, Any] = {
    "producer_max_batch_size": 1,
    "broker_session_timeout": 6.0,
    "broker_heartbeat_interval": 1.0,
    "broker_rebalance_timeout": 6.0,
}


def app_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``faust.App``."""
    config: dict[str, Any] = {
        "broker": [f"kafka://{b}" for b in settings.brokers],
        "store": "rocksdb://",
        "Table": ClassifierTable,  # restores without rolling a classifier back
        "datadir": str(settings.data_dir / "faust"),
        "web_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "broker_commit_interval": settings.kafka.commit_interval_s,
        "producer_request_timeout": settings.kafka.request_timeout_s,
        "producer_max_request_size": settings.kafka.max_message_bytes,
        # the workers make their topics themselves, only those missing (prepare_broker);
        # faust sends CreateTopics for every topic it uses, existing or not, which Kafka
        # refuses without the CREATE permission even for a topic that exists: so topics
        # created beforehand by an admin did not let a worker without CREATE start
        "topic_allow_declare": False,
        "topic_disable_leader": True,  # its leader election is unused: one topic fewer
    }
    credentials = faust_credentials(settings.kafka)
    if credentials is not None:
        config["broker_credentials"] = credentials
    if settings.embedded_broker:
        config.update(EMBEDDED_BROKER_OVERRIDES)
    for name, value in (
        ("broker_session_timeout", settings.kafka.session_timeout_s),
        ("broker_heartbeat_interval", settings.kafka.heartbeat_interval_s),
        ("broker_rebalance_timeout", settings.kafka.rebalance_timeout_s),
    ):
        if value is not None:  # set: over the embedded broker's and faust's defaults
            config[name] = value
    session = settings.kafka.session_timeout_s
    if session is not None and settings.kafka.heartbeat_interval_s is None:
        # faust's 3 s heartbeat against a 6 s session would end it at one late heartbeat
        heartbeat = config.get("broker_heartbeat_interval", FAUST_HEARTBEAT_S)
        config["broker_heartbeat_interval"] = min(heartbeat, session / 3)
    return config


FAUST_HEARTBEAT_S = 3.0
"""faust's ``broker_heartbeat_interval`` default."""


def faust_credentials(kafka: KafkaSettings) -> Any:
    """faust's ``broker_credentials`` for the settings' TLS and SASL (``None``: plaintext),
    so the worker's own consumers, producer and admin reach the brokers as
    :func:`streams.broker.kafka_security`'s clients do.

    >>> from streams.settings import KafkaSettings
    >>> faust_credentials(KafkaSettings()) is None
    True
    >>> sasl = KafkaSettings(
    ...     security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password="p"
    ... )
    >>> from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
    >>> sorted(credentials_to_aiokafka_auth(faust_credentials(sasl)).items())
    ... # doctest: +NORMALIZE_WHITESPACE
    [('sasl_mechanism', 'PLAIN'), ('sasl_plain_password', 'p'),
     ('sasl_plain_username', 'u'), ('security_protocol', 'SASL_PLAINTEXT'),
     ('ssl_context', None)]
    """
    if kafka.security_protocol == "PLAINTEXT":
        return None
    security = kafka_security(kafka)  # the keywords every other client takes, as faust's
    if kafka.security_protocol == "SSL":
        return faust.SSLCredentials(security["ssl_context"])
    return faust.SASLCredentials(
        username=security["sasl_plain_username"],
        password=security["sasl_plain_password"],
        ssl_context=security.get("ssl_context"),
        mechanism=security["sasl_mechanism"],
    )


def tune_worker_consumer(fetch_max_wait_ms: int | None) -> None:
    """Adjust the consumer faust builds for a worker before it starts.

    - It reads ``read_committed``: a request or a training example produced in a
      transaction that its producer aborted is not answered or learned (faust reads
      ``read_uncommitted`` unless its own ``exactly_once`` is on). Records written outside
      transactions, as our clients write them, are read as before.
    - With ``fetch_max_wait_ms`` (the embedded broker), a fetch waits that long at most:
      faust passes ``fetch_max_wait_ms=1500`` to aiokafka with no setting to change it.
      Apache Kafka answers a fetch as soon as data arrives and needs none of this.
    """
    from faust.transport.drivers import aiokafka as driver

    _consumer_tuning["fetch_max_wait_ms"] = fetch_max_wait_ms
    thread_cls: Any = driver.AIOKafkaConsumerThread
    if getattr(thread_cls, "_shotstream_patched", False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._isolation_level = "read_committed"  # given to its fetcher at start
        wait_ms = _consumer_tuning["fetch_max_wait_ms"]
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = wait_ms
        return consumer

    thread_cls._create_worker_consumer = create
    thread_cls._shotstream_patched = True


_consumer_tuning: dict[str, int | None] = {"fetch_max_wait_ms": None}


def classifier_changelog_topic(settings: Settings) -> str:
    """The changelog topic of the ``classifiers`` table (faust's naming)."""
    return f"{settings.kafka.group_id}-classifiers-changelog"


@dataclass(frozen=True)
class Topics:
    """The topics the agents consume (answers go out through ``streams.producer``)."""

    classify: faust.TopicT
    train: faust.TopicT


EXIT_MARGIN_S = 15.0
"""A stopping worker ends itself this long after its drain should have ended, whatever
it still waits for (faust's consumer, threads finishing model calls): the same as a
SIGKILL then, which loses nothing acknowledged (tested), but on its own and logged."""

REVOKE_SHARE = 0.5
"""On a rebalance, a drain takes at most this share of the group's rebalance timeout: a
member that has not rejoined within that timeout is evicted, which starts another
rebalance (the embedded broker's timeout is 6 s; Apache Kafka's default through faust,
60 s, leaves ``drain_timeout_s`` as it is)."""

COMMIT_TIMEOUT_S = 5.0
"""How long a drain waits to commit the answered requests' offsets (the broker may be
away: their requests are then answered again, after a restart or by the new owner)."""


class Runner(Protocol):
    """What the app asks of an agent's request runner (``streams.agents.RequestAgent``)."""

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the requests in flight, cancel the rest; how many."""
        ...

    def take_acknowledged(self) -> dict[Any, int]:
        """The last offset acknowledged per partition since the previous call."""
        ...


class ShotstreamApp(faust.App):
    """A faust app whose drains are bounded.

    When a worker stops, or its partitions move, faust waits until every event its agents
    took is acknowledged, with no time limit. Ours are acknowledged once answered, and an
    answer waits for the broker: with the broker away, a SIGTERM never ended the worker
    (measured: still running 120 s later, then SIGKILLed), and with a broker, stopping
    first answered up to ``max_in_flight`` queued requests, for minutes on a CPU. Here the
    agents get ``drain_timeout_s`` to finish what they run (``drains``); the rest is
    cancelled unanswered and unacknowledged, and Kafka redelivers it.
    """

    drain_timeout_s: float = 15.0
    runners: list[Runner]
    """The agents' request runners (``RequestAgent``): what they run is drained, what they
    acknowledged is committed."""
    exit_after_s: float | None = None
    """Set in a worker process (never in a process that only embeds the app): once the
    app stops, the process ends itself after this long (``os._exit``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.runners = []
        self.stopping_hooks: list[Callable[[], None]] = []
        """Called when the app starts stopping, before the drain (faust's own
        ``on_before_shutdown`` comes after it)."""
        self._stopping = False

    async def on_stop(self) -> None:
        self._stopping = True
        for hook in self.stopping_hooks:
            hook()
        if self.exit_after_s is not None:
            threading.Thread(
                target=_exit_after, args=(self.exit_after_s,), name="exit-deadline", daemon=True
            ).start()
        await super().on_stop()

    async def _consumer_wait_empty(self, consumer: Any, _logger: Any) -> None:
        # faust calls this after pausing every partition and clearing the agents' buffers
        # (faust-streaming 0.15: both on stop and on partitions revoked). Warnings go to our
        # own log: on a revoke faust passes a flight recorder that prints only when the
        # whole revoke outlasts 95 % of the session timeout
        timeout_s = self.drain_time_s()
        counts = await asyncio.gather(*(runner.drain(timeout_s) for runner in self.runners))
        if cancelled := sum(counts):
            log.warning(
                "%d requests still in flight after %g s were cancelled, unanswered and "
                "unacknowledged: Kafka delivers them again",
                cancelled,
                timeout_s,
            )
        try:
            await asyncio.wait_for(self._commit_answered(consumer), COMMIT_TIMEOUT_S)
        except Exception as exc:  # the broker away: answered requests are answered again
            log.warning(
                "could not commit the answered requests' offsets (%s); Kafka delivers them again",
                type(exc).__name__,
            )

    async def _commit_answered(self, consumer: Any) -> None:
        """Commit what the agents acknowledged. On a revoke faust has already forgotten
        the acknowledgements of the partitions it revokes (faust-streaming 0.15 clears
        them before calling the app), so its own commit skips them and the new owner got
        every request answered since the last periodic commit again (with
        ``commit_interval_s`` at 600 s: all of them). The changelog goes out first: an
        offset is never committed before the table writes of the requests before it."""
        offsets: dict[Any, int] = {}
        for runner in self.runners:  # taken before any wait: none are left over
            for tp, offset in runner.take_acknowledged().items():
                offsets[tp] = max(offset + 1, offsets.get(tp, 0))
        await consumer.commit()
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        if offsets:
            await self.producer.flush()
            # faust has no public commit of given offsets. A refusal because the group
            # moved on (this worker was evicted) is no error; faust ends the worker on
            # the others, as on its periodic commits
            await consumer._commit(offsets)

    def drain_time_s(self) -> float:
        """How long the agents get to finish: ``drain_timeout_s`` when stopping; on a
        rebalance no more than :data:`REVOKE_SHARE` of the rebalance timeout as well (what
        is cancelled is answered by the partition's new owner)."""
        if self._stopping:
            return self.drain_timeout_s
        return min(self.drain_timeout_s, REVOKE_SHARE * self.conf.broker_rebalance_timeout)

    async def _producer_flush(self, logger: Any) -> None:
        # faust waits for its producer (the tables' changelog records) without a limit:
        # 60 s and more with the broker away. Bounded only when stopping: on a revoke the
        # new owner must not start before this worker's changelog records are in, or a
        # late one would land after its writes and roll the classifier back on recovery
        if not self._stopping:
            await super()._producer_flush(logger)
            return
        try:
            await asyncio.wait_for(super()._producer_flush(logger), self.drain_timeout_s)
        except TimeoutError:
            log.warning(
                "changelog records unsent after %g s (is the broker away?)", self.drain_timeout_s
            )


_EXIT_CANCELLED = threading.Event()


def cancel_exit_deadline() -> None:
    """Call off the process-ending deadline of a stopped app (``exit_after_s``): for a
    process that has more to clean up once its worker has stopped (``shotstream dev``
    stops its gateway and its broker then; ended by the deadline, it left the broker,
    in its own session, holding its port). Its own cleanup must then be bounded."""
    _EXIT_CANCELLED.set()


def _exit_after(seconds: float) -> None:
    if _EXIT_CANCELLED.wait(seconds):
        return
    log.error(
        "shutdown still unfinished after %g s; exiting now (requests not acknowledged are "
        "delivered again)",
        seconds,
    )
    logging.shutdown()
    os._exit(1)


def create_app(settings: Settings) -> tuple[ShotstreamApp, Topics]:
    """A faust app and its topics; agents are attached by ``streams.agents``."""
    tune_worker_consumer(EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else None)
    read_undecodable_header_keys()  # a record from a foreign client must not end the worker
    app = ShotstreamApp(settings.kafka.group_id, **app_config(settings))
    app.drain_timeout_s = settings.kafka.drain_timeout_s

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            settings.topic(name),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )

    topics = Topics(classify=topic("classify"), train=topic("train"))
    return app, topics
