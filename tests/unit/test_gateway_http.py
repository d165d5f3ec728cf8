"""The gateway's HTTP edge without Kafka: auth, schema, local validation, body limit.

Everything here is answered before a record would be produced, so the app runs without
its lifespan (no broker); the round trip through Kafka is in tests/integration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from streams.gateway import Gateway, create_app
from streams.settings import Settings

KEY = "key-alice"


class Http:
    """A synchronous face on httpx's ASGI transport (no server, no lifespan)."""

    def __init__(self, api_keys: str = KEY, **overrides: Any) -> None:
        settings = Settings(api_keys=api_keys, **overrides)
        self.app = create_app(settings)
        self.app.state.gateway = Gateway(settings)

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as c:
                return await c.request(method, path, **kw)

        return asyncio.run(go())

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def put(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)


def client_for(**overrides: Any) -> Http:
    return Http(**overrides)


@pytest.fixture
def http() -> Http:
    return client_for()


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


ZERO_SHOT = {"model": "jina-embeddings-v3", "labels": ["a", "b"], "input": ["x"]}


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "AUTH_MISSING_API_KEY"),
        ({"Authorization": ""}, "AUTH_MISSING_API_KEY"),
        ({"Authorization": "Basic a2V5"}, "AUTH_INVALID_FORMAT"),
        ({"Authorization": "Bearer "}, "AUTH_INVALID_FORMAT"),
        (auth("key-mallory"), "AUTH_INVALID_API_KEY"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/classify"),
        ("POST", "/v1/train"),
        ("GET", "/v1/classifiers"),
        ("POST", "/v1/classifiers"),
        ("DELETE", "/v1/classifiers/c-1"),
    ],
)
def test_every_route_needs_a_valid_key(
    http: Http, headers: dict[str, str], code: str, method: str, path: str
) -> None:
    # 401 comes before the body is even looked at (an empty body would be a 422)
    response = http.request(method, path, headers=headers)
    assert_error(response, 401, code)
    assert response.headers["www-authenticate"] == "Bearer"


def test_anonymous_zero_shot_may_be_allowed_but_few_shot_never() -> None:
    http = client_for(gateway={"anonymous_zero_shot": True})
    few_shot = {"classifier_id": "c-1", "input": ["x"]}
    assert_error(http.post("/v1/classify", json=few_shot), 401, "AUTH_MISSING_API_KEY")
    assert_error(http.post("/v1/train", json={"input": []}), 401, "AUTH_MISSING_API_KEY")
    # an empty header (a key variable left unset) is no key: anonymous, on to the schema
    blank = http.post("/v1/classify", json={"labels": ["a"]}, headers={"Authorization": ""})
    assert_error(blank, 422, "INPUT_VALIDATION_FAILED")


def test_schema_errors_are_422_with_field_errors(http: Http) -> None:
    body = assert_error(
        http.post("/v1/classify", json={"labels": "zz", "input": 5}, headers=auth()),
        422,
        "INPUT_VALIDATION_FAILED",
    )
    fields = {e["field"].split(".")[1] for e in body["errors"]}
    assert fields == {"input", "labels"}
    bad_iters = {"model": "m", "num_iters": 0, "input": [{"text": "t", "label": "l"}]}
    assert_error(
        http.post("/v1/train", json=bad_iters, headers=auth()), 422, "INPUT_VALIDATION_FAILED"
    )
    not_json = http.post(
        "/v1/classify", content=b"{nope", headers={**auth(), "Content-Type": "application/json"}
    )
    assert_error(not_json, 422, "INPUT_VALIDATION_FAILED")


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (
            "/v1/classify",
            {**ZERO_SHOT, "labels": [f"l{i}" for i in range(257)]},
            "INPUT_LABEL_LIMIT_EXCEEDED",
        ),
        ("/v1/classify", {**ZERO_SHOT, "input": ["x"] * 1025}, "INPUT_LIMIT_EXCEEDED"),
        ("/v1/classify", {"model": "m", "input": ["x"]}, "INPUT_MISSING"),
        ("/v1/classify", {**ZERO_SHOT, "input": []}, "INPUT_MISSING"),
        ("/v1/train", {"input": [{"text": "t", "label": "l"}]}, "INPUT_MISSING"),
        ("/v1/train", {"model": "m", "input": [{"text": "t", "label": " "}]}, "INPUT_INVALID"),
    ],
)
def test_invalid_requests_are_400_before_kafka(
    http: Http, path: str, body: dict[str, Any], code: str
) -> None:
    assert_error(http.post(path, json=body, headers=auth()), 400, code)


