"""Where keys live: the partition of a user and of an item, and which partitions
this worker owns now.

A user's state lives in the partition its events arrive on (the producer's
partitioner, murmur2 of the raw user id); an item's row of C in the partition of
the repartition topic that CRC32 of its id names (stable in every process).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import faust
from faust.types import EventT

from streams.runtime.outbox import key_partition


def item_partition(item_id: str, partitions: int) -> int:
    """The repartition-topic partition that owns an item's row (stable everywhere).

    >>> item_partition("item42", 4) == zlib.crc32(b"item42") % 4
    True
    """
    return zlib.crc32(item_id.encode()) % partitions


def user_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a user-keyed message."""
    return key_partition(user_id.encode(), partitions)


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


class Partitions:
    """The partitions of users and items, and this worker's share of them."""

    def __init__(self, app: faust.App, partitions: int) -> None:
        self.app = app
        self.count = partitions
        self.of_item = KeyPartitions(item_partition, partitions).__getitem__
        self.of_user = KeyPartitions(user_partition, partitions).__getitem__

    def owned(self, topic: faust.TopicT) -> set[int]:
        """The partitions of ``topic`` this worker is assigned."""
        name = topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name}

    def current(self, batch: Sequence[EventT[bytes]]) -> list[EventT[bytes]]:
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
