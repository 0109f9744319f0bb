"""One worker: its Faust app, built from explicit settings, and the collaborators
its agents, timers and routes call.

Data flow (each collaborator's module says how and why):

- ``clicks`` + ``purchases`` (keyed by user) -> agent ``process_events`` ->
  :class:`~streams.runtime.ingest.Ingest`: validated (bad input ->
  ``dead-letters``), forwarded where its user lives, de-duplicated, learned into
  the user's state (:class:`~streams.runtime.users.Users`, table ``users``); the
  row updates go to the item-keyed repartition topic, the lists and triggers to
  the :class:`~streams.runtime.ranking.RankingQueue` (ranked in the ranking child).
- ``<app>-cooccurrence`` (by item partition) -> agent ``apply_cooccurrence`` ->
  :class:`~streams.runtime.rows.RowsClient`: applied in the rows processes, written
  to table ``cooccurrence`` at each commit; per-item stats to the replicated
  ``item-stats``.
- The leader ticks each partition in turn -> agent ``refresh_neighbors`` ->
  :class:`~streams.runtime.refresh.Refresh` (neighbour lists, in the model process;
  replicated ``neighbors`` and ``item-neighbors``), then
  :class:`~streams.runtime.churn_scan.ChurnScan` (churn alerts, due triggers), then
  the ranking snapshot is rebuilt when a round is complete.
- :class:`~streams.runtime.commits.Commits` owns the order of every commit and
  rebalance; :mod:`streams.runtime.http` answers the HTTP routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.types import StreamT

from streams.runtime.children.held_rows import ROWS_NICENESS
from streams.runtime.children.model_jobs import MODEL_NICENESS
from streams.runtime.children.process import ChildProcess
from streams.runtime.children.ranking_jobs import RANKER_NICENESS
from streams.runtime.churn_scan import ChurnScan
from streams.runtime.clock import INPUT_TOPICS, EventClock
from streams.runtime.commits import Commits
from streams.runtime.dead_letters import DeadLetters
from streams.runtime.faust_app import make_app
from streams.runtime.http_views import Lookups, declare_views
from streams.runtime.ingest import Ingest
from streams.runtime.kept_ranking import KeptRanking
from streams.runtime.loop_watch import LoopWatch, SurvivorFreezer
from streams.runtime.metrics import Counters, WorkerMetrics
from streams.runtime.outbox import KafkaSink, Outbox
from streams.runtime.pacing import WriterPacing
from streams.runtime.partitions import Partitions
from streams.runtime.ranking import RankingQueue
from streams.runtime.refresh import Refresh
from streams.runtime.rows import RowsClient
from streams.runtime.settings import Settings
from streams.runtime.snapshot_files import SnapshotFiles
from streams.runtime.topology import Topology
from streams.runtime.users import Users


@dataclass(frozen=True)
class Agents:
    """The worker's agents, by name."""

    process_events: faust.types.AgentT[Any]
    apply_cooccurrence: faust.types.AgentT[Any]
    refresh_neighbors: faust.types.AgentT[Any]


