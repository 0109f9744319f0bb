"""The rows of C this worker owns, held in the rows processes and written to the
``cooccurrence`` table once per commit (what changed in them: see
:mod:`streams.runtime.row_records`).

Partition p of rows is held by rows process ``p % rows_processes`` (see
:mod:`streams.runtime.children.held_rows`): the loop hands it the row-update
messages as bytes, and at a commit it hands back the rows changed since, encoded.
A rows process holds the only copy of changes not written yet: if one fails or
dies, the worker stops without committing (it resumes from the last commit).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

import faust
from faust.types import EventT, TableT

from streams.runtime.children.held_rows import (
    RowMessage,
    RowsDue,
    apply_row_messages,
    hold_rows,
    release_rows,
    rows_to_send,
    take_unwritten_rows,
)
from streams.runtime.children.process import ChildProcess
from streams.runtime.metrics import Counters
from streams.runtime.outbox import Outbox
from streams.runtime.pacing import WriterPacing
from streams.runtime.partitions import Partitions
from streams.runtime.replicated import ReplicatedTable
from streams.runtime.row_records import split_key
from streams.runtime.table_writes import TableWriter, acting_as

#: Rows written per turn of the loop before a commit (encoded by the rows
#: processes: the loop puts them in the store and the outbox).
ROWS_PER_SLICE = 250


class RowsLost(RuntimeError):
    """The rows process failed (midway through a batch) or died: changes of rows
    not written yet are lost, and the worker stops (it resumes from the last
    commit)."""


class RowsClient:
    """Calls into the rows processes: hold, apply, hand over for refresh, write.

    ``lock`` is held by a batch of row updates under way, and while rows are read
    into a rows process or sent from it for a refresh; a rebalance takes it too.
    """

    def __init__(self, table: TableT[Any, Any], processes: Sequence[ChildProcess],
                 partitions: Partitions, item_stats: ReplicatedTable, outbox: Outbox,
                 pacing: WriterPacing, counters: Counters, tau: float, max_row_width: int,
                 crash: Callable[[BaseException], Awaitable[None]]) -> None:
        self.table = table
        self.processes = list(processes)
        self.partitions = partitions
        self.item_stats = item_stats
        self.pacing = pacing
        self.counters = counters
        self.tau = tau
        self.max_row_width = max_row_width
        self.crash = crash
        self.writer = TableWriter(outbox)
        self.lock = asyncio.Lock()
        self._writing = asyncio.Lock()  # one writer of changed rows at a time
        #: per partition held: the token the rows process holds its rows under
        self.held: dict[int, int] = {}
        # per partition: the last row-update event read there, under which its
        # rows are written (rows and their updates are co-partitioned)
        self._carriers: dict[int, EventT[bytes]] = {}
        self._tokens = itertools.count(1)
        #: the rows agent's stream, under whose events rows are written
        self.stream: faust.Stream[bytes] | None = None

    def process_of(self, partition: int) -> ChildProcess:
        """The rows process that holds the rows of ``partition``."""
        return self.processes[partition % len(self.processes)]

    async def call(self, process: ChildProcess, function: Callable[..., Any],
                   *args: Any) -> Any:
        """``function(*args)`` in a rows process. If it fails, or the process died,
        rows changed since the last commit are lost: the worker stops (no commit
        follows: it resumes from the last one) and :class:`RowsLost` is raised."""
        try:
            return await process.run(function, *args)
        except Exception as exc:
            lost = RowsLost(f"the rows process failed: {exc!r}")
            lost.__cause__ = exc
            await self.crash(lost)
            raise lost from exc

    async def call_each(self, function: Callable[..., Any],
                        args_by_process: Mapping[ChildProcess, tuple[Any, ...]]) -> list[Any]:
        """``function(*args)`` in each of these rows processes at once (see
        :meth:`call`); the results in the mapping's order."""
        return list(await asyncio.gather(*(self.call(process, function, *args)
                                           for process, args in args_by_process.items())))

    async def hold(self, partitions: Collection[int]) -> None:
        """The rows processes hold the rows of ``partitions`` once this returns:
        those not held yet are read from the table (every row of those
        partitions, in one pass over the table). Under :attr:`lock`."""
        missing = {p for p in partitions if p not in self.held}
        if not missing:
            return
        encoded: dict[int, dict[str, bytes]] = {p: {} for p in missing}
        partition_of = self.partitions.of_item
        for key, value in self.table.items():
            # a row's deltas are in its partition: placed by the row's id
            rows = encoded.get(partition_of(split_key(key)[0]))
            if rows is not None and value is not None:
                rows[key] = value
        for partition, rows in encoded.items():
            token = next(self._tokens)
            await self.call(self.process_of(partition), hold_rows, partition, token, rows)
            self.held[partition] = token

    async def apply(self, batch: Sequence[EventT[bytes]]) -> None:
        """Hand a batch of row updates to the rows processes, which apply them to
        the rows they hold; the rows are written to the table by
        :meth:`write_changed` (at the next commit at the latest). The small per-item
        stats every worker reads go out now. A rebalance waits for the batch
        under way (:attr:`lock`), as it waits for a batch of events."""
        async with self.lock:
            events = self.partitions.current(batch)
            if not events:
                return
            await self.hold({event.message.partition for event in events})
            messages: dict[ChildProcess, list[RowMessage]] = defaultdict(list)
            for event in events:
                partition = event.message.partition
                self._carriers[partition] = event
                messages[self.process_of(partition)].append(
                    (partition, self.held[partition], event.message.value or b"{}"))
            results = await self.call_each(apply_row_messages, {
                process: (batch_messages, self.tau, self.max_row_width)
                for process, batch_messages in messages.items()})
        for applied, skipped, stats in results:
            self.counters.row_updates_applied += applied
            self.counters.row_updates_skipped += skipped
            for item_id, encoded in stats:
                self.item_stats.set_encoded_if_changed(item_id, encoded)

    async def for_refresh(self, partition: int, counts_version: int, everything: bool = False
                          ) -> RowsDue:
        """A partition's rows whose neighbour lists are due (see
        :meth:`streams.runtime.children.held_rows.HeldRows.to_send`)."""
        async with self.lock:
            await self.hold({partition})
            sent: RowsDue = await self.call(self.process_of(partition), rows_to_send,
                                            partition, counts_version, everything)
            return sent

    async def write_changed(self, paced: bool = False) -> None:
        """Every row changed before this call is written when it returns (before
        every offset commit and before a rebalance): the rows processes hand over
        a record per row changed since the last commit, encoded, and they go to the table
        :data:`ROWS_PER_SLICE` at a time with batches let in between (``paced``:
        see :class:`streams.runtime.pacing.WriterPacing`). The stats of rows whose
        count moved go out again if they changed since they were sent (see
        :meth:`streams.runtime.children.held_rows.HeldRows.take_unwritten`)."""
        async with self._writing:
            if not self.held or self.stream is None:
                return
            taken: list[tuple[int, str, bytes]] = []  # partition, table key, value
            for rows, stats in await self.call_each(
                    take_unwritten_rows, dict.fromkeys(self.processes, ())):
                taken.extend(rows)
                for item_id, encoded in stats:
                    self.item_stats.set_encoded_if_changed(item_id, encoded)
            for start in range(0, len(taken), ROWS_PER_SLICE):
                started = time.perf_counter()
                with acting_as(self.stream) as act_as:
                    for partition, key, value in taken[start:start + ROWS_PER_SLICE]:
                        act_as(self._carriers[partition])
                        self.writer.write(self.table, key, value)
                if start + ROWS_PER_SLICE < len(taken):
                    await self.pacing.between_slices(time.perf_counter() - started, paced)

    async def release(self) -> None:
        """Let go of every row held (after a rebalance: read again when needed)."""
        self._carriers.clear()
        if self.held:
            self.held.clear()
            await self.call_each(release_rows, dict.fromkeys(self.processes, ()))
