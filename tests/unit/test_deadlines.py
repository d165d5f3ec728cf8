"""A request's deadline (the ``shotstream-deadline`` header the gateway sets to its reply
timeout): a worker that gets to it later answers DEADLINE_EXCEEDED instead of serving it
(training: test_train_handler.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from streams.agents import ClassifyHandler
from streams.auth import KeyRing
from streams.client import Answer
from streams.errors import ErrorCode, RequestError
from streams.gateway import Caller, Gateway, GatewayError
from streams.observer import Observer
from streams.records import before_deadline
from streams.service import ClassifyService
from streams.settings import Settings
from tests.conftest import hash_registry


class Output:
    settings = Settings()

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.headers: list[list[tuple[str, bytes]]] = []

    async def send(self, topic: str, key: str | None, value: bytes, *, headers: Any = ()) -> None:
        self.sent.append(orjson.loads(value))
        self.headers.append(list(headers))


class Service:
    def __init__(self) -> None:
        self.served: list[str] = []

    async def classify(self, request: Any, owner: str | None) -> dict[str, Any]:
        self.served.append(request.request_id)
        return {"request_id": request.request_id, "data": []}


def within(seconds: float) -> bytes:
    """A deadline header ``seconds`` from now."""
    return f"{time.time() + seconds:.3f}".encode()


def classify_event(
    rid: str, deadline: bytes | None, inputs: list[str] | None = None, model: str = "m"
) -> Any:
    body = {"request_id": rid, "model": model, "input": inputs or ["x"], "labels": ["a", "b"]}
    headers = [] if deadline is None else [("shotstream-deadline", deadline)]
    message = SimpleNamespace(
        topic="classify", partition=0, tp=("classify", 0), offset=0, key=rid.encode(),
        value=orjson.dumps(body), headers=headers, timestamp=None,
    )  # fmt: skip
    return SimpleNamespace(message=message, ack=lambda: None)


@pytest.mark.parametrize(
    ("deadline", "answer"),
    [
        (None, "served"),  # Kafka clients need not set one
        (lambda: within(60), "served"),
        (lambda: within(-1), ErrorCode.DEADLINE_EXCEEDED),
        (lambda: b"tomorrow", ErrorCode.INPUT_INVALID),
        (lambda: b"nan", ErrorCode.INPUT_INVALID),
    ],
)
def test_a_classify_request_past_its_deadline_is_shed_not_computed(
    deadline: Any, answer: str
) -> None:
    service, output = Service(), Output()
    handler = ClassifyHandler(
        Settings(), cast(Any, service), KeyRing(["k"]), cast(Any, output), Observer()
    )
    asyncio.run(handler(classify_event("r", deadline() if deadline else None)))
    [sent] = output.sent
    if answer == "served":
        assert service.served == ["r"]
        assert "error" not in sent
    else:
        assert service.served == []
        assert sent["error"]["code"] == answer
        assert "shotstream-deadline" in sent["error"]["detail"]


def test_the_gateway_sets_the_deadline_and_a_late_worker_is_a_504() -> None:
    """The record carries the reply timeout as a deadline; the gateway waits a little past
    it, so a request a worker learned just in time is answered, not a 504."""
    settings = Settings(api_keys="k", gateway={"reply_timeout_s": 0.2})
    gateway = Gateway(settings)
    assert gateway.reply_grace_s == pytest.approx(0.02)  # a tenth of a short timeout
    gateway.reply_grace_s = 1.0  # (2 s at most, for the default 30 s)
    sent: list[list[tuple[str, bytes]]] = []
    answer: dict[str, Any] = {"request_id": "r", "usage": {"total_tokens": 1}, "data": []}

    async def send(topic: str, body: dict[str, Any], **kw: Any) -> asyncio.Future[Answer]:
        sent.append(list(kw["headers"]))
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        # answered after the deadline but within the grace: not a 504
        asyncio.get_running_loop().call_later(0.2 + 0.5, future.set_result,
                                              Answer("predictions", answer))  # fmt: skip
        return future

    gateway.client.send = send  # type: ignore[method-assign]
    caller = Caller(owner="o", authorization="Bearer k", bucket="b")
    before = time.time()
    got, _ = asyncio.run(gateway.ask("t", {}, key="r", caller=caller))
    assert got == answer
    headers = dict(sent[0])
    assert before + 0.2 - 0.001 <= float(headers["shotstream-deadline"]) <= time.time()  # ms
    assert headers["authorization"] == b"Bearer k"
    late = RequestError(ErrorCode.DEADLINE_EXCEEDED, "x")
    assert GatewayError.from_request_error(late).status == 504


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (b"soon", "seconds since the epoch"),
        (str(int(time.time() * 1000)).encode(), "milliseconds"),
        (None, "null value"),
        (b"", "empty or null value"),
    ],
)
def test_a_deadline_that_is_no_time_in_seconds_is_refused(
    value: bytes | None, problem: str
) -> None:
    """A deadline in milliseconds (Kafka's own unit) read as seconds lies in the year 50000:
    it was taken, and the request served as if it had none. A header with no value (Kafka
    allows null) was taken for no header: the request was served with no deadline."""
    from streams.errors import ErrorCode, RequestError
    from streams.records import DEADLINE_HEADER, deadline_of

    with pytest.raises(RequestError) as refused:
        deadline_of([(DEADLINE_HEADER, value)])
    assert refused.value.code == ErrorCode.INPUT_INVALID
    assert problem in refused.value.detail
    assert deadline_of([(DEADLINE_HEADER, str(time.time() + 30).encode())]) is not None


def slowed_handler(
    tmp_path: Path,
    pause: Callable[[Any], object],
    observer: Observer | None = None,
    **batching: Any,
) -> tuple[ClassifyHandler, ClassifyService, Output, list[int]]:
    """A classify handler on the real service and batcher, with the hash model calling
    ``pause(batch)`` before each batch; also the sizes of the batches it embedded."""
    registry = hash_registry(tmp_path)
    encoder = registry.load(registry.resolve(None))
    embedded: list[int] = []
    embed_ids = encoder.embed_ids

    def slow(batch: Any) -> Any:
        embedded.append(len(batch))
        pause(batch)
        return embed_ids(batch)

    encoder.embed_ids = slow  # type: ignore[method-assign]
    batching = {"max_wait_ms": 1, "compute_streams": 1, **batching}
    settings = Settings(data_dir=tmp_path, batching=batching)
    output = Output()
    service = ClassifyService(settings, registry, observer or Observer())
    handler = ClassifyHandler(settings, service, KeyRing(["k"]), cast(Any, output), Observer())
    return handler, service, output, embedded


def test_a_deadline_passing_while_inputs_wait_for_the_model_cuts_them_off(
    tmp_path: Path,
) -> None:
    """The deadline was checked only when a record was taken: a saturated worker then
    embedded, under a backlog, nearly every request in its last seconds and answered it
    after its caller had given up (a reviewer's flood: 82 % of predictions late). Now a
    request whose deadline passes while its inputs wait behind another request's batch
    is answered DEADLINE_EXCEEDED, and its inputs are never embedded."""
    busy = threading.Event()  # set on the model's thread

    def hold(_: Any) -> None:
        busy.set()
        time.sleep(0.5)  # the model busy with the first request's batch

    handler, service, output, embedded = slowed_handler(tmp_path, hold)

    async def go() -> None:
        first = asyncio.ensure_future(
            handler(classify_event("slow", None, ["a", "b", "c"], "hash"))
        )
        await asyncio.to_thread(busy.wait, 10)  # its batch (inputs and labels) holds the model
        await handler(classify_event("late", within(0.2), ["e"], "hash"))
        await first
        await service.aclose()

    asyncio.run(go())
    answers = {sent["request_id"]: sent for sent in output.sent}
    assert "error" not in answers["slow"]
    assert answers["late"]["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED
    assert "while it waited for the model" in answers["late"]["error"]["detail"]
    assert sum(embedded) == 3 + 2  # the first request's inputs and the labels: not 'e'
    assert list(answers) == ["late", "slow"]  # answered at its deadline, not after


def answered_behind_a_backlog(
    tmp_path: Path, events: list[Any], **batching: Any
) -> tuple[dict[str, dict[str, Any]], list[int], dict[str, dict[str, bytes]]]:
    """``events`` handled in turn while 10 requests of 6 inputs wait for the model (20 ms
    an input, batches of 8: about 1.2 s of work); the answers by request id, in the order
    they were sent, the batch sizes embedded, and the answers' record headers."""
    handler, service, output, embedded = slowed_handler(
        tmp_path,
        lambda batch: time.sleep(0.02 * len(batch)),
        max_batch_size=8,
        **batching,
    )

    async def go() -> None:
        await handler(classify_event("warm", None, ["a", "b", "c"], "hash"))  # model timed
        calls = len(embedded)
        queued = asyncio.gather(
            *(
                handler(classify_event(f"busy{r}", None, [f"{r} {k}" for k in range(6)], "hash"))
                for r in range(10)
            )
        )
        while len(embedded) == calls:  # noqa: ASYNC110 - their first batch started
            await asyncio.sleep(0.005)
        for event in events:
            await handler(event)
        await queued
        await service.aclose()

    asyncio.run(go())
    answers = {sent["request_id"]: sent for sent in output.sent}
    assert all("error" not in answers[f"busy{r}"] for r in range(10))
    headers = {
        sent["request_id"]: dict(told)
        for sent, told in zip(output.sent, output.headers, strict=True)
    }
    return answers, embedded, headers


def test_a_request_the_model_queue_would_keep_past_its_deadline_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """Under a backlog, requests reached the worker with seconds left; taken in, each held
    its place until its deadline and was cut off unanswered (a measured flood: nothing
    answered in time for its last 110 s). Now a request that the inputs queued ahead of
    it would keep past its deadline is refused before it queues any, and one with time
    enough is served. (Requests of up to a batch of inputs, queued one behind another.)"""
    answers, embedded, _headers = answered_behind_a_backlog(
        tmp_path,
        [
            classify_event("doomed", within(0.5), ["d", "e"], "hash"),
            classify_event("hopeful", within(30), ["f"], "hash"),
        ],
    )
    assert answers["doomed"]["error"]["code"] == ErrorCode.DEADLINE_EXCEEDED
    assert "could not be answered before its deadline" in answers["doomed"]["error"]["detail"]
    assert "error" not in answers["hopeful"]
    assert sum(embedded) == 3 + 2 + 60 + 1  # the doomed request's inputs never were
    assert list(answers).index("doomed") < list(answers).index("busy9")  # at once


def test_a_request_with_a_deadline_behind_more_than_the_queue_wait_limit_is_refused(
    tmp_path: Path,
) -> None:
    """Refused only at its deadline, a request answered in time under a flood had waited
    most of it (26-27 s of the gateway's 30). With SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S
    below the work queued ahead, a request with a deadline far off is refused at once
    (SERVICE_UNAVAILABLE, HTTP 503: retry later), its inputs never embedded, while one
    without a deadline (a Kafka producer's) waits its turn and is served. The refusal
    says when to retry: the work queued past the limit, in whole seconds (at least 1),
    in a header (the gateway's Retry-After); other answers have none."""
    answers, embedded, headers = answered_behind_a_backlog(
        tmp_path,
        [
            classify_event("hopeful", within(30), ["f", "g"], "hash"),
            classify_event("patient", None, ["h"], "hash"),
        ],
        max_queue_wait_s=0.3,
    )
    refusal = answers["hopeful"]["error"]
    assert refusal["code"] == ErrorCode.SERVICE_UNAVAILABLE
    assert "overloaded" in refusal["detail"]
    assert "SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S" in refusal["detail"]
    assert "error" not in answers["patient"]
    assert sum(embedded) == 3 + 2 + 60 + 1  # the refused request's inputs never were
    assert list(answers).index("hopeful") < list(answers).index("busy9")  # at once
    assert list(headers["hopeful"]) == ["shotstream-retry-after"]
    # about 1.2 s of work less the 0.3 s allowed, rounded up (the model's measured time)
    assert 1 <= int(headers["hopeful"]["shotstream-retry-after"]) <= 5
    assert headers["patient"] == {}


def test_the_model_queue_wait_and_its_limit_are_exported(tmp_path: Path) -> None:
    """Operators see the wait a request would have before refusals start: the estimate
    the limit is held against, and the limit, per model."""
    from prometheus_client import CollectorRegistry

    from streams.metrics import PrometheusObserver

    observer = PrometheusObserver(CollectorRegistry())
    handler, service, _output, _embedded = slowed_handler(
        tmp_path, lambda batch: time.sleep(0.02 * len(batch)), observer, max_queue_wait_s=7.5
    )
    gauge = observer.registry.get_sample_value

    async def go() -> tuple[float | None, float | None]:
        await handler(classify_event("one", None, ["a", "b", "c"], "hash"))
        idle = gauge("shotstream_batcher_queue_wait_seconds", {"model": "hash"})
        queued = asyncio.ensure_future(
            handler(classify_event("many", None, [f"t{k}" for k in range(40)], "hash"))
        )
        await asyncio.sleep(0.1)  # its first batch computing, the rest queued
        busy = gauge("shotstream_batcher_queue_wait_seconds", {"model": "hash"})
        await queued
        await service.aclose()
        return idle, busy

    idle, busy = asyncio.run(go())
    assert idle is not None
    assert busy is not None
    assert 0 < idle < busy  # one input's time, then about 40 inputs' time
    limit = gauge("shotstream_batcher_queue_wait_limit_seconds", {"model": "hash"})
    assert limit == 7.5


def test_a_timeout_inside_the_work_is_not_taken_for_the_deadline() -> None:
    async def times_out() -> None:
        raise TimeoutError("an image fetch of its own")

    with pytest.raises(TimeoutError, match="image fetch"):
        asyncio.run(before_deadline(times_out(), time.time() + 60))
