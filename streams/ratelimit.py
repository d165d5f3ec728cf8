"""Per-caller rate limits: requests per minute, tokens per minute and requests at once
(Jina's RPM, TPM and concurrency).

Each caller has two token buckets that refill continuously (``rpm / 60`` requests and
``tpm / 60`` tokens per second) up to one minute's worth. A request is admitted when a
request is left and the token balance is positive; its tokens are charged once its answer
says how many it used (``usage.total_tokens``), so the token balance may go negative and
the caller waits until it has refilled. Limits are kept in memory, per gateway instance.

>>> clock = iter([0.0, 0.0, 0.0, 30.0]).__next__
>>> limits = RateLimiter(lambda _caller: Limit(rpm=2, tpm=100), clock=clock)
>>> limits.admit("k").allowed, limits.admit("k").allowed, limits.admit("k").reason
(True, True, 'requests')
>>> limits.admit("k").allowed   # 30 s later one request has refilled
True
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Limit:
    rpm: int
    tpm: int
    concurrency: int | None = None
    """Requests in flight at once (None: no limit)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a request may go ahead, and what the caller has left."""

    allowed: bool
    remaining_requests: int
    remaining_tokens: int
    retry_after_s: int = 0
    """Whole seconds until the request would be admitted (0 when allowed)."""
    reason: Literal["requests", "tokens", "concurrency"] | None = None
    limit: Limit | None = None


class _Buckets:
    __slots__ = ("at", "requests", "tokens")

    def __init__(self, limit: Limit, now: float) -> None:
        self.requests = float(limit.rpm)
        self.tokens = float(limit.tpm)
        self.at = now

    def refill(self, limit: Limit, now: float) -> None:
        elapsed = max(0.0, now - self.at)
        self.at = now
        self.requests = min(float(limit.rpm), self.requests + elapsed * limit.rpm / 60.0)
        self.tokens = min(float(limit.tpm), self.tokens + elapsed * limit.tpm / 60.0)


class RateLimiter:
    """Token buckets per caller.

    Parameters
    ----------
    limit_of
        The limit of a caller id (an API key's owner id, or ``ip:<address>``).
    clock
        Seconds, monotonic (injectable for tests).
    max_callers
        Buckets kept; the least recently seen caller is forgotten first (it then starts
        again with full buckets, which only ever errs in the caller's favour).
    """

    def __init__(
        self,
        limit_of: Callable[[str], Limit],
        *,
        clock: Callable[[], float] = time.monotonic,
        max_callers: int = 100_000,
    ) -> None:
        self.limit_of = limit_of
        self.clock = clock
        self.max_callers = max_callers
        self._buckets: OrderedDict[str, _Buckets] = OrderedDict()
        self.in_flight: dict[str, int] = {}
        """Requests admitted and not yet finished, by caller (callers with none: absent)."""

    def _get(self, caller: str) -> tuple[_Buckets, Limit]:
        limit = self.limit_of(caller)
        now = self.clock()
        buckets = self._buckets.get(caller)
        if buckets is None:
            buckets = self._buckets[caller] = _Buckets(limit, now)
            while len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(caller)
            buckets.refill(limit, now)
        return buckets, limit

    def admit(self, caller: str) -> Decision:
        """Take one request from ``caller``'s budget if it has one (and tokens left, and
        fewer requests in flight than its concurrency). An admitted request is in flight
        until :meth:`finish`."""
        b, limit = self._get(caller)
        running = self.in_flight.get(caller, 0)
        if limit.concurrency is not None and running >= limit.concurrency:
            return self._refused(b, limit, "concurrency", 1.0)  # nothing taken
        # admitted once the token bucket is above zero again: just after the debt refills
        token_wait = math.floor(-b.tokens * 60.0 / limit.tpm) + 1 if b.tokens <= 0.0 else 0
        if b.requests < 1.0:
            # a caller out of both waits for the later of the two: Retry-After means it
            wait = max((1.0 - b.requests) * 60.0 / limit.rpm, token_wait)
            return self._refused(b, limit, "requests", wait)
        if token_wait:
            return self._refused(b, limit, "tokens", token_wait)
        b.requests -= 1.0
        self.in_flight[caller] = running + 1
        return _left(b, limit)

    def finish(self, caller: str) -> None:
        """An admitted request is over (answered, refused or gone)."""
        running = self.in_flight.get(caller, 0) - 1
        if running > 0:
            self.in_flight[caller] = running
        else:
            self.in_flight.pop(caller, None)

    def refund(self, caller: str) -> Decision:
        """Give back the request :meth:`admit` took, for one refused before it was sent
        (a refusal the gateway finds itself takes nothing from the budget)."""
        b, limit = self._get(caller)
        b.requests = min(float(limit.rpm), b.requests + 1.0)
        return _left(b, limit)

    def peek(self, caller: str) -> Decision:
        """What ``caller`` has left, taking nothing (for answers that were not admitted).

        A caller without a bucket has its whole budget, and gets no bucket: cheap refused
        requests from many addresses must not push out the buckets of callers who spent."""
        if caller not in self._buckets:
            limit = self.limit_of(caller)
            return Decision(True, limit.rpm, limit.tpm, limit=limit)
        b, limit = self._get(caller)
        return _left(b, limit)

    def charge(self, caller: str, tokens: int) -> Decision:
        """Charge the tokens an answered request used; what is left afterwards."""
        b, limit = self._get(caller)
        b.tokens -= max(0, tokens)
        return _left(b, limit)

    @staticmethod
    def _refused(
        b: _Buckets,
        limit: Limit,
        reason: Literal["requests", "tokens", "concurrency"],
        wait_s: float,
    ) -> Decision:
        return Decision(
            False,
            int(b.requests),
            max(0, int(b.tokens)),
            retry_after_s=max(1, math.ceil(wait_s)),
            reason=reason,
            limit=limit,
        )


def _left(b: _Buckets, limit: Limit) -> Decision:
    """An allowing decision that says what ``b`` has left."""
    return Decision(True, int(b.requests), max(0, int(b.tokens)), limit=limit)
