"""The HTTP gateway: Jina's Classifier API, served over the Kafka topics.

A request is checked here (key, rate limit, schema, the workers' own parsers), produced to
``<prefix>classify`` or ``<prefix>train`` under a fresh ``request_id``, and answered with
whatever comes back for that id on the predictions, train-results or errors topic. The
gateway computes no embeddings: any number of gateways and workers scale apart.

Every gateway reads all reply partitions with no consumer group (from their end, at
start), so each sees every reply and keeps the ones it is waiting for; the cost is that
each gateway reads every reply. Listing classifiers reads a replica of the classifier
changelog, as workers do (``streams/replica.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import json
import logging
import re
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, TypeGuard, get_args

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import Scope

from state.records import ClassifierRecord, iso_time
from streams.app import classifier_changelog_topic
from streams.auth import NO_KEYS, KeyRing, owner_or_refusal
from streams.broker import kafka_security
from streams.client import Answer, GatewayStartError, ShotstreamClient
from streams.errors import ErrorCode, OversizeRecordError, RequestError
from streams.http_models import (
    ClassificationResponse,
    ClassifierSummary,
    ClassifyBody,
    DeleteResponse,
    ErrorBody,
    InputItem,
    TrainBody,
    TrainingItem,
    TrainingResponse,
    ValidationErrorBody,
)
from streams.http_server import MAX_HEADER_BYTES, connection_cap, guarded_h11
from streams.logs import announce
from streams.metrics import HttpMetrics
from streams.middleware import BodyLimit, HeadersFirst, RequestIds
from streams.ratelimit import Decision, Limit, RateLimiter
from streams.records import (
    DEADLINE_HEADER,
    decode_json_object,
    parse_classify,
    parse_inputs,
    parse_train,
)
from streams.replica import ClassifierReplica
from streams.settings import EMBEDDED_FETCH_MAX_WAIT_MS, Settings

log = logging.getLogger(__name__)

STATUS_OF: Mapping[str, int] = {
    "UNAUTHORIZED": 401,  # what workers before AUTH_* answered (a rolling upgrade)
    ErrorCode.AUTH_MISSING_API_KEY: 401,
    ErrorCode.AUTH_INVALID_FORMAT: 401,
    ErrorCode.AUTH_INVALID_API_KEY: 401,
    ErrorCode.AUTHZ_ACCESS_DENIED: 403,
    ErrorCode.AUTHZ_RESOURCE_LIMIT_EXCEEDED: 403,
    ErrorCode.CLASSIFIER_NOT_FOUND: 404,
    ErrorCode.RESPONSE_TOO_LARGE: 413,
    ErrorCode.SERVICE_UNAVAILABLE: 503,  # a busy worker: the same request may pass later
    ErrorCode.DEADLINE_EXCEEDED: 504,  # a worker got to it after the reply timeout
    ErrorCode.EMBEDDING_NOT_FINITE: 500,
    ErrorCode.INTERNAL_ERROR: 500,
}
"""HTTP status of a worker's error code; every other code is the caller's input: 400."""


BODY_TIMEOUT_S = 30.0
"""Longest wait for the next part of a request body before a 408 (nginx's
``client_body_timeout``, per read): a stalled upload does not hold its connection and
what it sent for ever (uvicorn has no body timeout)."""
LATE_ANSWER_WINDOW_S = 600.0
"""How long an answer to a request that timed out (a 504) is still awaited, to charge its
tokens: the workers did the work, however late."""
REPLY_GRACE_S = 2.0
"""How long past a request's deadline (the reply timeout) the gateway still waits for its
answer (a tenth of the timeout when that is shorter): a worker checks the deadline before
it learns, so one learned just in time is answered, not a 504 that would make its retry
learn it twice."""
MAX_LATE_ANSWERS = 10_000
"""Most such answers awaited at once (the oldest is given up first): memory stays bounded
while answers do not come at all."""


class GatewayError(Exception):
    """An HTTP error answer: status, code and detail (Jina's codes where one fits)."""

    def __init__(
        self, status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})

    @classmethod
    def from_request_error(cls, exc: RequestError) -> GatewayError:
        return cls(STATUS_OF.get(exc.code, 400), exc.code, exc.detail)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the key's owner id (None: anonymous) and the rate-limit bucket."""

    owner: str | None
    authorization: str | None
    bucket: str


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Invalid input or label limits"},
    401: {"model": ErrorBody, "description": "Missing or invalid API key"},
    403: {"model": ErrorBody, "description": "Resource limit, or not the owner"},
    404: {"model": ErrorBody, "description": "Classifier not found or access denied"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    422: {"model": ValidationErrorBody, "description": "Body does not match the schema"},
    429: {"model": ErrorBody, "description": "Rate limit exceeded (see Retry-After)"},
    500: {"model": ErrorBody, "description": "Internal error"},
    503: {
        "model": ErrorBody,
        "description": "Kafka unavailable, or a worker overloaded (see Retry-After)",
    },
    504: {"model": ErrorBody, "description": "No answer in time"},
}

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
router = APIRouter(responses=_RESPONSES, tags=["Zero/Few-shot Classification"])


