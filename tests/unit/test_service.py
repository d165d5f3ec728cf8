"""The shared classify path with the deterministic hash encoder (no Kafka)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.embedders import HashTextEncoder
from models.registry import ModelNotAvailableError, ModelRegistry, ModelSpec
from streams.errors import ErrorCode, RequestError, to_request_error
from streams.observer import Observer
from streams.records import ClassifyRequest, ImageInput, TextInput
from streams.service import ClassifyService
from streams.settings import Settings
from tests.conftest import hash_registry


class Counting(Observer):
    def __init__(self) -> None:
        self.batches = 0
        self.items = 0
        self.truncated = 0

    def on_batch(self, model: str, stats: Any) -> None:
        self.batches += 1
        self.items += stats.items

    def on_truncated(self, model: str, count: int) -> None:
        self.truncated += count


def classify(
    service: ClassifyService, *requests: ClassifyRequest, owner: str | None = None
) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return await asyncio.gather(
                *(service.classify(r, owner) for r in requests), return_exceptions=True
            )
        finally:
            await service.aclose()

    return asyncio.run(go())


@pytest.fixture
def observer() -> Counting:
    return Counting()


@pytest.fixture
def service(settings: Settings, tmp_path: Path, observer: Counting) -> ClassifyService:
    return ClassifyService(settings, hash_registry(tmp_path), observer)


def spied_registry(tmp_path: Path, **options: Any) -> tuple[ModelRegistry, list[list[int]]]:
    """A hash registry whose encoder records each tokenize call: its texts' lengths."""
    registry = hash_registry(tmp_path, **options)
    encoder = registry.load(registry.resolve(None))
    calls: list[list[int]] = []
    tokenize = encoder.tokenize

    def spy(texts: Sequence[str], *, keep_gil: bool = False) -> Any:
        calls.append([len(t) for t in texts])
        return tokenize(texts, keep_gil=keep_gil)

    encoder.tokenize = spy  # type: ignore[method-assign]
    return registry, calls


def longest(calls: list[list[int]]) -> int:
    return max((n for call in calls for n in call), default=0)


def req(inputs: list[str], labels: Any, rid: str = "r1", **kw: Any) -> ClassifyRequest:
    if isinstance(labels, dict):
        return ClassifyRequest(
            rid,
            tuple(TextInput(t) for t in inputs),
            label_groups={k: tuple(v) for k, v in labels.items()},
            **kw,
        )
    return ClassifyRequest(rid, tuple(TextInput(t) for t in inputs), labels=tuple(labels), **kw)


def test_response_shape_scores_and_usage(service: ClassifyService) -> None:
    [out] = classify(
        service, req(["red apple pie", "blue ocean wave"], ["apple pie", "ocean wave", "car"])
    )
    assert out["request_id"] == "r1"
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert [d["prediction"] for d in out["data"]] == ["apple pie", "ocean wave"]
    for d in out["data"]:
        assert d["object"] == "classification"
        scores = [p["score"] for p in d["predictions"]]
        assert scores == sorted(scores, reverse=True)
        assert abs(sum(scores) - 1) < 1e-5
        assert d["score"] == scores[0]
        assert {p["label"] for p in d["predictions"]} == {"apple pie", "ocean wave", "car"}
    # usage = input tokens + label tokens; hash tokens are words + 2 specials
    assert out["usage"] == {"total_tokens": 5 + 5 + 4 + 4 + 3, "prompt_tokens": 21}


def test_label_groups_get_one_prediction_each(service: ClassifyService) -> None:
    [out] = classify(
        service, req(["red apple"], {"food": ["apple", "bread"], "color": ["red", "blue"]})
    )
    item = out["data"][0]
    assert item["prediction"] == {"food": "apple", "color": "red"}
    assert set(item["score"]) == {"food", "color"}
    for group in ("food", "color"):
        assert abs(sum(p["score"] for p in item["predictions"][group]) - 1) < 1e-5


def test_concurrent_requests_share_model_calls(
    service: ClassifyService, observer: Counting
) -> None:
    requests = [req([f"text number {i}"], ["a b", "c d"], rid=f"r{i}") for i in range(30)]
    outs = classify(service, *requests)
    assert [o["request_id"] for o in outs] == [f"r{i}" for i in range(30)]
    assert observer.items == 30 + 2  # inputs + the two labels, embedded once
    assert observer.batches < 30


