"""Neighbour refresh: the leader's ticks, each partition's neighbour lists, and
the ranking snapshot rebuilt from the replicated tables.

Every ``refresh_seconds`` the group's leader ticks each partition in turn, one
every ``refresh_seconds / partitions``; a round is numbered by the second it
started at, which becomes the snapshot's ``model_version``. The owner of a
partition recomputes its items' neighbours in the model process, from the rows
whose lists are due (the rows process sends those changed since the last round
and a rotation of the others: :mod:`streams.runtime.children.due_lists`), and
writes the lists that changed. A worker rebuilds its snapshot when the last of
its partitions is done with a round, and when other workers wrote lists.

The model process keeps its own copy of the replicated neighbour lists and item
stats (:mod:`streams.runtime.children.model_replica`), brought up to date before
each refresh and rebuild with the keys changed since the last time; it writes
the snapshot to a file that the ranking child loads. So neither costs the event
loop more than what changed, however large the catalogue.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import pickle
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import orjson
from faust.types import EventT

from core.config import RecommenderConfig
from core.snapshot import Snapshot
from streams.runtime.children.model_jobs import EncodedList, neighbors_of_rows
from streams.runtime.children.model_replica import (
    ReplicaNotHeld,
    build_snapshot,
    update_replica,
)
from streams.runtime.children.process import ChildProcess
from streams.runtime.metrics import Counters, WorkerMetrics
from streams.runtime.outbox import Outbox
from streams.runtime.ranking import RankingQueue
from streams.runtime.rows import RowsClient
from streams.runtime.snapshot_files import SnapshotFiles
from streams.runtime.topology import Topology

R = TypeVar("R")

#: A refresh tick older than this many refresh intervals is skipped: the
#: partition's next tick is behind it (refreshing every tick in turn, a worker
#: slower than the ticks fell further behind for as long as it ran).
STALE_TICK_INTERVALS = 2.0
#: Neighbour lists a refresh stores and publishes per turn of the loop.
LISTS_PER_SLICE = 250
#: A worker whose own refresh round rebuilt its snapshot within this many refresh
#: intervals leaves other workers' lists to its next round's rebuild.
OWN_ROUND_COVERS = 1.5
#: Keys of each replicated table handed to the model process per call (each call
#: pickled apart, batches let in between).
REPLICA_KEYS_PER_CALL = 2000
#: Tries of a call that needs the model process's copy of the tables (a model
#: process that died and was replaced meanwhile holds none: it gets them all).
REPLICA_ATTEMPTS = 3


class Refresh:
    """Ticks, partition refreshes and snapshot rebuilds of one worker."""

    def __init__(self, topology: Topology, rows: RowsClient, model_process: ChildProcess,
                 ranking: RankingQueue, outbox: Outbox, config: RecommenderConfig,
                 refresh_seconds: float, partitions: int, counters: Counters,
                 metrics: WorkerMetrics, snapshots: SnapshotFiles) -> None:
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
        self.snapshots = snapshots
        # the ranking snapshot as last built (None: in its file, not loaded here)
        self._snapshot: Snapshot | None = Snapshot.empty(config.neighbors)
        self._model_path: Path | None = None
        #: items the last snapshot knows, and its version
        self.model_items = 0
        self.model_round = 0
        # the token of the model process's copy of the replicated tables (None:
        # hand over every key next time)
        self._replica_token: int | None = None
        #: refresh round last completed per tick partition seen by this worker
        self.partition_rounds: dict[int, int] = {}
        # per partition refreshed here, as of its last refresh: lists computed
        # before the counts last moved, rows held, and the counts' version then
        self._lag: dict[int, tuple[int, int, int]] = {}
        self._rebuilding = asyncio.Lock()
        # one user of the model process's copy of the replicated tables at a time:
        # hand-overs interleaved could apply an older value after a newer one
        self._replica_lock = asyncio.Lock()
        self._tokens = itertools.count(1)
        # the item counts as the model process's copy holds them: larger once any
        # moved (the rows process's rotation recomputes lists older than that)
        self._counts_version = 0
        # partitions whose lists of the last rows sent were lost: all rows next time
        self._lists_lost: set[int] = set()
        # neighbour lists other workers wrote, as counted when the snapshot was built
        self._others_lists_built = -1
        self.own_round_rebuilt = -math.inf  # monotonic time of the last one
        # the leader's ticks: the partition ticked next, its round, when it began
        self._next_tick_partition = 0
        self._tick_round = 0
        self._round_started = 0.0

    @property
    def snapshot(self) -> Snapshot:
        """The ranking snapshot as last built, read from its file when first asked
        (diagnostics and tests: the worker itself never needs it on the loop)."""
        if self._snapshot is None:
            assert self._model_path is not None
            with self._model_path.open("rb") as file:
                self._snapshot = pickle.load(file)
        return self._snapshot

    @snapshot.setter
    def snapshot(self, snapshot: Snapshot) -> None:
        self._snapshot, self._model_path = snapshot, None
        self.model_items = snapshot.model.n_items

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
        item_neighbors = self.topology.names["item-neighbors"]
        # held until the lists are written: a hand-over in between would send the
        # model process the values they replace
        async with self._replica_lock:
            lists = await self.partition_neighbors(partition, refresh_round)
            try:
                for n, (item_id, value, record) in enumerate(lists, 1):
                    if n % LISTS_PER_SLICE == 0:
                        await asyncio.sleep(0)  # a partition's lists in one go: a long stall
                    # recorded by the model process already: not a change to hand it
                    if self.topology.neighbors.set_encoded_if_changed(item_id, value,
                                                                      track=False):
                        self.outbox.add(item_neighbors, record, key=item_id.encode())
            except BaseException:
                # the copy records lists not written here: it would not return them
                # again, so a fresh copy (which returns every list once) replaces it
                self._replica_token = None
                raise
            self._lists_lost.discard(partition)  # written
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

    async def partition_neighbors(self, partition: int, model_version: int
                                  ) -> list[EncodedList]:
        """Neighbour lists of a partition's items that changed since they were last
        computed, encoded (see
        :func:`streams.runtime.children.model_jobs.neighbors_of_rows`), by the model
        process from its copy of the item counts and the rows due, which the rows
        process sends (pickled: the loop passes the bytes on)."""
        config = self.config
        args = (None, config.neighbors, config.similarity, config.similarity_params,
                model_version)
        for _ in range(REPLICA_ATTEMPTS):
            replica = await self.sync_replica()
            # rows sent whose lists are not written (whatever failed) are lost to
            # the rows process: the next send is every row (see refresh)
            everything = partition in self._lists_lost
            self._lists_lost.add(partition)
            version = self._counts_version
            due = await self.rows.for_refresh(partition, version, everything)
            try:
                lists: list[EncodedList] = await self.model_process.run(
                    neighbors_of_rows, due.rows, *args, replica)
            except ReplicaNotHeld:
                self._replica_token = None
                continue
            self._lag[partition] = (due.lagging, due.held, version)
            return lists
        raise ReplicaNotHeld(f"the model process lost its copy {REPLICA_ATTEMPTS} times")

    async def sync_replica(self) -> int:
        """The model process's copy of the neighbour lists and item stats brought up
        to date: the keys changed since the last hand-over (every key for a model
        process that holds none); its token. The caller holds the replica lock."""
        assert self._replica_lock.locked()
        neighbors, stats = self.topology.neighbors, self.topology.item_stats
        for _ in range(REPLICA_ATTEMPTS):
            token, full = self._replica_token, self._replica_token is None
            lists: Mapping[str, bytes | None]
            stat_values: Mapping[str, bytes | None]
            if token is None:
                token = next(self._tokens)
                lists, stat_values = neighbors.take_all(), stats.take_all()
            else:
                lists, stat_values = neighbors.take_changed(), stats.take_changed()
            self._replica_token = None  # until it is handed over whole
            if full or stat_values:  # any stat may be a count (decoding them costs more)
                self._counts_version += 1
            try:
                await self._hand_over(token, full, dict(lists), dict(stat_values))
            except ReplicaNotHeld:
                continue
            self._replica_token = token
            return token
        raise ReplicaNotHeld(f"the model process lost its copy {REPLICA_ATTEMPTS} times")

    async def _hand_over(self, token: int, full: bool, lists: dict[str, Any],
                         stats: dict[str, Any]) -> None:
        """Keys to the model process, :data:`REPLICA_KEYS_PER_CALL` of each table per
        call, batches let in between (each call is pickled when made)."""
        list_items, stat_items = list(lists.items()), list(stats.items())
        calls: list[Awaitable[None]] = []
        for start in range(0, max(len(list_items), len(stat_items), 1), REPLICA_KEYS_PER_CALL):
            end = start + REPLICA_KEYS_PER_CALL
            calls.append(self.model_process.submit(
                update_replica, token, full and start == 0, dict(list_items[start:end]),
                dict(stat_items[start:end])))
            await asyncio.sleep(0)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _with_replica(self, function: Callable[..., R], *args: Any) -> R:
        """``function(*args, token)`` in the model process once its copy of the
        replicated tables is up to date (``token``: that copy's)."""
        for _ in range(REPLICA_ATTEMPTS):
            token = await self.sync_replica()
            try:
                return await self.model_process.run(function, *args, token)
            except ReplicaNotHeld:
                self._replica_token = None
        raise ReplicaNotHeld(f"the model process lost its copy {REPLICA_ATTEMPTS} times")

    def lists_lagging(self) -> int:
        """Lists of this worker's partitions computed before the counts last moved:
        as a partition's last refresh left them, or every row it holds when the
        counts moved since (the snapshot just built has these counts)."""
        owned = self.topology.owned_tick_partitions()
        for partition in [p for p in self._lag if owned and p not in owned]:
            del self._lag[partition]
        return sum(lagging if version == self._counts_version else held
                   for lagging, held, version in self._lag.values())

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

    async def first_items(self) -> None:
        """A worker whose snapshot knows no item yet rebuilds it as soon as rows
        came in (the trending items of their stats), not at the end of its first
        round: until then every list it published was empty."""
        if self.model_items == 0 and not self._rebuilding.locked():
            await self.rebuild(self.model_round)

    async def rebuild(self, refresh_round: int) -> None:
        """Rebuild the ranking snapshot from the replicated tables: in the model
        process, from its copy of them, into a file the ranking child loads (the
        loop handles the path only)."""
        async with self._rebuilding:
            self._others_lists_built = self.topology.neighbors.others_writes
            # version 0: no complete refresh yet (trending items only, if any)
            version = max(refresh_round, self.model_round)
            path = self.snapshots.next_path(version)
            async with self._replica_lock:
                items = await self._with_replica(build_snapshot, version,
                                                 self.config.neighbors, self.config.tau,
                                                 str(path))
            self.ranking.rank_with_snapshot(str(path))
            self._snapshot, self._model_path, self.model_items = None, path, items
            self.model_round = version
            self.counters.lists_lagging = self.lists_lagging()
            await self.ranking.snapshot_held()
            self.snapshots.loaded(path)  # older files go once the ranking child has it
