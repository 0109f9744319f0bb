"""The Faust app: decode -> core -> write state back -> send.

Data flow (P = ``settings.partitions``):

- ``clicks`` + ``purchases`` (keyed by user) -> agent ``process_events``: validates
  (bad input -> ``dead-letters``), de-duplicates, folds events into the user's
  profile with :func:`core.recommender.learn_event` (table ``users``), sends each
  batch's co-occurrence row updates to the item-keyed repartition topic, one
  message per destination partition, and publishes one fresh list per distinct
  user to ``recommendations`` (ranked in the ranking child, see
  :mod:`streams.model_work`).
- ``<app>-cooccurrence`` (by item partition) -> agent ``apply_cooccurrence``:
  hands the messages to the rows process, which holds this worker's rows of C,
  item counts and trending (see :mod:`streams.held_rows`) and returns the rows
  changed at each commit (table ``cooccurrence``); the small per-item stats every
  worker needs go to the replicated table ``item-stats`` (see
  :mod:`streams.replicated`).
- A leader timer sends one tick per partition to ``<app>-refresh`` every
  ``refresh_seconds``; agent ``refresh_neighbors`` recomputes neighbours of the
  items of that partition in an executor (never on the event loop), writes them
  to the replicated table ``neighbors`` and ``item-neighbors`` (compacted).
- Every worker rebuilds its ranking snapshot (:class:`core.ranking.NeighborModel`)
  from the two replicated tables after a refresh, so any worker can rank any user.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import math
import operator
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import faust
import orjson
from aiohttp import web as aiohttp_web
from faust.exceptions import ConsumerNotStarted
from faust.stores.base import SerializedStore
from faust.types import TP, EventT, StreamT, TableT
from faust.types.stores import StoreT
from faust.web import Request, Response, View
from mode.types.signals import BaseSignalT

from core.churn import score_customer
from core.engagement import PRIOR_MODEL, ChurnModel, Trigger, due_many, fit_churn_model
from core.events import Event, InvalidEvent, parse_event
from core.ranking import NeighborModel, Recommendations
from core.recommender import learn_event
from core.similarity import SimilarityParams
from streams.bounds import FIXED_JSON, NUMBER_JSON, dead_letter_payload_bytes
from streams.held_rows import (
    RowMessage,
    RowsNotHeld,
    apply_row_messages,
    hold_rows,
    release_rows,
    rows_to_send,
    take_unwritten_rows,
)
from streams.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from streams.metrics import WorkerMetrics
from streams.model_work import (
    RANKER_NICENESS,
    ROWS_NICENESS,
    EncodedList,
    ListRequest,
    ModelProcess,
    TriggerRequest,
    build_model,
    hold_ranking_model,
    neighbors_of_partition,
    ranked_records,
    recommend_one,
)
from streams.outbox import KafkaSink, Outbox, Record, key_partition
from streams.records import dead_letter_record, recommendation_record
from streams.replicated import ReplicaReader, ReplicatedTable
from streams.settings import Settings
from streams.state import (
    DecodedCache,
    RowGain,
    UserState,
    encode_gains,
    source_key,
    split_gain,
    table_json,
)
from streams.transport import App, RawSchema

log = logging.getLogger("recostream")

INPUT_TOPICS = ("clicks", "purchases")


def item_partition(item_id: str, partitions: int) -> int:
    """The repartition-topic partition that owns an item's row (stable everywhere)."""
    return zlib.crc32(item_id.encode()) % partitions


class KeyPartitions(dict[str, int]):
    """Key -> ``partition_of(key, partitions)``, each worked out once: every gain
    looks up ``pair_window + 1`` item partitions, every churn scan the partition
    of every user. Emptied when it holds ``limit`` keys.

    >>> partition_of = KeyPartitions(item_partition, 4).__getitem__
    >>> partition_of("item42") == item_partition("item42", 4)
    True
    """

    def __init__(self, partition_of: Callable[[str, int], int], partitions: int,
                 limit: int = 1 << 20) -> None:
        super().__init__()
        self.partition_of = partition_of
        self.partitions = partitions
        self.limit = limit

    def __missing__(self, key: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        partition = self[key] = self.partition_of(key, self.partitions)
        return partition


#: Gains of a message in the order rows check them (by source, then offset).
SOURCE_ORDER = operator.itemgetter(2, 3)


#: Users the churn scan reads and scores per turn of the users lock, at most; and
#: the time it takes them for at most (turns of 500 users held every batch back
#: up to 0.55 s).
SCAN_SLICE_USERS = 500
SCAN_SLICE_SECONDS = 0.02
#: A refresh tick older than this many refresh intervals is skipped: the
#: partition's next tick is behind it.
STALE_TICK_INTERVALS = 2.0
#: Neighbour lists a refresh stores and publishes per turn of the loop.
LISTS_PER_SLICE = 250
#: Rows written per turn of the loop before a commit (encoded by the rows process:
#: the loop puts them in the store and the outbox).
ROWS_PER_SLICE = 250
#: Users read per delivery round before a commit (~10-20 us each).
USERS_PER_SLICE = 1000
#: The share of the loop's time the writers take before an offset commit: after
#: each slice they wait three times as long as it took. Unpaced, a commit's
#: 1-2 s of encoding at half load left the batches too little of the loop, and
#: the latency rose from 0.1 s to 1-2.4 s for 4-6 s after every commit. Half-load
#: p99 (bench, 40 s runs): unpaced 1.19-1.52 s (3 runs), share 1/3 0.96 s,
#: 1/4 0.40-0.59 s (3 runs), 1/5 0.58 s, 1/7 1.19 s (commits then run into
#: each other, each writing more).
COMMIT_WRITER_SHARE = 0.25
#: A worker whose own refresh round rebuilt its snapshot within this many refresh
#: intervals leaves other workers' lists to its next round's rebuild.
OWN_ROUND_COVERS = 1.5
#: Submissions of lists to the ranking child at once: one ranked while the next
#: waits in the pipe. The lists of later batches wait in the worker, one per
#: user (a user's later list replaces the one waiting), and go together as the
#: next submission: see :meth:`RecoStream.publish_ranked`.
RANKINGS_IN_FLIGHT = 2
#: Unread input events beyond which the worker is behind (a backlog: after a
#: restart, or input faster than it keeps up with). Its lists then go to the
#: ranking child at most every BEHIND_HOLD_SECONDS, one per user: a busy user's
#: list of every batch in between would be replaced before anyone could use it.
BEHIND_EVENTS = 10_000
BEHIND_HOLD_SECONDS = 0.5
#: Bytes of records the producer puts in one batch per partition.
PRODUCER_BATCH_BYTES = 512 * 1024
#: Faust's broker_commit_every high enough never to be reached.
COMMIT_NEVER_BY_COUNT = 2**62


class RowsLost(RuntimeError):
    """The rows process failed (midway through a batch) or died: changes of rows
    not written yet are lost, and the worker stops (it resumes from the last
    commit)."""


class RecommendationsLost(RuntimeError):
    """A batch's recommendations were not published (the ranking failed)."""


class UsersLeftHalfUpdated(RuntimeError):
    """Applying a batch (or a churn scan) to the cached user states failed midway."""


@dataclass
class Counters:
    """What the worker has done, for /health, the metrics and the tests."""

    events_in: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    deduplicated: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    rekeyed: int = 0
    row_updates_sent: int = 0
    row_updates_applied: int = 0
    row_updates_skipped: int = 0
    recommendations_out: int = 0
    triggers_out: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    stale_ticks: int = 0
    last_refresh_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "events_in": dict(self.events_in),
            "applied": self.applied,
            "deduplicated": self.deduplicated,
            "dead_lettered": dict(self.dead_lettered),
            "rekeyed": self.rekeyed,
            "row_updates_sent": self.row_updates_sent,
            "row_updates_applied": self.row_updates_applied,
            "row_updates_skipped": self.row_updates_skipped,
            "recommendations_out": self.recommendations_out,
            "triggers_out": dict(self.triggers_out),
            "refreshes": self.refreshes,
            "stale_ticks": self.stale_ticks,
            "last_refresh_seconds": round(self.last_refresh_seconds, 4),
        }