def test_labels_are_embedded_once_per_model(service: ClassifyService, observer: Counting) -> None:
    async def go() -> None:
        await service.classify(req(["x"], ["l1", "l2", "l3"]))
        before = observer.items
        await service.classify(req(["y"], ["l3", "l2", "l1"]))
        assert observer.items - before == 1  # only the input
        await service.aclose()

    asyncio.run(go())


def test_token_limit_and_truncation(tmp_path: Path, observer: Counting) -> None:
    settings = Settings(data_dir=tmp_path, limits={"max_tokens_per_input": 50})
    service = ClassifyService(settings, hash_registry(tmp_path, max_length=10), observer)
    too_long, ok = classify(
        service,
        req(["w " * 49], ["a"], rid="long"),  # 51 tokens > 50: rejected
        req(["w " * 20, "short"], ["a"], rid="trunc"),  # 22 > window 10: truncated
    )
    assert isinstance(too_long, RequestError)
    assert too_long.code == ErrorCode.INPUT_TOO_LONG
    assert "input[0]" in too_long.detail
    assert ok["request_id"] == "trunc"
    assert observer.truncated == 1
    assert ok["usage"]["total_tokens"] == 22 + 3 + 3  # truncated inputs still count in full


def test_a_text_over_32_characters_per_allowed_token_is_refused_untokenized(
    tmp_path: Path, observer: Counting
) -> None:
    """Megabytes of text took seconds of the tokenizer thread before INPUT_TOO_LONG, and
    megabytes of spaces (a handful of tokens) were tokenized in full and served. A text
    over 32 characters per allowed token is refused by its length, as input or label,
    without tokenizing it; one of long words at the cap is still served."""
    settings = Settings(data_dir=tmp_path, limits={"max_tokens_per_input": 50})
    registry, seen = spied_registry(tmp_path, max_length=100)
    service = ClassifyService(settings, registry, observer)
    spaces = "w" + " " * 999_999  # a million characters, 1 token
    at_cap = " ".join(["x" * 63] * 25) + "x"  # 1,600 characters, 25 words
    refused, served = classify(
        service, req(["ok", spaces], ["a"], rid="huge"), req([at_cap], ["a"], rid="words")
    )
    assert isinstance(refused, RequestError)
    assert refused.code == ErrorCode.INPUT_TOO_LONG
    assert "input[1] has 1,000,000 characters, at most 1,600" in refused.detail
    assert longest(seen) <= 1_600  # never the million
    assert served["request_id"] == "words"
    assert len(at_cap) == 1_600
    assert 25 < served["usage"]["total_tokens"] < 50

    seen.clear()
    service = ClassifyService(settings, registry, observer)
    first, again = classify(
        service, req(["x"], ["a", spaces], rid="label"), req(["y"], [spaces], rid="again")
    )
    for error in (first, again):  # refused by its length, each time (never cached)
        mapped = to_request_error(error)
        assert mapped.code == ErrorCode.INPUT_TOO_LONG
        assert "has 1,000,000 characters, at most 1,600 (32 per token) allowed" in mapped.detail
    assert longest(seen) <= 1_600
    assert not any(r._label_inflight for r in service._runtimes.values())


def test_a_text_far_over_the_token_limit_is_refused_from_a_prefix(
    tmp_path: Path, observer: Counting
) -> None:
    """A text under the character cap but of many tokens per character was tokenized whole
    before INPUT_TOO_LONG: 20 inputs of 262,144 x U+FDFA (4 tokens each) held the tokenizer
    thread for 24 s and grew the worker by 4 GB. Counting prefixes (50 characters, then 4
    times more) refuses it, as input or label, without ever tokenizing it whole."""
    settings = Settings(data_dir=tmp_path, limits={"max_tokens_per_input": 50})
    registry, seen = spied_registry(tmp_path, max_length=100)
    dense = "w " * 800  # 1,600 characters (the cap), 802 tokens
    as_input, as_label = classify(
        ClassifyService(settings, registry, observer),
        req(["ok", dense], ["a"], rid="input"),
        req(["ok"], ["a", dense], rid="label"),
    )
    for error in (as_input, as_label):
        mapped = to_request_error(error)
        assert mapped.code == ErrorCode.INPUT_TOO_LONG
        assert "has more than 50 tokens (102 in its first 199 characters)" in mapped.detail
    assert "input[1]" in to_request_error(as_input).detail
    assert longest(seen) <= 200  # prefixes only, never the 1,600 characters


