"""The order of a commit and of a rebalance: what must be in Kafka before what.

The worker runs at-least-once (Faust's exactly-once is broken) and makes every
effect idempotent; these invariants are what keep a crash at any moment from
losing or doubling an event:

1. A user's state is written only after the row updates, lists and triggers of
   its events are in Kafka (queued before, then delivered): a crash in between
   replays them, and rows, lists and triggers are idempotent (offsets, one list
   per user, trigger ids); the other way round they would be lost.
2. Offsets are committed only after every state and row changed before the
   commit is written, and every record queued is delivered; a record that failed
   stops the worker and nothing is committed (it resumes from the last commit).
3. A rebalance waits for the batch under way (the users and rows locks), then
   writes and delivers everything (1, 2) before letting the partitions go, and
   forgets what it cached of them: another worker may own them next, and it
   recovers from the changelogs.
4. The writers of a commit take a share of the loop (see
   :mod:`streams.runtime.pacing`); those of a rebalance never pause, and a
   commit's writers under way stop pausing once a rebalance waits.
"""

from __future__ import annotations

from typing import Any

from mode.types.signals import BaseSignalT

from streams.runtime.metrics import WorkerMetrics
from streams.runtime.outbox import Outbox
from streams.runtime.pacing import WriterPacing
from streams.runtime.ranking import RankingQueue
from streams.runtime.refresh import Refresh
from streams.runtime.rows import RowsClient
from streams.runtime.users import Users


class Commits:
    """Writes what changed before an offset commit, and before a rebalance."""

    def __init__(self, users: Users, rows: RowsClient, ranking: RankingQueue,
                 refresh: Refresh, outbox: Outbox, pacing: WriterPacing,
                 metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self.users = users
        self.rows = rows
        self.ranking = ranking
        self.refresh = refresh
        self.outbox = outbox
        self.pacing = pacing

    async def before_commit(self) -> None:
        """Before offsets are committed (invariants 1 and 2): users and rows changed
        since the last commit go to their tables, and every record queued so far
        is written (a failed batch raises
        :class:`streams.runtime.outbox.DeliveryFailed`, and nothing is committed)."""
        phase = self.metrics.commit_seconds.labels
        with phase("rankings").time():
            await self.ranking.published()
        with phase("rows").time():
            await self.rows.write_changed(paced=True)
        with phase("users").time():
            await self.users.write_changed(paced=True)
        with phase("records").time():
            await self.outbox.send()
            await self.outbox.delivered()
        self.outbox.check()

    async def on_rebalance(self, sender: Any, /, *args: Any,
                           signal: BaseSignalT[Any], **kwargs: Any) -> None:
        """Partitions revoked or assigned (invariant 3). Batches of the old
        generation taken after it are skipped (see
        :meth:`streams.runtime.partitions.Partitions.current`); rows changed since
        the last commit are written too (if the partition comes back, the offsets
        acked meanwhile may be committed), and the rows processes let go of them
        (read again when needed)."""
        self.pacing.rebalances_waiting += 1
        try:
            async with self.users.lock, self.rows.lock:
                await self.ranking.published()
                await self.rows.write_changed()
                await self.users.write_changed()
                await self.outbox.send()
                await self.outbox.delivered()
                self.users.forget()
                await self.rows.release()
        finally:
            self.pacing.rebalances_waiting -= 1
