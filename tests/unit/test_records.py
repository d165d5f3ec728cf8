"""Request validation: every bad body gets a precise code."""

from __future__ import annotations

import base64
import json

import pytest

from streams.errors import ErrorCode, RequestError
from streams.records import (
    DeleteRequest,
    ImageInput,
    TextInput,
    TrainRequest,
    dead_letter,
    decode_json_object,
    parse_classify,
    parse_train,
    request_id_of,
)
from streams.settings import LimitSettings

LIMITS = LimitSettings()


def parse(body: object) -> object:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    obj = decode_json_object(raw)
    return parse_classify(obj, LIMITS, request_id=request_id_of(obj, b"key-1"))


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\xff\xfe not utf-8", ErrorCode.INPUT_NOT_UTF8),
        (b"{not json", ErrorCode.INPUT_NOT_JSON),
        # JSON, but a lone surrogate is no text: the gateway's code for it, not NOT_JSON
        (b'{"input": ["\\ud800"], "labels": ["a"]}', ErrorCode.INPUT_INVALID),
        (b'{"input": ["\\udc00x"], "labels": ["a"]}', ErrorCode.INPUT_INVALID),
        ([1, 2, 3], ErrorCode.INPUT_NOT_OBJECT),
        ("a string", ErrorCode.INPUT_NOT_OBJECT),
        ({"labels": ["a", "b"]}, ErrorCode.INPUT_MISSING),
        ({"labels": ["a", "b"], "input": []}, ErrorCode.INPUT_MISSING),
        ({"input": ["x"]}, ErrorCode.INPUT_MISSING),
        (
            {"input": ["x"], "labels": [f"l{i}" for i in range(257)]},
            ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED,
        ),
        ({"input": ["x"] * 1025, "labels": ["a"]}, ErrorCode.INPUT_LIMIT_EXCEEDED),
        ({"input": [42], "labels": ["a"]}, ErrorCode.INPUT_INVALID),
        ({"input": [{"txt": "x"}], "labels": ["a"]}, ErrorCode.INPUT_INVALID),
        # a label that shows nothing, as "  " is refused (they were scored, 0.479)
        ({"input": ["x"], "labels": ["a", "\u200b"]}, ErrorCode.INPUT_INVALID),
        ({"input": ["x"], "labels": ["a", "\x00"]}, ErrorCode.INPUT_INVALID),
        # both: the image was dropped without a word, however invalid
        ({"input": [{"text": "x", "image": "?"}], "labels": ["a"]}, ErrorCode.INPUT_INVALID),
        ({"input": ["x"], "labels": "a,b"}, ErrorCode.INPUT_INVALID),
        ({"input": ["x"], "labels": ["a", 3]}, ErrorCode.INPUT_INVALID),
        ({"input": ["x"], "labels": ["a"], "model": 7}, ErrorCode.INPUT_INVALID),
        (
            {"input": ["x"], "labels": {f"g{i}": ["a"] for i in range(9)}},
            ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED,
        ),
        (
            {"input": ["x"], "labels": {"g": [f"l{i}" for i in range(65)]}},
            ErrorCode.INPUT_LABEL_LIMIT_EXCEEDED,
        ),
        ({"input": ["x"], "labels": {}}, ErrorCode.INPUT_MISSING),
    ],
)
def test_bad_bodies_get_precise_codes(body: object, code: ErrorCode) -> None:
    with pytest.raises(RequestError) as info:
        parse(body)
    assert info.value.code == code
    assert info.value.detail


def test_jina_bodies_parse_with_extra_fields_and_repeated_labels() -> None:
    # the playground example repeats labels and carries an unknown "action" field
    req = parse(
        {
            "model": "jina-embeddings-v3",
            "action": "list",
            "labels": ["A", "B", "A"],
            "input": ["x", {"text": "y"}, {"image": "z"}],
        }
    )
    assert req.labels == ("A", "B")
    assert req.inputs == (TextInput("x"), TextInput("y"), ImageInput("z"))
    assert req.request_id == "key-1"


def test_a_label_in_another_unicode_form_is_given_once() -> None:
    """NFC and NFD "café" were scored as two labels (0.445 each) and counted twice."""
    body = {"input": ["x"], "labels": ["cafe\u0301", "tea", "caf\u00e9"]}
    assert parse_classify(body, LIMITS, request_id="r").labels == ("cafe\u0301", "tea")


def test_single_string_input_and_groups() -> None:
    req = parse({"input": "just one", "labels": {"topic": ["a", "b"], "tone": ["c", "a"]}})
    assert req.inputs == (TextInput("just one"),)
    assert req.all_labels == ("a", "b", "c")


def test_request_id_prefers_body_and_needs_one() -> None:
    assert request_id_of({"request_id": "r-9"}, b"k") == "r-9"
    with pytest.raises(RequestError) as info:
        request_id_of({}, None)
    assert info.value.code == ErrorCode.INPUT_MISSING
    # a binary key answered under its bytes replaced: an id the producer never sent
    assert request_id_of({"request_id": "r-9"}, b"\x00\xe9") == "r-9"
    with pytest.raises(RequestError) as info:
        request_id_of({}, b"\x00\xe9\xff")
    assert info.value.code == ErrorCode.INPUT_INVALID
    assert "not UTF-8" in info.value.detail


