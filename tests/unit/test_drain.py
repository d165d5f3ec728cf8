"""A drain waits for the requests in flight, then cancels the rest, unacknowledged."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from streams.agents import RequestAgent


def event(offset: int, acked: list[int]) -> Any:
    message = SimpleNamespace(tp=("classify", 0), offset=offset)
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
    """Offsets 0 and 2 answer quickly, 1 never does (its answer waits for a broker that is
    away). After the drain: 0 acknowledged, 1 cancelled, 2 not acknowledged either (it is
    behind 1 in its partition), no request still running, and a new event after the
    drain is served again."""
    acked: list[int] = []
    finished: list[int] = []
    cancelled: list[int] = []

    async def handle(ev: Any, turn: Any) -> None:
        offset = ev.message.offset
        try:
            if offset == 1:
                await asyncio.Event().wait()
            finished.append(offset)
        except asyncio.CancelledError:
            cancelled.append(offset)
            raise

    async def go() -> tuple[int, int, int]:
        agent = RequestAgent(handle, max_in_flight=8)
        stream = Stream()
        runner = asyncio.create_task(agent(cast(Any, stream)))
        for k in range(3):
            stream.queue.put_nowait(event(k, acked))
        await asyncio.sleep(0.01)
        count = await agent.drain(0.05)
        left = len(agent._tasks)
        # after the drain the agent serves again (its partitions came back in a rebalance)
        stream.queue.put_nowait(event(3, acked))
        await asyncio.sleep(0.01)
        idle = await agent.drain(1.0)
        runner.cancel()
        return count, left, idle

    count, left, idle = asyncio.run(go())
    assert count == 1
    assert left == 0
    assert cancelled == [1]
    assert sorted(finished) == [0, 2, 3]
    assert acked == [0, 3]  # 2 waits behind the cancelled 1: Kafka delivers both again
    assert idle == 0  # nothing to cancel: all finished in time


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