def test_long_requests_are_tokenized_in_chunks_as_they_would_be_whole(
    tmp_path: Path,
) -> None:
    """Texts are tokenized at most 65,536 characters per call (or one text), so one call
    never holds a whole 16 MB request's tokens; ids and counts are the same."""
    registry, calls = spied_registry(tmp_path, max_length=100)
    texts = [f"w{i} " * (i * 40) for i in range(60)]  # 281,400 characters
    service = ClassifyService(Settings(data_dir=tmp_path), registry)

    async def go() -> Any:
        runtime = await service.runtime(registry.resolve(None))
        try:
            return await runtime.tokenize(texts)
        finally:
            await service.aclose()

    tokenized = asyncio.run(go())
    assert len(calls) > 1
    assert max(sum(call) for call in calls) <= 65_536
    whole = registry.load(registry.resolve(None)).tokenize(texts)
    assert tokenized.counts == [len(ids) for ids in whole]
    assert tokenized.ids == [ids if len(ids) <= 100 else [*ids[:99], ids[-1]] for ids in whole]


def test_short_texts_are_tokenized_on_the_loop_keeping_the_gil_long_ones_in_a_thread(
    tmp_path: Path,
) -> None:
    """A short request is tokenized on the event loop with the GIL kept: a tokenizer call
    that released it there would wait a switch interval (5 ms) for a busy compute thread
    to hand it back. A long one goes to the tokenizer thread, which releases it."""
    registry = hash_registry(tmp_path)
    encoder = registry.load(registry.resolve(None))
    tokenize = encoder.tokenize
    seen: list[tuple[int, bool, bool]] = []

    def spy(texts: Sequence[str], *, keep_gil: bool = False) -> Any:
        on_loop = threading.current_thread() is threading.main_thread()
        seen.append((sum(len(t) for t in texts), keep_gil, on_loop))
        return tokenize(texts, keep_gil=keep_gil)

    encoder.tokenize = spy  # type: ignore[method-assign]
    service = ClassifyService(Settings(data_dir=tmp_path), registry)

    async def go() -> None:
        runtime = await service.runtime(registry.resolve(None))
        try:
            await runtime.tokenize(["a short text"])
            await runtime.tokenize(["word " * 1000])
        finally:
            await service.aclose()

    asyncio.run(go())
    assert seen == [(12, True, True), (5000, False, False)]


def test_a_label_over_the_token_limit_is_refused_as_an_input_is(
    tmp_path: Path, observer: Counting
) -> None:
    """A 20,000-token label was accepted (and billed in full) where the same text as an
    input is INPUT_TOO_LONG. It is refused after tokenizing and never embedded (nor
    cached: a later request is refused the same); labels within the limit pass."""
    settings = Settings(data_dir=tmp_path, limits={"max_tokens_per_input": 50})
    service = ClassifyService(settings, hash_registry(tmp_path, max_length=10), observer)
    long_label = "w " * 49  # 51 tokens
    refused, ok, again = classify(
        service,
        req(["x"], ["a", long_label], rid="long"),
        req(["x"], ["a", "w " * 47], rid="ok"),  # 49 tokens
        req(["y"], [long_label, "a"], rid="again"),
    )
    for error in (refused, again):
        mapped = to_request_error(error)
        assert mapped.code == ErrorCode.INPUT_TOO_LONG
        assert "label 'w w w" in mapped.detail
        assert "51 tokens" in mapped.detail
    assert ok["request_id"] == "ok"
    # embedded at most: the inputs x, x, y and the labels a and "w " * 47; never the long one
    assert observer.items <= 5


def test_unknown_model_and_images(service: ClassifyService) -> None:
    unknown, image = classify(
        service,
        req(["x"], ["a"], model="no-such-model"),
        ClassifyRequest("r2", (TextInput("x"), ImageInput("aGk=")), labels=("a",)),
    )
    assert isinstance(unknown, ModelNotAvailableError)  # mapped to a code at the edge:
    assert to_request_error(unknown).code == ErrorCode.MODEL_NOT_AVAILABLE
    assert isinstance(image, RequestError)
    assert image.code == ErrorCode.INPUT_INVALID
    assert "input[1]" in image.detail