class RecoStream:
    """One worker's app, topics, tables, agents and routes, wired to the
    collaborators that do the work."""

    def __init__(self, settings: Settings) -> None:
        s = self.settings = settings
        self.config = settings.recommender_config()
        self.engagement = settings.engagement_config()
        self.counters = Counters()
        app = self.app = make_app(settings)
        crash = app.crash
        # The children are added before Faust's services, so they stop after them
        # (after the consumer's last commit). A rows process holds the only copy of
        # changes not written yet: one that died is never replaced (the worker stops).
        self.model_process = ChildProcess(MODEL_NICENESS, "reco-model")
        self.rows_processes = [ChildProcess(ROWS_NICENESS, f"reco-rows-{n}", replace_dead=False)
                               for n in range(s.rows_processes)]
        self.ranker = ChildProcess(RANKER_NICENESS, "reco-ranker")
        for child in (self.model_process, *self.rows_processes, self.ranker):
            app.add_dependency(child)
        # every record the worker writes goes through the outbox
        self.outbox = Outbox(KafkaSink(app.kafka_producer),
                             max_record_bytes=s.max_record_bytes)
        cast(KafkaSink, self.outbox.sink).on_rejected = self.outbox.reject
        self.partitions = Partitions(app, s.partitions)
        self.topology = topology = Topology(app, s, self.partitions, self.outbox)
        self.dead_letters = DeadLetters(self.outbox, topology.names["dead-letters"], s,
                                        self.counters)
        self.outbox.on_rejected = self.dead_letters.output_rejected
        self.clock = EventClock(app, self.partitions,
                                {name: topology.names[name] for name in INPUT_TOPICS})
        self.metrics = WorkerMetrics(self.counters, lambda: self.clock.lag)
        self.pacing = WriterPacing(lambda: app.should_stop)
        self.ranking = RankingQueue(
            self.ranker, self.outbox, topology.names, s.k, s.exposure_lists,
            s.ranker_customers if self.config.ranking == "mix" else 0, self.config, self.counters,
            self.metrics, stopping=lambda: app.should_stop,
            crash_soon=lambda exc: app.add_future(crash(exc)))
        self.users = Users(topology.users, s.cache_keys, self.outbox, self.pacing,
                           self.ranking.published, crash)
        self.rows = RowsClient(topology.rows, self.rows_processes, self.partitions,
                               topology.item_stats, self.outbox, self.pacing, self.counters,
                               self.config.tau, s.max_row_width, crash)
        self.ingest = Ingest(s, self.config, self.engagement, topology.names,
                             topology.rows_topic.get_topic_name(), self.users, self.ranking,
                             self.outbox, self.dead_letters, self.clock, self.partitions,
                             self.counters, self.metrics)
        self.refresh = Refresh(topology, self.rows, self.model_process, self.ranking,
                               self.outbox, self.config, s.refresh_seconds, s.partitions,
                               self.counters, self.metrics, SnapshotFiles(s.data_dir))
        self.ranking.rank_with(self.refresh.snapshot)
        self.churn = ChurnScan(self.users, self.ranking, self.clock, self.partitions,
                               topology.churn, self.model_process, self.outbox,
                               self.engagement, s.churn_seconds, s.max_record_bytes)
        self.kept_ranking = KeptRanking(self.ranking, topology.learned_ranking,
                                        topology.owned_tick_partitions, self.metrics)
        self.commits = Commits(self.users, self.rows, self.ranking, self.refresh,
                               self.outbox, self.pacing, self.metrics)
        self.lookups = Lookups(self.users, self.ranking, self.refresh, self.churn, self.clock,
                               topology, self.counters, self.metrics, self.engagement, s.k,
                               s.neighbors)
        self.agents = self._declare_agents()
        declare_views(app, topology.input_topics["clicks"], self.lookups)

    def _declare_agents(self) -> Agents:
        app, s, topology = self.app, self.settings, self.topology

        # Agents receive StreamT; the batching API lives on the concrete Stream.
        @app.agent(topology.events_topic, name="process_events")
        async def process_events(events: StreamT[Any]) -> None:
            stream = self.users.stream = cast(faust.Stream[bytes], events)
            async for batch in stream.take_events(s.batch_size, within=s.batch_seconds):
                await self.ingest.process(stream, batch)

        @app.agent(topology.rows_topic, name="apply_cooccurrence")
        async def apply_cooccurrence(updates: StreamT[Any]) -> None:
            stream = self.rows.stream = cast(faust.Stream[bytes], updates)
            async for batch in stream.take_events(s.batch_size, within=s.batch_seconds):
                await self.rows.apply(batch)  # a failure stops the worker
                await self.outbox.send()  # the item stats it changed
                await self.refresh.first_items()

        @app.agent(topology.ticks_topic, name="refresh_neighbors")
        async def refresh_neighbors(ticks: StreamT[Any]) -> None:
            async for event in ticks.events():
                refreshed = await self.refresh.refresh(event)
                if refreshed is not None:
                    partition, refresh_round = refreshed
                    await self.churn.scan_if_due(partition)
                    await self.refresh.round_done(partition, refresh_round)

        @app.timer(self.refresh.tick_seconds, on_leader=True)  # type: ignore[untyped-decorator]
        async def send_refresh_ticks() -> None:
            await self.refresh.send_tick()

        @app.task  # type: ignore[untyped-decorator]
        async def read_replicas() -> None:
            await topology.replica_reader.run(declare=[
                topic.maybe_declare for topic in topology.replica_topics.values()])

        if s.loop_blocked_seconds:
            @app.task  # type: ignore[untyped-decorator]
            async def watch_the_loop() -> None:
                await LoopWatch(s.loop_blocked_seconds).beat()

        freezer = SurvivorFreezer()

        @app.timer(s.commit_seconds)  # type: ignore[untyped-decorator]
        async def freeze_survivors() -> None:
            freezer.freeze()

        @app.timer(s.refresh_seconds)  # type: ignore[untyped-decorator]
        async def take_others_lists() -> None:
            await self.refresh.take_others_lists()

        if self.ranking.learn_customers:
            @app.timer(s.refresh_seconds)  # type: ignore[untyped-decorator]
            async def keep_learned_ranking() -> None:
                await self.kept_ranking.keep()

        app.on_partitions_revoked.connect(self.commits.on_rebalance)
        app.on_partitions_assigned.connect(self.commits.on_rebalance)
        app.before_commit.append(self.commits.before_commit)
        return Agents(process_events, apply_cooccurrence, refresh_neighbors)