class RecoStream:
    """One worker's app, topics, tables and agents, built from explicit settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = settings.recommender_config()
        self.engagement_config = settings.engagement_config()
        self.counters = Counters()
        self.item_partition = KeyPartitions(item_partition, settings.partitions).__getitem__
        self.user_partition = KeyPartitions(user_partition, settings.partitions).__getitem__
        self.lag: dict[tuple[str, int], int] = {}  # refreshed when /metrics is scraped
        self.lookups_in_flight = 0  # recommendation lookups over HTTP under way
        self.metrics = WorkerMetrics(self.counters, lambda: self.lag)
        # Event time per input topic partition (largest timestamp read there) and
        # the last offset read there: see partition_watermark.
        self.source_clock: dict[tuple[str, int], float] = {}
        self.source_offset: dict[tuple[str, int], int] = {}
        self.churn_scanned: dict[int, float] = {}  # partition -> wall time of last scan
        self.model = NeighborModel.empty(self.config.neighbors)
        self.model_round = 0
        # refresh round last completed per tick partition seen by this worker
        self.partition_rounds: dict[int, int] = {}
        self._rebuild_lock = asyncio.Lock()
        # Rows of C the model process holds: per partition, the token of the full
        # send they began with (none: send all next time).
        self._rows_token: dict[int, int] = {}
        # Rows of C the rows process holds: per partition, the token it holds them
        # under; and the last event read there, under which they are written.
        self._rows_held: dict[int, int] = {}
        self._row_carriers: dict[int, EventT[bytes]] = {}
        self._row_tokens = itertools.count(1)
        # neighbour lists other workers wrote, as counted when the snapshot was built
        self._others_lists_built = -1
        self._own_round_rebuilt = -math.inf  # monotonic time of the last one
        # the leader's refresh ticks: the partition ticked next, and its round
        self._next_tick_partition = 0
        self._tick_round = 0
        self._round_started = 0.0  # wall time of the round's first tick
        self.users_lock = asyncio.Lock()
        # held by a batch of row updates under way, and while rows are read into
        # the rows process or sent from it for a refresh
        self.rows_lock = asyncio.Lock()
        self._rebalances_waiting = 0  # rebalances waiting for the writers (no pauses)
        # Decoded users this worker wrote (see DecodedCache): emptied on every
        # rebalance. Changed users (and rows) are written to their tables once per
        # commit, not once per batch: each dirty one keeps the event whose
        # partition it belongs to (see write_users_changed_so_far).
        self.user_cache: DecodedCache[UserState, EventT[bytes]] = DecodedCache(
            settings.cache_keys)
        self._events_stream: faust.Stream[bytes] | None = None
        self._users_writer = asyncio.Lock()  # one writer of changed users at a time
        self._rows_writer = asyncio.Lock()  # and of changed rows
        self._rows_stream: faust.Stream[bytes] | None = None
        self.app = self._make_app()
        # neighbour lists, snapshots and churn fits: see streams.model_work
        self.model_process = ModelProcess(process_name="reco-model")
        self.app.add_dependency(self.model_process)
        # this worker's rows of C (see streams.held_rows), each process holding
        # the partitions p with p % rows_processes == its index: at full speed the
        # last ~1M row updates of a backlog were applied by one process alone, on
        # one core, 4.5-4.9 s after the last event. Stopped after the consumer's
        # last commit, as the other children (added before Faust's services,
        # stopped after them).
        self.rows_processes = [ModelProcess(niceness=ROWS_NICENESS, replace_dead=False,
                                            process_name=f"reco-rows-{n}")
                               for n in range(settings.rows_processes)]
        for process in self.rows_processes:
            self.app.add_dependency(process)
        # each batch's recommendations, ranked with the snapshot it holds
        self.ranker = ModelProcess(niceness=RANKER_NICENESS, process_name="reco-ranker")
        self.ranker.hold(hold_ranking_model, self.model)
        self.app.add_dependency(self.ranker)
        self._rankings: list[asyncio.Future[None]] = []  # submissions being ranked, in order
        # lists and triggers not submitted yet (see publish_ranked): each list as
        # its JSON request, by user
        self._waiting_lists: dict[str, bytes] = {}
        self._waiting_triggers: list[TriggerRequest] = []
        self._behind = False  # as of the last batch: see BEHIND_EVENTS
        self._last_submission = -math.inf  # monotonic
        self._hold: asyncio.TimerHandle | None = None  # submits what waits, when behind
        self._rankings_lost: RecommendationsLost | None = None
        # Every record the worker writes goes through here (see streams.outbox).
        self.outbox = Outbox(KafkaSink(cast(App, self.app).kafka_producer),
                             max_record_bytes=settings.max_record_bytes,
                             on_rejected=self.output_rejected)
        cast(KafkaSink, self.outbox.sink).on_rejected = self.outbox.reject
        self.dead_letter_payload_bytes = dead_letter_payload_bytes(settings)
        self._declare_topics_and_tables()
        self._declare_agents()
        self._declare_web()

    # -- wiring ----------------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        credentials: Any = None
        if s.security_protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
            credentials = faust.SASLCredentials(
                username=s.sasl_username,
                password=s.sasl_password,
                mechanism=s.sasl_mechanism,
                ssl_context=s.ssl_context(),
            )
        elif s.security_protocol == "SSL":
            credentials = faust.SSLCredentials(s.ssl_context())
        return App(
            s.app_id,
            broker=s.broker,
            broker_credentials=credentials,
            store=s.store,
            datadir=str(s.data_dir),
            topic_partitions=s.partitions,
            processing_guarantee="at_least_once",
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=s.web_enabled,
            web_port=s.web_port,
            web_bind=s.web_host,
            # what other workers reach this one at (forwarded lookups)
            canonical_url=f"http://{s.advertised_host or s.web_host}:{s.web_port}",
            # Faust's own /table routes return any key's raw state, and /router
            # the group's addresses: not for the outside (lookups route anyway)
            web_router_enabled=False,
            web_tables_enabled=False,
            web_application_options={"middlewares": [require_bearer_token(s.http_token)]}
            if s.http_token else None,
            broker_session_timeout=s.session_timeout,
            broker_heartbeat_interval=max(0.5, min(3.0, s.session_timeout / 10)),
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            table_standby_replicas=0,
            producer_max_request_size=max(1_048_576, 4 * s.max_message_bytes),
            # A produce request carries one batch per partition: with aiokafka's
            # 16 KiB batches each wide row (~25 KiB) needs a request of its own,
            # and a commit writes 2,000-3,400 of them. (Commits still took up to
            # 3.7 s with this; what stopped input was where they ran, see below.)
            producer_max_batch_size=PRODUCER_BATCH_BYTES,
            # Commits come from the timer only (broker_commit_interval): Faust's
            # every-N-messages commit runs inside its fetch loop, and input stopped
            # for as long as the commit's producer flush took (up to 3.4 s seen).
            broker_commit_every=COMMIT_NEVER_BY_COUNT,
            # Each commit writes every row of C changed since the last one: a hot
            # row once per commit however often it changed (at 2.8 s, Faust's
            # default, 1.4 MB/s at 1,100 events/s, and the broker's busiest work).
            broker_commit_interval=s.commit_seconds,
            table_key_serializer="json",
            table_value_serializer="json",
        )

    def _declare_topics_and_tables(self) -> None:
        app, s = self.app, self.settings
        # bytes in, bytes out: the agents decode and validate events themselves
        raw: dict[str, Any] = {"schema": RawSchema(key_serializer="raw", value_serializer="raw")}
        # real topic name -> contract name, for validation by contract topic
        self.contract_topic = {s.topic(name): name for name in INPUT_TOPICS}
        self.events_topic = app.topic(*self.contract_topic, **raw)
        self.input_topics = {name: app.topic(s.topic(name), **raw) for name in INPUT_TOPICS}
        self.rows_topic = app.topic(f"{s.app_id}-cooccurrence", partitions=s.partitions,
                                    internal=True, **raw)
        self.ticks_topic = app.topic(f"{s.app_id}-refresh", partitions=s.partitions,
                                     internal=True, **raw)
        self.recommendations_topic = app.topic(s.topic("recommendations"), **raw)
        self.item_neighbors_topic = app.topic(s.topic("item-neighbors"), **raw)
        self.dead_letters_topic = app.topic(s.topic("dead-letters"), **raw)
        self.churn_alerts_topic = app.topic(s.topic("churn-alerts"), **raw)
        self.triggers_topic = app.topic(s.topic("marketing-triggers"), **raw)
        self.trigger_topics = {  # by the output names of streams.model_work.ranked_records
            "churn-alerts": self.churn_alerts_topic.get_topic_name(),
            "marketing-triggers": self.triggers_topic.get_topic_name(),
        }
        # Table keys and values use the app's table serializers (JSON).
        self.users = app.Table("users", default=None, partitions=s.partitions)
        # rows as their JSON bytes: the rows process decodes and encodes them
        self.rows = app.Table("cooccurrence", default=None, partitions=s.partitions,
                              value_type=bytes)
        for table in (self.users, self.rows):
            # what Faust's own changelog send does once a record is written: the
            # rocksdb store keeps the changelog offset it holds (recovery resumes there)
            self.outbox.on_delivered[table.changelog_topic.get_topic_name()] = (
                functools.partial(persist_offset, table))
        # Small state every worker reads in full (see streams.replicated): per-item
        # stats and neighbour lists, written by the owner of the item's partition;
        # per partition its customers' summary rows ("p<n>") and the fitted churn
        # model ("model", by the owner of partition 0).
        parts = s.partitions
        self.replica_topics: dict[str, faust.TopicT] = {}
        self.replica_topics_by_table: dict[str, faust.TopicT] = {}
        replicas: dict[str, ReplicatedTable] = {}  # by topic name

        def replicated(name: str, partition_of: Callable[[str], int],
                       owned: Callable[[], set[int]]) -> ReplicatedTable:
            topic = app.topic(f"{s.app_id}-{name}", partitions=parts, internal=True,
                              compacting=True, **raw)
            self.replica_topics[topic.get_topic_name()] = topic
            self.replica_topics_by_table[name] = topic

            topic_name = topic.get_topic_name()

            def send(key: bytes, value: bytes | None) -> None:
                self.outbox.add(topic_name, value, key=key)

            table = replicas[topic.get_topic_name()] = ReplicatedTable(
                name, send, partition_of, owned)
            return table

        self.item_stats = replicated("item-stats", self.item_partition,
                                     self.owned_item_partitions)
        self.neighbors = replicated("neighbors", self.item_partition,
                                    self.owned_item_partitions)
        self.churn = replicated("churn", churn_key_partition, self.owned_tick_partitions)
        # A commit writes thousands of rows and users, a refresh round thousands of
        # neighbour lists twice (megabytes each): on a connection of their own, so
        # that recommendations do not queue behind them (aiokafka sends one request
        # per broker at a time).
        bulk = KafkaSink(cast(App, app).kafka_bulk_producer, on_rejected=self.outbox.reject)
        for topic in (self.rows.changelog_topic, self.users.changelog_topic,
                      self.item_neighbors_topic, self.replica_topics_by_table["neighbors"]):
            self.outbox.routes[topic.get_topic_name()] = bulk
        self.replica_reader = ReplicaReader(replicas, parts, s.kafka_client_options())

    def owned_partitions(self, topic: faust.TopicT) -> set[int]:
        """The partitions of ``topic`` this worker is assigned."""
        name = topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name}

    def owned_item_partitions(self) -> set[int]:
        return self.owned_partitions(self.rows_topic)

    def internal_topic_names(self) -> list[str]:
        """Topics the worker feeds itself (the repartition and refresh topics)."""
        return [self.rows_topic.get_topic_name(), self.ticks_topic.get_topic_name()]

    def _declare_agents(self) -> None:
        app, s = self.app, self.settings

        # Agents receive StreamT; the batching API lives on the concrete Stream.
        @app.agent(self.events_topic, name="process_events")
        async def process_events(events: StreamT[Any]) -> None:
            stream = cast(faust.Stream[bytes], events)
            self._events_stream = stream
            async for batch in stream.take_events(s.batch_size, within=s.batch_seconds):
                await self.process_batch(stream, batch)

        @app.agent(self.rows_topic, name="apply_cooccurrence")
        async def apply_cooccurrence(updates: StreamT[Any]) -> None:
            stream = cast(faust.Stream[bytes], updates)
            self._rows_stream = stream
            async for batch in stream.take_events(s.batch_size, within=s.batch_seconds):
                # a failure stops the worker (see rows_call)
                await self.apply_row_batch(batch)
                await self.outbox.send()  # the item stats it changed

        @app.agent(self.ticks_topic, name="refresh_neighbors")
        async def refresh_neighbors(ticks: StreamT[Any]) -> None:
            async for event in ticks.events():
                await self.refresh_partition(event)

        @app.timer(self.tick_seconds, on_leader=True)  # type: ignore[untyped-decorator]
        async def send_refresh_ticks() -> None:
            await self.send_refresh_tick()

        @app.task  # type: ignore[untyped-decorator]
        async def read_replicas() -> None:
            await self.replica_reader.run(
                declare=[topic.maybe_declare for topic in self.replica_topics.values()])

        @app.timer(s.refresh_seconds)  # type: ignore[untyped-decorator]
        async def rebuild_model() -> None:
            await self.pick_up_others_lists()

        self.agents = (process_events, apply_cooccurrence, refresh_neighbors)
        app.on_partitions_revoked.connect(self._forget_cached)
        app.on_partitions_assigned.connect(self._forget_cached)
        cast(App, app).before_commit.append(self.before_commit)

    async def before_commit(self) -> None:
        """Before offsets are committed: users and rows changed since the last
        commit go to their tables, and every record queued so far is written (a
        failed batch raises :class:`streams.outbox.DeliveryFailed`, and nothing is
        committed)."""
        await self.rankings_published()
        await self.write_rows_changed_so_far(paced=True)
        await self.write_users_changed_so_far(paced=True)
        await self.outbox.send()
        await self.outbox.delivered()
        self.outbox.check()

    async def between_slices(self, spent: float, paced: bool) -> None:
        """Let the loop in between two slices of a writer (that took ``spent``
        seconds). ``paced`` (before a commit): for long enough that the writer
        takes :data:`COMMIT_WRITER_SHARE` of the loop, unless the worker is
        stopping or a rebalance waits: the flow is stopped then, so a commit's
        writers under way go on unpaced, and those of a rebalance never pause."""
        if paced and not self._rebalances_waiting and not self.app.should_stop:
            await asyncio.sleep(spent * (1.0 / COMMIT_WRITER_SHARE - 1.0))
        else:
            await asyncio.sleep(0)

    async def _forget_cached(self, sender: Any, /, *args: Any,
                             signal: BaseSignalT[Any], **kwargs: Any) -> None:
        # Another worker may own these keys next: it recovers them from the
        # changelogs, so everything this worker wrote must be there before the
        # rebalance goes on. A batch under way finishes first (a batch of events
        # holds the users lock, one of row updates the rows lock; batches of the
        # old generation taken after it are skipped, see current_events), and its
        # lists are published before the states that record its events are
        # written; rows changed since the last commit are written too (if the
        # partition comes back, the offsets acked meanwhile may be committed),
        # and the rows process lets go of them (read again when needed).
        # A commit's writers under way stop pausing (the writers' locks are
        # awaited below).
        self._rebalances_waiting += 1
        try:
            async with self.users_lock, self.rows_lock:
                await self.rankings_published()
                await self.write_rows_changed_so_far()
                await self.write_users_changed_so_far()
                await self.outbox.send()
                await self.outbox.delivered()
                self.user_cache.clear()
                self._rows_token.clear()  # the partitions' rows may be others' now
                self._row_carriers.clear()
                if self._rows_held:
                    self._rows_held.clear()
                    await self.rows_call_each(release_rows,
                                              dict.fromkeys(self.rows_processes, ()))
        finally:
            self._rebalances_waiting -= 1

    def current_events(self, batch: Sequence[EventT[bytes]]) -> list[EventT[bytes]]:
        """The events of a batch read since the last rebalance.

        Faust drops messages of an older consumer generation as they enter a
        stream, but ``take_events`` may hold some taken before the rebalance: their
        partitions may belong to another worker now, which reads them again from
        the last commit (every assigned partition is sought to it after a
        rebalance). Writing their effects here would land in that worker's
        changelog after it recovered from it. They are not acknowledged either.
        """
        generation = self.app.consumer_generation_id
        current = []
        for event in batch:
            if event.message.generation_id == generation:
                current.append(event)
            else:
                # Left unacknowledged in the consumer, as Faust leaves those it
                # drops: acked, a partition still ours could be committed past it.
                event.message.acked = True
        return current

    async def _lose_cached_users(self, exc: Exception) -> None:
        """A batch or scan failed halfway: the cached states may hold part of its
        events (with nothing sent for them), and are the only copy of earlier
        changes not written yet, whose offsets may be committed next. So they go,
        and the worker stops (it resumes from the last commit)."""
        self.user_cache.clear()
        await self.app.crash(UsersLeftHalfUpdated(f"changing user states failed: {exc!r}"))

    def user_state(self, user_id: str) -> UserState:
        """A user's state: cached, or read from the table (under the key's own event)."""
        return self.user_cache.get_or_load(
            user_id, lambda: UserState.from_json(self.users.get(user_id)))

    def stored_user(self, user_id: str) -> UserState | None:
        """A user's state as it is now (for HTTP; None when unknown): cached, with
        changes not written yet, or as the table holds it."""
        cached = self.user_cache.get(user_id)
        if cached is not None:
            return cached
        value = self.users.get(user_id)
        return None if value is None else UserState.from_json(value)

    def write_user(self, user_id: str, state: UserState) -> None:
        """A user's state changed (under the event of its partition, see
        acting_as): written to the table at the next commit at the latest, see
        :meth:`write_users_changed_so_far`."""
        event = faust.current_event()
        if event is None:
            raise RuntimeError(f"user {user_id!r} changed outside of an event")
        self.user_cache.mark_dirty(user_id, state, event)

    async def write_users_changed_so_far(self, paced: bool = False) -> None:
        """Every user changed before this call is written to the ``users`` table
        (and its changelog) when it returns, :data:`USERS_PER_SLICE` at a time
        (``paced``: see :meth:`between_slices`).

        A state records the row updates, lists and triggers of its events, which
        must reach Kafka first (a crash in between replays them; the other way
        round they would be lost). Each slice is therefore read at once (encoded)
        once the rankings under way are published, then everything queued until
        then is delivered, then the slice is written. A user a batch changes
        meanwhile stays changed, for the next slice or commit.
        """
        async with self._users_writer:
            pending = self.user_cache.dirty_count()
            while pending > 0 and self._events_stream is not None:
                await self.rankings_published()
                started = time.perf_counter()
                taken = self.user_cache.peek_dirty(min(pending, USERS_PER_SLICE))
                if not taken:
                    break
                states = [(user_id, state.to_json(), event, change)
                          for user_id, state, event, change in taken]
                spent = time.perf_counter() - started
                await self.outbox.send()
                await self.outbox.delivered()
                self.outbox.check()
                started = time.perf_counter()
                with acting_as(self._events_stream) as act_as:
                    for user_id, value, event, change in states:
                        act_as(event)
                        self.write_table(self.users, user_id, table_json(value), value)
                        self.user_cache.mark_clean(user_id, change)
                pending -= len(taken)
                if pending > 0:
                    await self.between_slices(spent + time.perf_counter() - started, paced)

    def write_table(self, table: TableT[Any, Any], key: str, value: bytes,
                    decoded: Any = None) -> None:
        """What ``table[key] = decoded`` does, with the changelog record batched:
        ``value`` is the record's value (JSON), ``decoded`` what a memory store
        keeps (None: ``value`` itself, for a table of raw values).

        The value goes to the table's store, and its changelog record, to the
        partition of the current event (as Faust's own write does), to the outbox:
        a Faust table write is one producer send per key (see streams.outbox).
        """
        event = faust.current_event()
        if event is None:
            raise RuntimeError(f"writing {table.name}[{key!r}] outside of an event")
        key_bytes = table_json(key)
        store = table.data
        if isinstance(store, SerializedStore):
            # rocksdb: the changelog's bytes are what Faust's codec would store, so
            # the value is encoded once
            store._set(key_bytes, value)
        else:
            store[key] = value if decoded is None else decoded
        self.outbox.add(table.changelog_topic.get_topic_name(), value,
                        key=key_bytes, partition=event.message.partition)

    # -- events -> user state -----------------------------------------------------

    def dead_letter(self, event: EventT[bytes], reason: str, detail: str) -> None:
        """An input that cannot be used goes to ``dead-letters`` (see
        :func:`streams.records.dead_letter_record`); processing goes on."""
        message = event.message
        raw = message.value if isinstance(message.value, bytes | bytearray) else b""
        self._add_dead_letter(reason, detail, message.topic, message.partition,
                              message.offset, message.key, bytes(raw), message.timestamp)

    def output_rejected(self, topic: str, record: Record, why: str) -> None:
        """A record the worker wrote that cannot go to Kafka (too large, or refused
        by the broker for its content): a dead letter naming the output topic and
        key instead, never a stop."""
        if topic == self.dead_letters_topic.get_topic_name():
            log.error("a dead letter could not be written (%s); dropped", why)
            return
        log.warning("a record for %s was rejected (%s): dead-lettered", topic, why)
        self._add_dead_letter("output_rejected", why, topic, None, None, record.key,
                              record.value or b"", None)

    def _add_dead_letter(self, reason: str, detail: str, topic: str, partition: int | None,
                         offset: int | None, key: bytes | None, payload: bytes,
                         ts: float | None) -> None:
        self.counters.dead_lettered[reason] += 1
        cut_key, value = dead_letter_record(
            reason, detail, topic=topic, partition=partition, offset=offset, key=key,
            payload=payload, ts=ts, key_limit=self.settings.max_key_bytes,
            payload_limit=self.dead_letter_payload_bytes)
        self.outbox.add(self.dead_letters_topic.get_topic_name(), value, key=cut_key)

    async def process_batch(
        self, stream: faust.Stream[bytes], batch: Sequence[EventT[bytes]]
    ) -> None:
        # A batch and a churn scan slice each read, change and mark user states,
        # then await their sends; they take turns, so that neither works on a
        # state the other has half changed, and a rebalance (which takes the same
        # lock) lets the batch under way finish before the caches are forgotten.
        started = time.perf_counter()
        self.refresh_lag()
        self._behind = sum(self.lag.values()) > BEHIND_EVENTS
        async with self.users_lock:
            try:
                await self._process_batch(stream, batch)
            except Exception as exc:
                await self._lose_cached_users(exc)
                raise
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _process_batch(
        self, stream: faust.Stream[bytes], batch: Sequence[EventT[bytes]]
    ) -> None:
        s = self.settings
        # one event from the far future would move event time for good
        latest_ts = time.time() + s.max_future_seconds
        by_user: dict[str, list[tuple[EventT[bytes], Event, Origin | None]]] = defaultdict(list)
        for event in self.current_events(batch):
            message = event.message
            topic = self.contract_topic[message.topic]
            self.counters.events_in[topic] += 1
            self.source_offset[(topic, message.partition)] = message.offset
            key, raw = message.key, message.value
            if key is not None and len(key) > s.max_key_bytes:
                self.dead_letter(event, "key_too_long", f"{len(key)} bytes")
                continue
            if not isinstance(raw, bytes | bytearray) or len(raw) > s.max_message_bytes:
                size = len(raw) if isinstance(raw, bytes | bytearray) else 0
                self.dead_letter(event, "oversized" if size else "invalid_json",
                                 f"{size} bytes" if size else "empty message")
                continue
            try:
                decoded = parse_event(orjson.loads(raw), topic, latest_ts)
            except orjson.JSONDecodeError as exc:
                self.dead_letter(event, "invalid_json", str(exc)[:200])
                continue
            except InvalidEvent as exc:
                self.dead_letter(event, exc.reason, exc.detail)
                continue
            origin = forwarded_from(message.headers)
            if origin is None and (key != decoded.user_id.encode() or message.partition
                                   != self.user_partition(decoded.user_id)):
                self.forward(topic, bytes(raw), decoded.user_id, message.partition,
                             message.offset)
                continue
            by_user[decoded.user_id].append((event, decoded, origin))

        gains_by_partition: dict[int, list[RowGain]] = defaultdict(list)
        changed_users: list[tuple[str, UserState, str, float]] = []
        due_triggers: list[tuple[str, UserState, Trigger]] = []
        writes: list[tuple[str, UserState, EventT[bytes]]] = []
        states: dict[str, UserState] = {}
        with acting_as(stream) as act_as:
            for user_id, items in by_user.items():
                act_as(items[-1][0])
                states[user_id] = self.user_state(user_id)
        for user_id, items in by_user.items():
            state = states[user_id]
            changed = False
            trigger, trigger_ts = "", 0.0
            for event, decoded, origin in items:
                read_from = source_key(self.contract_topic[event.message.topic],
                                       event.message.partition)
                source, offset = origin or (read_from, event.message.offset)
                if state.is_duplicate(source, offset, decoded.event_id):
                    self.counters.deduplicated += 1
                    continue
                did_change, gain = learn_event(state.profile, decoded, self.config)
                due_triggers.extend((user_id, state, fired) for fired in
                                    state.engagement.observe(decoded, self.engagement_config))
                clock = (decoded.topic(), event.message.partition)
                if decoded.ts > self.source_clock.get(clock, 0.0):
                    self.source_clock[clock] = decoded.ts
                state.mark(source, offset, decoded.event_id, s.dedup_ids)
                self.counters.applied += 1
                if gain is not None:
                    # rows skip by the partition they were read from, whose
                    # offsets are in order (forwarded ones are not, there)
                    for partition, row_gain in split_gain(
                            gain.item_id, gain.history, read_from, event.message.offset,
                            gain.ts, self.item_partition).items():
                        gains_by_partition[partition].append(row_gain)
                if did_change:
                    changed = True
                    trigger, trigger_ts = decoded.type, decoded.ts
            writes.append((user_id, state, items[-1][0]))
            if changed:
                changed_users.append((user_id, state, trigger, trigger_ts))

        # Row updates and triggers reach Kafka before the user states that record
        # them are written (see write_users_changed_so_far): a crash in between
        # replays them, and rows skip what they have. Rows skip by offset, so each
        # source's gains go out in offset order (grouping by user shuffled them).
        rows_topic = self.rows_topic.get_topic_name()
        for partition, gains in gains_by_partition.items():
            gains.sort(key=SOURCE_ORDER)
            # half the record limit: room for the record's overhead, and a large
            # backlog reaches the rows process in pieces
            for encoded in encode_gains(gains, self.settings.max_record_bytes // 2):
                self.outbox.add(rows_topic, encoded, partition=partition)
            self.counters.row_updates_sent += sum(gain.update_count() for gain in gains)
        # Lists and triggers are ranked in the ranking child and published when
        # they come back, before the states that record them are written (the
        # commit waits for them). A replay sends a list again; a replayed trigger
        # comes again too, and its trigger_id lets the marketing system drop the
        # copy. Changed states are marked with what recorded them queued already,
        # and nothing awaited in between.
        self.publish_ranked(
            [(user_id, state.profile.recent, list(state.profile.purchased), cause, ts)
             for user_id, state, cause, ts in changed_users], due_triggers)
        with acting_as(stream) as act_as:
            for user_id, state, last_event in writes:
                act_as(last_event)
                self.write_user(user_id, state)
        await self.outbox.send()

    def forward(self, topic: str, raw: bytes, user_id: str, partition: int,
                offset: int) -> None:
        """An event keyed by something else than its user, or on another partition
        than its user's (a producer partitioning otherwise: librdkafka's CRC32,
        say), goes again to its topic, keyed by the user, to be processed where the
        user lives. It carries where it came from, under which it is applied once
        however often a crash makes it forwarded again (see :data:`ORIGIN_HEADER`)."""
        self.counters.rekeyed += 1
        self.outbox.add(self.input_topics[topic].get_topic_name(), raw, key=user_id.encode(),
                        headers=((ORIGIN_HEADER, f"{topic}/{partition}@{offset}".encode()),))

    def publish_ranked(self, lists: Sequence[ListRequest],
                       triggers: Sequence[tuple[str, UserState, Trigger]]) -> None:
        """Rank users' lists, and the items of their triggers, in the ranking child
        (the profiles as they are now), and publish the records when they come
        back, after those queued before. Offsets are committed, and user states
        written, only once everything queued before is published
        (:meth:`before_commit`); a failed ranking stops the worker.

        While :data:`RANKINGS_IN_FLIGHT` submissions are under way, the lists wait
        here, one per user: a user's list from a later batch replaces the one
        waiting (it records every event the other did, and more), and the
        waiting lists go together when a submission comes back. Under light load
        nothing waits, and every batch's lists go at once. When the ranking child
        falls behind, or the worker does (more than :data:`BEHIND_EVENTS` unread:
        then the lists go every :data:`BEHIND_HOLD_SECONDS` at most), it ranks
        each busy user once per submission instead of once per batch, and the
        records it would have replaced are never sent. Triggers are never
        replaced.
        """
        for request in lists:
            user_id = request[0]
            self._waiting_lists.pop(user_id, None)  # to the end: ranked after the others
            self._waiting_lists[user_id] = orjson.dumps(request)
        self._waiting_triggers.extend(
            (user_id, list(state.profile.recent), set(state.profile.purchased), trigger)
            for user_id, state, trigger in triggers)
        self._submit_waiting()

    def _submit_waiting(self, hold: bool = True) -> None:
        """The lists and triggers waiting to the ranking child, as one submission,
        unless :data:`RANKINGS_IN_FLIGHT` are under way (or one was lost), or
        (``hold``) the worker is behind and submitted less than
        :data:`BEHIND_HOLD_SECONDS` ago: then a timer submits them."""
        if not self._waiting_lists and not self._waiting_triggers:
            return
        if len(self._rankings) >= RANKINGS_IN_FLIGHT or self._rankings_lost is not None:
            return
        if hold and self._behind:
            wait = self._last_submission + BEHIND_HOLD_SECONDS - time.monotonic()
            if wait > 0:
                if self._hold is None:
                    self._hold = asyncio.get_running_loop().call_later(wait, self._hold_over)
                return
        self._last_submission = time.monotonic()
        lists, triggers = self._waiting_lists, self._waiting_triggers
        self._waiting_lists, self._waiting_triggers = {}, []
        started = time.perf_counter()
        ranking = self.ranker.submit(ranked_records, b"[" + b",".join(lists.values()) + b"]",
                                     triggers, self.settings.k, self.config)
        previous = self._rankings[-1] if self._rankings else None
        publish = self._publish_when_ranked(
            ranking, list(lists), [trigger for *_, trigger in triggers],
            [request[0] for request in triggers], previous, started)
        task = asyncio.ensure_future(publish)
        self._rankings.append(task)
        task.add_done_callback(self._ranking_done)

    async def _publish_when_ranked(
        self, ranking: Awaitable[tuple[list[bytes], list[list[tuple[str, bytes]]]]],
        list_users: list[str], triggers: list[Trigger], trigger_users: list[str],
        previous: asyncio.Future[None] | None, started: float,
    ) -> None:
        records, triggered = await ranking
        if previous is not None:
            await previous  # a user's records leave in the order they were queued
        self.metrics.ranking_seconds.observe(time.perf_counter() - started)
        topic = self.recommendations_topic.get_topic_name()
        for user_id, record in zip(list_users, records, strict=True):
            self.outbox.add(topic, record, key=user_id.encode())
        self.counters.recommendations_out += len(records)
        for user_id, trigger, outputs in zip(trigger_users, triggers, triggered, strict=True):
            for output, record in outputs:
                self.outbox.add(self.trigger_topics[output], record, key=user_id.encode())
            self.counters.triggers_out[trigger.kind] += 1
        await self.outbox.send()

    def _hold_over(self) -> None:
        self._hold = None
        if not self.app.should_stop:  # stopping: what waits is replayed, not ranked
            self._submit_waiting(hold=False)

    def _ranking_done(self, task: asyncio.Future[None]) -> None:
        self._rankings.remove(task)
        if task.cancelled():
            self._rankings_lost = RecommendationsLost("a ranking was cancelled")
        elif (exc := task.exception()) is not None:
            self._rankings_lost = RecommendationsLost(f"a ranking failed: {exc!r}")
            self._rankings_lost.__cause__ = exc
            self.app.add_future(self.app.crash(self._rankings_lost))
        self._submit_waiting()

    async def rankings_published(self) -> None:
        """Wait until every list and trigger queued so far is published (those
        waiting are submitted as submissions come back);
        :class:`RecommendationsLost` once any were not (their events are then never
        committed: a replay ranks them again)."""
        while self._rankings_lost is None and (
                self._rankings or self._waiting_lists or self._waiting_triggers):
            self._submit_waiting(hold=False)
            await asyncio.wait([self._rankings[-1]])
        if self._rankings_lost is not None:
            raise self._rankings_lost

    async def recommend(self, user_id: str, state: UserState | None, n: int
                        ) -> Recommendations:
        """A user's list now, ranked in the ranking child with the snapshot it
        holds (as the published lists are)."""
        profile = state.profile if state is not None else None
        return await self.ranker.run(
            recommend_one, user_id, None if profile is None else list(profile.recent),
            () if profile is None else list(profile.purchased), n, self.config)

    # -- rows of C --------------------------------------------------------------------

    def rows_process_of(self, partition: int) -> ModelProcess:
        """The rows process that holds the rows of ``partition``."""
        return self.rows_processes[partition % len(self.rows_processes)]

    async def rows_call(self, process: ModelProcess, function: Callable[..., Any],
                        *args: Any) -> Any:
        """``function(*args)`` in a rows process. If it fails, or the process died,
        rows changed since the last commit are lost: the worker stops (no commit
        follows: it resumes from the last one) and :class:`RowsLost` is raised."""
        try:
            return await process.run(function, *args)
        except Exception as exc:
            lost = RowsLost(f"the rows process failed: {exc!r}")
            lost.__cause__ = exc
            await self.app.crash(lost)
            raise lost from exc

    async def rows_call_each(self, function: Callable[..., Any],
                             args_by_process: Mapping[ModelProcess, tuple[Any, ...]]
                             ) -> list[Any]:
        """``function(*args)`` in each of these rows processes at once (see
        :meth:`rows_call`); the results in the mapping's order."""
        return list(await asyncio.gather(*(self.rows_call(process, function, *args)
                                           for process, args in args_by_process.items())))

    async def hold_rows_of(self, partitions: Collection[int]) -> None:
        """The rows process holds the rows of ``partitions`` once this returns: those
        it does not hold yet are read from the table (every row of those
        partitions, in one pass over the table). Under the rows lock."""
        missing = {p for p in partitions if p not in self._rows_held}
        if not missing:
            return
        encoded: dict[int, dict[str, bytes]] = {p: {} for p in missing}
        partition_of = self.item_partition
        for item_id, value in self.rows.items():
            rows = encoded.get(partition_of(item_id))
            if rows is not None and value is not None:
                rows[item_id] = value
        for partition, rows in encoded.items():
            token = next(self._row_tokens)
            await self.rows_call(self.rows_process_of(partition), hold_rows, partition,
                                 token, rows)
            self._rows_held[partition] = token

    async def apply_row_batch(self, batch: Sequence[EventT[bytes]]) -> None:
        """Hand a batch of row updates to the rows process, which applies them to
        the rows it holds; they are written to the table by
        :meth:`write_rows_changed_so_far` (at the next commit at the latest). The
        small per-item stats every worker reads go out now. A rebalance waits for
        the batch under way (the rows lock), as it waits for a batch of events.
        """
        async with self.rows_lock:
            events = self.current_events(batch)
            if not events:
                return
            await self.hold_rows_of({event.message.partition for event in events})
            messages: dict[ModelProcess, list[RowMessage]] = defaultdict(list)
            for event in events:
                partition = event.message.partition
                self._row_carriers[partition] = event
                messages[self.rows_process_of(partition)].append(
                    (partition, self._rows_held[partition], event.message.value or b"{}"))
            results = await self.rows_call_each(apply_row_messages, {
                process: (batch_messages, self.config.tau, self.settings.max_row_width)
                for process, batch_messages in messages.items()})
        for applied, skipped, stats in results:
            self.counters.row_updates_applied += applied
            self.counters.row_updates_skipped += skipped
            for item_id, encoded in stats:
                self.item_stats.set_encoded_if_changed(item_id, encoded)

    async def write_rows_changed_so_far(self, paced: bool = False) -> None:
        """Every row changed before this call is written when it returns (before
        every offset commit and before a rebalance): the rows process hands over
        the rows changed since the last commit, encoded, and they go to the table
        :data:`ROWS_PER_SLICE` at a time with batches let in between (``paced``:
        see :meth:`between_slices`). Each is written under the partition of the
        last row-update event read there (rows and their updates are
        co-partitioned). The stats of rows whose count moved go out again if
        they changed since they were sent (see
        :meth:`streams.held_rows.HeldRows.take_unwritten`)."""
        async with self._rows_writer:
            if not self._rows_held or self._rows_stream is None:
                return
            taken: list[tuple[int, str, bytes]] = []
            for rows, stats in await self.rows_call_each(
                    take_unwritten_rows, dict.fromkeys(self.rows_processes, ())):
                taken.extend(rows)
                for item_id, encoded in stats:
                    self.item_stats.set_encoded_if_changed(item_id, encoded)
            for start in range(0, len(taken), ROWS_PER_SLICE):
                started = time.perf_counter()
                with acting_as(self._rows_stream) as act_as:
                    for partition, item_id, value in taken[start:start + ROWS_PER_SLICE]:
                        act_as(self._row_carriers[partition])
                        self.write_table(self.rows, item_id, value)
                if start + ROWS_PER_SLICE < len(taken):
                    await self.between_slices(time.perf_counter() - started, paced)

    # -- neighbour refresh ---------------------------------------------------------------

    @property
    def tick_seconds(self) -> float:
        """Seconds between the leader's refresh ticks: each partition is refreshed
        once per ``refresh_seconds``, the partitions in turn."""
        return self.settings.refresh_seconds / self.settings.partitions

    async def send_refresh_tick(self) -> None:
        """Tick the next partition of rows (the group's leader, every
        :attr:`tick_seconds`); a round starts at partition 0, and its ticks carry
        its number: the second it started at, which is also the version of the
        snapshot built from it (clients compare it with the clock). So a round
        starts in a later second than the last one, or waits a tick: two rounds
        of one number would rebuild once.

        Ticked at once, a worker refreshed its partitions back to back, then rebuilt
        its snapshot: 2-3 s of the loop's busiest work in every 10 s (pickling the
        changed rows, publishing the lists, the churn scan), and at half load the
        latency rose to 0.4-0.9 s each time. Spread over the interval by a timer
        of the whole interval that slept between the ticks, each round took 1.75
        intervals (4 partitions): Faust's timer sleeps its interval after its
        body returns.
        """
        partition = self._next_tick_partition
        if partition == 0:
            now = time.time()
            if int(now) <= self._tick_round:
                return
            self._tick_round, self._round_started = int(now), now
        self._next_tick_partition = (partition + 1) % self.settings.partitions
        # when the tick is due: its age tells a worker behind (see refresh_partition)
        sent = self._round_started + partition * self.tick_seconds
        self.outbox.add(self.ticks_topic.get_topic_name(),
                        orjson.dumps({"round": self._tick_round, "sent": sent}),
                        partition=partition)
        await self.outbox.send()

    async def refresh_partition(self, event: EventT[bytes]) -> None:
        s = self.settings
        partition = event.message.partition
        tick = orjson.loads(event.message.value or b"{}")
        refresh_round = int(tick.get("round", 0))
        if time.time() - float(tick.get("sent", math.inf)) > STALE_TICK_INTERVALS * (
                s.refresh_seconds):
            # Behind (refreshes slower than the ticks come): a later tick of the
            # partition is queued behind this one. Refreshing every tick in turn,
            # the worker fell further behind for as long as it ran.
            self.counters.stale_ticks += 1
            return
        started = time.perf_counter()
        counts = {item_id: float(stats[0]) for item_id, stats
                  in self.item_stats.view().items()}
        lists = await self.partition_neighbors(partition, counts, refresh_round)
        item_neighbors_topic = self.item_neighbors_topic.get_topic_name()
        for n, (item_id, value, record) in enumerate(lists, 1):
            if n % LISTS_PER_SLICE == 0:
                await asyncio.sleep(0)  # a partition's lists in one go: among the longest stalls
            if self.neighbors.set_encoded_if_changed(item_id, value):
                self.outbox.add(item_neighbors_topic, record, key=item_id.encode())
        await self.outbox.send()
        self.counters.refreshes += 1
        self.counters.last_refresh_seconds = time.perf_counter() - started
        self.metrics.refresh_seconds.observe(self.counters.last_refresh_seconds)
        if time.monotonic() - self.churn_scanned.get(partition, 0.0) >= s.churn_seconds:
            self.churn_scanned[partition] = time.monotonic()
            await self.engagement_partition(partition)
        self.partition_rounds[partition] = refresh_round
        # The snapshot is as new as the oldest refresh among the partitions this
        # worker owns: it is rebuilt when the last of them is done with a round,
        # not after each one (a rebuild of 5k items' lists takes ~0.2 s of CPU).
        # (Outside a group, as in tests, each refresh is a round of its own.)
        owned = self.owned_tick_partitions()
        complete = min(self.partition_rounds.get(p, 0) for p in owned or {partition})
        if complete > self.model_round or not owned:
            await self.rebuild_model(complete)
            if owned:
                self._own_round_rebuilt = time.monotonic()

    async def partition_neighbors(self, partition: int, counts: Mapping[str, float],
                                  model_version: int) -> list[EncodedList]:
        """Neighbour lists of a partition's items, encoded (see
        :func:`streams.model_work.neighbors_of_partition`), by the model
        process, which keeps a copy of the partition's rows: sent in full once, then
        those changed since (by the rows process, pickled: the loop passes the bytes
        on)."""
        args = (self.owned_tick_partitions(), counts, self.config.neighbors,
                self.config.similarity, SimilarityParams(), model_version)

        async def lists_after_send(token: int, full: bool) -> list[EncodedList]:
            async with self.rows_lock:
                await self.hold_rows_of({partition})
                rows = await self.rows_call(self.rows_process_of(partition), rows_to_send,
                                            partition, full)
            lists: list[EncodedList] = await self.model_process.run(
                neighbors_of_partition, partition, token, rows, full, *args)
            self._rows_token[partition] = token
            return lists

        # back once the model process has the rows sent (none: send them all)
        token = self._rows_token.pop(partition, None)
        if token is not None:
            try:
                return await lists_after_send(token, full=False)
            except RowsNotHeld:  # a new model process: it gets them all
                pass
        return await lists_after_send(next(self._row_tokens), full=True)

    def owned_tick_partitions(self) -> set[int]:
        return self.owned_partitions(self.ticks_topic)

    async def pick_up_others_lists(self) -> None:
        """Rebuild the snapshot if other workers wrote neighbour lists since the last
        build, unless this worker's own refresh rounds rebuild it: one completed
        within the last :data:`OWN_ROUND_COVERS` refresh intervals, and the next
        takes those lists too, as fresh as this timer would (both come once an
        interval). Others write lists all through a round, so the timer found new
        ones every time: with two workers each rebuilt twice an interval (~0.6 s
        of the model process's CPU each, 5,000 items' lists)."""
        if self.neighbors.others_writes == self._others_lists_built:
            return
        if (self.owned_tick_partitions() and time.monotonic() - self._own_round_rebuilt
                < OWN_ROUND_COVERS * self.settings.refresh_seconds):
            return
        await self.rebuild_model(self.model_round)

    async def rebuild_model(self, refresh_round: int) -> None:
        """Rebuild the ranking snapshot from the replicated tables (in the model
        process; the lists and stats are pickled at the call)."""
        async with self._rebuild_lock:
            self._others_lists_built = self.neighbors.others_writes
            # as stored (JSON): decoded in the model process
            lists = self.neighbors.view_encoded()
            stats = self.item_stats.view_encoded()
            # version 0: no complete refresh yet (trending items only, if any)
            version = max(refresh_round, self.model_round)
            self.model = await self.model_process.run(
                build_model, version, lists, stats, self.config.neighbors, self.config.tau)
            self.ranker.hold(hold_ranking_model, self.model)
            self.model_round = version

    # -- churn alerts and marketing triggers ----------------------------------------------

    def log_end(self, tp: TP) -> int | None:
        """A partition's log end offset as the consumer's last fetch from it said
        (None: not fetched yet, or not assigned here).

        Not asked of the broker: that request (``consumer.highwaters``) took
        1.0-1.3 s under load, and the fetches waited behind it, so input stalled
        for about 5 s every refresh round (one request per partition scanned).
        """
        try:
            end: int | None = self.app.consumer.highwater(tp)
        except (AssertionError, KeyError, ConsumerNotStarted):  # not assigned
            return None
        return end

    def partition_watermark(self, partition: int) -> float:
        """Event time of a partition: how far both input topics have been read.

        A user's clicks and purchases arrive on two topics read independently; if
        one ran ahead, a cart could expire before the purchase that empties it is
        read. So while a topic partition still has unread messages (or none was
        fetched yet), time is held at its clock; when both are read to the end, it
        is the later of the two.
        """
        topics = {name: TP(self.settings.topic(name), partition) for name in INPUT_TOPICS}
        clocks = {name: self.source_clock.get((name, partition), 0.0) for name in topics}
        lagging = []
        for name, tp in topics.items():
            end = self.log_end(tp)
            if end is None or self.source_offset.get((name, partition), -1) + 1 < end:
                lagging.append(clocks[name])
        return min(lagging) if lagging else max(clocks.values())

    def refresh_lag(self) -> None:
        """Unread input messages per assigned topic partition (for /metrics)."""
        lag = {}
        for tp in self.app.assignor.assigned_actives():
            if tp.topic not in self.contract_topic:
                continue
            end = self.log_end(tp)
            if end is not None:
                source = (self.contract_topic[tp.topic], tp.partition)
                lag[source] = max(0, end - 1 - self.source_offset.get(source, -1))
        self.lag = lag

    def user_now(self, user_id: str) -> float:
        """The latest event time read on the partition a user lives in."""
        partition = user_partition(user_id, self.settings.partitions)
        return max(self.source_clock.get((name, partition), 0.0) for name in INPUT_TOPICS)

    def churn_model(self) -> ChurnModel:
        value = self.churn.get("model")
        return PRIOR_MODEL if value is None else ChurnModel.from_state(value)

    async def engagement_partition(self, partition: int) -> None:
        """Score one partition's customers at event time and fire what is due.

        Runs under the partition's refresh tick, so the user states it writes go to
        that partition's changelog (ticks and users are co-partitioned). The
        partition's summary rows go to the ``churn`` global table; the owner of
        partition 0 refits the model from all partitions' rows, off the loop.
        """
        # The lock holds every batch back while it is held: the watermark (log end
        # offsets from the broker, 1.0-1.3 s seen under load) is read before it,
        # and the users are scanned a slice at a time (4 x 0.6-0.9 s seen whole).
        now = self.partition_watermark(partition)
        model = self.churn_model()
        stored = list(self.users.keys())
        unwritten = set(self.user_cache.dirty()).difference(stored)  # new since the commit
        partition_of = self.user_partition
        user_ids = [user_id for user_id in [*stored, *sorted(unwritten)]
                    if partition_of(user_id) == partition]
        rows: list[list[float]] = []
        first = 0
        while first < len(user_ids):
            async with self.users_lock:
                try:
                    first = await self._scan_users(user_ids, first, now, model, rows)
                except Exception as exc:
                    await self._lose_cached_users(exc)
                    raise
            await asyncio.sleep(0)  # neither the lock nor the send need suspend
        self.write_churn_rows(partition, compress_rows(rows))
        await self.outbox.send()
        if partition == 0:
            all_rows = [row for key, value in self.churn.view().items()
                        if key.startswith("p") and value for row in value]
            fitted = await self.model_process.run(
                fit_churn_model, all_rows, self.engagement_config)
            self.churn.set("model", fitted.to_state())
            await self.outbox.send()

    def write_churn_rows(self, partition: int, rows: Sequence[list[float]]) -> None:
        """A partition's summary rows to the ``churn`` table, in pieces that each fit
        a record (``p<partition>.<n>``); pieces of an earlier, longer scan emptied."""
        per_piece = churn_rows_per_record(self.settings.max_record_bytes)
        pieces = {f"p{partition}.{n}": list(rows[start:start + per_piece])
                  for n, start in enumerate(range(0, len(rows), per_piece))}
        for key in self.churn:
            if churn_key_partition(key) == partition and key.startswith("p") \
                    and key not in pieces and self.churn.get(key):
                pieces[key] = []
        for key, piece in pieces.items():
            self.churn.set_if_changed(key, piece)

    async def _scan_users(self, user_ids: Sequence[str], first: int, now: float,
                          model: ChurnModel, rows: list[list[float]]) -> int:
        """Fire what is due at ``now`` for the users of a partition from ``first``
        on (read now: a batch may have changed them since the scan began), and add
        their summary rows to ``rows``, for :data:`SCAN_SLICE_SECONDS` or
        :data:`SCAN_SLICE_USERS` users at most; where the next slice starts."""
        scanned: list[tuple[str, UserState]] = []
        deadline = time.perf_counter() + SCAN_SLICE_SECONDS
        stop = min(len(user_ids), first + SCAN_SLICE_USERS)
        for position in range(first, stop):
            if position > first and time.perf_counter() > deadline:
                stop = position
                break
            user_id = user_ids[position]
            state = self.user_cache.get(user_id)
            if state is None:
                value = self.users.get(user_id)
                if value is None:
                    continue
                state = UserState.from_json(value)
            engagement = state.engagement
            if engagement.customer.is_empty and not engagement.cart:
                continue
            scanned.append((user_id, state))
            row = engagement.summary_row(now)
            if row is not None:
                rows.append(row)
        due: list[tuple[str, UserState, Trigger]] = []
        changed: list[tuple[str, UserState]] = []
        for (user_id, state), fired in zip(scanned, due_many(
                [state.engagement for _, state in scanned], now, model,
                self.engagement_config), strict=True):
            if fired:
                changed.append((user_id, state))
                due.extend((user_id, state, trigger) for trigger in fired)
        # marked changed with their triggers queued, nothing awaited in between:
        # the triggers reach Kafka before the states are written
        self.publish_ranked([], due)
        for user_id, state in changed:
            self.write_user(user_id, state)
        await self.outbox.send()
        return stop

    # -- HTTP ----------------------------------------------------------------------------

    def _declare_web(self) -> None:
        app = self.app
        worker = self
        # A user's state lives in the partition its events arrive on: murmur2 of the
        # raw user id in clicks (and co-partitioned purchases). table_route hashes the
        # users table's JSON-encoded key ('"42"'), another partition for ~3/4 of ids,
        # and so would ask a worker that may not have the user (404 / cold start).
        user_topic = self.input_topics["clicks"]

        @app.page("/health")
        class Health(View):
            async def get(self, request: Request) -> Response:
                return self.json({
                    "status": "ok",
                    "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
                    "model_version": worker.model_round,
                    "model_items": worker.model.n_items,
                    "replicas": {"records": worker.replica_reader.records,
                                 "caught_up": worker.replica_reader.caught_up.is_set()},
                    "counters": worker.counters.as_json(),
                })

        @app.page("/metrics")
        class Metrics(View):
            async def get(self, request: Request) -> Response:
                worker.refresh_lag()
                return self.bytes(worker.metrics.exposition(), content_type=METRICS_CONTENT_TYPE)

        @app.page("/items/{item_id}/neighbors")
        class ItemNeighborsView(View):
            async def get(self, request: Request, item_id: str) -> Response:
                k = query_k(request, worker.config.neighbors, worker.config.neighbors)
                if k is None:
                    return self.json({"error": "k must be an integer in "
                                      f"[1, {worker.config.neighbors}]"}, status=400)
                # answered from the replicated tables: any worker knows every item
                stats = worker.item_stats.get(item_id)
                if stats is None:
                    return self.json({"error": f"unknown item {item_id}"}, status=404)
                pairs = worker.neighbors.get(item_id) or []
                return self.json({
                    "item_id": item_id,
                    "neighbors": [{"item_id": j, "score": score} for j, score in pairs[:k]],
                    "users": stats[0],
                    "model_version": worker.model_round,
                })

        @app.page("/users/{user_id}")
        class UserProfileView(View):
            @app.topic_route(topic=user_topic, match_info="user_id")  # type: ignore[arg-type]
            async def get(self, request: Request, user_id: str) -> Response:
                state = worker.stored_user(user_id)
                if state is None:
                    return self.json({"error": f"unknown user {user_id}"}, status=404)
                profile = state.profile
                return self.json({
                    "user_id": user_id,
                    "mean_rating": profile.mean,
                    "ratings": len(profile.ratings),
                    "recent_items": profile.recent[-20:],
                    "purchased": sorted(profile.purchased),
                    "events": profile.events,
                    "last_ts": profile.last_ts,
                    "applied_offsets": state.applied.offsets,
                })

        @app.page("/users/{user_id}/churn")
        class UserChurnView(View):
            @app.topic_route(topic=user_topic, match_info="user_id")  # type: ignore[arg-type]
            async def get(self, request: Request, user_id: str) -> Response:
                state = worker.stored_user(user_id)
                if state is None:
                    return self.json({"error": f"unknown user {user_id}"}, status=404)
                engagement = state.engagement
                customer = engagement.customer
                answer: dict[str, Any] = {
                    "user_id": user_id,
                    "purchase_days": 0 if customer.is_empty else customer.frequency + 1,
                    "alerted": engagement.alerted,
                    "cart": sorted(engagement.cart),
                    "now": worker.user_now(user_id),
                }
                if customer.is_empty:
                    return self.json({**answer, "p_alive": None,
                                      "detail": "no purchases yet"})
                model = worker.churn_model()
                score = score_customer(model.params, customer, worker.user_now(user_id),
                                       horizon_days=worker.engagement_config.horizon_days)
                return self.json({**answer, **score.to_dict(),
                                  "value_tier": model.tiers.tier(score.monetary_value),
                                  "model": {"fitted": model.fitted,
                                            **model.params.to_state()}})

        @app.page("/users/{user_id}/recommendations")
        class UserRecommendations(View):
            @app.topic_route(topic=user_topic, match_info="user_id")  # type: ignore[arg-type]
            async def get(self, request: Request, user_id: str) -> Response:
                limit = max(MAX_LOOKUP_K, worker.settings.k)
                k = query_k(request, worker.settings.k, limit)
                if k is None:
                    return self.json({"error": f"k must be an integer in [1, {limit}]"},
                                     status=400)
                if worker.lookups_in_flight >= LOOKUPS_IN_FLIGHT:
                    return self.json({"error": "too many lookups under way; retry"},
                                     status=503, headers={"Retry-After": "1"})
                worker.lookups_in_flight += 1
                try:
                    recs = await worker.recommend(user_id, worker.stored_user(user_id), k)
                finally:
                    worker.lookups_in_flight -= 1
                return self.json(recommendation_record(recs, "lookup", None))


