"""Rate limits: token buckets per caller (pure, with a fake clock)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from streams.ratelimit import Limit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def limiter(rpm: int = 3, tpm: int = 100) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(lambda _caller: Limit(rpm=rpm, tpm=tpm), clock=clock), clock


def test_requests_per_minute_then_retry_after() -> None:
    limits, clock = limiter(rpm=3)
    assert [limits.admit("a").allowed for _ in range(3)] == [True, True, True]
    refused = limits.admit("a")
    assert not refused.allowed
    assert refused.reason == "requests"
    assert refused.remaining_requests == 0
    assert refused.retry_after_s == 20  # one request refills every 60/3 s
    clock.now = 19.0
    assert not limits.admit("a").allowed
    clock.now = 20.0
    assert limits.admit("a").allowed


def test_callers_have_their_own_buckets() -> None:
    limits, _ = limiter(rpm=1)
    assert limits.admit("a").allowed
    assert not limits.admit("a").allowed
    assert limits.admit("b").allowed


def test_tokens_are_charged_after_the_answer_and_may_overdraw() -> None:
    limits, clock = limiter(rpm=100, tpm=60)
    assert limits.admit("a").allowed
    after = limits.charge("a", 90)  # the answer used more than was left
    assert after.remaining_tokens == 0
    refused = limits.admit("a")
    assert not refused.allowed
    assert refused.reason == "tokens"
    assert refused.retry_after_s == 31  # 30 tokens owed + 1, at one token per second
    clock.now = 31.0
    assert limits.admit("a").allowed


def test_retry_after_for_tokens_is_when_the_debt_has_refilled() -> None:
    """At 10 tokens a minute a debt of 5 refills in 30 s: retry after 31 s (the bucket
    must be above zero), not 36 (one more token than owed, at 6 s a token)."""
    limits, clock = limiter(rpm=100, tpm=10)
    assert limits.admit("a").allowed
    limits.charge("a", 15)
    refused = limits.admit("a")
    assert refused.retry_after_s == 31
    clock.now = 30.0
    assert not limits.admit("a").allowed  # exactly refilled to zero: not yet
    clock.now = 31.0
    assert limits.admit("a").allowed


def test_buckets_never_exceed_one_minute() -> None:
    limits, clock = limiter(rpm=2, tpm=10)
    limits.admit("a")
    clock.now = 3600.0
    decision = limits.admit("a")
    assert decision.remaining_requests == 1
    assert decision.remaining_tokens == 10


def test_forgotten_callers_start_full() -> None:
    clock = Clock()
    limits = RateLimiter(lambda _c: Limit(rpm=1, tpm=10), clock=clock, max_callers=2)
    limits.admit("a")
    limits.admit("b")
    limits.admit("c")  # evicts a
    assert len(limits._buckets) == 2
    assert limits.admit("a").allowed


@given(st.lists(st.sampled_from(["admit", "tick"]), max_size=200), st.integers(1, 20))
def test_never_more_than_rpm_plus_refill(ops: list[str], rpm: int) -> None:
    limits, clock = limiter(rpm=rpm, tpm=10**9)
    admitted = 0
    for op in ops:
        if op == "tick":
            clock.now += 1.0
        elif limits.admit("a").allowed:
            admitted += 1
    assert admitted <= rpm + clock.now * rpm / 60.0 + 1e-9


def test_a_peek_takes_nothing_and_makes_no_bucket() -> None:
    """Refused requests show what is left without spending it; a caller with no bucket
    has its whole budget and gets none (refusals from many addresses must not evict the
    buckets of callers who spent)."""
    limiter = RateLimiter(lambda caller: Limit(rpm=10, tpm=100), clock=lambda: 0.0, max_callers=1)
    assert limiter.admit("alice").remaining_requests == 9
    for caller in ("mallory-1", "mallory-2"):
        fresh = limiter.peek(caller)
        assert (fresh.remaining_requests, fresh.remaining_tokens) == (10, 100)
    assert limiter.peek("alice").remaining_requests == 9  # still there, nothing taken
    assert limiter.admit("alice").remaining_requests == 8


def test_retry_after_for_requests_waits_for_a_token_debt_too() -> None:
    """Out of requests and deep in token debt: Retry-After is when both have refilled,
    not only the next request (a caller retrying then would be refused again)."""
    limits, clock = limiter(rpm=2, tpm=1000)
    assert limits.admit("a").allowed
    assert limits.admit("a").allowed
    limits.charge("a", 20_000)  # 19,000 tokens owed at 1,000 a minute: 1,140 s
    refused = limits.admit("a")
    assert refused.reason == "requests"
    assert refused.retry_after_s == 1141  # not 30, one request's refill
    clock.now = float(refused.retry_after_s)
    assert limits.admit("a").allowed


def test_a_refund_gives_back_the_request_admit_took() -> None:
    limits, _ = limiter(rpm=3)
    assert limits.admit("a").remaining_requests == 2
    assert limits.refund("a").remaining_requests == 3
    assert limits.refund("a").remaining_requests == 3  # never over a minute's worth


def test_concurrency_counts_requests_until_they_finish_and_refusals_take_nothing() -> None:
    limits = RateLimiter(lambda _caller: Limit(rpm=10, tpm=100, concurrency=2))
    assert limits.admit("k").allowed
    assert limits.admit("k").allowed
    refused = limits.admit("k")
    assert (refused.allowed, refused.reason, refused.retry_after_s) == (False, "concurrency", 1)
    assert refused.remaining_requests == 8  # the refusal took no request
    assert limits.admit("other").allowed  # per caller
    limits.finish("k")
    assert limits.admit("k").allowed
    for _ in range(2):
        limits.finish("k")
    limits.finish("other")
    assert limits.in_flight == {}
