"""A batch of input events: validated, forwarded where it belongs, de-duplicated,
learned into its users' states, and turned into row updates, lists and triggers.

The order of what leaves a batch is the one a crash can replay safely: row
updates and the lists and triggers a state records are in Kafka (or queued
before it, see :mod:`streams.runtime.commits`) before the state that records
them is written.
"""

from __future__ import annotations

import operator
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import EventT

from core.config import RecommenderConfig
from core.engagement import EngagementConfig, Trigger
from core.events import Event, InvalidEvent, parse_event
from core.outcomes import rates
from core.recommender import learn_event
from streams.runtime.children.ranking_jobs import ListRequest, Outcome, profile_fields
from streams.runtime.clock import EventClock
from streams.runtime.dead_letters import DeadLetters
from streams.runtime.metrics import Counters, WorkerMetrics
from streams.runtime.outbox import Outbox
from streams.runtime.partitions import Partitions
from streams.runtime.ranking import BEHIND_EVENTS, RankingQueue
from streams.runtime.settings import Settings
from streams.runtime.state import RowGain, UserState, encode_gains, event_row_gains, source_key
from streams.runtime.table_writes import acting_as
from streams.runtime.users import Users

#: The header of a forwarded event: ``<contract topic>/<partition>@<offset>`` where
#: it was first read. A forward is applied to its user under that source (as
#: ``fwd:<topic>/<partition>``, apart from what the user's own partition holds), so
#: a copy forwarded again after a crash, at another offset, is skipped.
ORIGIN_HEADER = "recostream-origin"
#: Where a forwarded event came from: (source under which it is applied, offset).
Origin = tuple[str, int]
#: Gains of a message in the order rows check them (by source, then offset).
SOURCE_ORDER = operator.itemgetter(2, 3)
#: A user's events of a batch, in order: (the event as read, as parsed, its origin).
UserEvents = list[tuple[EventT[bytes], Event, Origin | None]]


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
        if topic in ("clicks", "purchases") and partition.isdigit() and offset.isdigit():
            return f"fwd:{source}", int(offset)
    return None


@dataclass
class Learned:
    """What a batch's new events made: the row gains by partition of rows, the
    lists to publish (one per changed user), the triggers, and the rated events
    the ranking learns from."""

    gains: dict[int, list[RowGain]] = field(default_factory=lambda: defaultdict(list))
    lists: list[ListRequest] = field(default_factory=list)
    triggers: list[tuple[str, UserState, Trigger]] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)