@contextmanager
def acting_as(stream: faust.Stream[Any]) -> Iterator[Callable[[EventT[bytes]], None]]:
    """Read and write table keys as if processing given events; restore the stream.

    Inside ``stream.take_events`` the stream's current event is whichever message
    came last, but a table key belongs to the partition of the event that carries
    it: writes go to that partition's changelog, and the rocksdb store reads a key
    from that partition's database only (reading under another event's partition
    returns nothing, and the next write loses what was there: seen here). So each
    key is read and written under its own event. Faust's take buffer reads
    ``stream.current_event`` when it resumes after our batch, so the event we
    borrowed must be put back, or the buffer takes it again instead of the next
    message (seen here: a message dropped and another delivered twice).
    """
    borrowed: Any = stream  # the setter is private to faust.Stream
    previous = stream.current_event

    def act_as(event: EventT[bytes]) -> None:
        borrowed._set_current_event(event)

    try:
        yield act_as
    finally:
        borrowed._set_current_event(previous)


#: HTTP routes open without the bearer token: what monitoring polls.
OPEN_ROUTES = frozenset({"/health", "/metrics"})
#: Items a lookup may ask for at most (``k``), unless RECOSTREAM_K is more.
MAX_LOOKUP_K = 100
#: Recommendation lookups under way at once; more are answered 503 (the ranking
#: child ranks them, behind the batches' lists).
LOOKUPS_IN_FLIGHT = 32


