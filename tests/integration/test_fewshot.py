"""Few-shot over the embedded broker: the support-ticket example, access, limits, delete."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker
from streams.client import ShotstreamClient
from streams.processes import WorkerProcess
from streams.training import key_partition
from tests.integration.conftest import API_KEYS, client_settings, with_client, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.model]

ALICE, BOB, CAROL = API_KEYS["alice"], API_KEYS["bob"], API_KEYS["carol"]
GRACE = API_KEYS["grace"]  # the burst test's: it fills her 16 classifiers

FIRST = [
    {"text": "I cant log into my account after the latest app update.", "label": "team1"},
    {"text": "My subscription renewal failed due to an expired credit card.", "label": "team2"},
    {"text": "How do I export my data from the platform?", "label": "team3"},
]
SECOND = [
    {
        "text": "Im getting a 404 error when trying to access the new AI chatbot feature.",
        "label": "team4",
    },
    {
        "text": "The latest security patch is conflicting with my company firewall.",
        "label": "team1",
    },
    {"text": "I need help setting up SSO for my organization account.", "label": "team5"},
]
TICKETS = [
    {"text": "The new feature is causing my dashboard to load slowly."},
    {"text": "I need to update my billing information for tax purposes."},
]


def new_id() -> str:
    return str(uuid.uuid4())


def code(answer: dict) -> str | None:
    return answer["error"]["code"] if "error" in answer else None


def test_support_ticket_example(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    cid = new_id()

    async def go(c: ShotstreamClient) -> tuple[dict, dict, dict]:
        created = await c.train(
            FIRST,
            classifier_id=cid,
            api_key=ALICE,
            model="jina-embeddings-v3",
            access="private",
            num_iters=10,
        )
        updated = await c.train(SECOND, classifier_id=cid, api_key=ALICE, num_iters=10)
        # reads follow writes by the replication delay (README, "How it works"): a classify
        # right after the update may still be served by version 1, and says so
        deadline = time.monotonic() + 60  # a generous bound for a slow, busy machine
        while True:
            answer = await c.classify(TICKETS, classifier_id=cid, api_key=ALICE)
            if answer.get("version") == 2 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        seen = await c.classify(
            [e["text"] for e in FIRST + SECOND], classifier_id=cid, api_key=ALICE
        )
        return created, updated, answer, seen

    created, updated, answer, seen = with_client(client_settings(broker), go)
    assert created["classifier_id"] == cid
    assert created["num_samples"] == 3
    assert created["version"] == 1
    assert created["labels"] == ["team1", "team2", "team3"]
    assert created["usage"]["total_tokens"] > 10 * 3  # input tokens x num_iters
    assert updated["version"] == 2
    assert updated["labels"] == ["team1", "team2", "team3", "team4", "team5"]
    assert answer["classifier_id"] == cid
    assert answer["version"] == 2
    assert [d["index"] for d in answer["data"]] == [0, 1]
    for d in answer["data"]:
        assert {p["label"] for p in d["predictions"]} == {f"team{i}" for i in range(1, 6)}
        assert abs(sum(p["score"] for p in d["predictions"]) - 1) < 1e-4
    # ten passes per example: every training example is now on its own side
    assert [d["prediction"] for d in seen["data"]] == [e["label"] for e in FIRST + SECOND]


def test_private_and_public_access(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    cid = new_id()

    async def go(c: ShotstreamClient) -> list[dict]:
        out = [await c.train(FIRST, classifier_id=cid, api_key=ALICE, model="jina-embeddings-v3")]
        out.append(await c.classify(TICKETS, classifier_id=cid, api_key=BOB))  # private: hidden
        out.append(await c.classify(TICKETS, classifier_id=cid, api_key=None))  # no key
        out.append(await c.classify(TICKETS, classifier_id=cid, api_key="key-unknown"))
        out.append(await c.train(SECOND, classifier_id=cid, api_key=BOB))  # not found for bob
        # refused before embedding: an input too long for the model says nothing either
        too_long = [{"text": "word " * 9000, "label": "team1"}]
        out.append(await c.train(too_long, classifier_id=cid, api_key=BOB))
        out.append(await c.train(FIRST[:1], classifier_id=cid, api_key=ALICE, access="public"))
        out.append(await c.classify(TICKETS, classifier_id=cid, api_key=BOB))  # now visible
        out.append(await c.train(SECOND, classifier_id=cid, api_key=BOB))  # only owner trains
        out.append(await c.delete(cid, api_key=BOB))  # only owner deletes
        out.append(await c.delete(cid, api_key=ALICE))
        out.append(await c.classify(TICKETS, classifier_id=cid, api_key=ALICE))
        return out

    (
        created,
        hidden,
        anon,
        unknown,
        bob_train,
        bob_too_long,
        public,
        bob_reads,
        bob_public_train,
        bob_delete,
        deleted,
        gone,
    ) = with_client(client_settings(broker), go)
    assert created["version"] == 1
    assert code(hidden) == "CLASSIFIER_NOT_FOUND"
    assert code(anon) == "AUTH_MISSING_API_KEY"
    assert code(unknown) == "AUTH_INVALID_API_KEY"
    assert code(bob_train) == "CLASSIFIER_NOT_FOUND"
    assert code(bob_too_long) == "CLASSIFIER_NOT_FOUND"
    assert public["version"] == 2
    assert code(bob_reads) is None
    assert bob_reads["classifier_id"] == cid
    assert code(bob_public_train) == "AUTHZ_ACCESS_DENIED"
    assert code(bob_delete) == "AUTHZ_ACCESS_DENIED"
    assert deleted["deleted"] is True
    assert code(gone) == "CLASSIFIER_NOT_FOUND"


def test_limits(broker: EmbeddedBroker, worker: WorkerProcess) -> None:
    async def go(c: ShotstreamClient) -> tuple[list[dict], dict, dict, dict, dict]:
        ids = [new_id() for _ in range(17)]
        made = []
        for cid in ids:  # one at a time: the per-key count reads the replica
            made.append(
                await c.train(
                    [{"text": "hello", "label": "a"}],
                    classifier_id=cid,
                    api_key=CAROL,
                    model="jina-embeddings-v3",
                )
            )
            await asyncio.sleep(0.05)
        many = await c.train(
            [{"text": f"example {i}", "label": f"class{i}"} for i in range(17)],
            classifier_id=new_id(),
            api_key=ALICE,
            model="jina-embeddings-v3",
        )
        no_model = await c.train(FIRST, classifier_id=new_id(), api_key=ALICE)
        too_many = await c.train(
            [{"text": "x", "label": "a"}] * 1025,
            classifier_id=new_id(),
            api_key=ALICE,
            model="jina-embeddings-v3",
        )
        bad_iters = await c.train(
            FIRST, classifier_id=new_id(), api_key=ALICE, model="jina-embeddings-v3", num_iters=0
        )
        return made, many, no_model, too_many, bad_iters

    made, many, no_model, too_many, bad_iters = with_client(client_settings(broker), go)
    assert [code(m) for m in made[:16]] == [None] * 16
    assert code(made[16]) == "AUTHZ_RESOURCE_LIMIT_EXCEEDED"
    assert code(many) == "INPUT_LABEL_LIMIT_EXCEEDED"
    assert code(no_model) == "CLASSIFIER_NOT_FOUND"
    assert code(too_many) == "INPUT_LIMIT_EXCEEDED"
    assert code(bad_iters) == "INPUT_INVALID"


def test_a_burst_of_creates_cannot_pass_the_classifier_limit(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    """20 first train requests at once, on every partition: the worker reads its own
    creates back through the changelog only later, yet exactly 16 pass."""

    async def go(c: ShotstreamClient) -> list[dict]:
        futures = [
            await c.send(
                c.settings.topic("train"),
                {"input": FIRST, "model": "jina-embeddings-v3"},
                key=new_id(),
                headers=[("authorization", f"Bearer {GRACE}".encode())],
            )
            for _ in range(20)
        ]
        return list(await asyncio.wait_for(asyncio.gather(*futures), 120))

    answers = with_client(client_settings(broker), go)
    codes = [code(a) for a in answers]
    assert codes.count(None) == 16, codes
    assert codes.count("AUTHZ_RESOURCE_LIMIT_EXCEEDED") == 4, codes


def test_a_keyless_train_record_is_refused_and_nothing_is_created(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    """The key keeps a classifier's records on one partition; a keyless one could land
    anywhere, so it is a dead letter, and the classifier it names is not created."""
    cid = new_id()

    async def go(c: ShotstreamClient) -> tuple[dict, dict]:
        body = {
            "request_id": "keyless-1",
            "classifier_id": cid,
            "input": FIRST,
            "model": "jina-embeddings-v3",
        }
        letter = c.expect("keyless-1")
        await c.produce(
            c.settings.topic("train"),
            json.dumps(body).encode(),
            key=None,
            headers=[("authorization", f"Bearer {ALICE}".encode())],
        )
        refused = await asyncio.wait_for(letter, 120)
        # keyed, the same body is learned as version 1: nothing was applied before
        keyed = await c.train(FIRST, classifier_id=cid, api_key=ALICE, model="jina-embeddings-v3")
        return refused, keyed

    refused, keyed = with_client(client_settings(broker), go)
    assert refused["error"]["code"] == "INPUT_INVALID"
    assert "keyed by their classifier_id" in refused["error"]["detail"]
    assert keyed["version"] == 1


def test_a_train_record_off_its_keys_partition_is_refused_and_nothing_is_created(
    broker: EmbeddedBroker,
    worker: WorkerProcess,
    model_cache: Path,
    tmp_path: Path,
) -> None:
    """A worker keeps a classifier in its key's partition (murmur2, Kafka's default
    partitioner); a record produced to another (librdkafka's CRC32 default, a partition
    named by hand) would have created a second classifier under the same id there. Two
    workers share the partitions: every member checks, not only the group's leader (whose
    assignment snapshot faust's own partition count reads)."""
    count = client_settings(broker).partitions
    ids = {}
    for partition in range(count):  # one astray record on every partition
        cid = new_id()
        while key_partition(cid.encode(), count) == partition:
            cid = new_id()
        ids[partition] = cid

    async def go(c: ShotstreamClient) -> tuple[list[dict], dict]:
        letters = []
        for partition, cid in ids.items():
            rid = f"astray-{partition}"
            letters.append(c.expect(rid))
            body = {"request_id": rid, "classifier_id": cid, "input": FIRST}
            await c.produce(
                c.settings.topic("train"),
                json.dumps({**body, "model": "jina-embeddings-v3"}).encode(),
                key=cid,
                headers=[("authorization", f"Bearer {ALICE}".encode())],
                partition=partition,
            )
        refused = [await asyncio.wait_for(letter, 180) for letter in letters]
        keyed = await c.train(
            FIRST, classifier_id=ids[0], api_key=ALICE, model="jina-embeddings-v3"
        )
        return refused, keyed

    env = worker_env(broker, tmp_path / "second", model_cache)
    with WorkerProcess(env, tmp_path / "second.log") as second:
        second.wait_ready(600)
        refused, keyed = with_client(client_settings(broker), go)
    for letter in refused:
        assert letter["error"]["code"] == "INPUT_INVALID", letter
        assert "must all be on its key's partition" in letter["error"]["detail"]
    assert keyed["version"] == 1