def test_a_delete_of_an_overlong_id_is_400_before_kafka(http: Http) -> None:
    """As the worker would answer it, without the round trip (ids are at most 256)."""
    body = assert_error(
        http.delete("/v1/classifiers/" + "c" * 257, headers=auth()), 400, "INPUT_INVALID"
    )
    assert "257 characters" in body["detail"]
    assert not http.app.state.gateway.client._waiting


def test_oversized_bodies_are_refused_before_parsing() -> None:
    http = client_for(limits={"max_request_bytes": 2048})
    big = {**ZERO_SHOT, "input": ["x" * 4096]}
    assert_error(http.post("/v1/classify", json=big, headers=auth()), 413, "REQUEST_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"input": ["'
        yield b"x" * 4096
        yield b'"], "labels": ["a"]}'

    streamed = http.post(
        "/v1/classify", content=chunks(), headers={**auth(), "Content-Type": "application/json"}
    )
    assert_error(streamed, 413, "REQUEST_TOO_LARGE")


def test_unknown_routes_answer_json(http: Http) -> None:
    assert_error(http.get("/v2/nothing"), 404, "NOT_FOUND")
    assert_error(http.put("/v1/classify", json={}), 405, "METHOD_NOT_ALLOWED")


def test_openapi_and_metrics(http: Http) -> None:
    spec = http.get("/openapi.json").json()
    assert set(spec["paths"]) == {
        "/v1/classify",
        "/v1/train",
        "/v1/classifiers",
        "/v1/classifiers/{classifier_id}",
    }
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    for status in ("400", "401", "404", "422", "429", "504"):
        assert status in spec["paths"]["/v1/classify"]["post"]["responses"]
    assert http.get("/docs").status_code == 200
    http.post("/v1/classify", json=ZERO_SHOT)
    http.delete("/v1/classifiers/abc")
    text = http.get("/metrics").text
    assert 'route="/v1/classify",status="401"' in text.replace('method="POST",', "")
    assert 'route="/v1/classifiers/{classifier_id}"' in text


def test_a_request_over_the_kafka_message_limit_is_413_before_kafka() -> None:
    """Under the body limit but over what one Kafka record may hold: refused up front,
    not produced (that used to come back as 503 "Kafka unavailable")."""
    http = client_for(kafka={"max_message_bytes": 65536})
    big = {**ZERO_SHOT, "input": ["word " * 2000] * 8}  # ~80 kB of JSON
    body = assert_error(
        http.post("/v1/classify", json=big, headers=auth()), 413, "REQUEST_TOO_LARGE"
    )
    assert "65,536-byte message limit" in body["detail"]
    assert not http.app.state.gateway.client._waiting  # no answer is awaited


def test_a_lone_surrogate_is_invalid_input_not_a_server_error(http: Http) -> None:
    raw = '{"model": "jina-embeddings-v3", "labels": ["a"], "input": ["ok \\ud800"]}'
    response = http.post(
        "/v1/classify", content=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    body = assert_error(response, 400, "INPUT_INVALID")
    assert "surrogate" in body["detail"]
    assert not http.app.state.gateway.client._waiting


@pytest.mark.parametrize("bad", ['"input": [NaN]', '"model": Infinity', '"labels": [-Infinity]'])
def test_nan_where_a_string_belongs_is_a_422_not_a_server_error(http: Http, bad: str) -> None:
    """FastAPI reads NaN and Infinity; echoing one back in ``errors[].input`` is not
    JSON, and rendering the 422 failed with a 500."""
    fields = {"model": '"m"', "labels": '["a"]', "input": '["x"]'}
    name = bad.split(":")[0].strip('"')
    raw = "{" + ", ".join(bad if k == name else f'"{k}": {v}' for k, v in fields.items()) + "}"
    response = http.post(
        "/v1/classify", content=raw, headers={**auth(), "Content-Type": "application/json"}
    )
    body = assert_error(response, 422, "INPUT_VALIDATION_FAILED")
    assert body["errors"]
    assert all("input" not in e for e in body["errors"])


def test_a_body_of_many_wrong_items_gets_a_short_422(http: Http) -> None:
    body = assert_error(
        http.post("/v1/classify", json={"input": [1] * 1024, "labels": ["x"]}, headers=auth()),
        422,
        "INPUT_VALIDATION_FAILED",
    )
    # every item fails each union variant: over 3,000 errors, 20 listed (it was 2.5 MB for
    # 5,000 items); two per item once the branch names are gone (string, object), counted
    assert len(body["errors"]) == 20
    assert body["detail"] == (
        "input[0] must be a string or an object with 'text' or 'image', got number"  # parser's
        " (2,050 schema errors, the first 20 listed)"
    )


def test_a_422_names_the_field_at_fault_as_the_topics_do(http: Http) -> None:
    """Pydantic's union branches (``list[union[str,TextDoc,ImageDoc]]``, ``TextDoc``) are
    left out of the field paths, repeats go, short inputs are echoed (as Jina's errors do),
    and the detail is the workers' parser's wording for the same body."""
    bad = {"model": "m", "labels": ["a"], "input": ["ok", {"txt": "typo"}]}
    body = assert_error(
        http.post("/v1/classify", json=bad, headers=auth()), 422, "INPUT_VALIDATION_FAILED"
    )
    assert body["detail"] == "input[1] must have a string 'text' or 'image' field"
    fields = [e["field"] for e in body["errors"]]
    assert "body.input.1.text" in fields
    assert not [f for f in fields if "[" in f or "Doc" in f]
    assert len({(e["field"], e["message"]) for e in body["errors"]}) == len(body["errors"])
    assert {"txt": "typo"} in [e.get("input") for e in body["errors"]]
    both = {**bad, "input": [{"text": "meow", "image": "aGk="}]}  # the image was dropped
    body = assert_error(
        http.post("/v1/classify", json=both, headers=auth()), 422, "INPUT_VALIDATION_FAILED"
    )
    assert body["detail"] == "input[0] has both 'text' and 'image': one item is one or the other"
    example = {"text": "meow", "image": "aGk=", "label": "cat"}
    body = assert_error(
        http.post("/v1/train", json={"model": "m", "input": [example]}, headers=auth()),
        422,
        "INPUT_VALIDATION_FAILED",
    )
    assert "has both 'text' and 'image'" in body["detail"]
    train = {"model": "m", "input": [{"text": "t"}]}
    body = assert_error(
        http.post("/v1/train", json=train, headers=auth()), 422, "INPUT_VALIDATION_FAILED"
    )
    assert body["detail"] == "input[0] needs a non-empty string 'label'"
    assert "body.input.0.label" in [e["field"] for e in body["errors"]]


def test_a_null_classifier_id_does_not_hide_the_field_at_fault() -> None:
    """A new classifier's body with ``"classifier_id": null`` (clients that write every
    optional field): the 422's detail named the id as missing instead of the example."""
    http = client_for()
    train = {"classifier_id": None, "model": "m", "input": [{"text": "t"}]}
    body = assert_error(
        http.post("/v1/train", json=train, headers=auth()), 422, "INPUT_VALIDATION_FAILED"
    )
    assert body["detail"] == "input[0] needs a non-empty string 'label'"


def test_a_null_num_iters_means_the_default_as_on_kafka() -> None:
    """The train topic reads ``"num_iters": null`` as 10; the gateway refused it (422)."""
    from streams.http_models import TrainBody
    from streams.records import TrainRequest, parse_train

    body = {"model": "m", "num_iters": None, "input": [{"text": "t", "label": "l"}]}
    sent = TrainBody.model_validate(body).model_dump(mode="json", exclude_none=True)
    assert "num_iters" not in sent
    limits = Settings().limits
    parsed = parse_train({**sent, "classifier_id": "c"}, limits, request_id="r", key=b"c")
    assert isinstance(parsed, TrainRequest)
    assert parsed.num_iters == 10


@pytest.mark.parametrize("num_iters", [True, "10", 10.0])
def test_num_iters_must_be_an_integer_as_on_kafka(http: Http, num_iters: Any) -> None:
    train = {"model": "m", "num_iters": num_iters, "input": [{"text": "t", "label": "l"}]}
    assert_error(http.post("/v1/train", json=train, headers=auth()), 422, "INPUT_VALIDATION_FAILED")


def test_an_empty_classifier_id_is_refused_not_replaced_by_a_new_one(http: Http) -> None:
    train = {"classifier_id": "", "model": "m", "input": [{"text": "t", "label": "l"}]}
    body = assert_error(http.post("/v1/train", json=train, headers=auth()), 400, "INPUT_INVALID")
    assert "classifier_id" in body["detail"]
    assert not http.app.state.gateway.client._waiting


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [(b"{nope", 422, "INPUT_VALIDATION_FAILED"), (b'{"input": "\xff"}', 400, "INPUT_NOT_UTF8")],
)
def test_an_unreadable_body_is_answered_after_the_key_is_checked(
    http: Http, content: bytes, status: int, code: str
) -> None:
    json_type = {"Content-Type": "application/json"}
    for path in ("/v1/classify", "/v1/train"):
        keyless = http.post(path, content=content, headers=json_type)
        assert_error(keyless, 401, "AUTH_MISSING_API_KEY")
        assert_error(
            http.post(path, content=content, headers={**auth(), **json_type}), status, code
        )


@pytest.mark.parametrize(
    ("content", "code", "says"),
    [
        (b'{"input": "\xff"}', "INPUT_NOT_UTF8", "not UTF-8 (invalid start byte at byte 11)"),
        (
            b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            "INPUT_NOT_JSON",
            "is UTF-8 but could not be read",
        ),
    ],
)
def test_an_unreadable_body_says_why(http: Http, content: bytes, code: str, says: str) -> None:
    """A valid JSON body nested 5,000 deep was told it was not UTF-8 JSON; one that is not
    UTF-8 has the code the workers give the same bytes on a topic (it was INPUT_NOT_JSON)."""
    headers = {**auth(), "Content-Type": "application/json"}
    body = assert_error(http.post("/v1/classify", content=content, headers=headers), 400, code)
    assert says in body["detail"]


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_another_encoding_than_utf8_is_refused_as_on_kafka(
    http: Http, encoding: str
) -> None:
    """FastAPI's JSON reader takes a byte order mark, UTF-16 and UTF-32 (200 over HTTP)
    where the workers refuse the same bytes on the topic: now both refuse, with the
    workers' code."""
    from streams.errors import RequestError
    from streams.records import decode_json_object

    content = json.dumps(ZERO_SHOT).encode(encoding)
    with pytest.raises(RequestError) as on_kafka:
        decode_json_object(content)
    headers = {**auth(), "Content-Type": "application/json"}
    body = assert_error(
        http.post("/v1/classify", content=content, headers=headers),
        400,
        on_kafka.value.code.value,
    )
    assert body["detail"] == on_kafka.value.detail


def test_a_key_with_non_ascii_characters_authenticates() -> None:
    http = client_for(api_keys="clé-äöü")
    headers = {"Authorization": "Bearer clé-äöü".encode()}  # sent as UTF-8 bytes
    answer = http.post("/v1/classify", json={**ZERO_SHOT, "input": []}, headers=headers)
    assert_error(answer, 400, "INPUT_MISSING")  # past the key check


def test_listings_wait_only_for_the_callers_own_writes_and_only_once() -> None:
    from state.records import ClassifierRecord

    http = client_for(kafka={"request_timeout_s": 0.3})
    gw = http.app.state.gateway

    async def caught_up(timeout_s: float) -> None:
        pass

    gw.replica.caught_up = caught_up
    mine = ClassifierRecord.new("mine", model="m", owner="alice", access="private", dim=2, now=1.0)
    gw.replica.records["mine"] = mine
    gw.remember("mine", "alice", 0)  # the replica has read it
    gw.remember("deleted-elsewhere", "alice", 3)  # never comes: gone behind our back
    gw.remember("bobs", "bob", 1)
    assert [r.classifier_id for r in asyncio.run(gw.classifiers_of("alice"))] == ["mine"]
    assert list(gw._recent) == ["bobs"]  # alice's are settled; bob's was not waited for


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(TimeoutError("lag"), 504, "SERVICE_TIMEOUT"), (None, 503, "SERVICE_UNAVAILABLE")],
)
def test_a_listing_that_cannot_reach_kafka_is_503_or_504(
    http: Http, error: Exception | None, status: int, code: str
) -> None:
    from aiokafka.errors import KafkaConnectionError

    async def caught_up(timeout_s: float) -> None:
        raise error or KafkaConnectionError()

    http.app.state.gateway.replica.caught_up = caught_up
    http.app.state.gateway.limits.clock = lambda: 0.0  # no refill between the two: exact
    assert_error(http.get("/v1/classifiers", headers=auth()), status, code)
    response = http.get("/v1/classifiers", headers=auth())
    # admitted (one request taken) before Kafka failed: what is left is in the headers
    assert response.headers["x-ratelimit-remaining-requests"] == "498"