class Gateway:
    """The Kafka side of the gateway: the correlating client, the replica, keys, limits."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = KeyRing(settings.all_api_keys())
        tiers = settings.gateway.tiers
        gw = settings.gateway

        def limit_of(bucket: str) -> Limit:
            tier = gw.anonymous_tier if bucket.startswith("ip:") else gw.default_tier
            tier = gw.key_tiers.get(bucket, tier)
            return Limit(tiers[tier].rpm, tiers[tier].tpm, tiers[tier].concurrency)

        self.limits = RateLimiter(limit_of)
        # Kafka away: a caller gets its 503 within kafka_timeout_s, not aiokafka's 40 s
        self.client = ShotstreamClient(settings, produce_timeout_s=gw.kafka_timeout_s)
        self.replica = ClassifierReplica(
            ",".join(settings.brokers),
            classifier_changelog_topic(settings),
            fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS if settings.embedded_broker else 500,
            request_timeout_s=gw.kafka_timeout_s,
            security=kafka_security(settings.kafka),
            listing_only=True,
        )
        self.late_answer_window_s = LATE_ANSWER_WINDOW_S
        self.reply_grace_s = min(REPLY_GRACE_S, settings.gateway.reply_timeout_s / 10)
        self.max_late_answers = MAX_LATE_ANSWERS
        self._late: dict[asyncio.Future[Answer], None] = {}
        """Requests that timed out, awaited still to charge their answers (oldest first)."""
        self._recent: OrderedDict[str, tuple[str, int]] = OrderedDict()
        """Classifier id → (owner, version this gateway last answered; -1: deleted), for
        listings that read their own writes; dropped once the replica has read it."""

    async def start(self) -> None:
        if not len(self.keys):
            log.warning(
                "%s: every request %sgets 401 AUTH_INVALID_API_KEY",
                NO_KEYS,
                "but anonymous zero-shot " if self.settings.gateway.anonymous_zero_shot else "",
            )
        limit = self.settings.gateway.startup_timeout_s
        deadline = time.monotonic() + limit
        await join_kafka(self.client, deadline)
        try:
            await self.replica.start(timeout_s=max(1.0, deadline - time.monotonic()))
        except (RuntimeError, KafkaError) as exc:  # the changelog topic (or Kafka) is missing
            await self.client.__aexit__(None, None, None)
            raise GatewayStartError(
                f"cannot read the classifier listing: {exc}; a worker creates its topics, "
                f"start one first (waited {limit:g} s, SHOTSTREAM_GATEWAY__STARTUP_TIMEOUT_S)"
            ) from None

    async def stop(self) -> None:
        await self.replica.stop()
        await self.client.__aexit__(None, None, None)

    # -- callers -------------------------------------------------------------------------

    def identify(
        self, request: Request, authorization: str | None, *, anonymous_ok: bool
    ) -> Caller:
        """The caller of ``request``; 401 unless the key is valid (or anonymous is allowed)."""
        if authorization is None and anonymous_ok and self.settings.gateway.anonymous_zero_shot:
            host = request.client.host if request.client else "unknown"
            return Caller(None, None, f"ip:{client_network(host)}")
        try:  # the workers' check, with the same codes: missing, malformed, unknown
            owner = owner_or_refusal(self.keys, authorization, "this request")
        except RequestError as exc:
            raise GatewayError.from_request_error(exc) from None
        return Caller(owner, authorization, owner)

    @contextlib.contextmanager
    def admitted(self, caller: Caller) -> Iterator[Decision]:
        """Admit a request (429 if its caller is over a limit) for the ``with`` block: it
        counts against the caller's concurrency until the block ends."""
        decision = self.admit(caller)
        try:
            yield decision
        finally:
            self.limits.finish(caller.bucket)

    def admit(self, caller: Caller) -> Decision:
        """Admit a request, or raise its 429; once admitted it is in flight until
        ``limits.finish`` (:meth:`admitted` does both)."""
        decision = self.limits.admit(caller.bucket)
        if not decision.allowed:
            limit = decision.limit
            assert limit is not None  # noqa: S101 - set on every decision
            if decision.reason == "requests":
                code = "RATE_REQUEST_LIMIT_EXCEEDED"
                detail = f"Request rate limit exceeded: {limit.rpm} requests per minute"
            elif decision.reason == "concurrency":
                code = "RATE_CONCURRENCY_LIMIT_EXCEEDED"
                detail = (
                    f"Concurrency limit exceeded: {self.limits.in_flight.get(caller.bucket, 0)}"
                    f"/{limit.concurrency} concurrent requests"
                )
            else:
                code = "RATE_TOKEN_LIMIT_EXCEEDED"
                detail = f"Token rate limit exceeded: {limit.tpm:,} tokens per minute"
            raise GatewayError(
                429,
                code,
                # the defaults are Jina's free tier: an operator load-testing needs the knob
                f"{detail} (this gateway's tiers: SHOTSTREAM_GATEWAY__DEFAULT_TIER, "
                "__TIERS, __KEY_TIERS)",
                {"Retry-After": str(decision.retry_after_s), **rate_headers(decision)},
            )
        return decision

    # -- Kafka round trip ------------------------------------------------------------------

    async def ask(
        self, topic: str, body: dict[str, Any], *, key: str, caller: Caller
    ) -> tuple[Answer, Decision]:
        """Produce ``body``, wait for its answer; charge its tokens to the caller.

        Called after :meth:`admit`: a request refused here before it reaches Kafka (not
        Unicode, over the record limit) gives back the request it took. One answered too
        late (a 504) is still charged when its answer comes (the workers did the work).
        """
        timeout = self.settings.gateway.reply_timeout_s
        # workers serve nothing after it (DEADLINE_EXCEEDED): a request answered 504 is
        # not learned later, and a backlog of abandoned requests is shed, not computed
        headers = [(DEADLINE_HEADER, f"{time.time() + timeout:.3f}".encode())]
        if caller.authorization is not None:
            headers.append(("authorization", caller.authorization.encode()))
        try:
            future = await self.client.send(topic, body, key=key, headers=headers)
        except UnicodeEncodeError as exc:
            self.limits.refund(caller.bucket)
            raise GatewayError(
                400,
                ErrorCode.INPUT_INVALID,
                f"a string holds a lone surrogate ({exc.object[exc.start : exc.end]!r}), "
                "which is not Unicode text",
            ) from exc
        except OversizeRecordError as exc:
            self.limits.refund(caller.bucket)
            raise GatewayError(413, "REQUEST_TOO_LARGE", str(exc)) from exc
        except KafkaError as exc:
            raise GatewayError(
                503, "SERVICE_UNAVAILABLE", f"Kafka unavailable: {type(exc).__name__}"
            ) from exc
        try:
            # shielded: a timeout (or a caller gone) leaves the answer awaited, to charge it
            answer = await asyncio.wait_for(asyncio.shield(future), timeout + self.reply_grace_s)
        except TimeoutError as exc:
            self._charge_when_answered(future, caller.bucket)
            raise GatewayError(
                504, "SERVICE_TIMEOUT", f"Request timed out after {timeout:g} seconds"
            ) from exc
        except asyncio.CancelledError:
            self._charge_when_answered(future, caller.bucket)
            raise
        after = self.limits.charge(caller.bucket, _tokens_of(answer))
        if answer.is_error:
            error = answer["error"]
            code = str(error.get("code", ErrorCode.INTERNAL_ERROR))
            status = STATUS_OF.get(code, 400)
            told = rate_headers(after)
            if status == 503 and answer.retry_after_s is not None:  # an overloaded worker
                told = {"Retry-After": str(answer.retry_after_s), **told}
            raise GatewayError(status, code, str(error.get("detail", "")), told)
        return answer, after

    def _charge_when_answered(self, future: asyncio.Future[Answer], bucket: str) -> None:
        """Charge the answer to a request no longer waited for, if it comes within
        ``LATE_ANSWER_WINDOW_S``; at most ``MAX_LATE_ANSWERS`` are awaited (the oldest
        is given up first), so answers that never come cost a bounded amount of memory."""
        if future.done():  # answered as the wait ended
            if not future.cancelled() and future.exception() is None:
                self.limits.charge(bucket, _tokens_of(future.result()))
            return
        expiry = asyncio.get_running_loop().call_later(self.late_answer_window_s, future.cancel)

        def settle(done: asyncio.Future[Answer]) -> None:
            expiry.cancel()
            self._late.pop(done, None)
            if not done.cancelled() and done.exception() is None:
                self.limits.charge(bucket, _tokens_of(done.result()))

        future.add_done_callback(settle)
        self._late[future] = None
        while len(self._late) > self.max_late_answers:
            oldest = next(iter(self._late))
            del self._late[oldest]
            oldest.cancel()  # the client stops waiting for it

    def remember(self, classifier_id: str, owner: str, version: int) -> None:
        self._recent[classifier_id] = (owner, version)
        self._recent.move_to_end(classifier_id)
        while len(self._recent) > 10_000:
            self._recent.popitem(last=False)

    async def classifiers_of(self, owner: str) -> list[ClassifierRecord]:
        """The owner's classifiers, including what this gateway has just written for them.

        Waits (5 s at most) only for the owner's own recent writes the replica has not read
        yet; each is forgotten once read, or once waited for in vain (changed elsewhere
        since), so a classifier deleted or rewritten behind this gateway's back never
        slows a listing twice, nor anyone else's.
        """
        timeout = self.settings.kafka.request_timeout_s
        try:
            await self.replica.caught_up(timeout_s=timeout)
        except TimeoutError as exc:
            raise GatewayError(
                504, "SERVICE_TIMEOUT", f"the classifier list lags behind Kafka ({exc})"
            ) from exc
        except KafkaError as exc:
            raise GatewayError(
                503, "SERVICE_UNAVAILABLE", f"Kafka unavailable: {type(exc).__name__}"
            ) from exc
        deadline = time.monotonic() + min(timeout, 5.0)
        for cid, (writer, version) in list(self._recent.items()):
            if writer != owner:
                continue
            remaining = max(0.0, deadline - time.monotonic())
            if version < 0:
                await self.replica.wait_gone(cid, remaining)
            else:
                await self.replica.wait_for(cid, remaining, version)
            if self._recent.get(cid) == (writer, version):
                del self._recent[cid]  # read, or not to be waited for again
        return sorted(self.replica.owned_by(owner), key=lambda r: r.created_at)


