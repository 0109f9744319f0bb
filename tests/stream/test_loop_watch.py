"""A blocked event loop is reported with the code that holds it, once per stall."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from streams.runtime.loop_watch import LoopWatch


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