class Ingest:
    """Processes batches of the ``clicks`` and ``purchases`` agent."""

    def __init__(self, settings: Settings, config: RecommenderConfig,
                 engagement: EngagementConfig, topics: Mapping[str, str],
                 rows_topic: str, users: Users, ranking: RankingQueue, outbox: Outbox,
                 dead_letters: DeadLetters, clock: EventClock, partitions: Partitions,
                 counters: Counters, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.config = config
        self.engagement = engagement
        self.topics = topics  # contract name -> the topic's name on the broker
        self.contract = {real: name for name, real in topics.items()}
        self.rows_topic = rows_topic
        self.users = users
        self.ranking = ranking
        self.outbox = outbox
        self.dead_letters = dead_letters
        self.clock = clock
        self.partitions = partitions
        self.counters = counters
        self.metrics = metrics

    async def process(self, stream: faust.Stream[bytes], batch: Sequence[EventT[bytes]]
                      ) -> None:
        """One batch, under the users lock: a churn scan slice and a rebalance take
        turns with it, so that none works on a state another has half changed,
        and a rebalance lets the batch under way finish first. It waits first
        while the ranking child has too many lists to rank
        (:meth:`streams.runtime.ranking.RankingQueue.room`)."""
        await self.ranking.room()  # the ranking child sets the pace it can keep
        started = time.perf_counter()
        self.ranking.behind = sum(self.clock.refresh_lag().values()) > BEHIND_EVENTS
        async with self.users.lock:
            try:
                await self._process(stream, batch)
            except Exception as exc:
                await self.users.lose_cached(exc)
                raise
        self.metrics.batch_size.observe(len(batch))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)

    async def _process(self, stream: faust.Stream[bytes], batch: Sequence[EventT[bytes]]
                       ) -> None:
        by_user = self._validated(batch)
        with acting_as(stream) as act_as:  # each state read under its own partition
            states = {}
            for user_id, items in by_user.items():
                act_as(items[-1][0])
                states[user_id] = self.users.state(user_id)
        learned = self._learned(by_user, states)
        self._send_row_updates(learned.gains)
        # Lists and triggers are ranked in the ranking child and published when
        # they come back, before the states that record them are written (the
        # commit waits for them). A replay sends a list again; a replayed trigger
        # comes again too, and its trigger_id lets the marketing system drop the
        # copy. Changed states are marked with what recorded them queued already,
        # and nothing awaited in between.
        self.ranking.publish(learned.lists, learned.triggers, learned.outcomes)
        with acting_as(stream) as act_as:
            for user_id, items in by_user.items():
                act_as(items[-1][0])
                self.users.changed(user_id, states[user_id])
        await self.outbox.send()

    def _validated(self, batch: Sequence[EventT[bytes]]) -> dict[str, UserEvents]:
        """The batch's valid events by user, in order. Bad input is dead-lettered;
        an event keyed otherwise, or on another partition than its user's, is
        forwarded (see :meth:`forward`)."""
        s = self.settings
        # one event from the far future would move event time for good
        latest_ts = time.time() + s.max_future_seconds
        by_user: dict[str, UserEvents] = defaultdict(list)
        for event in self.partitions.current(batch):
            message = event.message
            topic = self.contract[message.topic]
            self.counters.events_in[topic] += 1
            self.clock.read(topic, message.partition, message.offset)
            key, raw = message.key, message.value
            if key is not None and len(key) > s.max_key_bytes:
                self.dead_letters.input(event, "key_too_long", f"{len(key)} bytes")
                continue
            if not isinstance(raw, bytes | bytearray) or len(raw) > s.max_message_bytes:
                size = len(raw) if isinstance(raw, bytes | bytearray) else 0
                self.dead_letters.input(event, "oversized" if size else "invalid_json",
                                        f"{size} bytes" if size else "empty message")
                continue
            try:
                decoded = parse_event(orjson.loads(raw), topic, latest_ts)
            except orjson.JSONDecodeError as exc:
                self.dead_letters.input(event, "invalid_json", str(exc)[:200])
                continue
            except InvalidEvent as exc:
                self.dead_letters.input(event, exc.reason, exc.detail)
                continue
            origin = forwarded_from(message.headers)
            if origin is None and (key != decoded.user_id.encode() or message.partition
                                   != self.partitions.of_user(decoded.user_id)):
                self.forward(topic, bytes(raw), decoded.user_id, message.partition,
                             message.offset)
                continue
            by_user[decoded.user_id].append((event, decoded, origin))
        return by_user

    def _learned(self, by_user: Mapping[str, UserEvents], states: Mapping[str, UserState]
                 ) -> Learned:
        """Each new event folded into its user's state (see :class:`Learned`)."""
        learned = Learned()
        gains, lists, triggers = learned.gains, learned.lists, learned.triggers
        learns_ranking = self.ranking.learn_customers > 0
        for user_id, items in by_user.items():
            state = states[user_id]
            cause: tuple[str, float] | None = None
            for event, decoded, origin in items:
                message = event.message
                read_from = source_key(self.contract[message.topic], message.partition)
                source, offset = origin or (read_from, message.offset)
                if state.is_duplicate(source, offset, decoded.event_id):
                    self.counters.deduplicated += 1
                    continue
                if learns_ranking and rates(decoded, self.config):
                    learned.outcomes.append((user_id, decoded.item_id, decoded.ts,
                                             state.profile.last_ts))
                changed, gain, purchase = learn_event(state.profile, decoded, self.config)
                triggers.extend((user_id, state, fired) for fired in
                                state.engagement.observe(decoded, self.engagement))
                self.clock.advance(decoded.topic(), message.partition, decoded.ts)
                state.mark(source, offset, decoded.event_id, self.settings.dedup_ids)
                self.counters.applied += 1
                # rows skip by the partition they were read from, whose offsets
                # are in order (forwarded ones are not, there)
                for partition, row_gain in event_row_gains(
                        decoded, gain, purchase, read_from, message.offset,
                        self.partitions.of_item).items():
                    gains[partition].append(row_gain)
                if changed:
                    cause = (decoded.type, decoded.ts)
            if cause is not None:
                # encoded when the batch's lists are queued, before any other change
                lists.append((user_id, profile_fields(state.profile, live=True), *cause))
        return learned

    def _send_row_updates(self, gains: Mapping[int, list[RowGain]]) -> None:
        """Row updates reach Kafka before the user states that record them are
        written: a crash in between replays them, and rows skip what they have.
        Rows skip by offset, so each source's gains go out in offset order
        (grouping by user shuffled them)."""
        for partition, partition_gains in gains.items():
            partition_gains.sort(key=SOURCE_ORDER)
            # half the record limit: room for the record's overhead, and a large
            # backlog reaches the rows processes in pieces
            for encoded in encode_gains(partition_gains, self.settings.max_record_bytes // 2):
                self.outbox.add(self.rows_topic, encoded, partition=partition)
            self.counters.row_updates_sent += sum(gain.update_count()
                                                  for gain in partition_gains)

    def forward(self, topic: str, raw: bytes, user_id: str, partition: int,
                offset: int) -> None:
        """An event keyed by something else than its user, or on another partition
        than its user's (a producer partitioning otherwise: librdkafka's CRC32,
        say), goes again to its topic, keyed by the user, to be processed where the
        user lives. It carries where it came from, under which it is applied once
        however often a crash makes it forwarded again (see :data:`ORIGIN_HEADER`)."""
        self.counters.rekeyed += 1
        self.outbox.add(self.topics[topic], raw, key=user_id.encode(),
                        headers=((ORIGIN_HEADER, f"{topic}/{partition}@{offset}".encode()),))
