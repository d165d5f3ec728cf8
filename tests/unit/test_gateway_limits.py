"""The gateway's defences of its own resources, without Kafka: lists bounded before the
schema reads them, the key checked before the body is read, stalled uploads answered,
and the budget charged for what the workers did (answers that came too late included)
and for nothing else (requests refused before Kafka).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.types import Message

import streams.gateway as gateway_module
from streams.auth import hash_key
from streams.client import Answer
from streams.gateway import Gateway, create_app
from streams.settings import Settings
from tests.unit.test_gateway_http import KEY, ZERO_SHOT, Http, assert_error, auth, client_for

MANY = 20_000
"""Items in a list far over its limit (the schema would make tens of thousands of errors)."""


@pytest.fixture
def http() -> Http:
    return client_for()


# -- lists over their limits never reach the schema ----------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "code", "detail"),
    [
        (
            "/v1/classify",
            {"labels": ["a"], "input": [1] * MANY},
            "INPUT_LIMIT_EXCEEDED",
            f"{MANY} inputs given, at most 1024 allowed",
        ),
        (
            "/v1/train",
            {"model": "m", "input": [1] * MANY},
            "INPUT_LIMIT_EXCEEDED",
            f"{MANY} inputs given, at most 1024 allowed",
        ),
        (
            "/v1/classify",
            {"labels": [1] * MANY, "input": ["x"]},
            "INPUT_LABEL_LIMIT_EXCEEDED",
            f"{MANY} labels given, at most 256 allowed",
        ),
        (
            "/v1/classify",
            {"labels": {f"g{i}": [1] for i in range(MANY)}, "input": ["x"]},
            "INPUT_LABEL_LIMIT_EXCEEDED",
            f"{MANY} label groups given, at most 8 allowed",
        ),
        (
            "/v1/classify",
            {"labels": {"g": [1] * MANY}, "input": ["x"]},
            "INPUT_LABEL_LIMIT_EXCEEDED",
            f"group 'g' has {MANY} labels, at most 64 allowed",
        ),
    ],
)
def test_a_list_over_its_limit_is_refused_before_the_schema_reads_its_items(
    http: Http, path: str, body: dict[str, Any], code: str, detail: str
) -> None:
    """Pydantic makes an error per wrong item per union branch, on the event loop (a
    million items: 84 s and 5 GB only to be told they are too many): the limit is checked
    first, and answered as the workers' parser answers a list over it."""
    refused = assert_error(http.post(path, json=body, headers=auth()), 400, code)
    assert refused["detail"] == detail
    # still after the key: a caller without one learns nothing about the body
    assert_error(http.post(path, json=body), 401, "AUTH_MISSING_API_KEY")


def test_repeated_labels_still_count_once(http: Http) -> None:
    """A label list of strings over the limit goes on to the parser, which counts each
    label once (as Jina does): it is refused here for its empty label, not its length."""
    body = {"labels": ["a"] * 300 + [""], "input": ["x"]}
    refused = assert_error(
        http.post("/v1/classify", json=body, headers=auth()), 400, "INPUT_INVALID"
    )
    assert refused["detail"] == "labels[300] must be a non-empty string"


def test_a_422_does_no_work_for_the_errors_it_does_not_show(
    http: Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    is_small = gateway_module._is_small

    def counted(value: Any, *rest: Any) -> bool:
        nonlocal calls
        calls += 1
        return is_small(value, *rest)

    monkeypatch.setattr(gateway_module, "_is_small", counted)
    body = {"labels": ["a"], "input": [1] * 1024}  # within the limit: 2,050 schema errors
    refused = assert_error(
        http.post("/v1/classify", json=body, headers=auth()), 422, "INPUT_VALIDATION_FAILED"
    )
    assert len(refused["errors"]) == gateway_module.MAX_VALIDATION_ERRORS
    assert "(2,050 schema errors, the first 20 listed)" in refused["detail"]
    assert calls <= gateway_module.MAX_VALIDATION_ERRORS  # was one per error


def test_a_big_value_is_not_small_without_being_written_out() -> None:
    assert gateway_module._is_small({"txt": "typo"})
    assert not gateway_module._is_small(float("nan"))
    assert not gateway_module._is_small("x" * 199)  # 201 with its quotes
    assert not gateway_module._is_small([[1] * 10**6])
    assert not gateway_module._is_small({"k": {"j": "x" * 10**6}})


# -- the key before the body, and no body held forever ------------------------------------


def _app(**overrides: Any) -> Any:
    settings = Settings(api_keys=KEY, **overrides)
    app = create_app(settings)
    app.state.gateway = Gateway(settings)
    return app


def _scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("gw", 80),
    }


