"""The HTTP gateway as users run it: ``shotstream gateway`` processes over the real broker
and the session's real e5 worker (HTTP → Kafka → worker → Kafka → HTTP)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.auth import hash_key
from streams.broker import EmbeddedBroker
from streams.cli import ROUTING_INPUTS, free_port
from streams.client import ShotstreamClient
from streams.processes import GatewayProcess, WorkerProcess
from streams.settings import Settings
from streams.worker import prepare_broker
from tests.integration.conftest import API_KEYS, with_client

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).with_name("data") / "jina_curl_examples.txt"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
DAVE, BOB = API_KEYS["dave"], API_KEYS["bob"]
RPM_KEY, TPM_KEY = "key-rpm-2", "key-tpm-50"
TIERS = {
    "free": {"rpm": 500, "tpm": 1_000_000},
    "two-per-minute": {"rpm": 2, "tpm": 1_000_000},
    "fifty-tokens": {"rpm": 500, "tpm": 50},
}


def gateway_env(broker: EmbeddedBroker, port: int, **extra: str) -> dict[str, str]:
    return {
        "SHOTSTREAM_BROKERS": broker.address,
        "SHOTSTREAM_HTTP_PORT": str(port),
        "SHOTSTREAM_API_KEYS": ",".join([*API_KEYS.values(), RPM_KEY, TPM_KEY]),
        "SHOTSTREAM_GATEWAY__TIERS": json.dumps(TIERS),
        "SHOTSTREAM_GATEWAY__KEY_TIERS": json.dumps(
            {hash_key(RPM_KEY): "two-per-minute", hash_key(TPM_KEY): "fifty-tokens"}
        ),
        **extra,
    }


def start_gateway(env: dict[str, str], log: Path) -> GatewayProcess:
    proc = GatewayProcess(env, log).start()
    try:
        proc.wait_ready(120)
    except BaseException:
        proc.stop()
        raise
    return proc


@pytest.fixture(scope="module")
def gateway(
    broker: EmbeddedBroker, worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    proc = start_gateway(gateway_env(broker, port), log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def post(url: str, body: dict[str, Any], key: str = DAVE) -> httpx.Response:
    return httpx.post(url, json=body, headers=bearer(key), timeout=60)


# -- the curl examples of the seed pages ---------------------------------------------------


def page_examples(reference: Path) -> list[str]:
    """Every ``curl`` command in the seed pages, verbatim."""
    found = []
    for page in sorted(reference.glob("0*.txt")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if line.startswith("curl"):
                end = next(j for j in range(i, len(lines)) if lines[j] in ("}'", "EOFEOF"))
                found.append("\n".join(lines[i : end + 1]))
    return found


def curl_examples() -> list[str]:
    """The committed copy of the pages' examples (the pages live outside the repository);
    where the pages are at hand, the copy must still match them."""
    text = EXAMPLES.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.startswith("# ")]
    blocks = [b.strip("\n") for b in "\n".join(lines).split("\n#---\n")]
    if REFERENCE.is_dir():
        assert blocks == page_examples(REFERENCE)
    return blocks


def run_curl(command: str, base: str, key: str, classifier_id: str | None) -> tuple[int, Any]:
    """Run a page's curl command with only the host, the key (and a created id) changed."""
    command = command.replace("https://api.jina.ai", base)
    command = command.replace("YOUR_API_KEY_HERE", key).replace('Bearer "', f'Bearer {key}"')
    if classifier_id is not None:
        command = command.replace("b36b7b23-a56c-4b52-a7ad-e89e8f5439b6", classifier_id)
    command = command.replace("curl ", "curl -sS -w '\\n%{http_code}' ", 1)
    done = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_seed_page_curl_examples_work_unchanged(gateway: str) -> None:
    examples = curl_examples()
    assert len(examples) == 6
    classifier_id = None
    seen = []
    for command in examples:
        status, body = run_curl(command, gateway, DAVE, classifier_id)
        if '"jina-clip-v1"' in command:
            # Example 2 fetches its images from picsum.photos, which cannot be reached
            # offline (the session worker maps jina-clip-v1 to a tiny random CLIP): the
            # gateway answers the worker's precise dead letter (README, "HTTP gateway").
            assert status == 400, body
            assert body["code"] == "IMAGE_FETCH_FAILED"
            assert "input[2]" in body["detail"]
            seen.append("clip")
            continue
        assert status == 200, (command[:80], body)
        if "/v1/train" in command:
            assert body["num_samples"] == 3
            assert body["usage"]["total_tokens"] > 0
            if classifier_id is None:
                classifier_id = body["classifier_id"]
                uuid.UUID(classifier_id)
                seen.append("create")
            else:
                assert body["classifier_id"] == classifier_id
                assert body["version"] == 2
                assert set(body["labels"]) == {"team1", "team2", "team3", "team4", "team5"}
                seen.append("update")
            continue
        data = body["data"]
        assert body["usage"]["total_tokens"] > 0
        assert [d["index"] for d in data] == list(range(len(data)))
        for d in data:
            assert d["object"] == "classification"
            assert abs(sum(p["score"] for p in d["predictions"]) - 1) < 1e-4
            assert d["prediction"] == d["predictions"][0]["label"]
        if '"classifier_id"' in command:
            assert body["classifier_id"] == classifier_id
            assert {d["prediction"] for d in data} <= {f"team{i}" for i in range(1, 6)}
            seen.append("few-shot")
        else:
            assert len(data) == len(ROUTING_INPUTS)
            assert {d["prediction"] for d in data} <= {
                "Simple task",
                "Complex reasoning",
                "Creative writing",
            }
            seen.append("zero-shot")
    assert sorted(seen) == ["clip", "create", "few-shot", "update", "zero-shot", "zero-shot"]
    deleted = httpx.delete(f"{gateway}/v1/classifiers/{classifier_id}", headers=bearer(DAVE))
    assert deleted.status_code == 200


