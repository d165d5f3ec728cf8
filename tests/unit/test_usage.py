"""Few-shot uses per classifier (streams.usage): counted where answered, reported to the
train topic for the classifier's owner to add (the adding: test_train_handler.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import orjson
import pytest

from state.records import ClassifierRecord, RecordFormatError, decode_record, encode_record
from streams.agents import ClassifyHandler
from streams.auth import KeyRing
from streams.errors import ErrorCode, RequestError
from streams.observer import Observer
from streams.settings import Settings
from streams.usage import UsageCounter


class Output:
    settings = Settings()

    def __init__(self, fail_for: str | None = None) -> None:
        self.sent: list[tuple[str, str | None, dict[str, Any]]] = []
        self.fail_for = fail_for

    async def send(self, topic: str, key: str | None, value: bytes, **_: Any) -> None:
        if key is not None and key == self.fail_for:
            raise RuntimeError("the broker said no")
        self.sent.append((topic, key, orjson.loads(value)))


def test_reports_carry_each_classifiers_uses_since_the_last_one_and_its_last_use() -> None:
    usage = UsageCounter()
    for cid, at in [("a", 10.0), ("b", 11.0), ("a", 12.0), ("a", 9.0)]:
        usage.count(cid, now=at)
    output = Output()
    assert asyncio.run(usage.report(cast(Any, output), "shotstream.train")) == 2
    reports = {key: body for _topic, key, body in output.sent}
    assert {t for t, _k, _b in output.sent} == {"shotstream.train"}
    assert {k: (b["action"], b["classifier_id"], b["count"], b["used_at"])
            for k, b in reports.items()} == {
        "a": ("usage", "a", 3, 12.0), "b": ("usage", "b", 1, 11.0),
    }  # fmt: skip
    assert asyncio.run(usage.report(cast(Any, output), "t")) == 0  # nothing new: nothing sent
    assert len(output.sent) == 2


def test_a_report_the_broker_refuses_loses_its_counts_and_not_the_others() -> None:
    usage = UsageCounter()
    usage.count("a", now=1.0)
    usage.count("b", now=2.0)
    output = Output(fail_for="a")
    asyncio.run(usage.report(cast(Any, output), "t"))  # never raises: counts are at most once
    assert [key for _t, key, _b in output.sent] == ["b"]


class Service:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def classify(self, request: Any, owner: str | None) -> dict[str, Any]:
        if self.error is not None:
            raise self.error
        return {"request_id": request.request_id, "data": []}


def classify_event(body: dict[str, Any]) -> Any:
    message = SimpleNamespace(
        topic="classify", partition=0, tp=("classify", 0), offset=0, key=b"r",
        value=orjson.dumps(body), headers=[("authorization", b"Bearer key-alice")],
        timestamp=None,
    )  # fmt: skip
    return SimpleNamespace(message=message, ack=lambda: None)


@pytest.mark.parametrize(
    ("body", "error", "counted"),
    [
        ({"classifier_id": "c1", "input": ["x"]}, None, {"c1": 1}),
        ({"model": "m", "input": ["x"], "labels": ["a", "b"]}, None, {}),  # zero-shot
        (
            {"classifier_id": "c1", "input": ["x"]},
            RequestError(ErrorCode.CLASSIFIER_NOT_FOUND, "no"),
            {},
        ),  # refused: not a use
    ],
)
def test_a_worker_counts_the_few_shot_requests_it_answered(
    body: dict[str, Any], error: Exception | None, counted: dict[str, int]
) -> None:
    usage = UsageCounter()
    handler = ClassifyHandler(
        Settings(), cast(Any, Service(error)), KeyRing(["key-alice"]), cast(Any, Output()),
        Observer(), usage=usage,
    )  # fmt: skip
    asyncio.run(handler(classify_event({"request_id": "r", **body})))
    assert {cid: n for cid, (n, _at) in usage.take().items()} == counted


def test_uses_survive_the_codec_and_a_never_used_record_encodes_as_before() -> None:
    rec = ClassifierRecord.new("c", model="m", owner="o", access="private", dim=2, now=1.0)
    plain = encode_record(rec)
    assert b"used_number" not in plain
    assert (decode_record(plain).used_number, decode_record(plain).used_at) == (0, None)
    rec.used_number, rec.used_at = 7, 1234.5
    back = decode_record(encode_record(rec))
    assert (back.used_number, back.used_at) == (7, 1234.5)
    for bad in (b'"used_at":"soon"', b'"used_at":true'):
        data = encode_record(rec).replace(b'"used_at":1234.5', bad)
        head_len = int.from_bytes(data[6:10], "little")
        data = (
            data[:6]
            + (head_len + len(bad) - len(b'"used_at":1234.5')).to_bytes(4, "little")
            + data[10:]
        )
        with pytest.raises(RecordFormatError, match="used_at"):
            decode_record(data)
    np.testing.assert_array_equal(back.weights, rec.weights)