@pytest.mark.parametrize("rid", [2**64 + 1, -(2**63) - 1, 123456789012345678901234567890, 7])
def test_numeric_request_id_is_echoed_exactly(rid: int) -> None:
    body = decode_json_object(b'{"request_id": ' + str(rid).encode() + b"}")
    assert request_id_of(body, None) == str(rid)


def test_dead_letter_keeps_payload_as_text_or_base64() -> None:
    err = RequestError(ErrorCode.INPUT_NOT_UTF8, "bad")
    rec = dead_letter(
        request_id="r", error=err, topic="t", partition=1, offset=5, payload=b"\xff\x00"
    )
    assert rec["payload"] == "/wA="
    assert rec["payload_encoding"] == "base64"
    assert rec["error"] == {"code": "INPUT_NOT_UTF8", "detail": "bad"}
    assert rec["source"] == {"topic": "t", "partition": 1, "offset": 5}
    text = dead_letter(
        request_id="r", error=err, topic="t", partition=0, offset=0, payload=b'{"a": 1}'
    )
    assert text["payload"] == '{"a": 1}'
    assert "payload_encoding" not in text


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"input": [{"text": "x", "label": "a"}]}, None),
        # null is absent, as over HTTP (clients that write every optional field)
        ({"input": [{"text": "x", "label": "a"}], "num_iters": None, "action": None}, None),
        ({"input": [{"text": "x", "label": "a"}], "action": ""}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x"}]}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": ""}]}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "image": "?", "label": "a"}]}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": "\u200b\u200d"}]}, ErrorCode.INPUT_INVALID),
        ({"input": []}, ErrorCode.INPUT_MISSING),
        ({"input": [{"text": "x", "label": "a"}] * 1025}, ErrorCode.INPUT_LIMIT_EXCEEDED),
        ({"input": [{"text": "x", "label": "a"}], "num_iters": 0}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": "a"}], "num_iters": True}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": "a"}], "access": "secret"}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": "a"}], "create": None}, None),
        ({"input": [{"text": "x", "label": "a"}], "create": "no"}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": "a"}], "create": 0}, ErrorCode.INPUT_INVALID),
        ({"action": "explode"}, ErrorCode.INPUT_INVALID),
        ({"input": [{"text": "x", "label": "a" * 1024}]}, None),
        ({"input": [{"text": "x", "label": "a" * 1025}]}, ErrorCode.INPUT_INVALID),
        (
            {"input": [{"text": "x", "label": "a"}], "classifier_id": "c" * 257},
            ErrorCode.INPUT_INVALID,
        ),
    ],
)
def test_train_bodies(body: dict, code: ErrorCode | None) -> None:
    if code is None:
        req = parse_train(body, LIMITS, request_id="r", key=b"cls-1")
        assert isinstance(req, TrainRequest)
        assert req.classifier_id == "cls-1"  # from the record key
        assert req.num_iters == 10
        assert req.create  # the first request for an id creates it, unless it says not
        assert req.examples[0].label.startswith("a")
        return
    with pytest.raises(RequestError) as info:
        parse_train(body, LIMITS, request_id="r", key=b"cls-1")
    assert info.value.code == code


def test_create_false_asks_for_an_update_only() -> None:
    body = {"input": [{"text": "x", "label": "a"}], "model": "m", "create": False}
    req = parse_train(body, LIMITS, request_id="r", key=b"cls-1")
    assert isinstance(req, TrainRequest)
    assert not req.create
    assert req.model == "m"


def test_delete_and_missing_id() -> None:
    req = parse_train({"action": "delete", "classifier_id": "c9"}, LIMITS, request_id="r", key=None)
    assert isinstance(req, DeleteRequest)
    assert req.classifier_id == "c9"
    with pytest.raises(RequestError) as info:
        parse_train({"input": [{"text": "x", "label": "a"}]}, LIMITS, request_id="r", key=None)
    assert info.value.code == ErrorCode.INPUT_MISSING


def test_a_train_body_naming_another_classifier_than_its_key_is_refused() -> None:
    ok = parse_train(
        {"classifier_id": "c1", "input": [{"text": "x", "label": "a"}]},
        LIMITS,
        request_id="r",
        key=b"c1",
    )
    assert ok.classifier_id == "c1"
    for body in (
        {"classifier_id": "c2", "input": [{"text": "x", "label": "a"}]},
        {"classifier_id": "c2", "action": "delete"},
    ):
        with pytest.raises(RequestError) as info:
            parse_train(body, LIMITS, request_id="r", key=b"c1")
        assert info.value.code == ErrorCode.INPUT_INVALID
        assert "differs from the record key" in info.value.detail


