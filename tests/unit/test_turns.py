"""Turns keep the state changes of one partition in offset order."""

from __future__ import annotations

import asyncio

from streams.agents import Turn


def test_a_request_that_fails_before_its_turn_lets_no_later_one_overtake() -> None:
    """Offset 0 is inside its turn (slow), offset 1 fails before its turn (bad JSON, an
    embedding error), offset 2 wants its turn: it must wait for offset 0 (before, offset
    1's end released offset 2 at once, and two turns ran on one classifier together)."""

    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        turns = [Turn(futures[i - 1] if i else None, futures[i]) for i in range(3)]
        order: list[str] = []

        async def slow_first() -> None:
            async with turns[0]:
                order.append("0 in")
                await asyncio.sleep(0.05)
                order.append("0 out")

        async def third() -> None:
            async with turns[2]:
                order.append("2 in")

        first = asyncio.create_task(slow_first())
        await asyncio.sleep(0)  # offset 0 enters its turn
        turns[1].finish()  # offset 1 failed before its turn
        await asyncio.gather(first, third())
        return order

    assert asyncio.run(go()) == ["0 in", "0 out", "2 in"]


def test_turns_that_all_end_early_release_in_order() -> None:
    async def go() -> bool:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(4)]
        turns = [Turn(futures[i - 1] if i else None, futures[i]) for i in range(4)]
        for turn in reversed(turns[1:]):
            turn.finish()
        await asyncio.sleep(0)
        if any(f.done() for f in futures):
            return False  # nothing may end before offset 0
        turns[0].finish()
        await asyncio.wait_for(futures[3], 1)
        return True

    assert asyncio.run(go())