def client_network(host: str) -> str:
    """An anonymous caller's rate-limit bucket: its IPv4 address, or its IPv6 /64 (one
    client is routinely given a whole /64: per address it had endless buckets).

    >>> client_network("2001:db8:1:2:aaaa::1"), client_network("192.0.2.7")
    ('2001:db8:1:2::/64', '192.0.2.7')
    >>> client_network("::ffff:192.0.2.7"), client_network("unknown")
    ('192.0.2.7', 'unknown')
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _tokens_of(answer: Answer) -> int:
    """The tokens an answer says it used (``usage.total_tokens``; none: 0)."""
    usage = answer.get("usage")
    tokens = usage.get("total_tokens", 0) if isinstance(usage, dict) else 0
    return int(tokens or 0)


def rate_headers(decision: Decision) -> dict[str, str]:
    return {
        "X-RateLimit-Remaining-Requests": str(decision.remaining_requests),
        "X-RateLimit-Remaining-Tokens": str(decision.remaining_tokens),
    }


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _caller_of(request: Request, *, anonymous_ok: bool) -> Caller:
    """The caller of ``request`` (401 unless the key is valid or anonymous is allowed);
    found once per request (``HeadersFirst`` finds it before the body is read)."""
    known = getattr(request.state, "caller", None)
    if isinstance(known, Caller):
        return known
    raw = request.headers.get("authorization")
    if raw is not None and not raw.strip():
        raw = None  # an empty header is no key (anonymous zero-shot, when allowed)
    if raw is not None:
        # HTTP headers arrive as latin-1: a key sent as UTF-8 is decoded back to its text
        with contextlib.suppress(UnicodeError):
            raw = raw.encode("latin-1").decode("utf-8")
    return _gateway(request).identify(request, raw, anonymous_ok=anonymous_ok)


def _caller(anonymous_ok: bool) -> Any:
    """A dependency: the caller, checked before the body is (401 before 422, as Jina)."""

    async def dependency(  # async: a plain def would cost a thread hop per request
        request: Request,
        # declares the Bearer scheme in the OpenAPI spec; _caller_of parses the header
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        return _caller_of(request, anonymous_ok=anonymous_ok)

    return dependency


async def _lists_within_limits(request: Request) -> None:
    """A dependency, after the key's: a list over its limit is refused before the schema
    reads it item by item. Pydantic makes an error per wrong item per union branch, all on
    the event loop: a 2 MB body of a million wrong items took 84 s and 5 GB to be told it
    has too many. The answer is the limit's ``400`` in the workers' parser's words; lists
    within their limits (and over-long label lists of strings, whose repeats count once)
    go on to the schema and the parser as before. A body that is not UTF-8 JSON as the
    workers read it is refused here too."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        return
    raw = await request.body()  # kept by Starlette: no second read
    if json.detect_encoding(raw) != "utf-8":
        # FastAPI's reader took a byte order mark, UTF-16 or UTF-32; the workers' reader
        # refuses them, and so does the gateway, in its words
        try:
            decode_json_object(raw)
        except RequestError as exc:
            raise GatewayError.from_request_error(exc) from None
    limits = _gateway(request).settings.limits
    items = body.get("input")
    if isinstance(items, list) and len(items) > limits.max_inputs:
        try:
            parse_inputs(items, limits)  # refuses it for its length before any item
        except RequestError as exc:
            raise GatewayError.from_request_error(exc) from None
    if _path(request) != "/v1/classify":
        return
    labels = body.get("labels")
    if isinstance(labels, dict):
        if len(labels) > limits.max_label_groups:
            raise _label_limit(f"{len(labels)} label groups given", limits.max_label_groups)
        for name, group in labels.items():
            if _long_with_non_strings(group, limits.max_labels_per_group):
                raise _label_limit(
                    f"group {name!r} has {len(group)} labels", limits.max_labels_per_group
                )
    elif _long_with_non_strings(labels, limits.max_labels):
        raise _label_limit(f"{len(labels)} labels given", limits.max_labels)


