"""Neighbour refresh: the leader's ticks, each partition's neighbour lists, and
the ranking snapshot rebuilt from the replicated tables.

Every ``refresh_seconds`` the group's leader ticks each partition in turn, one
every ``refresh_seconds / partitions``; a round is numbered by the second it
started at, which becomes the snapshot's ``model_version``. The owner of a
partition recomputes its items' neighbours in the model process (which keeps a
copy of the partition's rows: sent in full once, then only those changed) and
writes the lists that changed. A worker rebuilds its snapshot when the last of
its partitions is done with a round, and when other workers wrote lists.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Mapping

import orjson
from faust.types import EventT

from core.config import RecommenderConfig
from core.ranking import NeighborModel
from streams.runtime.children.held_rows import RowsNotHeld
from streams.runtime.children.model_jobs import EncodedList, build_model, neighbors_of_partition
from streams.runtime.children.process import ChildProcess
from streams.runtime.metrics import Counters, WorkerMetrics
from streams.runtime.outbox import Outbox
from streams.runtime.ranking import RankingQueue
from streams.runtime.rows import RowsClient
from streams.runtime.topology import Topology

#: A refresh tick older than this many refresh intervals is skipped: the
#: partition's next tick is behind it (refreshing every tick in turn, a worker
#: slower than the ticks fell further behind for as long as it ran).
STALE_TICK_INTERVALS = 2.0
#: Neighbour lists a refresh stores and publishes per turn of the loop.
LISTS_PER_SLICE = 250
#: A worker whose own refresh round rebuilt its snapshot within this many refresh
#: intervals leaves other workers' lists to its next round's rebuild.
OWN_ROUND_COVERS = 1.5


class Refresh:
    """Ticks, partition refreshes and snapshot rebuilds of one worker."""

    def __init__(self, topology: Topology, rows: RowsClient, model_process: ChildProcess,
                 ranking: RankingQueue, outbox: Outbox, config: RecommenderConfig,
                 refresh_seconds: float, partitions: int, counters: Counters,
                 metrics: WorkerMetrics) -> None:
        self.topology = topology
        self.rows = rows
        self.model_process = model_process
        self.ranking = ranking
        self.outbox = outbox
        self.config = config
        self.refresh_seconds = refresh_seconds
        self.partitions = partitions
        self.counters = counters
        self.metrics = metrics
        #: the ranking snapshot as last built, and its version
        self.model = NeighborModel.empty(config.neighbors)
        self.model_round = 0
        #: refresh round last completed per tick partition seen by this worker
        self.partition_rounds: dict[int, int] = {}
        self._rebuilding = asyncio.Lock()
        # Rows of C the model process holds: per partition, the token of the full
        # send they began with (none: send all next time).
        self._sent_under: dict[int, int] = {}
        self._tokens = itertools.count(1)
        # neighbour lists other workers wrote, as counted when the snapshot was built
        self._others_lists_built = -1
        self.own_round_rebuilt = -math.inf  # monotonic time of the last one
        # the leader's ticks: the partition ticked next, its round, when it began
        self._next_tick_partition = 0
        self._tick_round = 0
        self._round_started = 0.0

    @property
    def tick_seconds(self) -> float:
        """Seconds between the leader's refresh ticks: each partition is refreshed
        once per ``refresh_seconds``, the partitions in turn."""
        return self.refresh_seconds / self.partitions

    async def send_tick(self) -> None:
        """Tick the next partition of rows (the group's leader, every
        :attr:`tick_seconds`); a round starts at partition 0, and its ticks carry
        its number: the second it started at, which is also the version of the
        snapshot built from it (clients compare it with the clock). So a round
        starts in a later second than the last one, or waits a tick: two rounds of
        one number would rebuild once.

        Ticked at once, a worker refreshed its partitions back to back (2-3 s of
        the loop's busiest work in every 10 s); a timer of the whole interval that
        slept between the ticks made each round 1.75 intervals long: Faust's timer
        sleeps its interval after its body returns.
        """
        partition = self._next_tick_partition
        if partition == 0:
            now = time.time()
            if int(now) <= self._tick_round:
                return
            self._tick_round, self._round_started = int(now), now
        self._next_tick_partition = (partition + 1) % self.partitions
        # when the tick is due: its age tells a worker behind (see refresh)
        sent = self._round_started + partition * self.tick_seconds
        self.outbox.add(self.topology.ticks_topic.get_topic_name(),
                        orjson.dumps({"round": self._tick_round, "sent": sent}),
                        partition=partition)
        await self.outbox.send()

    async def refresh(self, event: EventT[bytes]) -> tuple[int, int] | None:
        """A partition's neighbour lists, for its tick: (partition, round), or None
        for a stale tick, skipped."""
        partition = event.message.partition
        tick = orjson.loads(event.message.value or b"{}")
        refresh_round = int(tick.get("round", 0))
        if time.time() - float(tick.get("sent", math.inf)) > (
                STALE_TICK_INTERVALS * self.refresh_seconds):
            self.counters.stale_ticks += 1
            return None
        started = time.perf_counter()
        counts = {item_id: float(stats[0]) for item_id, stats
                  in self.topology.item_stats.view().items()}
        lists = await self.partition_neighbors(partition, counts, refresh_round)
        item_neighbors = self.topology.names["item-neighbors"]
        for n, (item_id, value, record) in enumerate(lists, 1):
            if n % LISTS_PER_SLICE == 0:
                await asyncio.sleep(0)  # a partition's lists in one go: a long stall
            if self.topology.neighbors.set_encoded_if_changed(item_id, value):
                self.outbox.add(item_neighbors, record, key=item_id.encode())
        await self.outbox.send()
        self.counters.refreshes += 1
        self.counters.last_refresh_seconds = time.perf_counter() - started
        self.metrics.refresh_seconds.observe(self.counters.last_refresh_seconds)
        return partition, refresh_round

    async def round_done(self, partition: int, refresh_round: int) -> None:
        """A partition is refreshed for ``refresh_round``. The snapshot is as new as
        the oldest refresh among the partitions this worker owns: it is rebuilt
        when the last of them is done with a round, not after each one. (Outside
        a group, as in tests, each refresh is a round of its own.)"""
        self.partition_rounds[partition] = refresh_round
        owned = self.topology.owned_tick_partitions()
        complete = min(self.partition_rounds.get(p, 0) for p in owned or {partition})
        if complete > self.model_round or not owned:
            await self.rebuild(complete)
            if owned:
                self.own_round_rebuilt = time.monotonic()

    async def partition_neighbors(self, partition: int, counts: Mapping[str, float],
                                  model_version: int) -> list[EncodedList]:
        """Neighbour lists of a partition's items, encoded (see
        :func:`streams.runtime.children.model_jobs.neighbors_of_partition`), by the
        model process, which keeps a copy of the partition's rows: sent in full
        once, then those changed since (by the rows process, pickled: the loop
        passes the bytes on)."""
        config = self.config
        args = (self.topology.owned_tick_partitions(), counts, config.neighbors,
                config.similarity, config.similarity_params, model_version)

        async def lists_after_send(token: int, full: bool) -> list[EncodedList]:
            rows = await self.rows.for_refresh(partition, full)
            lists: list[EncodedList] = await self.model_process.run(
                neighbors_of_partition, partition, token, rows, full, *args)
            self._sent_under[partition] = token
            return lists

        # back once the model process has the rows sent (none: send them all)
        token = self._sent_under.pop(partition, None)
        if token is not None:
            try:
                return await lists_after_send(token, full=False)
            except RowsNotHeld:  # a new model process: it gets them all
                pass
        return await lists_after_send(next(self._tokens), full=True)

    def forget_sent_rows(self) -> None:
        """After a rebalance the partitions' rows may be others' now: the next
        refresh of each sends them in full."""
        self._sent_under.clear()

    async def take_others_lists(self) -> None:
        """Rebuild the snapshot if other workers wrote neighbour lists since the last
        build, unless this worker's own refresh rounds rebuild it: one completed
        within the last :data:`OWN_ROUND_COVERS` refresh intervals, and the next
        takes those lists too, as fresh as this timer would. Others write lists all
        through a round, so the timer found new ones every time: with two workers
        each rebuilt twice an interval."""
        if self.topology.neighbors.others_writes == self._others_lists_built:
            return
        if (self.topology.owned_tick_partitions() and time.monotonic() - self.own_round_rebuilt
                < OWN_ROUND_COVERS * self.refresh_seconds):
            return
        await self.rebuild(self.model_round)

    async def rebuild(self, refresh_round: int) -> None:
        """Rebuild the ranking snapshot from the replicated tables (in the model
        process; the lists and stats are pickled at the call)."""
        async with self._rebuilding:
            self._others_lists_built = self.topology.neighbors.others_writes
            # as stored (JSON): decoded in the model process
            lists = self.topology.neighbors.view_encoded()
            stats = self.topology.item_stats.view_encoded()
            # version 0: no complete refresh yet (trending items only, if any)
            version = max(refresh_round, self.model_round)
            self.model = await self.model_process.run(
                build_model, version, lists, stats, self.config.neighbors, self.config.tau)
            self.ranking.rank_with(self.model)
            self.model_round = version
