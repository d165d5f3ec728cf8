"""A drain waits for the requests in flight, then cancels the rest, unacknowledged."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import pytest

from streams.agents import RequestAgent
from streams.observer import Observer


def event(offset: int, acked: list[int]) -> Any:
    message = SimpleNamespace(tp=("classify", 0), topic="classify", offset=offset)
    return SimpleNamespace(message=message, ack=lambda: acked.append(offset))


class Stream:
    """A live stream: events arrive through ``queue``."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def noack(self) -> Stream:
        return self

    async def events(self) -> Any:
        while True:
            yield await self.queue.get()


def test_a_drain_cancels_what_does_not_finish_in_time_and_acknowledges_none_of_it() -> None:
    """Offsets 0 and 2 answer quickly, 1 does not (its answer waits for a broker that is
    away). After the drain: 0 acknowledged, 1 cancelled, 2 not acknowledged either (it is
    behind 1 in its partition), no request still running. Offset 3, served after the
    drain, is answered but not acknowledged while 1 has not come again (faust would
    commit past 1); once 1 and 2 are delivered again, they are acknowledged."""
    acked: list[int] = []
    finished: list[int] = []
    cancelled: list[int] = []
    hang = {1}

    async def handle(ev: Any, turn: Any) -> None:
        offset = ev.message.offset
        try:
            if offset in hang:
                hang.discard(offset)
                await asyncio.Event().wait()
            finished.append(offset)
        except asyncio.CancelledError:
            cancelled.append(offset)
            raise

    async def go() -> tuple[int, int, list[int], int]:
        agent = RequestAgent(handle, max_in_flight=8)
        stream = Stream()
        runner = asyncio.create_task(agent(cast(Any, stream)))
        for k in range(3):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        count = await agent.drain(0.05)
        left = len(agent._tasks)
        # what a revoke commits: the last offset acknowledged, once
        assert agent.take_acknowledged() == {("classify", 0): 0}
        assert agent.take_acknowledged() == {}
        # after the drain the agent serves again (its partitions came back in a rebalance)
        stream.queue.put_nowait(event(3, acked))
        await asyncio.sleep(0.01)
        acked_before_redelivery = list(acked)
        for k in (1, 2):  # Kafka delivers the unacknowledged offsets again
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        idle = await agent.drain(1.0)
        assert agent.take_acknowledged() == {("classify", 0): 2}  # not 3: never acknowledged
        runner.cancel()
        return count, left, acked_before_redelivery, idle

    count, left, acked_before_redelivery, idle = asyncio.run(go())
    assert count == 1
    assert left == 0
    assert cancelled == [1]
    assert sorted(finished) == [0, 1, 2, 2, 3]
    assert acked_before_redelivery == [0]  # not 3: 1 and 2 before it are unacknowledged
    assert acked == [0, 1, 2]
    assert idle == 0  # nothing to cancel: all finished in time


def test_a_partition_that_moved_away_and_came_back_is_acknowledged_again() -> None:
    """A drain cancels offset 10 (a hole). The partition moves to another worker, which
    answers 10..19 and commits 20; then it comes back from 20. Its events are
    acknowledged again (they were not, for good: the hole waited for an offset that
    would never come)."""
    acked: list[int] = []

    async def handle(ev: Any, turn: Any) -> None:
        if ev.message.offset == 10:
            await asyncio.Event().wait()

    async def go() -> tuple[list[int], list[int]]:
        agent = RequestAgent(handle, max_in_flight=8)
        stream = Stream()
        runner = asyncio.create_task(agent(cast(Any, stream)))
        for k in (8, 9, 10):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        assert await agent.drain(0.05) == 1
        agent.reassigned(set())  # the rebalance gives the partition to another worker
        before = list(acked)
        agent.reassigned({("classify", 0)})  # a later one gives it back, from offset 20
        for k in range(20, 23):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        runner.cancel()
        return before, acked

    before, after = asyncio.run(go())
    assert before == [8, 9]
    assert after == [8, 9, 20, 21, 22]