# -- through Kafka -------------------------------------------------------------------------


def test_two_gateways_each_get_their_own_replies(
    gateway: str, broker: EmbeddedBroker, tmp_path: Path
) -> None:
    port = free_port()
    second = start_gateway(gateway_env(broker, port), tmp_path / "second.log")
    bases = [gateway, f"http://127.0.0.1:{port}"]

    async def one(c: httpx.AsyncClient, i: int) -> tuple[int, httpx.Response]:
        body = {
            "labels": ["cat", "dog"],
            "input": [f"request {i} item {j}" for j in range(i % 7 + 1)],
        }
        return i, await c.post(f"{bases[i % 2]}/v1/classify", json=body, headers=bearer(DAVE))

    async def go() -> list[tuple[int, httpx.Response]]:
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*(one(c, i) for i in range(40)))

    try:
        answers = asyncio.run(go())
    finally:
        second.stop()
    for i, response in answers:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["request_id"] == response.headers["x-request-id"]
        assert len(body["data"]) == i % 7 + 1


def test_worker_errors_become_http_errors(gateway: str) -> None:
    url = f"{gateway}/v1/classify"
    unknown = post(url, {"model": "no-such-model", "labels": ["a"], "input": ["x"]})
    assert unknown.status_code == 400
    assert unknown.json()["code"] == "MODEL_NOT_AVAILABLE"
    too_long = post(url, {"labels": ["a", "b"], "input": ["word " * 9000]})
    assert too_long.status_code == 400
    assert too_long.json()["code"] == "INPUT_TOO_LONG"

    examples = [{"text": f"example {i}", "label": f"c{i}"} for i in range(17)]
    classes = post(f"{gateway}/v1/train", {"model": "jina-embeddings-v3", "input": examples})
    assert classes.status_code == 400
    assert classes.json()["code"] == "INPUT_LABEL_LIMIT_EXCEEDED"

    train = [
        {"text": "refund my order", "label": "billing"},
        {"text": "app crashes", "label": "bug"},
    ]
    private = post(f"{gateway}/v1/train", {"model": "jina-embeddings-v3", "input": train})
    public = post(
        f"{gateway}/v1/train", {"model": "jina-embeddings-v3", "access": "public", "input": train}
    )
    assert private.status_code == public.status_code == 200
    hidden = post(url, {"classifier_id": private.json()["classifier_id"], "input": ["x"]}, BOB)
    assert hidden.status_code == 404
    assert hidden.json()["code"] == "CLASSIFIER_NOT_FOUND"
    shared = post(url, {"classifier_id": public.json()["classifier_id"], "input": ["x"]}, BOB)
    assert shared.status_code == 200
    update = {"classifier_id": public.json()["classifier_id"], "input": train}
    not_owner = post(f"{gateway}/v1/train", update, BOB)
    assert not_owner.status_code == 403
    assert not_owner.json()["code"] == "AUTHZ_ACCESS_DENIED"
    for created in (private, public):
        cid = created.json()["classifier_id"]
        gone = httpx.delete(f"{gateway}/v1/classifiers/{cid}", headers=bearer(DAVE))
        assert gone.status_code == 200
        assert gone.json() == {
            "request_id": gone.headers["x-request-id"],
            "classifier_id": cid,
            "deleted": True,
        }
    again = httpx.delete(f"{gateway}/v1/classifiers/{cid}", headers=bearer(DAVE))
    assert again.status_code == 404