def test_cli_lists_and_deletes_your_classifiers(
    broker: EmbeddedBroker, worker: WorkerProcess
) -> None:
    cid = new_id()

    async def go(c: ShotstreamClient) -> dict:
        return await c.train(FIRST, classifier_id=cid, api_key=BOB, model="jina-embeddings-v3")

    assert with_client(client_settings(broker), go)["version"] == 1
    env = {**os.environ, "SHOTSTREAM_BROKERS": broker.address, "SHOTSTREAM_API_KEY": BOB}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streams", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    listed = json.loads(cli("classifiers", "list", "--json").stdout)
    mine = {row["classifier_id"]: row for row in listed}
    assert mine[cid]["labels"] == ["team1", "team2", "team3"]
    assert mine[cid]["access"] == "private"
    assert mine[cid]["version"] == 1
    assert mine[cid]["samples_seen"] == 3
    assert "owner" not in mine[cid]
    others = json.loads(cli("classifiers", "list", "--json", "--api-key", ALICE).stdout)
    assert cid not in {row["classifier_id"] for row in others}
    used = cli("classify", "--json", "--classifier-id", cid, "My card was declined again")
    assert used.returncode == 0, used.stderr
    assert json.loads(used.stdout)["classifier_id"] == cid  # the key comes from the env
    deleted = cli("classifiers", "delete", cid)
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["deleted"] is True
    after = json.loads(cli("classifiers", "list", "--json").stdout)
    assert cid not in {row["classifier_id"] for row in after}


