"""The topics and tables of a worker, declared once.

- input: ``clicks`` and ``purchases`` (keyed by user), read as bytes;
- internal: ``<app>-cooccurrence`` (row updates, by item partition) and
  ``<app>-refresh`` (the leader's refresh ticks, one per partition);
- tables: ``users`` (profile and applied offsets per user) and ``cooccurrence``
  (a row of C per item as JSON bytes: a base and the deltas written since, see
  :mod:`streams.runtime.row_records`), changelog-backed;
- replicated (compacted topics every worker reads in full, see
  :mod:`streams.runtime.replicated`): ``item-stats``, ``neighbors``, ``churn``,
  ``learned-ranking``;
- output: ``recommendations``, ``item-neighbors``, ``dead-letters``,
  ``churn-alerts``, ``marketing-triggers`` (contract names; see
  :data:`streams.runtime.records.TRIGGER_OUTPUTS` for what goes where).
"""

from __future__ import annotations

from typing import Any

import faust

from streams.runtime.clock import INPUT_TOPICS
from streams.runtime.outbox import KafkaSink, Outbox
from streams.runtime.partitions import Partitions
from streams.runtime.replicated import ReplicaReader, ReplicatedTable
from streams.runtime.settings import Settings
from streams.runtime.table_writes import TableWriter
from streams.runtime.transport import App, RawSchema

#: The output topics, by their contract names.
OUTPUT_TOPICS = ("recommendations", "item-neighbors", "dead-letters", "churn-alerts",
                 "marketing-triggers")


#: The ``learned-ranking`` table's one key (its owner: the owner of partition 0).
LEARNED_RANKING_KEY = "ranking"


def churn_key_partition(key: str) -> int:
    """The partition a ``churn`` key belongs to: ``p<n>.<piece>`` is a piece of
    partition n's summary rows (``p<n>``: all of them, as workers wrote them
    before rows came in pieces); the fitted model is written by the owner of
    partition 0.

    >>> churn_key_partition("p3.12"), churn_key_partition("p2"), churn_key_partition("model")
    (3, 2, 0)
    """
    return int(key[1:].partition(".")[0]) if key.startswith("p") else 0


class Topology:
    """Every topic and table of a worker, on its Faust app."""

    def __init__(self, app: App, settings: Settings, partitions: Partitions,
                 outbox: Outbox) -> None:
        s = settings
        # bytes in, bytes out: the agents decode and validate events themselves
        raw: dict[str, Any] = {"schema": RawSchema(key_serializer="raw", value_serializer="raw")}
        #: contract name -> the topic's name on the broker (with the prefix)
        self.names = {name: s.topic(name) for name in (*INPUT_TOPICS, *OUTPUT_TOPICS)}
        self.events_topic = app.topic(*(self.names[name] for name in INPUT_TOPICS), **raw)
        self.input_topics = {name: app.topic(self.names[name], **raw) for name in INPUT_TOPICS}
        self.rows_topic = app.topic(f"{s.app_id}-cooccurrence", partitions=s.partitions,
                                    internal=True, **raw)
        self.ticks_topic = app.topic(f"{s.app_id}-refresh", partitions=s.partitions,
                                     internal=True, **raw)
        # Table keys and values use the app's table serializers (JSON).
        self.users = app.Table("users", default=None, partitions=s.partitions)
        # rows as their JSON bytes: the rows processes decode and encode them
        self.rows = app.Table("cooccurrence", default=None, partitions=s.partitions,
                              value_type=bytes)
        writer = TableWriter(outbox)
        for table in (self.users, self.rows):
            writer.report_delivered_to(table)
        # Small state every worker reads in full: per-item stats and neighbour
        # lists, written by the owner of the item's partition; per partition its
        # customers' summary rows and the fitted churn model (by the owner of
        # partition 0).
        self.replica_topics: dict[str, faust.TopicT] = {}  # by table name

        def replicated(name: str, partition_of: Any, owned: Any,
                       track_changes: bool = False) -> ReplicatedTable:
            topic = app.topic(f"{s.app_id}-{name}", partitions=s.partitions, internal=True,
                              compacting=True, **raw)
            self.replica_topics[name] = topic
            topic_name = topic.get_topic_name()

            def send(key: bytes, value: bytes | None) -> None:
                outbox.add(topic_name, value, key=key)

            return ReplicatedTable(name, send, partition_of, owned, track_changes)

        owned_items = self.owned_item_partitions
        # the model process keeps a copy of these two (see streams.runtime.refresh)
        self.item_stats = replicated("item-stats", partitions.of_item, owned_items, True)
        self.neighbors = replicated("neighbors", partitions.of_item, owned_items, True)
        self.churn = replicated("churn", churn_key_partition,
                                lambda: partitions.owned(self.ticks_topic))
        # the ranking learned from what customers did next (streams.runtime.kept_ranking)
        self.learned_ranking = replicated("learned-ranking", lambda key: 0,
                                          lambda: partitions.owned(self.ticks_topic))
        self._partitions = partitions
        # A commit writes thousands of rows and users, a refresh round thousands of
        # neighbour lists twice (megabytes each): on a connection of their own, so
        # that recommendations do not queue behind them (aiokafka sends one request
        # per broker at a time).
        bulk = KafkaSink(app.kafka_bulk_producer, on_rejected=outbox.reject)
        for name in (self.rows.changelog_topic.get_topic_name(),
                     self.users.changelog_topic.get_topic_name(),
                     self.names["item-neighbors"],
                     self.replica_topics["neighbors"].get_topic_name()):
            outbox.routes[name] = bulk
        self.replica_reader = ReplicaReader(
            {topic.get_topic_name(): table for topic, table in (
                (self.replica_topics["item-stats"], self.item_stats),
                (self.replica_topics["neighbors"], self.neighbors),
                (self.replica_topics["churn"], self.churn),
                (self.replica_topics["learned-ranking"], self.learned_ranking))},
            s.partitions, s.kafka_client_options())

    def owned_item_partitions(self) -> set[int]:
        """The partitions of rows of C (and of item stats) this worker owns."""
        return self._partitions.owned(self.rows_topic)

    def owned_tick_partitions(self) -> set[int]:
        """The partitions this worker refreshes (and scans for churn)."""
        return self._partitions.owned(self.ticks_topic)

    def internal_topic_names(self) -> list[str]:
        """Topics the worker feeds itself (the repartition and refresh topics)."""
        return [self.rows_topic.get_topic_name(), self.ticks_topic.get_topic_name()]

    def compacted_topic_names(self) -> list[str]:
        """Topics kept by key: the tables' changelogs and the replicated tables."""
        return [self.users.changelog_topic.get_topic_name(),
                self.rows.changelog_topic.get_topic_name(),
                *(topic.get_topic_name() for topic in self.replica_topics.values())]
