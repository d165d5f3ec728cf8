"""A dead letter always fits in one Kafka record, however large the bad record was."""

from __future__ import annotations

import asyncio
import base64
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from streams.agents import send_dead_letter
from streams.errors import ErrorCode, OversizeRecordError, RequestError
from streams.settings import Settings

LIMIT = 65536


class Output:
    """Records what would be produced; ``refuse`` sizes above which the "broker" refuses."""

    def __init__(self, refuse: int | None = None) -> None:
        self.settings = Settings(kafka={"max_message_bytes": LIMIT})
        self.refuse = refuse
        self.sent: list[bytes] = []

    async def send(self, topic: str, key: str | None, value: bytes, **_: Any) -> None:
        assert len(value) <= LIMIT, len(value)
        if self.refuse is not None and len(value) > self.refuse:
            raise OversizeRecordError(len(value), LIMIT, "the broker refused it")
        self.sent.append(value)


class Observer:
    def __init__(self) -> None:
        self.codes: list[str] = []

    def on_dead_letter(self, topic: str, code: str) -> None:
        self.codes.append(code)

    def on_unanswered(self, topic: str) -> None:
        self.codes.append(f"unanswered on {topic}")


def letter_for(payload: bytes, output: Output) -> dict[str, Any]:
    message = SimpleNamespace(topic="in", partition=2, offset=7, key=b"k", value=payload)
    observer = Observer()
    error = RequestError(ErrorCode.INPUT_NOT_JSON, "not JSON")
    event: Any = SimpleNamespace(message=message)
    asyncio.run(send_dead_letter(output, "errors", observer, event, None, error))  # type: ignore[arg-type]
    assert observer.codes == ["INPUT_NOT_JSON"]
    assert len(output.sent) == 1
    letter: dict[str, Any] = orjson.loads(output.sent[0])
    assert letter["request_id"] == "k"
    assert letter["source"] == {"topic": "in", "partition": 2, "offset": 7}
    return letter


@pytest.mark.parametrize("size", [LIMIT, LIMIT * 3])  # JSON: 1.5x its bytes
def test_text_payloads_are_cut_to_fit(size: int) -> None:
    text = ("ünïcode \x01 " * size)[:size]  # control characters take 6 bytes as JSON
    letter = letter_for(text.encode(), Output())
    assert text.startswith(letter["payload"])
    assert len(letter["payload"]) > LIMIT // 20  # cut to fit, not dropped
    assert letter["payload_bytes"] == len(text.encode())