def test_refusals_of_a_known_caller_carry_what_it_has_left() -> None:
    """Jina's API: rate-limit headers are included in responses. A request refused before
    admission (400, 422) takes nothing from the budget and says what is left; a 401 has
    no caller, so no budget to show."""
    http = client_for(gateway={"anonymous_zero_shot": True})
    bad = http.post("/v1/classify", json={**ZERO_SHOT, "labels": []}, headers=auth())
    assert_error(bad, 400, "INPUT_MISSING")
    schema = http.post("/v1/train", json={"input": 5}, headers=auth())
    assert_error(schema, 422, "INPUT_VALIDATION_FAILED")
    for response in (bad, schema):
        assert response.headers["x-ratelimit-remaining-requests"] == "500"
        assert response.headers["x-ratelimit-remaining-tokens"] == "1000000"
    anonymous = http.post("/v1/classify", json={**ZERO_SHOT, "labels": []})
    assert_error(anonymous, 400, "INPUT_MISSING")
    assert anonymous.headers["x-ratelimit-remaining-requests"] == "500"  # its address's
    refused = http.post("/v1/train", json={"input": 5}, headers=auth("key-mallory"))
    assert_error(refused, 401, "AUTH_INVALID_API_KEY")
    assert "x-ratelimit-remaining-requests" not in refused.headers