def test_a_kept_partition_keeps_its_hole_until_the_offset_comes_again() -> None:
    """A rebalance that leaves the partition here resets it to its commit (before the
    hole): nothing past the hole is acknowledged until the hole is delivered again."""
    acked: list[int] = []
    hang = {1}

    async def handle(ev: Any, turn: Any) -> None:
        if ev.message.offset in hang:
            hang.discard(ev.message.offset)
            await asyncio.Event().wait()

    async def go() -> tuple[list[int], list[int]]:
        agent = RequestAgent(handle, max_in_flight=8)
        stream = Stream()
        runner = asyncio.create_task(agent(cast(Any, stream)))
        for k in (0, 1):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        await agent.drain(0.05)
        agent.reassigned({("classify", 0)})
        stream.queue.put_nowait(event(2, acked))  # a straggler from before the reset
        await asyncio.sleep(0.01)
        before = list(acked)
        for k in (1, 2):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        runner.cancel()
        return before, acked

    before, after = asyncio.run(go())
    assert before == [0]
    assert after == [0, 1, 2]


class Counting(Observer):
    def __init__(self) -> None:
        self.unanswered: list[str] = []

    def on_unanswered(self, topic: str) -> None:
        self.unanswered.append(topic)


class Panic(BaseException):
    """What a Rust extension's panic raises (pyo3's ``PanicException``): not an Exception."""


@pytest.mark.parametrize("error", [RuntimeError, Panic])
def test_a_record_left_unanswered_by_a_bug_holds_the_commit_not_the_memory(
    error: type[BaseException],
) -> None:
    """The handler raises for offset 1 (no answer, no dead letter: a bug). It is counted
    and not acknowledged; 2..200 are answered but not acknowledged past it, and they are
    not kept either (they were, for good, with their record values). When Kafka delivers
    1 again and it is answered, acknowledging resumes. A BaseException that is not an
    Exception (a tokenizer panic) left the record pending, uncounted, for good."""
    acked: list[int] = []
    broken = {1}

    async def handle(ev: Any, turn: Any) -> None:
        if ev.message.offset in broken:
            broken.discard(ev.message.offset)
            raise error("a bug")

    observer = Counting()

    async def go() -> tuple[list[int], int, list[int]]:
        agent = RequestAgent(handle, max_in_flight=8, observer=observer)
        stream = Stream()
        runner = asyncio.create_task(agent(cast(Any, stream)))
        for k in range(201):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.05)
        before, pending = list(acked), agent._acks.in_flight
        for k in (1, 2):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        runner.cancel()
        return before, pending, acked

    before, pending, after = asyncio.run(go())
    assert observer.unanswered == ["classify"]
    assert before == [0]
    assert pending == 0
    assert after == [0, 1, 2]


def test_the_changelog_flush_is_bounded_when_stopping_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopping with the broker away must end; a revoke must not let the new owner start
    before this worker's changelog records are in (a late one would roll back its
    writes on the next recovery), so there faust's flush runs to the end."""
    import faust

    from streams.app import ShotstreamApp

    flushed: list[bool] = []

    async def slow_flush(self: Any, logger: Any) -> None:
        await asyncio.sleep(0.3)
        flushed.append(True)

    monkeypatch.setattr(faust.App, "_producer_flush", slow_flush)

    async def go(stopping: bool) -> bool:
        app = ShotstreamApp("drain-test", broker="kafka://127.0.0.1:1")
        app.drain_timeout_s = 0.05
        app._stopping = stopping
        flushed.clear()
        await app._producer_flush(None)
        return bool(flushed)

    assert asyncio.run(go(stopping=False))  # a revoke: waited for
    assert not asyncio.run(go(stopping=True))  # stopping: given up after the timeout


def test_faust_still_calls_the_hooks_the_app_bounds() -> None:
    """``ShotstreamApp`` bounds faust's drain and flush by overriding two of its methods;
    a faust release that stopped calling them would bring back the unbounded waits."""
    import inspect

    import faust

    from streams.app import ShotstreamApp

    assert "self._consumer_wait_empty(" in inspect.getsource(faust.App._stop_consumer)
    assert "self._consumer_wait_empty)" in inspect.getsource(faust.App._on_partitions_revoked)
    assert "self._producer_flush(" in inspect.getsource(faust.App.on_stop)
    for name in ("_consumer_wait_empty", "_producer_flush", "on_stop"):
        assert getattr(ShotstreamApp, name) is not getattr(faust.App, name)