def test_an_update_of_an_unknown_id_is_not_found_and_any_id_can_be_deleted(
    gateway: str, broker: EmbeddedBroker
) -> None:
    """Over HTTP an id means an update, as in Jina's API: a mistyped one must not make a
    new classifier (it did, with a ``model``). Kafka producers pick their ids, any
    string; the gateway deletes those too, slashes and all."""
    train = [{"text": "refund my order", "label": "billing"}, {"text": "crash", "label": "bug"}]
    typo = {"classifier_id": "team/support", "model": "jina-embeddings-v3", "input": train}
    missing = post(f"{gateway}/v1/train", typo)
    assert missing.status_code == 404, missing.text
    assert missing.json()["code"] == "CLASSIFIER_NOT_FOUND"
    listed = httpx.get(f"{gateway}/v1/classifiers", headers=bearer(DAVE)).json()
    assert "team/support" not in {row["classifier_id"] for row in listed}

    settings = Settings(brokers=broker.address)

    async def create(client: ShotstreamClient) -> Any:
        return await client.train(
            train, classifier_id="team/support", api_key=DAVE, model="jina-embeddings-v3"
        )

    assert with_client(settings, create)["version"] == 1  # on Kafka the id is ours
    updated = post(f"{gateway}/v1/train", {**typo, "model": None})
    assert updated.status_code == 200, updated.text
    assert updated.json()["version"] == 2
    quoted = f"{gateway}/v1/classifiers/team%2Fsupport"
    gone = httpx.delete(quoted, headers=bearer(DAVE))
    assert gone.status_code == 200, gone.text
    assert gone.json()["classifier_id"] == "team/support"
    again = httpx.delete(f"{gateway}/v1/classifiers/team/support", headers=bearer(DAVE))
    assert again.status_code == 404
    assert again.json()["code"] == "CLASSIFIER_NOT_FOUND"  # the worker's, not a missing route


def test_foreign_records_on_the_answer_topics_do_not_stop_the_replies(
    gateway: str, broker: EmbeddedBroker
) -> None:
    """Anyone who may write to the predictions topic can put anything there: a record
    nested too deeply for Python's JSON reader ended the gateway's answer reader, and
    every request waited 30 s for its 504 from then on."""
    settings = Settings(brokers=broker.address)
    nested = b'{"request_id": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    async def litter(client: ShotstreamClient) -> None:
        for value in (nested, b"\xff not json", b"[1, 2]", None):
            await client.produce(settings.topic("predictions"), value, key="litter")

    with_client(settings, litter)
    body = {"model": "jina-embeddings-v3", "labels": ["a", "b"], "input": ["x"]}
    answered = post(f"{gateway}/v1/classify", body)
    assert answered.status_code == 200, answered.text
    assert httpx.get(f"{gateway}/healthz").status_code == 200