def test_healthz_says_unavailable_while_answers_are_not_read(http: Http) -> None:
    """The gateway here never started (no Kafka): every request would time out."""
    response = http.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "not_reading": ["answers", "classifiers"]}


def test_made_up_methods_share_one_metrics_series(http: Http) -> None:
    for k in range(3):
        http.request(f"X{k}", "/v1/classify")
    text = http.get("/metrics").text
    assert 'method="other"' in text
    assert 'method="X0"' not in text


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_a_json_body_without_its_content_type_says_so(http: Http, content_type: str | None) -> None:
    """FastAPI reads a body as JSON only with a JSON content type (``curl -d`` sends a
    form type); the 422 names the header instead of "not a valid dictionary"."""
    headers = auth() if content_type is None else {**auth(), "Content-Type": content_type}
    body = assert_error(
        http.post("/v1/classify", content=json.dumps(ZERO_SHOT), headers=headers),
        422,
        "INPUT_VALIDATION_FAILED",
    )
    assert "Content-Type: application/json" in body["detail"]
    assert f"this request's: {content_type or 'none'}" in body["detail"]
    sent = http.post(
        "/v1/classify",
        content=json.dumps({"labels": ["a"]}),
        headers={**auth(), "Content-Type": "application/json; charset=utf-8"},
    )
    assert "Content-Type" not in assert_error(sent, 422, "INPUT_VALIDATION_FAILED")["detail"]


