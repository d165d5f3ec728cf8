"""Prometheus metrics: an :class:`~streams.observer.Observer` that counts what it is told.

Served as Prometheus text on ``http://<host>:$SHOTSTREAM_METRICS_PORT/metrics``, next to
the worker's probes: ``/livez`` (the event loop turns) and ``/readyz`` (serving).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.batching import BatchStats
from streams.observer import Observer, lane_label

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_EMBED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Up to a minute: a CPU call of 64 inputs of 512 tokens takes seconds."""

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""HTTP methods counted by name in the gateway's metrics; any other counts as ``other``."""

STALLED_AFTER_S = 30.0
"""``/livez`` fails when the event loop has not turned for this long: every request waits
on it, so a worker stuck this long serves nothing (a model call runs in a thread and
never holds it; a heartbeat ticks each second)."""


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would flood the log."""


class PrometheusObserver(Observer):
    """Every hook becomes a ``shotstream_*`` metric in its own registry."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, classifier_series: int = 1000
    ) -> None:
        self.registry = registry or CollectorRegistry()
        #: most classifiers exported with their own series (the most recently trained)
        self.classifier_series = classifier_series
        r = self.registry
        self.requests = Counter(
            "shotstream_requests", "Valid requests being served", ["topic", "kind"], registry=r
        )
        self.inputs = Counter(
            "shotstream_inputs", "Inputs in valid requests", ["topic", "kind"], registry=r
        )
        self.predictions = Counter(
            "shotstream_predictions",
            "Predictions produced (one per input)",
            ["topic", "kind"],
            registry=r,
        )
        self.responses = Counter(
            "shotstream_responses", "Responses produced", ["topic", "kind"], registry=r
        )
        self.dead_letters = Counter(
            "shotstream_dead_letters",
            "Records answered with a dead letter",
            ["topic", "code"],
            registry=r,
        )
        self.unanswered = Counter(
            "shotstream_unanswered",
            "Records left with neither an answer nor a dead letter (see the log): a bug "
            "(their partition's commits stay before them until they are delivered again), "
            "or a dead letter the broker refused even without its payload",
            ["topic"],
            registry=r,
        )
        self.produce_retries = Counter(
            "shotstream_produce_retries",
            "Answers whose produce failed and is being retried (the broker away, no access)",
            ["topic", "error"],
            registry=r,
        )
        self.truncated = Counter(
            "shotstream_inputs_truncated",
            "Inputs longer than the model window (truncated)",
            ["model"],
            registry=r,
        )
        self.tokens = Counter(
            "shotstream_usage_tokens",
            "Usage tokens counted in responses",
            ["model", "kind"],
            registry=r,
        )
        self.batch_size = Histogram(
            "shotstream_batch_size",
            "Inputs per model call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "shotstream_batch_requests",
            "Distinct requests sharing one model call",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Counter(
            "shotstream_batch_tokens",
            "Tokens the model ran (real and padded; an input counts up to its window)",
            ["model", "kind"],
            registry=r,
        )
        self.embed_seconds = Histogram(
            "shotstream_embedding_seconds",
            "Wall time of one model call",
            ["model"],
            buckets=_EMBED_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "shotstream_end_to_end_latency_seconds",
            "Request record timestamp to response produced",
            ["topic", "kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "shotstream_batcher_queue_depth",
            "Inputs waiting for the model",
            ["model"],
            registry=r,
        )
        self.train_examples = Counter(
            "shotstream_train_examples", "Labelled examples learned", registry=r
        )
        self.train_requests = Counter(
            "shotstream_train_requests", "Train requests applied", registry=r
        )
        self.rewrites = Counter(
            "shotstream_classifier_rewrites",
            "Classifier states (stale_write) or deletes (after_delete) written again after "
            "a stale changelog write from a worker that had lost the partition",
            ["reason"],
            registry=r,
        )
        for reason in ("stale_write", "after_delete"):
            # at 0 from the start: a series born at 1 is no increase(), and a rewrite is
            # often the only one of its incident
            self.rewrites.labels(reason)
        self.prequential = Gauge(
            "shotstream_fewshot_prequential_accuracy",
            "Accuracy on recent examples, each predicted before it was learned",
            ["classifier_id"],
            registry=r,
        )
        self.queue_capacity = Gauge(
            "shotstream_batcher_queue_capacity",
            "Inputs a model's batcher queue holds before requests wait for room "
            "(SHOTSTREAM_BATCHING__MAX_QUEUE)",
            ["model"],
            registry=r,
        )
        self.queue_wait = Gauge(
            "shotstream_batcher_queue_wait_seconds",
            "About how long a one-input request arriving now would wait for the model: the "
            "inputs queued and taken for batches, at the model's recent seconds per input",
            ["model"],
            registry=r,
        )
        self.queue_wait_limit = Gauge(
            "shotstream_batcher_queue_wait_limit_seconds",
            "Requests with a deadline are refused (SERVICE_UNAVAILABLE) when they would wait "
            "longer (SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S; 0: no limit)",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "shotstream_requests_in_flight",
            "Records taken from a topic and not acknowledged yet: not answered, or answered "
            "and waiting for an earlier record of their partition (so it can pass "
            "SHOTSTREAM_BATCHING__MAX_IN_FLIGHT, which bounds those not answered)",
            ["topic"],
            registry=r,
        )
        self.oldest_request = Gauge(
            "shotstream_oldest_request_age_seconds",
            "How long the oldest record taken from a topic and not answered yet has waited "
            "(0 when none): it grows without bound when a worker stops answering",
            ["topic"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "shotstream_consumer_lag_records",
            "Records of a partition this worker holds past the consumer group's committed "
            "offset (not answered yet, or answered since the last commit), read from Kafka "
            "every 15 s",
            ["topic", "partition"],
            registry=r,
        )
        self.classifiers = Gauge(
            "shotstream_classifiers",
            "Few-shot classifiers this worker holds (read from the classifier changelog)",
            registry=r,
        )
        self.classifiers_loaded = Gauge(
            "shotstream_classifiers_loaded",
            "1 once the worker has read the classifier changelog to where it ended at "
            "start (before, few-shot and train requests wait and /readyz fails)",
            registry=r,
        )
        self._classifiers_loaded: Callable[[], bool] = lambda: True
        self.model_info = Info("shotstream_model", "Loaded models", ["model"], registry=r)
        self.compute_streams = Gauge(
            "shotstream_compute_streams",
            "Batches a loaded model computes at once (the model busy fraction's denominator)",
            ["model"],
            registry=r,
        )
        self.state = "starting"
        """``starting`` (topics, model), ``ready`` (serving), ``stopping``."""
        self._beat: float | None = None
        Gauge(
            "shotstream_event_loop_stall_seconds",
            "Seconds since the worker's event loop last turned (its heartbeat ticks each "
            "second; over 30 /livez fails)",
            registry=r,
        ).set_function(self.stalled_s)
        #: the train partition each exported classifier was learned on, least recently
        #: trained first
        self._learned_on: OrderedDict[str, int | None] = OrderedDict()
        self._lag_series: set[tuple[str, str]] = set()

    # -- hooks ------------------------------------------------------------------------

    def on_request(self, topic: str, kind: str, inputs: int) -> None:
        self.requests.labels(topic, kind).inc()
        self.inputs.labels(topic, kind).inc(inputs)

    def on_response(self, topic: str, kind: str, inputs: int, latency_s: float | None) -> None:
        self.responses.labels(topic, kind).inc()
        self.predictions.labels(topic, kind).inc(inputs)
        if latency_s is not None and latency_s >= 0:
            self.latency.labels(topic, kind).observe(latency_s)

    def declare_topics(self, topics: Sequence[str]) -> None:
        """Export the bug counters of the consumed topics at 0 from the start: a series
        that first appears at 1 is no increase to Prometheus (``increase()`` needs two
        samples), so the alerts on a first INTERNAL_ERROR or unanswered record never fired
        for a worker's first one."""
        for topic in topics:
            self.dead_letters.labels(topic, "INTERNAL_ERROR")
            self.unanswered.labels(topic)

    def on_dead_letter(self, topic: str, code: str) -> None:
        self.dead_letters.labels(topic, code).inc()

    def on_unanswered(self, topic: str) -> None:
        self.unanswered.labels(topic).inc()

    def on_produce_retry(self, topic: str, error: str) -> None:
        self.produce_retries.labels(topic, error).inc()

    def on_truncated(self, model: str, count: int) -> None:
        self.truncated.labels(model).inc(count)

    def on_tokens(self, model: str, kind: str, tokens: int) -> None:
        self.tokens.labels(model, kind).inc(tokens)

    def on_train(
        self,
        classifier_id: str,
        examples: int,
        accuracy: float | None,
        *,
        partition: int | None = None,
    ) -> None:
        self.train_requests.inc()
        self.train_examples.inc(examples)
        if accuracy is None or self.classifier_series <= 0:
            return
        # one series per classifier: bounded, or one key creating ids without end would
        # grow every scrape (and Prometheus) with them; the least recently trained goes
        self.prequential.labels(classifier_id).set(accuracy)
        self._learned_on[classifier_id] = partition
        self._learned_on.move_to_end(classifier_id)
        while len(self._learned_on) > self.classifier_series:
            self._forget(next(iter(self._learned_on)))

    def on_rewrite(self, reason: str) -> None:
        self.rewrites.labels(reason).inc()

    def on_delete(self, classifier_id: str) -> None:
        # created-and-deleted ids would otherwise be exported for good, one series each
        self._forget(classifier_id)

    def on_train_partitions(self, partitions: set[int]) -> None:
        # the new owner of a moved partition reports its classifiers: a series left here
        # would be frozen at its last value and, summed or averaged, counted twice
        for classifier_id, partition in list(self._learned_on.items()):
            if partition is not None and partition not in partitions:
                self._forget(classifier_id)

    def on_consumer_lag(self, behind: Mapping[tuple[str, int], int]) -> None:
        held = {(topic, str(partition)): n for (topic, partition), n in behind.items()}
        for labels in self._lag_series - held.keys():  # another worker's to report now
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(*labels)
        for labels, n in held.items():
            self.consumer_lag.labels(*labels).set(n)
        self._lag_series = set(held)

    def _forget(self, classifier_id: str) -> None:
        self._learned_on.pop(classifier_id, None)
        with contextlib.suppress(KeyError):  # never trained on this worker
            self.prequential.remove(classifier_id)

    def on_batch(self, model: str, stats: BatchStats) -> None:
        self.batch_size.labels(model).observe(stats.items)
        self.batch_requests.labels(model).observe(stats.requests)
        self.batch_tokens.labels(model, "real").inc(stats.tokens)
        self.batch_tokens.labels(model, "padded").inc(stats.padded_tokens)
        self.embed_seconds.labels(model).observe(stats.seconds)

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
        self.model_info.labels(model).info({"source": source, "device": device, "dim": str(dim)})
        for lane, depth in queue_depths.items():  # each lane its own queue, full on its own
            label = lane_label(model, lane)
            self.queue_depth.labels(label).set_function(depth)
            if queue_capacity:
                self.queue_capacity.labels(label).set(queue_capacity)
        for lane, wait in (queue_waits or {}).items():
            label = lane_label(model, lane)
            self.queue_wait.labels(label).set_function(wait)
            self.queue_wait_limit.labels(label).set(queue_wait_limit_s)
        self.compute_streams.labels(model).set(streams)
        if image_streams:  # image batches are timed as <model>/image: their own denominator
            self.compute_streams.labels(lane_label(model, "image")).set(image_streams)

    def on_agent(
        self, topic: str, in_flight: Callable[[], int], oldest_s: Callable[[], float]
    ) -> None:
        self.in_flight.labels(topic).set_function(in_flight)
        self.oldest_request.labels(topic).set_function(oldest_s)

    def on_classifiers(self, count: Callable[[], int], loaded: Callable[[], bool]) -> None:
        self.classifiers.set_function(count)
        self.classifiers_loaded.set_function(lambda: float(loaded()))
        self._classifiers_loaded = loaded

    def on_state(self, state: str) -> None:
        self.state = state

    def on_heartbeat(self) -> None:
        self._beat = time.monotonic()

    # -- probes -----------------------------------------------------------------------

    def stalled_s(self) -> float:
        """Seconds since the last heartbeat (0 before the event loop runs)."""
        return 0.0 if self._beat is None else time.monotonic() - self._beat

    def liveness(self) -> tuple[bool, str]:
        """Alive unless the event loop is stuck; starting counts as alive (a model may take
        minutes to load: a startup probe or an initial delay covers that)."""
        stalled = self.stalled_s()
        if stalled > STALLED_AFTER_S:
            return False, f"event loop stalled for {stalled:.0f} s"
        return True, self.state

    def readiness(self) -> tuple[bool, str]:
        """Ready once the model is loaded, the worker has joined its group and read the
        classifier changelog, until it stops; never while its event loop is stuck."""
        alive, why = self.liveness()
        if not alive:
            return False, why
        if self.state == "ready" and not self._classifiers_loaded():
            return False, "reading the classifier changelog"
        return self.state == "ready", self.state

    # -- serving ----------------------------------------------------------------------

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics``, ``/livez`` and ``/readyz`` in a daemon thread (it answers
        while the event loop is stuck, so it can say so); return the port (``0`` picks
        one)."""
        metrics = make_wsgi_app(self.registry)
        probes = {"/livez": self.liveness, "/readyz": self.readiness}

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            probe = probes.get(environ.get("PATH_INFO", ""))
            if probe is None:
                return metrics(environ, start_response)  # type: ignore[no-any-return]
            ok, why = probe()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [f"{why}\n".encode()]

        server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics (probes: /livez, /readyz)", host, bound)
        return bound


class HttpMetrics:
    """ASGI middleware: HTTP requests by route template, method and status, and latency.

    The route is the matched template (``/v1/classifiers/{classifier_id}``), never the raw
    path, so ids do not explode the label set; unmatched paths count as ``other``.
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "shotstream_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "shotstream_http_request_duration_seconds",
            "HTTP request handling time",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "shotstream_http_requests_in_flight", "HTTP requests being served", registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.in_flight.dec()
            route = scope.get("route")
            # path_format: the template without converters ("{classifier_id:path}")
            name = getattr(route, "path_format", "other")
            method = str(scope.get("method", ""))
            if method not in _METHODS:  # the client picks it: one series per made-up name
                method = "other"
            self.requests.labels(name, method, str(status)).inc()
            self.latency.labels(name, method).observe(time.perf_counter() - start)