def test_alias_resolves(service: ClassifyService) -> None:
    [out] = classify(service, req(["x"], ["a", "b"], model="jina-embeddings-v3"))
    assert len(out["data"]) == 1
    assert np.isclose(sum(p["score"] for p in out["data"][0]["predictions"]), 1)


def test_few_shot_waits_for_an_access_change_still_replicating(
    settings: Settings, tmp_path: Path
) -> None:
    """A classifier made public a moment ago may still be private in the replica: the
    read waits for a newer version before it answers CLASSIFIER_NOT_FOUND."""
    from state.records import ClassifierRecord
    from streams.replica import ClassifierReplica

    replica = ClassifierReplica("127.0.0.1:1", "changelog")  # never started: fed by hand
    replica.loaded.set()
    private = ClassifierRecord.new(
        "c1", model="hash", owner="alice", access="private", dim=64, now=0.0
    )
    private.labels = ["a", "b"]
    private.weights = np.zeros((2, 64), dtype=np.float32)
    private.version = 1
    replica.records["c1"] = private
    service = ClassifyService(settings, hash_registry(tmp_path), Observer(), replica)
    request = ClassifyRequest("r1", (TextInput("x"),), classifier_id="c1")

    async def publish_later() -> None:
        await asyncio.sleep(0.1)
        public = ClassifierRecord.new(
            "c1", model="hash", owner="alice", access="public", dim=64, now=0.0
        )
        public.labels, public.weights, public.version = ["a", "b"], private.weights, 2
        replica.records["c1"] = public
        replica._changed.set()

    async def go() -> Any:
        try:
            answer, _ = await asyncio.gather(service.classify(request, "bob"), publish_later())
            return answer
        finally:
            await service.aclose()

    answer = asyncio.run(go())
    assert answer["version"] == 2
    assert answer["classifier_id"] == "c1"

    replica.records["c1"] = private  # private again, and nothing newer comes
    fast = Settings(data_dir=tmp_path, limits={"visibility_wait_s": 0.05})
    service = ClassifyService(fast, hash_registry(tmp_path), Observer(), replica)
    [denied] = classify(service, request, owner="bob")
    assert isinstance(denied, RequestError)
    assert denied.code == ErrorCode.CLASSIFIER_NOT_FOUND


def test_few_shot_waits_for_an_unread_changelog_a_bounded_time(tmp_path: Path) -> None:
    """A worker that has not read the classifier changelog (just started, or it cannot
    reach it) held few-shot requests until it had, and with them every in-flight slot:
    zero-shot requests behind them waited too. Now few-shot answers SERVICE_UNAVAILABLE
    after ``limits.changelog_wait_s``; zero-shot never waits for the changelog."""
    from streams.replica import ClassifierReplica

    replica = ClassifierReplica("127.0.0.1:1", "changelog")  # never started: never loaded
    fast = Settings(data_dir=tmp_path, limits={"changelog_wait_s": 0.05})
    service = ClassifyService(fast, hash_registry(tmp_path), Observer(), replica)
    few = ClassifyRequest("r1", (TextInput("x"),), classifier_id="c1")
    zero = req(["x"], ["a", "b"], rid="r2")
    unavailable, answered = classify(service, few, zero, owner="bob")
    assert isinstance(unavailable, RequestError)
    assert unavailable.code == ErrorCode.SERVICE_UNAVAILABLE
    assert "classifier changelog" in unavailable.detail
    assert answered["request_id"] == "r2"


class OverflowingEncoder(HashTextEncoder):
    """Embeds any text holding the word "overflow" to NaN, as float16 arithmetic can."""

    def embed_ids(self, batch: Sequence[Sequence[int]]) -> Any:
        out = super().embed_ids(batch)
        poison = self.tokenize(["overflow"])[0][1]
        out[[poison in ids for ids in batch]] = np.nan
        return out


