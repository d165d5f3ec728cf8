"""The train agent: labelled examples in, classifier updates and train responses out.

Per record: validate and authenticate, embed the examples through the shared
micro-batcher (overlapping with other records), then — in partition order — read the
classifier from the table, skip it if this source offset was already applied (a replay
after a crash), learn, write the table (RocksDB + changelog) and answer on
``train-results``. Examples are never stored: only the weights they produced.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import faust
import numpy as np
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import murmur2
from faust.types import Message, TableT

from state.classifiers import (
    LearnerSettings,
    already_applied,
    apply_examples,
    default_learner,
    replayed_version,
)
from state.records import (
    ClassifierRecord,
    RecordFormatError,
    decode_record,
    encode_record,
    is_older,
    read_ownership,
    record_lineage,
)
from streams.agents import Turn, encode, latency_of, send_dead_letter
from streams.auth import KeyRing, header_value, owner_or_refusal
from streams.errors import ErrorCode, RequestError, to_request_error
from streams.observer import Observer
from streams.producer import OutputProducer
from streams.records import (
    DeleteRequest,
    TrainRequest,
    UsageRequest,
    before_deadline,
    deadline_of,
    decode_json_object,
    is_late,
    parse_train,
    refuse_late,
    request_id_of,
)
from streams.replica import ClassifierReplica
from streams.service import (
    ClassifyService,
    check_embedded,
    check_modalities,
    classifiers_loaded,
)
from streams.settings import Settings

log = logging.getLogger(__name__)


REDELIVERY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Waits before writing a classifier again whose changelog record the broker did not take
(then every 10 s while it still does not)."""


async def delivered(
    sent: Awaitable[Any] | None, again: Callable[[], Awaitable[Any] | None] | None = None
) -> None:
    """Wait for a changelog record's delivery (``None``: a table that does not say, as in
    unit tests). Shielded: a drain's cancel must not cancel the delivery faust reports on.

    With ``again`` (write the classifier's current state once more; its delivery, or
    ``None`` for nothing left to write), a record the broker did not take (the producer
    timed out, or Kafka calls the error retriable: the broker away, a leader moving) is
    written again until one lands, the request unanswered and unacknowledged meanwhile: a
    drain cancels it and Kafka delivers it again. Before, the request got an
    ``INTERNAL_ERROR`` dead letter although this worker kept the update: a client retry
    learned the examples twice, and a failover before the next write lost them."""
    attempt = 0
    while sent is not None:
        try:
            await asyncio.shield(sent)
            return
        except KafkaError as exc:
            if again is None or not (isinstance(exc, KafkaTimeoutError) or exc.retriable):
                raise
            wait = REDELIVERY_BACKOFF_S[min(attempt, len(REDELIVERY_BACKOFF_S) - 1)]
            log.warning(
                "the broker did not take a changelog record (%s); writing the classifier "
                "again in %g s, its request unanswered until one lands",
                type(exc).__name__,
                wait,
            )
            attempt += 1
            await asyncio.sleep(wait)
            sent = again()


def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record (murmur2, as the
    Java client and aiokafka).

    >>> [key_partition(k, 4) for k in (b"a", b"classifier-1", b"")]
    [0, 3, 1]
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def source_of(message: Message) -> str:
    """The ``"topic:partition"`` a record's applied offsets are kept under."""
    return f"{message.topic}:{message.partition}"


INLINE_UPDATES = 4096
"""A train request with at most this many example passes (examples x ``num_iters``,
~25 ms) is learned on the event loop; a larger one in a thread, so that it does not stall
the worker's other requests: 1,024 examples x 1,000 passes take ~6 s of Python-level PA
steps (the thread shares the GIL, so the loop still runs every few milliseconds)."""

_MODEL_DEPENDENT = frozenset({ErrorCode.INPUT_INVALID, ErrorCode.MODEL_NOT_AVAILABLE})
"""Refusals of a train request that depend on the classifier's model (an image for a
text-only model, a model no longer loaded)."""

_REFUSED_IN_TURN = frozenset({ErrorCode.DEADLINE_EXCEEDED, ErrorCode.SERVICE_UNAVAILABLE})
"""Refusals of a train request's embedding before its turn that are answered in its turn,
after the replay check: its deadline passed or could not be met, or the worker is busy."""

