"""How the writers of a commit share the event loop with the batches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

#: The share of the loop's time the writers take before an offset commit: after
#: each slice they wait three times as long as it took. Unpaced, a commit's
#: encoding at half load left the batches too little of the loop and the latency
#: rose from 0.1 s to 1-2.4 s for seconds after every commit; at 1/3 and 1/5 the
#: tail was longer than at 1/4 (bench/README.md).
COMMIT_WRITER_SHARE = 0.25


class WriterPacing:
    """Lets the loop in between two slices of a writer."""

    def __init__(self, stopping: Callable[[], bool]) -> None:
        self.stopping = stopping
        #: rebalances waiting for the writers: they never pause meanwhile
        self.rebalances_waiting = 0

    async def between_slices(self, spent: float, paced: bool) -> None:
        """After a slice that took ``spent`` seconds. ``paced`` (before a commit):
        for long enough that the writer takes :data:`COMMIT_WRITER_SHARE` of the
        loop, unless the worker is stopping or a rebalance waits: the flow is
        stopped then, so a commit's writers under way go on unpaced, and those of
        a rebalance never pause."""
        if paced and not self.rebalances_waiting and not self.stopping():
            await asyncio.sleep(spent * (1.0 / COMMIT_WRITER_SHARE - 1.0))
        else:
            await asyncio.sleep(0)
