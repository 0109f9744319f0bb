"""The churn scan: a partition's customers scored at event time, the triggers
that are due fired, and their purchase summaries shared for the BG/NBD fit.

It runs under the partition's refresh tick, at most every ``churn_seconds``, so
the user states it writes go to that partition's changelog (ticks and users are
co-partitioned). The owner of partition 0 refits the model from every
partition's summaries, off the loop, and shares it through the ``churn`` table.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence

from core.engagement import (
    PRIOR_MODEL,
    ChurnModel,
    EngagementConfig,
    Trigger,
    due_many,
    fit_churn_model,
)
from streams.runtime.bounds import FIXED_JSON, NUMBER_JSON
from streams.runtime.children.process import ChildProcess
from streams.runtime.clock import EventClock
from streams.runtime.outbox import Outbox
from streams.runtime.partitions import Partitions
from streams.runtime.ranking import RankingQueue
from streams.runtime.replicated import ReplicatedTable
from streams.runtime.state import UserState
from streams.runtime.topology import churn_key_partition
from streams.runtime.users import Users

#: Users the churn scan reads and scores per turn of the users lock, at most; and
#: the time it takes them for at most (a batch waits meanwhile).
SCAN_SLICE_USERS = 500
SCAN_SLICE_SECONDS = 0.02
#: Keys of the users table whose partition is worked out per turn of the loop
#: when a partition's roster is listed (a hash each).
LIST_SLICE_KEYS = 5000


def churn_rows_per_record(max_record_bytes: int) -> int:
    """Summary rows ``[x, t_x, T, monetary, count]`` one ``churn`` record holds:
    five numbers of at most 25 characters each, with their commas and brackets.

    >>> churn_rows_per_record(1_000_000)
    7560
    """
    return max(1, (max_record_bytes - FIXED_JSON) // (5 * NUMBER_JSON + 7))


def compress_rows(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """Summary rows with equal (x, t_x, T, monetary) merged into one with a count;
    t_x and T rounded to a tenth of a day, money to cents (keeps the value small).

    >>> compress_rows([[1, 2.01, 3.0, 4.001, 1], [1, 2.0, 3.04, 4.0, 1]])
    [[1, 2.0, 3.0, 4.0, 2.0]]
    """
    counts: Counter[tuple[float, float, float, float]] = Counter()
    for x, t_x, T, monetary, count in rows:
        counts[(x, round(t_x, 1), round(T, 1), round(monetary, 2))] += int(count)
    return [[*key, float(n)] for key, n in sorted(counts.items())]


class ChurnScan:
    """Scores one partition's customers at a time (see the module docstring)."""

    def __init__(self, users: Users, ranking: RankingQueue, clock: EventClock,
                 partitions: Partitions, churn: ReplicatedTable, model_process: ChildProcess,
                 outbox: Outbox, engagement: EngagementConfig, churn_seconds: float,
                 max_record_bytes: int) -> None:
        self.users = users
        self.ranking = ranking
        self.clock = clock
        self.partitions = partitions
        self.churn = churn
        self.model_process = model_process
        self.outbox = outbox
        self.engagement = engagement
        self.churn_seconds = churn_seconds
        self.rows_per_record = churn_rows_per_record(max_record_bytes)
        self.scanned: dict[int, float] = {}  # partition -> monotonic time of its last scan

    def model(self) -> ChurnModel:
        """The fitted model every worker scores with (the prior until there is one)."""
        value = self.churn.get("model")
        return PRIOR_MODEL if value is None else ChurnModel.from_state(value)

    async def scan_if_due(self, partition: int) -> None:
        """:meth:`scan` the partition, unless it was scanned within ``churn_seconds``."""
        if time.monotonic() - self.scanned.get(partition, 0.0) >= self.churn_seconds:
            self.scanned[partition] = time.monotonic()
            await self.scan(partition)

    async def scan(self, partition: int) -> None:
        """Score one partition's customers at event time and fire what is due
        (under the partition's tick: see the module docstring).

        The users lock holds every batch back while it is held: the watermark is
        read before it, and the users are scanned a slice at a time.
        """
        now = self.clock.watermark(partition)
        model = self.model()
        if not self.users.roster.listed(partition):
            await self._list_partition(partition)
        user_ids = self.users.roster.users(partition)
        rows: list[list[float]] = []
        first = 0
        while first < len(user_ids):
            async with self.users.lock:
                try:
                    first = await self._scan_users(partition, user_ids, first, now, model,
                                                   rows)
                except Exception as exc:
                    await self.users.lose_cached(exc)
                    raise
            await asyncio.sleep(0)  # neither the lock nor the send need suspend
        self.write_rows(partition, compress_rows(rows))
        await self.outbox.send()
        if partition == 0:
            all_rows = [row for key, value in self.churn.view().items()
                        if key.startswith("p") and value for row in value]
            fitted = await self.model_process.run(fit_churn_model, all_rows, self.engagement)
            self.churn.set("model", fitted.to_state())
            await self.outbox.send()

    async def _list_partition(self, partition: int) -> None:
        """The roster of a partition not listed since the worker got it: its users
        as the table holds them (once after a rebalance; the partition of each key
        worked out :data:`LIST_SLICE_KEYS` at a time, batches let in between)."""
        epoch = self.users.roster.epoch
        stored = list(self.users.table.keys())
        partition_of = self.partitions.of_user
        found: list[str] = []
        for start in range(0, len(stored), LIST_SLICE_KEYS):
            found.extend(user_id for user_id in stored[start:start + LIST_SLICE_KEYS]
                         if partition_of(user_id) == partition)
            await asyncio.sleep(0)
        self.users.roster.list_partition(partition, found, epoch)

    def write_rows(self, partition: int, rows: Sequence[list[float]]) -> None:
        """A partition's summary rows to the ``churn`` table, in pieces that each fit
        a record (``p<partition>.<n>``); pieces of an earlier, longer scan emptied."""
        per_piece = self.rows_per_record
        pieces = {f"p{partition}.{n}": list(rows[start:start + per_piece])
                  for n, start in enumerate(range(0, len(rows), per_piece))}
        for key in self.churn:
            if churn_key_partition(key) == partition and key.startswith("p") \
                    and key not in pieces and self.churn.get(key):
                pieces[key] = []
        for key, piece in pieces.items():
            self.churn.set_if_changed(key, piece)

    async def _scan_users(self, partition: int, user_ids: Sequence[str], first: int,
                          now: float, model: ChurnModel, rows: list[list[float]]) -> int:
        """Fire what is due at ``now`` for the users of a partition from ``first``
        on (read now: a batch may have changed them since the scan began), and add
        their summary rows to ``rows``, for :data:`SCAN_SLICE_SECONDS` or
        :data:`SCAN_SLICE_USERS` users at most; where the next slice starts."""
        scanned: list[tuple[str, UserState]] = []
        idle: list[str] = []
        deadline = time.perf_counter() + SCAN_SLICE_SECONDS
        stop = min(len(user_ids), first + SCAN_SLICE_USERS)
        for position in range(first, stop):
            if position > first and time.perf_counter() > deadline:
                stop = position
                break
            user_id = user_ids[position]
            state = self.users.stored(user_id)
            if state is None or (state.engagement.customer.is_empty
                                 and not state.engagement.cart):
                idle.append(user_id)  # added again when it changes
                continue
            engagement = state.engagement
            scanned.append((user_id, state))
            row = engagement.summary_row(now)
            if row is not None:
                rows.append(row)
        self.users.roster.drop(partition, idle)
        due: list[tuple[str, UserState, Trigger]] = []
        changed: list[tuple[str, UserState]] = []
        for (user_id, state), fired in zip(scanned, due_many(
                [state.engagement for _, state in scanned], now, model, self.engagement),
                strict=True):
            if fired:
                changed.append((user_id, state))
                due.extend((user_id, state, trigger) for trigger in fired)
        # marked changed with their triggers queued, nothing awaited in between:
        # the triggers reach Kafka before the states are written
        self.ranking.publish([], due)
        for user_id, state in changed:
            self.users.changed(user_id, state)
        await self.outbox.send()
        return stop
