"""A blocked event loop is reported with the code that holds it, once per stall;
a long garbage collection too; what survives a commit interval is frozen."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref

import pytest

from streams.runtime.loop_watch import FULL_COLLECTION_SECONDS, LoopWatch, SurvivorFreezer


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # what a slow synchronous step does to every task


async def watched(steps: list[float], threshold: float) -> None:
    """Each step: > 0 holds the loop that long, < 0 awaits that long."""
    watch = asyncio.ensure_future(LoopWatch(threshold).beat())
    await asyncio.sleep(0.05)
    for step in steps:
        if step > 0:
            hold_the_loop(step)
        else:
            await asyncio.sleep(-step)
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    await asyncio.sleep(2 * threshold)  # the thread sees the stop, not a stall


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "streams.runtime.loop_watch" and r.levelno == logging.WARNING]


def test_each_stall_is_reported_once_with_the_code_holding_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="streams.runtime.loop_watch")
    asyncio.run(watched([0.8, -0.3, 0.8], threshold=0.2))
    reported = warnings(caplog)
    assert len(reported) == 2
    for message in reported:
        assert message.startswith("event loop blocked for ")
        assert "in hold_the_loop" in message and "time.sleep(seconds)" in message


def test_a_loop_that_awaits_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streams.runtime.loop_watch")
    asyncio.run(watched([-0.5, 0.05, -0.5], threshold=0.3))
    assert warnings(caplog) == []


def test_a_long_garbage_collection_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streams.runtime.loop_watch")
    held = [[n] for n in range(300_000)]  # containers a full collection visits

    async def collect_while_watched() -> None:
        watch = asyncio.ensure_future(LoopWatch(0.001).beat())
        await asyncio.sleep(0.01)
        gc.collect()
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)

    asyncio.run(collect_while_watched())
    assert len(held) == 300_000
    assert any(message.startswith("garbage collection of generation 2 blocked the event loop")
               for message in warnings(caplog))


def test_survivors_are_frozen_and_the_hourly_collection_frees_cycles_among_them() -> None:
    class Node:
        me: Node

    freezer = SurvivorFreezer()
    try:
        cycle = Node()
        cycle.me = cycle
        alive = weakref.ref(cycle)
        freezer.freeze()
        assert gc.get_freeze_count() > 0
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: a cycle that died is not collected yet
        freezer._last_full -= FULL_COLLECTION_SECONDS
        freezer.freeze()
        assert alive() is None
    finally:
        gc.unfreeze()