def test_request_id_falls_back_to_the_key_when_empty() -> None:
    assert request_id_of({"request_id": ""}, b"key-1") == "key-1"
    with pytest.raises(RequestError) as err:
        request_id_of({"request_id": ""}, None)
    assert err.value.code == ErrorCode.INPUT_MISSING


def test_a_cut_dead_letter_payload_keeps_a_prefix_and_says_how_long_it_was() -> None:
    error = RequestError(ErrorCode.INPUT_NOT_JSON, "nope")
    text = "é" * 10  # two bytes each: a cut at 5 bytes splits one
    letter = dead_letter(
        request_id="r", error=error, topic="t", partition=0, offset=1, payload=text.encode(), keep=5
    )
    assert letter["payload"] == "éé"
    assert letter["payload_bytes"] == 20
    binary = bytes(range(256))
    letter = dead_letter(
        request_id="r", error=error, topic="t", partition=0, offset=1, payload=binary, keep=7
    )
    assert letter["payload_encoding"] == "base64"
    assert base64.b64decode(letter["payload"]) == binary[:7]
    whole = dead_letter(
        request_id="r", error=error, topic="t", partition=0, offset=1, payload=binary
    )
    assert "payload_bytes" not in whole
    assert base64.b64decode(whole["payload"]) == binary


def test_a_train_key_that_is_not_utf8_is_refused() -> None:
    """Decoding with replacement would turn b"\\xff" and b"\\xfe" (different partitions)
    into one classifier id, updated by two workers at once."""
    body = {"input": [{"text": "x", "label": "a"}], "model": "m"}
    for key in (b"\xff", b"\xfe", b"c\xc3"):
        with pytest.raises(RequestError) as info:
            parse_train(body, LIMITS, request_id="r", key=key)
        assert info.value.code == ErrorCode.INPUT_INVALID
        assert "not UTF-8" in info.value.detail
    assert parse_train(body, LIMITS, request_id="r", key="ç-1".encode()).classifier_id == "ç-1"


def test_a_classify_classifier_id_longer_than_an_id_may_be_is_refused() -> None:
    with pytest.raises(RequestError) as info:
        parse({"request_id": "r", "input": ["x"], "classifier_id": "c" * 257})
    assert info.value.code == ErrorCode.INPUT_INVALID
    assert parse({"request_id": "r", "input": ["x"], "classifier_id": "c" * 256})


def test_a_huge_numeric_request_id_in_a_deeply_nested_body_is_input_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """orjson reads a 2**64 request_id as a float, so the body is parsed again exactly,
    by json, which on Python 3.11 allows less nesting than orjson did (990 levels:
    RecursionError; 3.12's parser allows more, so its refusal is simulated here)."""
    import streams.records

    raw = b'{"request_id": 18446744073709551616, "meta": ' + b"[" * 990 + b"]" * 990 + b"}"

    def shallow(text: bytes) -> object:
        raise RecursionError("maximum recursion depth exceeded while decoding a JSON array")

    monkeypatch.setattr(streams.records.json, "loads", shallow)
    with pytest.raises(RequestError) as info:
        decode_json_object(raw)
    assert info.value.code == ErrorCode.INPUT_INVALID


def test_a_record_the_reader_could_not_read_is_answered_as_unreadable_not_as_a_tombstone() -> None:
    from streams.records import UNREADABLE_HEADER, decode_json_object

    with pytest.raises(RequestError) as unreadable:
        decode_json_object(None, [(UNREADABLE_HEADER, b"UnsupportedCodecError: lz4")])
    assert unreadable.value.code == ErrorCode.RECORD_UNREADABLE
    assert "lz4" in unreadable.value.detail
    with pytest.raises(RequestError) as tombstone:
        decode_json_object(None, [])
    assert tombstone.value.code == ErrorCode.INPUT_MISSING


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (b"5", 5),
        (b"0", None),
        (b"-1", None),
        (b"1.5", None),
        (b"", None),
        (None, None),
        (b"9" * 10, None),
    ],
)
def test_a_retry_after_header_is_read_as_whole_seconds_or_not_at_all(
    value: bytes | None, seconds: int | None
) -> None:
    """A dead letter's retry-after comes from workers, but the errors topic may hold
    anyone's records: only whole seconds are taken (case-insensitively named)."""
    from streams.client import retry_after_of

    assert retry_after_of([("other", b"7"), ("Shotstream-Retry-After", value)]) == seconds


def test_a_retry_after_header_is_whole_seconds_at_least_one() -> None:
    from streams.errors import ErrorCode, RequestError, retry_after_headers

    def told(seconds: float | None) -> list[tuple[str, bytes]]:
        return retry_after_headers(RequestError(ErrorCode.SERVICE_UNAVAILABLE, "busy",
                                                retry_after_s=seconds))  # fmt: skip

    assert told(0.01) == [("shotstream-retry-after", b"1")]
    assert told(-3.0) == [("shotstream-retry-after", b"1")]
    assert told(4.2) == [("shotstream-retry-after", b"5")]
    assert told(None) == told(float("nan")) == []
