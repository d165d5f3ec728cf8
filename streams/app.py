"""The faust app, built from settings (no module-level app, no globals).

The embedded broker's quirks (notes/embedded-broker.md) are handled here and only when
``settings.embedded_broker`` is true: one record per produce batch (its ListOffsets
answer is wrong for multi-record batches, which breaks table recovery) and short group
timeouts (it holds a join for half the session timeout).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust

from streams.settings import EMBEDDED_FETCH_MAX_WAIT_MS, Settings

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
        "datadir": str(settings.data_dir / "faust"),
        "web_enabled": False,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        "consumer_auto_offset_reset": "earliest",
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "broker_commit_interval": 1.0,
        "producer_request_timeout": settings.kafka.request_timeout_s,
        "producer_max_request_size": settings.kafka.max_message_bytes,
    }
    if settings.embedded_broker:
        config.update(EMBEDDED_BROKER_OVERRIDES)
    return config


def shorten_fetch_wait(max_wait_ms: int = EMBEDDED_FETCH_MAX_WAIT_MS) -> None:
    """Make faust's worker consumer poll with a short fetch wait (embedded broker only).

    faust passes ``fetch_max_wait_ms=1500`` to aiokafka with no setting to change it, so
    the consumer it builds is adjusted before it starts. Apache Kafka answers a fetch as
    soon as data arrives and needs none of this.
    """
    from faust.transport.drivers import aiokafka as driver

    _fetch_wait["ms"] = max_wait_ms
    thread_cls: Any = driver.AIOKafkaConsumerThread
    if getattr(thread_cls, "_shotstream_patched", False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _fetch_wait["ms"]
        return consumer

    thread_cls._create_worker_consumer = create
    thread_cls._shotstream_patched = True


_fetch_wait: dict[str, int] = {"ms": EMBEDDED_FETCH_MAX_WAIT_MS}


def classifier_changelog_topic(settings: Settings) -> str:
    """The changelog topic of the ``classifiers`` table (faust's naming)."""
    return f"{settings.kafka.group_id}-classifiers-changelog"


@dataclass(frozen=True)
class Topics:
    """The topics the agents consume (answers go out through ``streams.producer``)."""

    classify: faust.TopicT
    train: faust.TopicT


def create_app(settings: Settings) -> tuple[faust.App, Topics]:
    """A faust app and its topics; agents are attached by ``streams.agents``."""
    if settings.embedded_broker:
        shorten_fetch_wait()
    app = faust.App(settings.kafka.group_id, **app_config(settings))

    def topic(name: str) -> faust.TopicT:
        return app.topic(
            settings.topic(name),
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )

    topics = Topics(classify=topic("classify"), train=topic("train"))
    return app, topics