def test_a_rebalance_drain_leaves_time_to_rejoin_the_group() -> None:
    """A member that has not rejoined within the rebalance timeout is evicted (another
    rebalance): on a revoke the agents get half of it at most; stopping gets the whole
    ``drain_timeout_s``. The timeout each drain is given is what the agents receive."""
    from streams.app import ShotstreamApp

    given: list[float] = []

    class Runner:
        async def drain(self, timeout_s: float) -> int:
            given.append(timeout_s)
            return 0

        def take_acknowledged(self) -> dict[Any, int]:
            return {}

    class Consumer:
        async def commit(self) -> None:
            return None

    async def go(rebalance_timeout: float, stopping: bool) -> float:
        app = ShotstreamApp(
            "drain-test", broker="kafka://127.0.0.1:1", broker_rebalance_timeout=rebalance_timeout
        )
        app.drain_timeout_s = 15.0
        app.runners = [Runner()]
        app._stopping = stopping
        given.clear()
        await app._consumer_wait_empty(Consumer(), None)
        return given[0]

    assert asyncio.run(go(6.0, stopping=False)) == 3.0  # the embedded broker's settings
    assert asyncio.run(go(60.0, stopping=False)) == 15.0  # Apache Kafka's default via faust
    assert asyncio.run(go(6.0, stopping=True)) == 15.0


def test_a_handler_closed_unfinished_is_not_counted_as_a_bug() -> None:
    """A pending task's coroutine closed at exit gets GeneratorExit: it is not a handler
    failure, and was logged as "a bug" and counted as unanswered."""
    observer = Counting()
    agent = RequestAgent(lambda ev, turn: asyncio.Future(), max_in_flight=1, observer=observer)

    async def go() -> None:
        message = SimpleNamespace(tp=("classify", 0), topic="classify", offset=7)
        turn = SimpleNamespace(finish=lambda: None)
        agent._slots = SimpleNamespace(release=lambda: None)  # type: ignore[assignment]
        run = agent._run(SimpleNamespace(message=message), [None, False], cast(Any, turn))
        run.send(None)  # suspended in the handler
        run.close()

    asyncio.run(go())
    assert observer.unanswered == []


def test_the_agent_tells_how_many_records_wait_and_for_how_long() -> None:
    """``shotstream_requests_in_flight`` and ``shotstream_oldest_request_age_seconds``: a
    worker that stopped answering (a stuck model thread, an unread changelog) shows an
    age that only grows, while its request and response counts both stand still."""
    acked: list[int] = []
    release = asyncio.Event()

    async def handle(ev: Any, turn: Any) -> None:
        if ev.message.offset == 0:
            await release.wait()

    async def go() -> tuple[list[tuple[int, float]], int, float]:
        agent = RequestAgent(handle, max_in_flight=8)
        stream = Stream()
        runner = asyncio.create_task(agent(cast(Any, stream)))
        seen = [(agent.in_flight(), agent.oldest_s())]  # nothing taken yet
        for k in range(3):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.05)
        seen.append((agent.in_flight(), agent.oldest_s()))  # 1 and 2 wait behind 0
        await asyncio.sleep(0.05)
        seen.append((agent.in_flight(), agent.oldest_s()))
        release.set()
        await asyncio.sleep(0.01)
        runner.cancel()
        return seen, agent.in_flight(), agent.oldest_s()

    seen, in_flight, oldest = asyncio.run(go())
    assert seen[0] == (0, 0.0)
    assert seen[1][0] == seen[2][0] == 3
    assert 0.04 <= seen[1][1] < seen[2][1]  # grows while the oldest is unanswered
    assert (in_flight, oldest) == (0, 0.0)
    assert acked == [0, 1, 2]


def test_readiness_says_stopping_during_the_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    """/readyz said 200 "ready" through the whole drain: the worker set "stopping" in
    faust's on_before_shutdown, which faust sends after the drain."""
    import faust

    from streams.settings import Settings
    from streams.worker import build_worker

    app, _, observer = build_worker(Settings())
    observer.on_state("ready")
    during: list[tuple[bool, str]] = []

    async def drain_and_stop(self: Any) -> None:  # faust's on_stop: the drain comes first
        during.append(observer.readiness())

    monkeypatch.setattr(faust.App, "on_stop", drain_and_stop)
    asyncio.run(app.on_stop())
    assert during == [(False, "stopping")]