class Exchange:
    """One request through the ASGI app: the body comes in ``parts``, ``delay_s`` apart;
    then it is complete, or (``stall``) the client sends nothing more."""

    def __init__(self, parts: list[bytes], *, delay_s: float = 0.0, stall: bool = False) -> None:
        self.parts = parts
        self.delay_s = delay_s
        self.stall = stall
        self.reads = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        self.reads += 1
        if self.reads > len(self.parts):
            await asyncio.Event().wait()  # the client has stopped sending
        await asyncio.sleep(self.delay_s)
        more = self.stall or self.reads < len(self.parts)
        return {"type": "http.request", "body": self.parts[self.reads - 1], "more_body": more}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self, app: Any, scope: dict[str, Any], timeout_s: float = 5.0) -> None:
        task = asyncio.ensure_future(app(scope, self.receive, self.send))
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        if task not in done:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert task in done, "the request was never answered"
        task.result()

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.sent[0]["headers"]}

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))
        return parsed


JSON_UPLOAD = {"content-type": "application/json", "content-length": "60000000"}


@pytest.mark.parametrize(
    ("path", "headers", "code", "anonymous"),
    [
        ("/v1/classify", {}, "AUTH_MISSING_API_KEY", False),
        ("/v1/train", {}, "AUTH_MISSING_API_KEY", False),
        ("/v1/classifiers", {"authorization": "Basic a2V5"}, "AUTH_INVALID_FORMAT", False),
        ("/v1/train", {"authorization": "Bearer nope"}, "AUTH_INVALID_API_KEY", True),
        ("/v1/classify", {"authorization": "Bearer nope"}, "AUTH_INVALID_API_KEY", True),
    ],
)
def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(
    path: str, headers: dict[str, str], code: str, anonymous: bool
) -> None:
    """FastAPI reads and decodes the whole body (up to 64 MiB) before the key's
    dependency runs: a caller without a key could make the gateway hold that, per
    connection. The same 401 is answered from the headers, and the connection closed."""
    app = _app(gateway={"anonymous_zero_shot": anonymous})
    exchange = Exchange([b'{"input": ["x"'], stall=True)
    asyncio.run(exchange.run(app, _scope("POST", path, {**JSON_UPLOAD, **headers})))
    assert exchange.reads == 0  # not a byte of the body
    assert exchange.status == 401
    assert exchange.body["code"] == code
    assert exchange.body["request_id"] == exchange.headers["x-request-id"]
    assert exchange.headers["connection"] == "close"
    assert "x-ratelimit-remaining-requests" not in exchange.headers


def test_anonymous_zero_shot_still_reads_the_body_when_allowed() -> None:
    app = _app(gateway={"anonymous_zero_shot": True})
    body = json.dumps({**ZERO_SHOT, "input": []}).encode()
    exchange = Exchange([body])
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    asyncio.run(exchange.run(app, _scope("POST", "/v1/classify", headers)))
    assert exchange.reads == 1
    assert exchange.status == 400
    assert exchange.body["code"] == "INPUT_MISSING"  # past the key, the schema, to the parser


def test_a_stalled_upload_is_answered_408_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn has no body read timeout: a client that stops sending half way held its
    connection and what it had sent for ever."""
    monkeypatch.setattr(gateway_module, "BODY_TIMEOUT_S", 0.2, raising=False)
    app = _app()
    exchange = Exchange([b'{"input": ["' + b"x" * 1000], stall=True)  # then nothing more
    asyncio.run(exchange.run(app, _scope("POST", "/v1/classify", {**JSON_UPLOAD, **auth()})))
    assert exchange.reads == 2
    assert exchange.status == 408
    assert exchange.body["code"] == "REQUEST_TIMEOUT"
    assert exchange.headers["connection"] == "close"
    assert exchange.headers["x-ratelimit-remaining-requests"] == "500"  # took nothing


def test_a_slow_but_steady_upload_is_not_timed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeout is per part of the body, not for the whole of it."""
    monkeypatch.setattr(gateway_module, "BODY_TIMEOUT_S", 0.2, raising=False)
    app = _app()
    body = json.dumps({**ZERO_SHOT, "input": []}).encode()
    parts = [body[i : i + 8] for i in range(0, len(body), 8)]
    exchange = Exchange(parts, delay_s=0.05)  # over 0.2 s in all
    assert len(parts) * 0.05 > 0.4
    headers = {**auth(), "content-type": "application/json", "content-length": str(len(body))}
    asyncio.run(exchange.run(app, _scope("POST", "/v1/classify", headers)))
    assert exchange.status == 400
    assert exchange.body["code"] == "INPUT_MISSING"