def test_listing_reads_its_own_writes(gateway: str) -> None:
    erin = API_KEYS["erin"]
    train = [
        {"text": "the pasta was cold", "label": "food"},
        {"text": "rude waiter", "label": "service"},
    ]
    created = post(f"{gateway}/v1/train", {"model": "jina-embeddings-v3", "input": train}, erin)
    cid = created.json()["classifier_id"]
    rows = httpx.get(f"{gateway}/v1/classifiers", headers=bearer(erin)).json()
    mine = [r for r in rows if r["classifier_id"] == cid]
    assert len(mine) == 1
    assert mine[0]["labels"] == ["food", "service"]
    assert mine[0]["updated_number"] == 1
    assert mine[0]["access"] == "private"
    uuid.UUID(mine[0]["user_id"])
    assert erin not in json.dumps(rows)
    assert hash_key(erin) not in json.dumps(rows)
    post(f"{gateway}/v1/train", {"classifier_id": cid, "input": train}, erin)
    rows = httpx.post(f"{gateway}/v1/classifiers", headers=bearer(erin)).json()
    assert [r["updated_number"] for r in rows if r["classifier_id"] == cid] == [2]
    assert all(
        r["classifier_id"] != cid
        for r in httpx.get(f"{gateway}/v1/classifiers", headers=bearer(DAVE)).json()
    )
    httpx.delete(f"{gateway}/v1/classifiers/{cid}", headers=bearer(erin))
    rows = httpx.get(f"{gateway}/v1/classifiers", headers=bearer(erin)).json()
    assert all(r["classifier_id"] != cid for r in rows)


def test_the_listing_counts_few_shot_uses(gateway: str) -> None:
    """Workers report their few-shot answers per classifier (every second here, 10 s by
    default) to its owner, who adds them to the record the listing reads."""
    erin = API_KEYS["erin"]
    train = [{"text": "the soup was cold", "label": "food"}, {"text": "slow", "label": "service"}]
    created = post(f"{gateway}/v1/train", {"model": "jina-embeddings-v3", "input": train}, erin)
    cid = created.json()["classifier_id"]

    def row() -> dict[str, Any]:
        rows = httpx.get(f"{gateway}/v1/classifiers", headers=bearer(erin)).json()
        return next(r for r in rows if r["classifier_id"] == cid)

    assert (row()["used_number"], row()["used_at"]) == (0, None)
    for _ in range(3):
        answer = post(f"{gateway}/v1/classify", {"classifier_id": cid, "input": ["hm"]}, erin)
        assert answer.status_code == 200, answer.text
    deadline = time.monotonic() + 60
    while row()["used_number"] < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    used = row()
    assert used["used_number"] == 3
    assert used["used_at"] >= used["created_at"]
    assert used["updated_number"] == 1  # a use is not an update
    httpx.delete(f"{gateway}/v1/classifiers/{cid}", headers=bearer(erin))


def test_rate_limits_per_key(gateway: str) -> None:
    url = f"{gateway}/v1/classify"
    body = {"labels": ["a", "b"], "input": ["a short input"]}
    first, second, third = (post(url, body, RPM_KEY) for _ in range(3))
    assert first.status_code == second.status_code == 200
    assert int(first.headers["x-ratelimit-remaining-requests"]) == 1
    assert third.status_code == 429
    assert third.json()["code"] == "RATE_REQUEST_LIMIT_EXCEEDED"
    assert 1 <= int(third.headers["retry-after"]) <= 30
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert post(url, body, DAVE).status_code == 200  # others are not affected

    statuses = []
    for _ in range(10):
        response = post(url, body, TPM_KEY)
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["code"] == "RATE_TOKEN_LIMIT_EXCEEDED"
            assert response.headers["x-ratelimit-remaining-tokens"] == "0"
            assert int(response.headers["retry-after"]) >= 1
            break
        tokens = response.json()["usage"]["total_tokens"]
        assert tokens > 0
        assert int(response.headers["x-ratelimit-remaining-tokens"]) <= 50 - tokens
    assert statuses[0] == 200
    assert statuses[-1] == 429