def test_binary_payloads_are_cut_to_fit() -> None:
    payload = bytes(range(256)) * (LIMIT // 128)  # 2x the limit, 2.7x as base64
    letter = letter_for(payload, Output())
    kept = base64.b64decode(letter["payload"])
    assert payload.startswith(kept)
    assert len(kept) > LIMIT // 4
    assert letter["payload_bytes"] == len(payload)


def test_small_payloads_are_whole() -> None:
    letter = letter_for(b"{nope", Output())
    assert letter["payload"] == "{nope"
    assert "payload_bytes" not in letter


def test_a_broker_with_a_lower_limit_gets_the_letter_without_payload() -> None:
    letter = letter_for(b"x" * 5000, Output(refuse=1000))
    assert letter["payload"] == ""
    assert letter["payload_bytes"] == 5000
    assert letter["error"]["code"] == "INPUT_NOT_JSON"


def test_a_huge_key_and_detail_are_capped_and_the_letter_fits() -> None:
    """A record with a 200 kB key and a detail as long: before, the letter was over the
    limit even without payload, and send_dead_letter raised, holding the partition."""
    keys: list[str | None] = []

    class Keyed(Output):
        async def send(self, topic: str, key: str | None, value: bytes, **_: Any) -> None:
            assert len(value) + len((key or "").encode()) <= LIMIT
            keys.append(key)
            await super().send(topic, key, value)

    huge = "k" * 200_000
    message = SimpleNamespace(topic="in", partition=2, offset=7, key=huge.encode(), value=b"{")
    error = RequestError(ErrorCode.INPUT_INVALID, f"classifier_id {huge!r} differs")
    output, observer = Keyed(), Observer()
    event: Any = SimpleNamespace(message=message)
    asyncio.run(send_dead_letter(output, "errors", observer, event, None, error))  # type: ignore[arg-type]
    letter = orjson.loads(output.sent[0])
    assert letter["request_id"].startswith("k" * 1024)
    assert letter["request_id"].endswith("(200,000 characters)")
    assert keys == [letter["request_id"]]
    assert letter["error"]["detail"].startswith("classifier_id 'kkk")
    assert len(letter["error"]["detail"]) < 8300
    assert letter["payload"] == "{"


def test_an_undeliverable_letter_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    message = SimpleNamespace(topic="in", partition=2, offset=7, key=None, value=b"x" * 3000)
    output, observer = Output(refuse=10), Observer()
    error = RequestError(ErrorCode.INPUT_NOT_JSON, "not JSON")
    event: Any = SimpleNamespace(message=message)
    asyncio.run(send_dead_letter(output, "errors", observer, event, None, error))  # type: ignore[arg-type]
    assert output.sent == []
    # not a dead letter on the dashboard: a record with no answer (its alert fires)
    assert observer.codes == ["unanswered on in"]
    assert "dead letter for in@2:7 (INPUT_NOT_JSON) not delivered" in caplog.text


def _letter_key(key: bytes | None, error: RequestError) -> tuple[str | None, Any]:
    """The key and ``request_id`` of the letter for a record with ``key`` refused with
    ``error`` before its body yielded a request_id."""
    keys: list[str | None] = []

    class Keyed(Output):
        async def send(self, topic: str, key: str | None, value: bytes, **_: Any) -> None:
            keys.append(key)
            await super().send(topic, key, value)

    output = Keyed()
    message = SimpleNamespace(topic="in", partition=2, offset=7, key=key, value=b"\xff")
    event: Any = SimpleNamespace(message=message)
    asyncio.run(send_dead_letter(output, "errors", Observer(), event, None, error))  # type: ignore[arg-type]
    [sent] = output.sent
    return keys[0], orjson.loads(sent)["request_id"]


@pytest.mark.parametrize("key", [None, b"\x00\xe9\xff"])
def test_a_letter_with_no_request_id_is_keyed_by_its_source(key: bytes | None) -> None:
    """Also with a key that is not UTF-8: its letter had an id with U+FFFD in it, one its
    producer never sent (and one for different keys)."""
    error = RequestError(ErrorCode.INPUT_NOT_UTF8, "not UTF-8")
    assert _letter_key(key, error) == ("in:2:7", None)


def test_a_body_refused_for_a_lone_surrogate_still_has_its_request_id_answered() -> None:
    """Python's json.dumps writes lone surrogates as \\ud800 escapes; the strict reader
    refuses the body before its request_id is read, and its letter went out under the
    record key, or none: a producer waiting by the body's id never saw it."""
    from streams.records import decode_json_object

    with pytest.raises(RequestError) as refused:
        decode_json_object(b'{"request_id": "r-7", "input": ["bad \\ud800"], "labels": ["a"]}')
    assert refused.value.code == ErrorCode.INPUT_INVALID
    assert _letter_key(b"k", refused.value) == ("r-7", "r-7")
    with pytest.raises(RequestError) as refused:  # the surrogate in the id itself: the key
        decode_json_object(b'{"request_id": "r-\\ud800", "input": ["x"], "labels": ["a"]}')
    assert _letter_key(b"k", refused.value) == ("k", "k")


def test_a_request_the_broker_refuses_as_too_large_is_oversize_not_unavailable() -> None:
    """Topics made before max.message.bytes was raised keep Kafka's 1 MB: the gateway
    must answer 413 for what the broker refuses as too large, not 503."""
    from aiokafka.errors import MessageSizeTooLargeError

    from streams.client import ShotstreamClient

    client = ShotstreamClient(Settings())

    async def refuse(*_a: object, **_kw: object) -> None:
        raise MessageSizeTooLargeError()

    client.produce = refuse  # type: ignore[method-assign]

    async def go() -> None:
        with pytest.raises(OversizeRecordError, match="broker refused"):
            await client.send("t", {"input": ["x" * 2000]})
        assert client._waiting == {}  # no answer is awaited

    asyncio.run(go())


def test_a_stopped_output_producer_refuses_instead_of_retrying() -> None:
    from streams.producer import OutputProducer, ProducerStoppedError

    output = OutputProducer(Settings())

    async def go() -> None:
        await output.stop()
        with pytest.raises(ProducerStoppedError):
            await asyncio.wait_for(output.send("t", "k", b"{}"), 5)

    asyncio.run(go())


def test_produce_retries_are_counted_until_the_broker_takes_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

    from streams import producer as producer_module
    from streams.metrics import PrometheusObserver
    from streams.producer import OutputProducer

    monkeypatch.setattr(producer_module, "_RETRY_PAUSES_S", (0.0,))
    observer = PrometheusObserver()
    output = OutputProducer(Settings(), observer)
    failures = [KafkaConnectionError(), TopicAuthorizationFailedError(), KafkaConnectionError()]
    sent: list[tuple[str, bytes, bytes | None]] = []

    class Flaky:
        async def send_and_wait(
            self, topic: str, value: bytes, key: bytes | None, headers: Any = None
        ) -> None:
            if failures:
                raise failures.pop(0)
            sent.append((topic, value, key))

    output._producer = Flaky()  # type: ignore[assignment]
    asyncio.run(output.send("answers", "k", b"{}"))
    assert sent == [("answers", b"{}", b"k")]

    def retries(error: str) -> float | None:
        return observer.registry.get_sample_value(
            "shotstream_produce_retries_total", {"topic": "answers", "error": error}
        )

    assert retries("KafkaConnectionError") == 2
    assert retries("TopicAuthorizationFailedError") == 1


def test_a_first_start_with_the_broker_away_is_retried_like_a_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The producer starts at the first answer; a broker away right then (a refused
    port here, no mock) is retried, not raised: the answer was turned into an
    INTERNAL_ERROR dead letter before, and the request lost its prediction."""
    from streams import producer as producer_module
    from streams.cli import free_port
    from streams.metrics import PrometheusObserver
    from streams.producer import OutputProducer, ProducerStoppedError

    monkeypatch.setattr(producer_module, "_RETRY_PAUSES_S", (0.0,))
    observer = PrometheusObserver()
    settings = Settings(brokers=f"127.0.0.1:{free_port()}", kafka={"request_timeout_s": 1})
    output = OutputProducer(settings, observer)

    def retries() -> float:
        value = observer.registry.get_sample_value(
            "shotstream_produce_retries_total",
            {"topic": "answers", "error": "KafkaConnectionError"},
        )
        return value or 0.0

    async def go() -> None:
        sending = asyncio.ensure_future(output.send("answers", "k", b"{}"))
        while retries() < 2 and not sending.done():  # noqa: ASYNC110 - polls a counter
            await asyncio.sleep(0.05)
        assert not sending.done()  # still trying
        await output.stop()  # shutting down ends it, unacknowledged
        with pytest.raises(ProducerStoppedError):
            await asyncio.wait_for(sending, 30)
        assert output._producer is None

    asyncio.run(go())
    assert retries() >= 2


def test_a_broker_away_is_logged_once_per_topic_and_error_not_per_answer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """200 answers fail twice each while the broker is away: one line (with the error's
    name and traceback), then one when it takes them again; the counter has every attempt."""
    from aiokafka.errors import KafkaConnectionError

    from streams import producer as producer_module
    from streams.metrics import PrometheusObserver
    from streams.producer import OutputProducer

    monkeypatch.setattr(producer_module, "_RETRY_PAUSES_S", (0.0,))
    observer = PrometheusObserver()
    output = OutputProducer(Settings(), observer)
    failures = {i: 2 for i in range(200)}

    class Away:
        async def send_and_wait(
            self, topic: str, value: bytes, key: bytes | None, headers: Any = None
        ) -> None:
            i = int(value)
            if failures[i]:
                failures[i] -= 1
                raise KafkaConnectionError("broker away")

    output._producer = Away()  # type: ignore[assignment]

    async def go() -> None:
        await asyncio.gather(*(output.send("answers", "k", b"%d" % i) for i in range(200)))

    with caplog.at_level("WARNING", logger="streams.producer"):
        asyncio.run(go())
    lines = [r for r in caplog.records if r.name == "streams.producer"]
    assert [r.getMessage().split(" (")[0] for r in lines] == [
        "answers to answers not taken by the broker",
        "answers to answers are taken by the broker again",
    ]
    assert "KafkaConnectionError" in lines[0].getMessage()
    assert lines[0].exc_info is not None
    retries = observer.registry.get_sample_value(
        "shotstream_produce_retries_total", {"topic": "answers", "error": "KafkaConnectionError"}
    )
    assert retries == 400


def test_a_stop_during_the_first_start_stops_the_producer_it_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """stop() while the first answer is starting the producer: the producer that start
    finishes afterwards is stopped, and the answer is refused (it was kept before, with
    its connections open and nobody left to close them)."""
    from streams import producer as producer_module
    from streams.producer import OutputProducer, ProducerStoppedError

    events: list[str] = []

    class Slow:
        def __init__(self, **kwargs: object) -> None:
            self.go_on = asyncio.Event()

        async def start(self) -> None:
            events.append("starting")
            await self.go_on.wait()

        async def stop(self) -> None:
            events.append("stopped")

        async def send_and_wait(
            self, topic: str, value: bytes, key: bytes | None, headers: Any = None
        ) -> None:
            events.append("sent")

    made: list[Slow] = []

    def make(**kwargs: object) -> Slow:
        made.append(Slow(**kwargs))
        return made[-1]

    monkeypatch.setattr(producer_module, "AIOKafkaProducer", make)
    output = OutputProducer(Settings())

    async def go() -> None:
        sending = asyncio.ensure_future(output.send("answers", "k", b"{}"))
        waiting = asyncio.ensure_future(output.send("answers", "k2", b"{}"))  # for the lock
        while not events:  # noqa: ASYNC110 - waits for the start to begin
            await asyncio.sleep(0)
        await output.stop()
        made[0].go_on.set()
        for send in (sending, waiting):
            with pytest.raises(ProducerStoppedError):
                await asyncio.wait_for(send, 5)

    asyncio.run(go())
    assert events == ["starting", "stopped"]  # the waiting send starts no second producer
    assert output._producer is None