_CREATED_MEMORY_S = 60.0
"""How long a create counts toward its owner's limit before the replica must have it."""


class TrainHandler:
    """One train record → one train response or one dead letter."""

    def __init__(
        self,
        settings: Settings,
        service: ClassifyService,
        table: TableT[bytes, bytes],
        replica: ClassifierReplica,
        keys: KeyRing,
        output: OutputProducer,
        observer: Observer,
        learner_settings: LearnerSettings | None = None,
        partition_count: Callable[[str], int | None] = lambda _topic: None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.table = table
        self.replica = replica
        self.keys = keys
        self.output = output
        self.observer = observer
        self.learner_settings = learner_settings
        """Settings for every new classifier; ``None``: by the model's modality."""
        self.partition_count = partition_count
        """Partitions of a topic by name (Kafka's metadata), to check that a record is in
        its key's partition; ``None``: unknown, not checked."""
        self.owned: set[int] = set()
        """The train partitions this worker owns (set on each rebalance)."""
        self._created: dict[str, dict[str, float]] = {}
        """owner → classifiers this worker created, not yet seen by the replica → when."""
        self._learning = ThreadPoolExecutor(1, thread_name_prefix="learn")
        """Large requests learn here, one at a time: not in asyncio's default pool, which
        also resolves image hosts and loads models."""
        self.results_topic = settings.topic("train-results")
        self.errors_topic = settings.topic("errors")

    def _check_partition(self, message: Message, classifier_id: str) -> None:
        """A classifier's state lives in its key's partition: a record elsewhere (another
        partitioner, a partition named by hand) would read and write a second, separate
        classifier under the same id, and could take over someone's private id."""
        try:
            count = self.partition_count(message.topic)
        except Exception:  # metadata not at hand: not checked, never a failed record
            log.debug("no partition count for %s", message.topic, exc_info=True)
            return
        if not count or message.key is None:
            return
        expected = key_partition(bytes(message.key), count)
        if message.partition != expected:
            raise RequestError(
                ErrorCode.INPUT_INVALID,
                f"train record for classifier {classifier_id!r} is on partition "
                f"{message.partition} of {message.topic}, but its key belongs on partition "
                f"{expected} of {count}: a classifier's records must all be on its key's "
                "partition, as the Kafka default partitioner (murmur2: the Java client, "
                "aiokafka, the gateway and the CLI) puts them; librdkafka-based clients "
                "need partitioner=murmur2_random, and a partition must not be named",
            )

    def _check_home(
        self, classifier_id: str, existing: ClassifierRecord | None, owner: str, partition: int
    ) -> None:
        """Refuse a record for a classifier whose state lives in another partition: the
        train topic's partitions were changed. Learned here, it would start a second,
        empty classifier under the id, which every replica would then serve."""
        home = self.replica.partitions.get(classifier_id)
        if home is None or home == partition or existing is None:
            return
        if existing.owner != owner:
            self._refuse_other(classifier_id, existing.access)
        raise RequestError(
            ErrorCode.INTERNAL_ERROR,
            f"classifier {classifier_id!r} lives in partition {home} of the classifier "
            f"changelog, but its train records now arrive on partition {partition}: the "
            "train topic's partition count was changed after classifiers were made. "
            "Restore it (the classifiers are intact), or create classifiers on new topics",
        )

    def _read(self, classifier_id: str, owner: str) -> ClassifierRecord | None:
        raw = self.table.get(classifier_id.encode())
        if raw is None:
            return None
        try:
            return decode_record(raw)
        except RecordFormatError as exc:
            # unreadable (weights gone NaN, a newer format): others are answered by its
            # header as for any classifier of its owner, so the error does not tell them
            # a private id exists; its owner learns what to do
            record_owner, access = self._ownership(raw)
            if record_owner != owner:
                self._refuse_other(classifier_id, access)
            raise RecordFormatError(
                f"classifier {classifier_id!r} is stored in a form this worker cannot read "
                f"({exc}); delete it and train it again"
            ) from exc

    def _write(self, record: ClassifierRecord) -> Awaitable[Any] | None:
        """Store ``record``; returns its changelog record's delivery (``None`` for a table
        that does not say, as in unit tests)."""
        self.table[record.classifier_id.encode()] = encode_record(record)
        return self._last_sent()

    def _write_again(self, classifier_id: str) -> Awaitable[Any] | None:
        """Write the classifier's current state (this update, or a later one that holds
        it) once more; its delivery. ``None`` when it is gone (deleted since)."""
        key = classifier_id.encode()
        raw = self.table.get(key)
        if raw is None:
            return None
        self.table[key] = raw
        return self._last_sent()

    def _delete_again(self, classifier_id: str, partition: int) -> Awaitable[Any] | None:
        """Send the tombstone of a delete once more; its delivery. ``None`` when the id was
        made again since (that classifier's own writes follow). Without it, a tombstone
        the broker did not take was an ``INTERNAL_ERROR`` while this worker's table had
        dropped the classifier: other workers kept serving it, a failover brought it
        back, and the client's retry was answered not found."""
        key = classifier_id.encode()
        if key in self.table:
            return None
        self.table.send_changelog(partition, key, None)
        return self._last_sent()

    def _last_sent(self) -> Awaitable[Any] | None:
        """The delivery of the changelog record the table write just made."""
        return getattr(self.table, "last_sent", None)

    async def __call__(self, event: faust.EventT[Any], turn: Turn) -> None:
        message = event.message
        request_id: str | None = None
        try:
            body = decode_json_object(message.value, message.headers)
            request_id = request_id_of(body, message.key)
            request = parse_train(
                body, self.settings.limits, request_id=request_id, key=message.key
            )
            if message.key is None:
                # the key picks the partition: keyless records of one classifier would spread
                # over partitions, be applied by different workers at once and lose updates
                raise RequestError(
                    ErrorCode.INPUT_INVALID,
                    f"train records must be keyed by their classifier_id "
                    f"({request.classifier_id!r}): the key keeps all of a classifier's "
                    "records on one partition, in order",
                )
            if not isinstance(request, DeleteRequest):
                # a delete finds nothing off its key's partition but what was put there
                # before this check (by a librdkafka client, say): the owner may remove it
                self._check_partition(message, request.classifier_id)
            if isinstance(request, UsageRequest):
                # a worker's report, not a caller's request: no key, and no answer
                async with turn:
                    sent = self._use(request, message)
                await delivered(sent, functools.partial(self._write_again, request.classifier_id))
                return
            # counted as classify requests are, so an alert on requests without answers
            # covers training too (usage reports are workers' own, and get no answer)
            kind, examples = (
                ("delete", 0)
                if isinstance(request, DeleteRequest)
                else ("train", len(request.examples))
            )
            self.observer.on_request(message.topic, kind, examples)
            owner = owner_or_refusal(
                self.keys, header_value(message.headers, "authorization"), "few-shot training"
            )
            deadline = deadline_of(message.headers)
            if isinstance(request, DeleteRequest):
                async with turn:
                    refuse_late(deadline)  # its caller was told it timed out: not done
                    response = self._delete(request, owner)
                    sent = self._last_sent()
                again = functools.partial(
                    self._delete_again, request.classifier_id, message.partition
                )
                await delivered(sent, again)
            else:
                response = await self._train(request, owner, message, turn, deadline)
            # inside the try: an answer over the size limit gets its dead letter (the
            # examples were learned all the same) instead of holding the partition
            await self.output.send(self.results_topic, request.classifier_id, encode(response))
        except Exception as exc:  # every failure becomes a dead letter
            await send_dead_letter(
                self.output, self.errors_topic, self.observer, event, request_id, exc
            )
            return
        self.observer.on_response(message.topic, kind, 0, latency_of(message))  # no predictions

    async def _train(
        self,
        request: TrainRequest,
        owner: str,
        message: Message,
        turn: Turn,
        deadline: float | None,
    ) -> dict[str, Any]:
        source, offset = source_of(message), message.offset
        partition, timestamp = message.partition, message.timestamp
        # the per-key limit counts what the replica holds
        await classifiers_loaded(self.replica, self.settings.limits.changelog_wait_s)
        existing = self.replica.get(request.classifier_id) or self._read(
            request.classifier_id, owner
        )
        self._check_home(request.classifier_id, existing, owner, partition)
        refused = False
        if existing is not None and existing.owner != owner:
            # do not embed for someone else's classifier: its model must not show through
            # (by how the examples fail), nor cost this worker compute. The refusal itself
            # waits for this record's turn: the replica may lag (a delete just before)
            try:
                self._authorize(request, existing, owner)
            except RequestError:
                refused = True
        # an update only of an id not seen: most likely not found in turn either, so
        # nothing is embedded ahead (a record before it may still create it: then in turn)
        refused = refused or (existing is None and not request.create)
        # its caller has stopped waiting: answered in turn, unembedded (unless a replay)
        refused = refused or is_late(deadline)
        model = request.model or (existing.model if existing else None)
        embedded = None
        deferred: RequestError | None = None
        if model and not refused:
            try:
                embedded = await before_deadline(self._embed(request, model), deadline)
            except Exception as exc:
                # the model came from state read before this record's turn, and records
                # before it may delete the classifier and create it with another model: a
                # refusal that depends on the model is decided in turn, by its model. One
                # for its deadline (passed, or the model's queue would keep it past it) or
                # by a busy worker is answered in turn, unlearned: a replay is still
                # answered (it was learned, and a retry of a refusal would learn it twice)
                error = to_request_error(exc)
                if error.code in _REFUSED_IN_TURN:
                    deferred = error
                elif request.model is not None or error.code not in _MODEL_DEPENDENT:
                    raise
        async with turn:
            record = self._read(request.classifier_id, owner)
            # a replay is answered only to the owner; anyone else is refused by _authorize
            if (
                record is not None
                and record.owner == owner
                and already_applied(record, source, offset, timestamp)
            ):
                log.info(
                    "train record %s@%d already applied to %s: answering again",
                    source,
                    offset,
                    record.classifier_id,
                )
                # re-assert: the changelog may have lost it. In turn: rare; answered once in
                again = functools.partial(self._write_again, record.classifier_id)
                await delivered(self._write(record), again)
                return self._response(
                    request,
                    record,
                    replayed_version(record, source, offset),
                    embedded[2] if embedded else 0,
                )
            if record is not None and record.applied.get(source, -1) >= offset:
                log.warning(
                    "train record %s@%d is at or behind %s's applied offset %d but is not one "
                    "it applied (a failed request redelivered, or a recreated train topic): "
                    "taking it as new",
                    source,
                    offset,
                    record.classifier_id,
                    record.applied[source],
                )
            # not learned once its caller was told it timed out (a 504): a retry must not
            # learn the examples twice
            refuse_late(deadline)
            created = record is None
            record = self._authorize(request, record, owner)
            if deferred is not None:  # after the refusals no retry gets past
                raise deferred
            # the operator's limit now, not the one when the classifier was made (raising
            # SHOTSTREAM_LIMITS__MAX_CLASSES reached new classifiers only)
            record.hyper["max_classes"] = self.settings.limits.max_classes
            if embedded is None or embedded[3] != record.model:
                # rare: the model changed. Under the deadline, as the embedding before the
                # turn: one that would keep the caller past it is refused, unlearned
                embedded = await before_deadline(self._embed(request, record.model), deadline)
            vectors, label_vectors, tokens, _model = embedded
            if record.version == 0 and not record.labels:  # new: its size is the model's
                record.dim = int(vectors.shape[1])
                record.weights = np.zeros((0, record.dim), dtype=np.float32)
            learn = functools.partial(
                apply_examples,
                record,
                vectors,
                [e.label for e in request.examples],
                num_iters=request.num_iters,
                label_vectors=label_vectors,
                source=source,
                offset=offset,
                now=time.time(),
                timestamp=timestamp,
            )  # ClassLimitError, NonFiniteInputError: to_request_error gives their codes
            # the record is this turn's own copy: nothing else reads or writes it meanwhile
            # (if the request is cancelled, the thread finishes on a copy never written)
            if len(request.examples) * request.num_iters <= INLINE_UPDATES:
                prior = learn()
            else:
                prior = await asyncio.get_running_loop().run_in_executor(self._learning, learn)
            if request.access is not None:
                record.access = request.access
            sent = self._write(record)
            if created:
                self._created.setdefault(owner, {})[record.classifier_id] = time.monotonic()
        # answered (and so acknowledged, and committed) only once its changelog record is
        # in: faust's flush before a commit can miss a record it is still handing to the
        # client, and a partition's next owner restores from the changelog
        await delivered(sent, functools.partial(self._write_again, record.classifier_id))
        self.observer.on_train(
            record.classifier_id, len(prior), record.prequential_accuracy, partition=partition
        )
        self.observer.on_tokens(record.model, "train", tokens)
        return self._response(request, record, record.version, tokens)

    def _authorize(
        self, request: TrainRequest, record: ClassifierRecord | None, owner: str
    ) -> ClassifierRecord:
        if record is None:
            if not request.create:
                # an update only (the gateway's, as in Jina's API): a mistyped id must
                # not become a new classifier. Not found, as for someone else's private
                # classifier: the two must answer alike, or the code would tell whether
                # a private id exists
                raise RequestError(
                    ErrorCode.CLASSIFIER_NOT_FOUND,
                    f"classifier {request.classifier_id!r} not found",
                )
            if request.model is None:
                raise RequestError(
                    ErrorCode.CLASSIFIER_NOT_FOUND,
                    f"classifier {request.classifier_id!r} not found (to create it, "
                    "send a 'model' with the first examples)",
                )
            limit = self.settings.limits.max_classifiers_per_key
            others = {r.classifier_id for r in self.replica.owned_by(owner)}
            others |= self._created_unseen(owner)
            others.discard(request.classifier_id)
            if len(others) >= limit:
                raise RequestError(
                    ErrorCode.AUTHZ_RESOURCE_LIMIT_EXCEEDED,
                    f"this API key already owns {len(others)} classifiers (limit {limit})",
                )
            spec = self.service.registry.resolve(request.model)
            record = ClassifierRecord.new(
                request.classifier_id,
                model=spec.name,
                owner=owner,
                access=request.access or "private",
                dim=0,
                now=time.time(),
            )
            settings = self.learner_settings or default_learner(spec.modality)
            record.hyper.update(settings.as_dict())
            return record
        if record.owner != owner:
            self._refuse_other(request.classifier_id, record.access)
        if request.model is not None:
            spec = self.service.registry.resolve(request.model)
            if spec.name != record.model:
                raise RequestError(
                    ErrorCode.INPUT_INVALID,
                    f"classifier {request.classifier_id!r} uses model {record.model!r}, "
                    f"not {spec.name!r}",
                )
        return record

    def restate(self, classifier_id: str, partition: int) -> None:
        """The replica skipped a stale write of ``classifier_id`` (see
        :func:`state.records.is_older`), or one after its delete. If this worker owns the
        classifier, its state (or its delete) goes to the changelog again: compaction keeps
        only a key's last record, which would be the stale one."""
        if partition not in self.owned or not self.replica.loaded.is_set():
            return
        tables = getattr(getattr(self.table, "app", None), "tables", None)  # faust's
        if tables is not None and not tables.actives_ready:
            return  # still restoring: the table may hold what an old data directory held
        key = classifier_id.encode()
        raw = self.table.get(key)
        seen = self.replica.get(classifier_id)
        if seen is None and self.replica.was_deleted(classifier_id, record_lineage(raw)):
            # a stale write of a classifier deleted here: the delete goes again, or
            # compaction would keep the write and a restore bring the classifier back. A
            # table restored (as a standby) with the write over the delete drops it too
            log.warning("classifier %s: deleting it again", classifier_id)
            if raw is not None:
                del self.table.data[key]
            self.table.send_changelog(partition, key, None)
            self.observer.on_rewrite("after_delete")
            return
        if raw is None or seen is None:
            return
        try:
            mine = decode_record(raw)
        except RecordFormatError:
            return
        if mine.lineage[0] != seen.lineage[0] or is_older(mine.lineage, seen.lineage):
            return  # another classifier under the id, or an older copy: not this worker's
        log.warning("classifier %s: writing its version %d again", classifier_id, mine.version)
        self.table.send_changelog(partition, key, raw)
        self.observer.on_rewrite("stale_write")

    def _created_unseen(self, owner: str) -> set[str]:
        """Classifiers this worker created for ``owner`` that the replica has not read back
        yet (a burst of creates must not all pass the limit check meanwhile)."""
        mine = self._created.get(owner, {})
        now = time.monotonic()
        for cid, at in list(mine.items()):
            if self.replica.get(cid) is not None or now - at > _CREATED_MEMORY_S:
                del mine[cid]
        return set(mine)

    async def _embed(
        self, request: TrainRequest, model: str
    ) -> tuple[np.ndarray, dict[str, np.ndarray] | None, int, str]:
        """Example vectors, label vectors (warm start; ``None`` for an image-only model,
        which has no text tower to embed labels), usage tokens, the model's name."""
        spec = self.service.registry.resolve(model)
        items = tuple(e.item for e in request.examples)
        check_modalities(items, spec)
        runtime = await self.service.runtime(spec)
        embedded = await self.service.embed_items(runtime, items)
        by_label = None
        if runtime.text is not None:
            labels = list(dict.fromkeys(e.label for e in request.examples))
            label_vectors = await runtime.labels(labels)
            check_embedded(label_vectors.vectors, spec.name, "label", labels)
            by_label = dict(zip(labels, label_vectors.vectors, strict=True))
        return embedded.vectors, by_label, embedded.tokens * request.num_iters, spec.name

    def _use(self, request: UsageRequest, message: Message) -> Awaitable[Any] | None:
        """Add a worker's usage report to its classifier, once; nothing for one deleted
        since, or one this worker cannot read. Neither the version, ``updated_at`` nor the
        train requests' applied offsets change: the last report added per source is kept
        apart (``hyper["_used"]``, offset and timestamp), and a report at or behind it in
        both is a redelivery (on a train topic made anew, offsets start again but times go
        on). A report's time is at most now, so no clock error lists a year 33658."""
        raw = self.table.get(request.classifier_id.encode())
        if raw is None:
            return None
        try:
            record = decode_record(raw)
        except RecordFormatError:
            return None  # its owner learns of that from its next train request
        source, offset = source_of(message), message.offset
        stamp = float(message.timestamp or 0.0)
        last = record.hyper.setdefault("_used", {}).get(source)
        if isinstance(last, list) and len(last) == 2 and offset <= last[0] and stamp <= last[1]:
            return None
        record.hyper["_used"][source] = [offset, stamp]
        record.used_number += request.count
        record.used_at = max(record.used_at or 0.0, min(request.used_at, time.time()))
        return self._write(record)

    def _delete(self, request: DeleteRequest, owner: str) -> dict[str, Any]:
        raw = self.table.get(request.classifier_id.encode())
        record_owner, access = self._ownership(raw)
        if record_owner != owner:
            self._refuse_other(request.classifier_id, access)
        del self.table[request.classifier_id.encode()]
        self._created.get(owner, {}).pop(request.classifier_id, None)
        # this worker reads its delete at once, and knows the classifier if a stale write
        # of it comes later (also when its replica had not read the classifier yet)
        self.replica.forget(request.classifier_id, record_lineage(raw))
        self.observer.on_delete(request.classifier_id)
        return {
            "request_id": request.request_id,
            "classifier_id": request.classifier_id,
            "deleted": True,
        }

    @staticmethod
    def _refuse_other(classifier_id: str, access: str) -> NoReturn:
        """Refuse a key that does not own the classifier: a private one is not found, as
        one that does not exist (the code must not tell whether a private id exists)."""
        if access != "public":
            raise RequestError(
                ErrorCode.CLASSIFIER_NOT_FOUND, f"classifier {classifier_id!r} not found"
            )
        raise RequestError(
            ErrorCode.AUTHZ_ACCESS_DENIED,
            f"classifier {classifier_id!r} is public, but only its owner may change it",
        )

    @staticmethod
    def _ownership(raw: bytes | None) -> tuple[str | None, str]:
        """``(owner, access)`` of a stored record, from its header alone: a record no longer
        readable in full (weights gone NaN, a newer format) still tells its owner, who may
        delete it."""
        return (None, "private") if raw is None else read_ownership(raw)

    @staticmethod
    def _response(
        request: TrainRequest, record: ClassifierRecord, version: int, tokens: int
    ) -> dict[str, Any]:
        return {
            "request_id": request.request_id,
            "classifier_id": record.classifier_id,
            "num_samples": len(request.examples),
            "version": version,
            "labels": list(record.labels),
            "prequential_accuracy": record.prequential_accuracy,
            "usage": {"total_tokens": tokens, "prompt_tokens": tokens},
        }
