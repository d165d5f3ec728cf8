"""Observer hooks: what happened, told to whoever watches (metrics, logs, tests).

Business code calls these hooks and never touches a metric object, as faust's sensors
do; ``streams/metrics.py`` implements them for Prometheus. The base class does nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from models.batching import BatchStats


def lane_label(model: str, lane: str) -> str:
    """The ``model`` label of a model's lane (its batches, compute streams and queue): the
    model's name for text, ``<model>/image`` for images."""
    return model if lane == "text" else f"{model}/{lane}"


class Observer:
    """No-op hooks; subclass and override what you need."""

    def on_request(self, topic: str, kind: str, inputs: int) -> None:
        """A valid request is being served (``kind``: zero-shot / few-shot on the classify
        topic, train / delete on the train topic; ``inputs``: its inputs or examples)."""

    def on_response(self, topic: str, kind: str, inputs: int, latency_s: float | None) -> None:
        """A response was produced; ``latency_s`` from the request record's timestamp."""

    def on_dead_letter(self, topic: str, code: str) -> None:
        """A record was answered with a dead letter."""

    def on_unanswered(self, topic: str) -> None:
        """A record got neither an answer nor a dead letter (logged): a bug, and it stays
        unacknowledged until Kafka delivers it again; or its dead letter was refused by
        the broker even without its payload."""

    def on_produce_retry(self, topic: str, error: str) -> None:
        """Producing an answer to ``topic`` failed with ``error`` and will be tried again."""

    def on_truncated(self, model: str, count: int) -> None:
        """``count`` inputs were longer than the model window and embedded truncated."""

    def on_tokens(self, model: str, kind: str, tokens: int) -> None:
        """Usage tokens counted for a response."""

    def on_train(
        self,
        classifier_id: str,
        examples: int,
        accuracy: float | None,
        *,
        partition: int | None = None,
    ) -> None:
        """A train request from train-topic ``partition`` was applied; ``accuracy`` is the
        windowed prequential accuracy."""

    def on_delete(self, classifier_id: str) -> None:
        """A classifier was deleted (its per-classifier series end)."""

    def on_rewrite(self, reason: str) -> None:
        """This worker, the classifier's owner, wrote its state (``reason`` stale_write)
        or its delete (after_delete) to the changelog again, after a stale write of it
        from a worker that had lost the partition (paused past the session timeout)."""

    def on_train_partitions(self, partitions: set[int]) -> None:
        """A rebalance left this worker these train-topic partitions; classifiers learned
        on others are another worker's to report now (their series here end)."""

    def on_consumer_lag(self, behind: Mapping[tuple[str, int], int]) -> None:
        """Records past the group's commit on each ``(topic, partition)`` this worker holds
        now (every one: a partition not in it is no longer this worker's to report)."""

    def on_batch(self, model: str, stats: BatchStats) -> None:
        """The model ran one batch."""

    def on_model_loaded(
        self,
        model: str,
        source: str,
        device: str,
        dim: int,
        queue_depths: Mapping[str, Callable[[], int]],
        streams: int = 1,
        image_streams: int = 0,
        queue_capacity: int = 0,
        queue_waits: Mapping[str, Callable[[], float]] | None = None,
        queue_wait_limit_s: float = 0.0,
    ) -> None:
        """A model became ready; ``queue_depths`` reads its batchers' queues by lane
        (``text``, ``image``), each of which holds ``queue_capacity`` inputs; it computes
        ``streams`` batches at once, and ``image_streams`` image batches (its image lane,
        reported as ``<model>/image``). ``queue_waits`` reads, by lane, about how long a
        one-input request would wait for the model now; requests with a deadline are
        refused beyond ``queue_wait_limit_s`` (0: no limit)."""

    def on_agent(
        self, topic: str, in_flight: Callable[[], int], oldest_s: Callable[[], float]
    ) -> None:
        """The agent consuming ``topic`` started: ``in_flight`` reads how many of its
        records are taken and not yet answered, ``oldest_s`` how long the oldest of them
        has waited (0 when none)."""

    def on_classifiers(self, count: Callable[[], int], loaded: Callable[[], bool]) -> None:
        """The worker follows the classifier changelog: ``count`` reads how many classifiers
        it holds, ``loaded`` whether it has read the changelog to where it ended at start
        (until then few-shot and train requests wait)."""

    def on_state(self, state: str) -> None:
        """The worker is ``starting`` (topics, model), ``ready`` (it joined its group and
        serves) or ``stopping``."""

    def on_heartbeat(self) -> None:
        """The event loop turned (each second)."""