def test_non_finite_embeddings_fail_only_their_request(tmp_path: Path) -> None:
    spec = ModelSpec("hash", "overflows", lambda _c: "", build=lambda: OverflowingEncoder(64))
    registry = ModelRegistry(cache_dir=tmp_path, default="hash", builtins={"hash": spec})
    service = ClassifyService(Settings(data_dir=tmp_path), registry, Observer())
    bad_input, bad_label, ok = classify(
        service,
        req(["fine text", "an overflow here"], ["a", "b"], rid="in"),
        req(["fine text"], ["a", "overflow label"], rid="lab"),
        req(["fine text"], ["a", "b"], rid="ok"),  # batched with the others, answered
    )
    assert isinstance(bad_input, RequestError)
    assert bad_input.code == ErrorCode.EMBEDDING_NOT_FINITE
    assert "input(s) [1]" in bad_input.detail
    assert isinstance(bad_label, RequestError)
    assert bad_label.code == ErrorCode.EMBEDDING_NOT_FINITE
    assert "'overflow label'" in bad_label.detail
    assert ok["request_id"] == "ok"
    assert all(np.isfinite(p["score"]) for p in ok["data"][0]["predictions"])


def test_the_temperature_setting_shapes_the_scores(tmp_path: Path, observer: Counting) -> None:
    """Scores are softmax(cosine / SHOTSTREAM_MODELS__TEMPERATURE): the same inputs and
    labels give sharper scores at 0.05 than at 1.0, with the same ranking."""
    request = req(["red apple pie"], ["apple pie", "ocean wave", "car"])

    def scores(temperature: float) -> list[float]:
        settings = Settings(data_dir=tmp_path, models={"temperature": temperature})
        [out] = classify(ClassifyService(settings, hash_registry(tmp_path), observer), request)
        return [p["score"] for p in out["data"][0]["predictions"]]

    sharp, flat = scores(0.05), scores(1.0)
    assert sharp[0] > flat[0] > 1 / 3
    assert max(flat) - min(flat) < 0.5  # cosines lie in [-1, 1]: e^2 at most apart
    cosines = np.log(np.array(flat))  # at temperature 1, log-scores are cosines + a constant
    np.testing.assert_allclose(
        np.log(np.array(sharp)), 20 * cosines - np.log(np.exp(20 * cosines).sum()), atol=1e-4
    )


@pytest.mark.parametrize(
    "labels",
    [
        ["a", "b"],
        ['quote " and \\ back', "ünïcödé", "\x01ctrl"],
        {"topic": ["sport", "cooking"], "mood \u2603": ["happy", "sad", "sport"]},
    ],
    ids=["plain", "escaped", "groups"],
)
def test_the_answer_floor_is_never_above_the_answer(service: ClassifyService, labels: Any) -> None:
    from streams.agents import encode
    from streams.service import answer_floor

    request = req(["one", "two", "three"], labels)
    [answer] = classify(service, request)
    assert answer_floor(3, request.all_labels, request.label_groups) <= len(encode(answer))


def test_an_answer_too_large_for_a_record_is_refused_before_any_work(
    tmp_path: Path, observer: Counting
) -> None:
    """The answer was built, then measured: a 527 KB request (1,024 inputs x 256 labels of
    2,000 characters) built 550 MB in memory before RESPONSE_TOO_LARGE, and long group
    names took a worker past its memory, at every redelivery. Now nothing is tokenized
    or embedded for it; a request whose answer fits is served."""
    settings = Settings(data_dir=tmp_path, kafka={"max_message_bytes": 64 * 1024})
    registry, seen = spied_registry(tmp_path)
    service = ClassifyService(settings, registry, observer)
    labels = [f"label {i} " + "d" * 200 for i in range(32)]  # ~7 kB per input
    groups = {"g" * 30_000: ["a", "b"]}  # a group name three times per input
    big, grouped, fits = classify(
        service,
        req([f"x{i}" for i in range(10)], labels, rid="big"),
        req(["x"], groups, rid="groups"),
        req([f"x{i}" for i in range(8)], labels, rid="fits"),
    )
    for refused in (big, grouped):
        assert isinstance(refused, RequestError)
        assert refused.code == ErrorCode.RESPONSE_TOO_LARGE
        assert "over the 65,536-byte message limit" in refused.detail
    assert fits["request_id"] == "fits"
    assert sum(len(call) for call in seen) == 8 + 32  # only the request that fits was tokenized