def _long_with_non_strings(value: Any, limit: int) -> TypeGuard[list[Any]]:
    """A list over ``limit`` with an item that is not a string (a label list of strings
    may repeat labels, which count once: the parser counts those)."""
    return (
        isinstance(value, list)
        and len(value) > limit
        and any(not isinstance(v, str) for v in value)
    )


def _label_limit(given: str, limit: int) -> GatewayError:
    return GatewayError(
        400, ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED, f"{given}, at most {limit} allowed"
    )


async def _json_body(request: Request) -> Any:
    """The body as FastAPI decoded it (JSON only with a JSON content type), else None."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        return None
    try:
        return await request.json()  # decoded once already: Starlette keeps it
    except ValueError:  # empty, or not JSON: FastAPI did not decode it either
        return None


WithinLimits = Annotated[None, Depends(_lists_within_limits)]
"""After the caller's dependency (401 first); before the body's schema."""

AnyCaller = Annotated[Caller, Depends(_caller(anonymous_ok=True))]
"""Zero-shot may be anonymous when ``gateway.anonymous_zero_shot`` allows it."""
KeyedCaller = Annotated[Caller, Depends(_caller(anonymous_ok=False))]


def _answer(body: Mapping[str, Any], request: Request, decision: Decision) -> JSONResponse:
    headers = {"X-Request-Id": request.state.request_id, **rate_headers(decision)}
    return JSONResponse(dict(body), headers=headers)


def _checked(parse: Any, payload: dict[str, Any], gw: Gateway, **kw: Any) -> Any:
    try:
        return parse(payload, gw.settings.limits, **kw)
    except RequestError as exc:
        raise GatewayError.from_request_error(exc) from exc


# -- routes -------------------------------------------------------------------------------


@router.post(
    "/v1/classify",
    summary="Classify",
    response_model=ClassificationResponse,
    description="Zero-shot (model + labels) or few-shot (classifier_id) classification of "
    "text and images, answered by the workers through Kafka.",
)
async def classify(
    body: ClassifyBody, request: Request, caller: AnyCaller, _limits: WithinLimits
) -> Response:
    gw = _gateway(request)
    if caller.owner is None and body.classifier_id is not None:
        raise GatewayError(401, "AUTH_MISSING_API_KEY", "Few-shot classification needs a key")
    rid = request.state.request_id
    payload = body.model_dump(mode="json", exclude_none=True)
    _checked(parse_classify, payload, gw, request_id=rid)
    payload["request_id"] = rid
    with gw.admitted(caller):
        answer, after = await gw.ask(gw.settings.topic("classify"), payload, key=rid, caller=caller)
    return _answer(answer, request, after)


@router.post(
    "/v1/train",
    summary="Train",
    response_model=TrainingResponse,
    description="Create a few-shot classifier (no classifier_id: one is made and returned) "
    "or update one with labelled examples. Examples are learned, never stored.",
)
async def train(
    body: TrainBody, request: Request, caller: KeyedCaller, _limits: WithinLimits
) -> Response:
    gw = _gateway(request)
    rid = request.state.request_id
    if body.classifier_id is None and body.model is None:
        raise GatewayError(400, ErrorCode.INPUT_MISSING, "creating a classifier needs a 'model'")
    payload = body.model_dump(mode="json", exclude_none=True)
    # only a missing id makes a new one: "" is refused by the parser, as on Kafka
    cid = str(uuid.uuid4()) if body.classifier_id is None else body.classifier_id
    payload["classifier_id"] = cid
    # with an id it is an update, as in Jina's API: an unknown (or mistyped) id is not
    # found rather than a new classifier under it (on Kafka, where the producer picks
    # new ids, the first request for one creates it)
    payload["create"] = body.classifier_id is None
    _checked(parse_train, payload, gw, request_id=rid, key=None)
    payload["request_id"] = rid
    with gw.admitted(caller):
        answer, after = await gw.ask(gw.settings.topic("train"), payload, key=cid, caller=caller)
    assert caller.owner is not None  # noqa: S101 - identify(anonymous_ok=False)
    gw.remember(cid, caller.owner, int(answer.get("version", 0)))
    return _answer(answer, request, after)


async def _list(request: Request, caller: Caller) -> Response:
    gw = _gateway(request)
    assert caller.owner is not None  # noqa: S101 - identify(anonymous_ok=False)
    with gw.admitted(caller) as decision:
        records = await gw.classifiers_of(caller.owner)
    rows = [summary(r).model_dump(mode="json") for r in records]
    return JSONResponse(
        rows, headers={"X-Request-Id": request.state.request_id, **rate_headers(decision)}
    )


@router.get(
    "/v1/classifiers",
    summary="List Classifiers",
    response_model=list[ClassifierSummary],
    description="Your classifiers (those your key owns).",
)
async def list_classifiers(request: Request, caller: KeyedCaller) -> Response:
    return await _list(request, caller)


@router.post(
    "/v1/classifiers",
    summary="List Classifiers",
    response_model=list[ClassifierSummary],
    description="Your classifiers (the same as GET, as in Jina's API).",
    operation_id="list_classifiers_post",
)
async def list_classifiers_post(request: Request, caller: KeyedCaller) -> Response:
    return await _list(request, caller)


@router.delete(
    "/v1/classifiers/{classifier_id:path}",
    summary="Delete Classifier",
    response_model=DeleteResponse,
    description="Delete one of your classifiers (only its owner may).",
)
async def delete_classifier(classifier_id: str, request: Request, caller: KeyedCaller) -> Response:
    gw = _gateway(request)
    rid = request.state.request_id
    payload = {"request_id": rid, "classifier_id": classifier_id, "action": "delete"}
    _checked(parse_train, payload, gw, request_id=rid, key=None)  # as the worker would
    with gw.admitted(caller):
        answer, after = await gw.ask(
            gw.settings.topic("train"), payload, key=classifier_id, caller=caller
        )
    assert caller.owner is not None  # noqa: S101 - identify(anonymous_ok=False)
    gw.remember(classifier_id, caller.owner, -1)
    return _answer(answer, request, after)


_KEYED = {classify, train, list_classifiers, list_classifiers_post, delete_classifier}
"""The routes that need a key (``classify`` only without anonymous zero-shot)."""


def _refused_before_body(app: FastAPI, scope: Scope) -> Response | None:
    """The 401 of a request to a route that needs a key, from its headers alone (the
    caller's dependency gives the same answer, but only after FastAPI has read the body)."""
    if getattr(app.state, "gateway", None) is None:  # starting: the dependency answers
        return None
    # the routes as declared (included unprefixed), not the app's: FastAPI wraps those
    route = next((r for r in router.routes if r.matches(scope)[0] is Match.FULL), None)
    endpoint = getattr(route, "endpoint", None)
    if endpoint not in _KEYED:
        return None
    request = Request(scope)
    try:
        request.state.caller = _caller_of(request, anonymous_ok=endpoint is classify)
    except GatewayError as exc:
        scope["route"] = route  # as the router would: the metrics name the route
        return _error(request, exc.status, exc.code, exc.detail)
    return None


def summary(record: ClassifierRecord) -> ClassifierSummary:
    """A listing row (Jina's ClassifierSummary); never weights or the owner's key hash."""
    user = hashlib.sha256(f"shotstream-user:{record.owner}".encode()).hexdigest()[:32]
    return ClassifierSummary(
        classifier_id=record.classifier_id,
        user_id=str(uuid.UUID(user)),
        model=record.model,
        labels=list(record.labels),
        access=record.access,
        updated_number=record.version,
        used_number=record.used_number,
        num_samples=record.samples_seen,
        created_at=iso_time(record.created_at),
        updated_at=iso_time(record.updated_at),
        used_at=None if record.used_at is None else iso_time(record.used_at),
        prequential_accuracy=record.prequential_accuracy,
    )


# -- errors -------------------------------------------------------------------------------


def _path(request: Request) -> str:
    """The request's path as the routes name it: without the app's ``root_path`` (behind a
    proxy that mounts it under ``/api``, Starlette's ``url.path`` includes it)."""
    path = request.url.path
    root = str(request.scope.get("root_path") or "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def _error(request: Request, status: int, code: str, detail: str, **extra: Any) -> JSONResponse:
    rid = getattr(request.state, "request_id", None) or str(uuid.uuid4())
    body = {"detail": detail, "code": code, "request_id": rid, **extra}
    # a 401 has no caller to show the budget of, and names the scheme it needs (RFC 9110)
    rate = _rate_left(request) if status != 401 else {"WWW-Authenticate": "Bearer"}
    return JSONResponse(body, status_code=status, headers={"X-Request-Id": rid, **rate})


def _rate_left(request: Request) -> dict[str, str]:
    """The rate-limit headers of a refused request's caller (what it has left; a refusal
    before admission takes nothing), or none when the caller is not known (a 401)."""
    if not _path(request).startswith("/v1/"):
        return {}
    try:
        caller = _caller_by_path(request)
        return rate_headers(_gateway(request).limits.peek(caller.bucket))
    except Exception:  # no valid key, or no gateway (starting): no budget to show
        return {}


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)  # noqa: S101 - registered for GatewayError
    response = _error(request, exc.status, exc.code, exc.detail)
    response.headers.update(exc.headers)
    return response


MAX_VALIDATION_ERRORS = 20
"""Schema errors listed in a 422 (the rest are counted): a body of 100,000 wrong items must
not be answered with 100,000 errors (tens of MB)."""
MAX_COUNTED_ERRORS = 10_000
"""Schema errors a 422 counts at most ("over 10,000" beyond): lists over their limits never
reach the schema, so this is only a bound on the handler's work."""


def _refused_caller(request: Request) -> Response | None:
    """The 401 for a request whose body could not be read, if its key is refused too."""
    try:
        _caller_by_path(request)
    except GatewayError as exc:
        return _error(request, exc.status, exc.code, exc.detail)
    return None


def _caller_by_path(request: Request) -> Caller:
    """:func:`_caller_of` where only the path is known (an error handler's request)."""
    return _caller_of(request, anonymous_ok=_path(request) == "/v1/classify")


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 - registered for it
    found = exc.errors()
    if any(e.get("type") == "json_invalid" for e in found):
        # FastAPI decodes JSON before the key is checked: 401 before 422 here too
        refused = _refused_caller(request)
        if refused is not None:
            return refused
    listed: list[dict[str, Any]] = []
    seen: set[tuple[str, str, str]] = set()
    for e in found:
        key = (_field_path(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", "")))
        if key in seen:  # union branches, their names gone: one error
            continue
        seen.add(key)
        if len(seen) > MAX_COUNTED_ERRORS:
            break
        if len(listed) == MAX_VALIDATION_ERRORS:
            continue  # past the errors shown: only counted
        item = dict(zip(("field", "message", "type"), key, strict=True))
        if "input" in e and _is_small(e["input"]):
            item["input"] = e["input"]  # as Jina's errors do, when it is short
        listed.append(item)
    first = listed[0] if listed else {"field": "body", "message": "invalid"}
    detail = (
        _content_type_detail(request, found)
        or _parser_detail(request, exc.body)
        or f"{first['field']}: {first['message']}"
    )
    if len(seen) > MAX_COUNTED_ERRORS:
        detail += f" (over {MAX_COUNTED_ERRORS:,} schema errors, the first {len(listed)} listed)"
    elif len(seen) > len(listed):
        detail += f" ({len(seen):,} schema errors, the first {len(listed)} listed)"
    return _error(request, 422, "INPUT_VALIDATION_FAILED", detail, errors=listed)


_UNION_BRANCH = re.compile(
    r"(str|int|float|bool|none|(list|dict|union|tuple|literal|function-\w+)\[.*\]|"
    + "|".join(m.__name__ for m in (*get_args(InputItem), *get_args(TrainingItem)))
    + ")",
    re.DOTALL,
)


def _field_path(loc: Any) -> str:
    """``body.input.0.text``: pydantic's location without the union branches it tried
    (``body.input.list[union[str,TextDoc,ImageDoc]].0.TextDoc.text``)."""
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and _is_branch(p)))


@functools.lru_cache(maxsize=1024)
def _is_branch(part: str) -> bool:
    """Whether a location part names a union branch (a few names, met thousands of times)."""
    return _UNION_BRANCH.fullmatch(part) is not None


def _is_small(value: Any, limit: int = 200) -> bool:
    """Whether ``value`` is JSON of at most ``limit`` characters (NaN is not JSON to answer);
    a big value is told without writing it out (the input of an error may be a whole list)."""
    left = limit
    pending = [value]
    while pending:  # a lower bound of the JSON's length: quotes, brackets, commas, colons
        v = pending.pop()
        if isinstance(v, str):
            left -= len(v) + 2
        elif isinstance(v, list | dict):
            left -= (2 if isinstance(v, dict) else 1) * len(v) + 1
            if left >= 0:
                pending.extend(v)
                if isinstance(v, dict):
                    pending.extend(v.values())
        else:
            left -= 1
        if left < 0:
            return False
    try:
        return len(json.dumps(value, allow_nan=False)) <= limit
    except (TypeError, ValueError):
        return False


def _content_type_detail(request: Request, found: Sequence[Any]) -> str | None:
    """Why a body sent without a JSON content type was not read (FastAPI reads JSON only
    with one; ``curl -d`` sends a form type), in place of "not a valid dictionary"."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        return None
    if not any(tuple(e.get("loc", ())) == ("body",) for e in found):
        return None
    return (
        "the body must be a JSON object sent with Content-Type: application/json "
        f"(this request's: {media or 'none'})"
    )


def _parser_detail(request: Request, body: Any) -> str | None:
    """What the workers' parser says of the body (the Kafka topics' precise wording,
    ``input[3] must have a string 'text' or 'image' field``), if it refuses it too."""
    if not isinstance(body, dict):
        return None
    try:
        if _path(request) == "/v1/classify":
            parse_classify(body, _gateway(request).settings.limits, request_id="-")
        elif _path(request) == "/v1/train":
            # the gateway makes an id for a new classifier: only the rest is checked here
            named = {**body, "classifier_id": "-"} if body.get("classifier_id") is None else body
            parse_train(named, _gateway(request).settings.limits, request_id="-", key=None)
    except RequestError as exc:
        return exc.detail
    except Exception:  # no gateway yet, or a parser bug: the schema's own words then
        log.debug("no parser detail for a 422", exc_info=True)
    return None


_HTTP_CODES = {
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    408: "REQUEST_TIMEOUT",
    413: "REQUEST_TOO_LARGE",
}


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)  # noqa: S101 - registered for it
    code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
    detail = str(exc.detail)
    if exc.status_code == 400 and _path(request).startswith("/v1/"):
        # FastAPI could not read the body (not UTF-8, nested too deeply): key first
        refused = _refused_caller(request)
        if refused is not None:
            return refused
        code, detail = await _unreadable(request)
    response = _error(request, exc.status_code, code, detail)
    response.headers.update(exc.headers or {})
    return response


async def _unreadable(request: Request) -> tuple[str, str]:
    """The code and detail for a body FastAPI could not read (a 400 of its own): not UTF-8
    (``INPUT_NOT_UTF8``, as the workers say for the same bytes on a topic), or nested
    deeper than Python's JSON reader goes (about 1,000 levels)."""
    try:
        (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        return ErrorCode.INPUT_NOT_UTF8, f"the body is not UTF-8 ({exc.reason} at byte {exc.start})"
    except Exception:  # the body cannot be read again: say what it is not
        return ErrorCode.INPUT_NOT_JSON, "the body is not UTF-8 JSON that can be read"
    return (
        ErrorCode.INPUT_NOT_JSON,
        "the body is UTF-8 but could not be read as JSON (nested over about 1,000 levels deep?)",
    )


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception(
        "unexpected error serving %s %s (request_id %s)",
        request.method,
        request.url.path,
        getattr(request.state, "request_id", None),
    )
    return _error(
        request, 500, "INTERNAL_ERROR", f"An unexpected error occurred ({type(exc).__name__})"
    )


# -- the app ------------------------------------------------------------------------------


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The gateway app for ``settings``, serving ``gateway`` once started (by its caller,
    as :func:`run_gateway` does; without one, its lifespan makes and starts one). Its
    lifespan stops it, within uvicorn's shutdown: after that, uvicorn raises a SIGTERM it
    caught again, which ends the process."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        served = gateway or Gateway(settings)
        if gateway is None:
            await served.start()
        app.state.gateway = served
        try:
            yield
        finally:
            await served.stop()

    app = FastAPI(
        title="shotstream",
        summary="Jina-compatible zero-shot and few-shot classification over Kafka",
        version="1",
        lifespan=lifespan,
    )
    app.include_router(router)
    registry = CollectorRegistry()

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        """200 while answers and the classifier listing are read; 503 (which one
        stopped) when either has ended: every request would end in a 504 then."""
        gw = getattr(request.app.state, "gateway", None)
        down = [
            what
            for what, up in (
                ("answers", gw is not None and gw.client.reading),
                ("classifiers", gw is not None and gw.replica.following),
            )
            if not up
        ]
        if down:
            return JSONResponse({"status": "unavailable", "not_reading": down}, status_code=503)
        return JSONResponse({"status": "ok"})

    app.add_exception_handler(GatewayError, _on_gateway_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    # outermost first: ids, then metrics (they see every status), the body limit, the key
    app.add_middleware(HeadersFirst, refusal=functools.partial(_refused_before_body, app))
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.limits.max_request_bytes,
        chunk_timeout_s=BODY_TIMEOUT_S,
    )
    app.add_middleware(HttpMetrics, registry=registry)
    app.add_middleware(RequestIds)
    return app


async def join_kafka(client: ShotstreamClient, deadline: float) -> None:
    """Start ``client`` (it needs the answer topics, which workers create), trying each
    second until ``deadline`` (``time.monotonic()``), saying what it waits for."""
    settings = client.settings
    brokers = ",".join(settings.brokers)
    said = None
    while True:
        try:
            await client.__aenter__()
            return
        except (RuntimeError, KafkaError) as exc:
            await client.__aexit__(None, None, None)
            if isinstance(exc, KafkaError):
                why = (
                    f"no answer from Kafka at {brokers} (SHOTSTREAM_BROKERS; TLS and SASL: "
                    f"SHOTSTREAM_KAFKA__SECURITY_PROTOCOL): {type(exc).__name__}"
                )
            else:
                why = f"{exc}: a worker creates the topics, start one first"
            if time.monotonic() > deadline:
                limit = settings.gateway.startup_timeout_s
                raise GatewayStartError(
                    f"{why} (waited {limit:g} s, SHOTSTREAM_GATEWAY__STARTUP_TIMEOUT_S)"
                ) from None
            if why != said:  # once per cause, not each second
                log.info("waiting: %s", why)
                said = why
            await asyncio.sleep(1.0)


def run_gateway(settings: Settings) -> None:
    """Serve the gateway with uvicorn on ``gateway.host:http_port`` until SIGINT/SIGTERM.

    Kafka, the topics and the classifier listing are joined first, within
    ``gateway.startup_timeout_s`` all told; a failure raises :class:`GatewayStartError`
    (one line, exit 4) before uvicorn starts, where its lifespan would make it a traceback
    and exit 3. Logs ``shotstream gateway ready`` once the socket accepts connections.
    """
    import uvicorn

    gateway = Gateway(settings)
    config = uvicorn.Config(
        create_app(settings, gateway),
        host=settings.gateway.host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        log_config=None,  # its records go to the CLI's handler and format (SHOTSTREAM_LOG_FORMAT)
        access_log=False,
        http=guarded_h11(connection_cap(settings.gateway.max_connections)),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
    url = f"http://{settings.gateway.host}:{settings.http_port}"

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = url
                if self.servers and self.servers[0].sockets:  # the port chosen for port 0
                    host, port = self.servers[0].sockets[0].getsockname()[:2]
                    bound = f"http://{host}:{port}"
                announce(
                    log,
                    settings.log_level,
                    "shotstream gateway ready on %s (docs: %s/docs)",
                    bound,
                    bound,
                )

    async def serve() -> None:
        await gateway.start()
        log.info("connected to Kafka at %s", ",".join(settings.brokers))
        await Server(config).serve()  # its lifespan stops the gateway

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:  # uvloop, as uvicorn
        runner.run(serve())