def test_anonymous_callers_share_a_bucket_per_ipv6_64() -> None:
    """One IPv6 client is routinely given a whole /64: per address, it had a fresh
    anonymous budget for every address it cared to use."""
    from starlette.requests import Request

    from streams.gateway import Gateway

    gw = Gateway(Settings(api_keys=KEY, gateway={"anonymous_zero_shot": True}))

    def bucket(host: str) -> str:
        scope = {"type": "http", "client": (host, 5000), "headers": [], "method": "POST"}
        return gw.identify(Request(scope), None, anonymous_ok=True).bucket

    assert bucket("2001:db8:1:2::1") == bucket("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert bucket("2001:db8:1:2::1") != bucket("2001:db8:1:3::1")
    assert bucket("192.0.2.7") != bucket("192.0.2.8")
    assert bucket("::ffff:192.0.2.7") == bucket("192.0.2.7")


def test_a_gateway_without_keys_says_what_to_set() -> None:
    keyless = client_for(api_keys="")
    body = assert_error(
        keyless.post("/v1/classify", json=ZERO_SHOT, headers=auth()), 401, "AUTH_INVALID_API_KEY"
    )
    assert "SHOTSTREAM_API_KEYS" in body["detail"]


def test_a_busy_worker_is_a_503_and_the_callers_input_a_400() -> None:
    """A dead letter the same request may not get later (the worker had no room in time)
    is the service's state: 503, which clients retry and the 5xx alert counts."""
    from streams.errors import ErrorCode, RequestError
    from streams.gateway import GatewayError

    def status(code: ErrorCode) -> int:
        return GatewayError.from_request_error(RequestError(code, "x")).status

    assert status(ErrorCode.SERVICE_UNAVAILABLE) == 503
    assert status(ErrorCode.IMAGE_FETCH_FAILED) == 400