# -- what is charged ------------------------------------------------------------------------


def drive(app: Any, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """Run ``scenario`` with an HTTP client of ``app`` (no server, no lifespan)."""

    async def go() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            await scenario(c)

    asyncio.run(go())


class FakeKafka:
    """Stands in for the producer: each request is awaited as the real client awaits it."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.produced: dict[str, asyncio.Future[Answer]] = {}
        gw.client.send = self.send  # type: ignore[method-assign]

    async def send(
        self, topic: str, body: dict[str, Any], *, key: str | None = None, headers: Any = ()
    ) -> asyncio.Future[Answer]:
        rid = str(body["request_id"])
        self.produced[rid] = self.gw.client.expect(rid)
        return self.produced[rid]

    def answer(self, rid: str, tokens: int) -> None:
        future = self.produced[rid]
        if not future.done():  # (a future given up on takes no answer)
            future.set_result(
                Answer("predictions", {"request_id": rid, "usage": {"total_tokens": tokens}})
            )

    def refuse(self, rid: str, code: str, retry_after_s: int | None) -> None:
        """A worker's dead letter, with its retry-after header where it has one."""
        letter = {"request_id": rid, "error": {"code": code, "detail": "d"}}
        self.produced[rid].set_result(Answer("errors", letter, retry_after_s=retry_after_s))


def test_an_answer_that_comes_too_late_is_still_charged() -> None:
    """The caller got its 504, but the workers did the work: their answer's tokens are
    charged when it comes. One that never comes is given up after a while, and only so
    many are awaited at once (memory stays bounded)."""
    app = _app(gateway={"reply_timeout_s": 0.05})
    gw: Gateway = app.state.gateway
    kafka = FakeKafka(gw)
    owner = hash_key(KEY)

    async def scenario(c: httpx.AsyncClient) -> None:
        timed_out = await c.post("/v1/classify", json=ZERO_SHOT, headers=auth())
        assert_error(timed_out, 504, "SERVICE_TIMEOUT")
        kafka.answer(next(iter(kafka.produced)), 700)  # the answer, late
        await asyncio.sleep(0)
        # (the bucket refills some 17 tokens a millisecond meanwhile)
        assert gw.limits.peek(owner).remaining_tokens < 1_000_000 - 600
        assert not gw.client._waiting
        assert not gw._late

        gw.late_answer_window_s = 0.1
        gw.max_late_answers = 2
        for _ in range(3):
            await c.post("/v1/classify", json=ZERO_SHOT, headers=auth())
        assert len(gw._late) == 2  # the oldest was given up
        assert len(gw.client._waiting) == 2
        await asyncio.sleep(0.2)  # the others, once their window has passed
        assert not gw._late
        assert not gw.client._waiting

    drive(app, scenario)


def test_requests_refused_before_kafka_take_nothing_from_the_budget() -> None:
    """A request over the Kafka record limit, or with a lone surrogate, is refused when
    it is encoded, after it was admitted: the request it took is given back."""
    http = client_for(kafka={"max_message_bytes": 65536})
    big = {**ZERO_SHOT, "input": ["word " * 2000] * 8}
    oversize = http.post("/v1/classify", json=big, headers=auth())
    assert_error(oversize, 413, "REQUEST_TOO_LARGE")
    surrogate = http.post(
        "/v1/classify",
        content='{"labels": ["a"], "input": ["ok \\ud800"]}',
        headers={**auth(), "Content-Type": "application/json"},
    )
    assert_error(surrogate, 400, "INPUT_INVALID")
    for response in (oversize, surrogate):
        assert response.headers["x-ratelimit-remaining-requests"] == "500"
    assert http.app.state.gateway.limits.peek(hash_key(KEY)).remaining_requests == 500


async def produced(kafka: FakeKafka, n: int) -> None:
    """Until ``n`` requests have reached the (fake) producer."""
    for _ in range(1000):
        if len(kafka.produced) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{len(kafka.produced)} of {n} requests produced")


def test_a_key_has_at_most_its_tier_s_concurrency_in_flight() -> None:
    """Jina's tiers limit requests at once (free 5, tier1 50, tier2 500;
    RATE_CONCURRENCY_LIMIT_EXCEEDED): without it one key could fill every worker's
    in-flight room and starve the others, and each of a burst was admitted on a positive
    token balance before any was charged."""
    app = _app()
    gw: Gateway = app.state.gateway
    gw.limits.clock = lambda: 0.0  # no refill while the burst runs: the counts are exact
    kafka = FakeKafka(gw)
    owner = hash_key(KEY)

    async def scenario(c: httpx.AsyncClient) -> None:
        waiting = [
            asyncio.create_task(c.post("/v1/classify", json=ZERO_SHOT, headers=auth()))
            for _ in range(5)
        ]
        await produced(kafka, 5)
        sixth = await c.post("/v1/classify", json=ZERO_SHOT, headers=auth())
        body = assert_error(sixth, 429, "RATE_CONCURRENCY_LIMIT_EXCEEDED")
        assert body["detail"] == (
            "Concurrency limit exceeded: 5/5 concurrent requests (this gateway's tiers: "
            "SHOTSTREAM_GATEWAY__DEFAULT_TIER, __TIERS, __KEY_TIERS)"
        )
        assert sixth.headers["retry-after"] == "1"
        assert sixth.headers["x-ratelimit-remaining-requests"] == "495"  # took none
        listing = await c.get("/v1/classifiers", headers=auth())  # counts too
        assert_error(listing, 429, "RATE_CONCURRENCY_LIMIT_EXCEEDED")
        for rid in list(kafka.produced):
            kafka.answer(rid, 10)
        assert [r.status_code for r in await asyncio.gather(*waiting)] == [200] * 5
        assert gw.limits.in_flight == {}
        again = asyncio.create_task(c.post("/v1/classify", json=ZERO_SHOT, headers=auth()))
        await produced(kafka, 6)
        kafka.answer(list(kafka.produced)[-1], 10)
        assert (await again).status_code == 200
        assert gw.limits.in_flight.get(owner) is None

    drive(app, scenario)


def test_an_overloaded_worker_s_refusal_says_when_to_retry() -> None:
    """A 503 from a worker that refused a request for its queue of model work
    (SHOTSTREAM_BATCHING__MAX_QUEUE_WAIT_S) carries Retry-After, in the seconds the
    worker put on its dead letter (HTTP clients' retry policies read it); a 503 the worker
    put no time on has none, and no other status takes one from a dead letter."""
    app = _app()
    kafka = FakeKafka(app.state.gateway)
    refusals = [
        ("SERVICE_UNAVAILABLE", 4, 503, "4"),
        ("SERVICE_UNAVAILABLE", None, 503, None),
        ("INPUT_INVALID", 4, 400, None),
    ]

    async def scenario(c: httpx.AsyncClient) -> None:
        for n, (code, seconds, status, told) in enumerate(refusals, 1):
            pending = asyncio.create_task(c.post("/v1/classify", json=ZERO_SHOT, headers=auth()))
            await produced(kafka, n)
            kafka.refuse(list(kafka.produced)[-1], code, seconds)
            response = await pending
            assert_error(response, status, code)
            assert response.headers.get("retry-after") == told
            assert "x-ratelimit-remaining-requests" in response.headers

    drive(app, scenario)


def test_the_routes_are_told_apart_under_a_root_path_too() -> None:
    """Behind a proxy that mounts the gateway under /api, Starlette's ``url.path`` starts
    with it: the checks that compared it with "/v1/classify" let over-long label lists
    through to the schema (a 422 after per-item work, the 84 s path)."""
    app = _app()

    async def go() -> list[tuple[int, str]]:
        transport = httpx.ASGITransport(app=app, root_path="/api")
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
            out = []
            for labels in ([1] * 2000, {"g": [{"a": 1}] * 2000}):
                r = await c.post(
                    "/api/v1/classify", json={"labels": labels, "input": ["x"]}, headers=auth()
                )
                out.append((r.status_code, r.json()["code"]))
            return out

    assert asyncio.run(go()) == [(400, "INPUT_LABEL_LIMIT_EXCEEDED")] * 2