def test_metrics_by_route_and_status(gateway: str) -> None:
    post(f"{gateway}/v1/classify", {"labels": ["a", "b"], "input": ["x"]})
    httpx.post(f"{gateway}/v1/classify", json={"input": ["x"]})
    text = httpx.get(f"{gateway}/metrics").text
    counts = dict(re.findall(r"shotstream_http_requests_total\{(.*?)\} ([0-9.]+)", text))
    assert float(counts['method="POST",route="/v1/classify",status="200"']) >= 1
    assert float(counts['method="POST",route="/v1/classify",status="401"']) >= 1
    assert "shotstream_http_request_duration_seconds_bucket" in text
    health = httpx.get(f"{gateway}/healthz")  # it reads answers and the classifiers
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_no_answer_in_time_is_504(broker: EmbeddedBroker, tmp_path: Path) -> None:
    # topics with no worker behind them
    env = gateway_env(
        broker,
        free_port(),
        SHOTSTREAM_TOPIC_PREFIX="noworker.",
        SHOTSTREAM_KAFKA__GROUP_ID="noworker",
        SHOTSTREAM_GATEWAY__REPLY_TIMEOUT_S="1.5",
    )
    asyncio.run(
        prepare_broker(
            Settings(
                brokers=broker.address, topic_prefix="noworker.", kafka={"group_id": "noworker"}
            )
        )
    )
    proc = start_gateway(env, tmp_path / "gateway.log")
    try:
        port = env["SHOTSTREAM_HTTP_PORT"]
        response = post(f"http://127.0.0.1:{port}/v1/classify", {"labels": ["a"], "input": ["x"]})
    finally:
        proc.stop()
    assert response.status_code == 504
    assert response.json()["code"] == "SERVICE_TIMEOUT"
    assert "1.5 seconds" in response.json()["detail"]


def test_kafka_gone_is_503_in_kafka_timeout_and_the_gateway_still_stops_cleanly(
    tmp_path: Path,
) -> None:
    """Its own broker, stopped under a running gateway: requests and listings answer 503
    after SHOTSTREAM_GATEWAY__KAFKA_TIMEOUT_S (aiokafka alone would take 40 s, past the
    client's 20 s here), and SIGTERM still shuts the gateway down cleanly (uvicorn then
    ends the process by the signal it caught, as with Kafka up)."""
    own = EmbeddedBroker(free_port()).start()
    try:
        asyncio.run(prepare_broker(Settings(brokers=own.address)))
        env = gateway_env(own, free_port(), SHOTSTREAM_GATEWAY__KAFKA_TIMEOUT_S="2")
        proc = start_gateway(env, tmp_path / "gateway.log")
    finally:
        own.stop()
    try:
        base = f"http://127.0.0.1:{env['SHOTSTREAM_HTTP_PORT']}"
        classify = httpx.post(
            f"{base}/v1/classify",
            json={"labels": ["a", "b"], "input": ["x"]},
            headers=bearer(DAVE),
            timeout=20,
        )
        listing = httpx.get(f"{base}/v1/classifiers", headers=bearer(DAVE), timeout=20)
    finally:
        proc.stop()
    for response in (classify, listing):
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "SERVICE_UNAVAILABLE"
        assert response.json()["detail"].startswith("Kafka unavailable")
    log = proc.log_text()
    assert "Application shutdown complete" in log, log[-3000:]
    assert "shutdown failed" not in log


def test_schemathesis_finds_no_server_errors_and_no_schema_breaks(
    gateway: str, tmp_path: Path
) -> None:
    """A bounded schemathesis run: generated and mutated requests, real answers. It runs
    in a scratch directory: schemathesis keeps a ``.schemathesis/`` cache in its cwd."""
    st = Path(sys.executable).with_name("st")
    done = subprocess.run(
        [
            str(st),
            "run",
            f"{gateway}/openapi.json",
            "--header",
            f"Authorization: Bearer {DAVE}",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "15",
            "--max-time",
            "120",
            "--workers",
            "2",
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,"
            "response_schema_conformance,response_headers_conformance,negative_data_rejection",
            "--seed",
            "1",
            # a generator-side check, not a server one: once a run finds that the HTTP
            # stack refuses NULL bytes in headers, it filters such cases out, and on one
            # fresh-clone run that left too few for DELETE /v1/classifiers/{id} in time
            "--suppress-health-check",
            "filter_too_much",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