def require_bearer_token(token: str) -> Callable[..., Awaitable[Any]]:
    """aiohttp middleware: every route but :data:`OPEN_ROUTES` wants
    ``Authorization: Bearer <token>``, compared in constant time; 401 otherwise.
    Forwarded lookups carry the header on to the worker that owns the user."""
    expected = f"Bearer {token}".encode()

    @aiohttp_web.middleware
    async def check(request: aiohttp_web.Request,
                    handler: Callable[..., Awaitable[Any]]) -> Any:
        if request.path in OPEN_ROUTES:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return aiohttp_web.json_response({"error": "a valid bearer token is required"},
                                     status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return cast(Callable[..., Awaitable[Any]], check)


#: The header of a forwarded event: ``<contract topic>/<partition>@<offset>`` where
#: it was first read. A forward is applied to its user under that source (as
#: ``fwd:<topic>/<partition>``, apart from what the user's own partition holds), so
#: a copy forwarded again after a crash, at another offset, is skipped.
ORIGIN_HEADER = "recostream-origin"
#: Where a forwarded event came from: (source under which it is applied, offset).
Origin = tuple[str, int]


def forwarded_from(headers: Any) -> Origin | None:
    """The origin of a forwarded event from its headers (None: not forwarded, or
    a header not of our making).

    >>> forwarded_from([(ORIGIN_HEADER, b"clicks/3@120")])
    ('fwd:clicks/3', 120)
    >>> forwarded_from(None), forwarded_from([(ORIGIN_HEADER, b"x/y@z")])
    (None, None)
    """
    if not headers:
        return None
    for name, value in headers.items() if isinstance(headers, Mapping) else headers:
        if name != ORIGIN_HEADER or not isinstance(value, bytes):
            continue
        source, _, offset = value.decode(errors="replace").rpartition("@")
        topic, _, partition = source.partition("/")
        if topic in INPUT_TOPICS and partition.isdigit() and offset.isdigit():
            return f"fwd:{source}", int(offset)
    return None


def query_k(request: Request, default: int, maximum: int) -> int | None:
    """The ``k`` query parameter, or None when it is not an integer in [1, maximum]."""
    try:
        k = int(request.query.get("k", default))
    except ValueError:
        return None
    return k if 1 <= k <= maximum else None


def user_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a user-keyed message."""
    return key_partition(user_id.encode(), partitions)


def persist_offset(table: TableT[Any, Any], tp: Any, offset: int) -> None:
    """Tell a table's store the changelog offset it now holds (rocksdb keeps it)."""
    cast(StoreT[Any, Any], table.data).set_persisted_offset(tp, offset)


def churn_key_partition(key: str) -> int:
    """The partition a ``churn`` key belongs to: ``p<n>.<piece>`` is a piece of
    partition n's summary rows (``p<n>``: all of them, as workers wrote them
    before rows came in pieces); the fitted model is written by the owner of
    partition 0.

    >>> churn_key_partition("p3.12"), churn_key_partition("p2"), churn_key_partition("model")
    (3, 2, 0)
    """
    return int(key[1:].partition(".")[0]) if key.startswith("p") else 0


def churn_rows_per_record(max_record_bytes: int) -> int:
    """Summary rows ``[x, t_x, T, monetary, count]`` one ``churn`` record holds:
    five numbers of at most 25 characters each, with their commas and brackets.

    >>> churn_rows_per_record(1_000_000)
    7560
    """
    return max(1, (max_record_bytes - FIXED_JSON) // (5 * NUMBER_JSON + 7))


def compress_rows(rows: Sequence[Sequence[float]]) -> list[list[float]]:
    """Summary rows with equal (x, t_x, T, monetary) merged into one with a count;
    t_x and T rounded to a tenth of a day, money to cents (keeps the value small)."""
    counts: Counter[tuple[float, float, float, float]] = Counter()
    for x, t_x, T, monetary, count in rows:
        counts[(x, round(t_x, 1), round(T, 1), round(monetary, 2))] += int(count)
    return [[*key, float(n)] for key, n in sorted(counts.items())]