def test_an_unknown_id_is_answered_without_sitting_out_the_visibility_wait(
    broker: EmbeddedBroker, model_cache: Path, tmp_path: Path
) -> None:
    """A worker whose visibility wait is 10 minutes still answers an unknown id, someone
    else's private classifier and a deleted one at once (within the client's 60 s): it
    reads the changelog to its end instead. A classifier is found right after its
    creation, and right after it is made public, every time."""
    env = worker_env(
        broker,
        tmp_path / "data",
        model_cache,
        SHOTSTREAM_TOPIC_PREFIX="visible.",
        SHOTSTREAM_KAFKA__GROUP_ID="visible",
        SHOTSTREAM_LIMITS__VISIBILITY_WAIT_S="600",
    )
    settings = client_settings(broker, topic_prefix="visible.", kafka={"group_id": "visible"})

    async def go(c: ShotstreamClient) -> list[str | None]:
        codes = [code(await c.classify(TICKETS, classifier_id=new_id(), api_key=ALICE))]
        for _ in range(3):
            cid = new_id()
            made = await c.train(
                FIRST, classifier_id=cid, api_key=ALICE, model="jina-embeddings-v3"
            )
            assert code(made) is None, made
            codes.append(code(await c.classify(TICKETS, classifier_id=cid, api_key=ALICE)))
            codes.append(code(await c.classify(TICKETS, classifier_id=cid, api_key=BOB)))
            public = await c.train(SECOND, classifier_id=cid, api_key=ALICE, access="public")
            assert code(public) is None, public
            codes.append(code(await c.classify(TICKETS, classifier_id=cid, api_key=BOB)))
            assert code(await c.delete(cid, api_key=ALICE)) is None
            codes.append(code(await c.classify(TICKETS, classifier_id=cid, api_key=ALICE)))
        return codes

    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        worker.wait_ready(600)
        codes = with_client(settings, go)
    found, missing = None, "CLASSIFIER_NOT_FOUND"
    assert codes == [missing, *[found, missing, found, missing] * 3], codes
