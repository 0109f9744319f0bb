"""Records to Kafka in one producer batch per topic partition, not one send each.

Measured on the throughput benchmark: a Faust ``topic.send`` (or a table write, which
is a changelog send) costs the worker far more than the record itself: futures,
callbacks, a task per buffered write, a producer wake-up. With recommendations and
user changelog records sent one by one, the worker used 55-57 CPU-seconds for
200,000 events; handing the same records over as whole batches, 32-34 s.

So every record the worker writes is added to an :class:`Outbox`, grouped by topic
partition in the order added, and :meth:`Outbox.send` lines each group up to go to
the producer as one batch (aiokafka's ``BatchBuilder`` / ``send_batch``), after the
previous batch of its partition: records of a partition keep their order across
sends, and a slow partition holds no other back. :meth:`Outbox.delivered` waits
for everything lined up so far; the worker calls it before every offset commit.

Where a record goes: an explicit partition, or the partition Kafka's default
partitioner gives its key (murmur2), as a keyed ``topic.send`` would.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from aiokafka.partitioner import murmur2
from aiokafka.structs import RecordMetadata, TopicPartition

log = logging.getLogger("recostream.outbox")

#: Handing one partition's records to the producer longer than this is logged.
SLOW_SEND_SECONDS = 5.0
#: One record: (key, value); either may be None (a None value deletes the key).
Record = tuple[bytes | None, bytes | None]
#: Called with the partition and the offset of the last record of a delivered batch.
OnDelivered = Callable[[TopicPartition, int], None]


class DeliveryFailed(RuntimeError):
    """A batch the outbox handed over was not written to Kafka."""


class BatchSink(Protocol):
    """Where an outbox's batches go: Kafka, or a recorder in tests."""

    async def partition_count(self, topic: str) -> int:
        """How many partitions ``topic`` has."""
        ...

    async def send(self, topic: str, partition: int,
                   records: Sequence[Record]) -> list[Awaitable[int]]:
        """Hand ``records`` over in order; per batch used, an awaitable of the
        offset of its last record once the broker has it."""
        ...


@functools.lru_cache(maxsize=1 << 16)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a keyed record.

    >>> key_partition(b"u1", 4), key_partition(b"u2", 4)
    (0, 2)
    """
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


class KafkaSink:
    """:class:`BatchSink` on an aiokafka producer (the app's, started by Faust)."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer  # called each time: Faust creates it on start

    async def partition_count(self, topic: str) -> int:
        return len(await self._producer().partitions_for(topic))

    async def send(self, topic: str, partition: int,
                   records: Sequence[Record]) -> list[Awaitable[int]]:
        producer = self._producer()
        delivered: list[Awaitable[int]] = []
        batch = producer.create_batch()
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full
                delivered.append(await self._send(producer, batch, topic, partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        delivered.append(await self._send(producer, batch, topic, partition))
        return delivered

    @staticmethod
    async def _send(producer: Any, batch: Any, topic: str, partition: int
                    ) -> Awaitable[int]:
        # Closed: no producer.send() may add to it, so its records are ours and its
        # last offset is the base offset plus our count.
        batch.close()
        count = batch.record_count()
        future: asyncio.Future[RecordMetadata] = await producer.send_batch(
            batch, topic, partition=partition)
        return _last_offset(future, count)


async def _last_offset(future: Awaitable[RecordMetadata], count: int) -> int:
    metadata = await future
    return int(metadata.offset) + count - 1


class Outbox:
    """Records gathered per topic partition until :meth:`send` hands them over.

    ``on_delivered[topic]`` is told the last offset of each batch written to that
    topic (the rocksdb store keeps it as the changelog position it has).
    A failed batch is remembered and raised by :meth:`check` (the worker then
    stops before committing offsets whose effects were not written).
    """

    def __init__(self, sink: BatchSink) -> None:
        self.sink = sink
        #: topics whose batches go to a sink of their own rather than ``sink``
        self.routes: dict[str, BatchSink] = {}
        self.on_delivered: dict[str, OnDelivered] = {}
        self._records: dict[tuple[str, int | None], list[Record]] = defaultdict(list)
        self._partitions: dict[str, int] = {}
        self._turns: dict[str, int] = {}  # last partition a keyless record went to
        # Sends group their records one at a time (a partition count may be asked
        # for meanwhile), so each partition's batches are lined up in send order.
        self._grouping = asyncio.Lock()
        # per partition: set once the last batch lined up is with the producer
        self._handed: dict[tuple[str, int], asyncio.Future[None]] = {}
        self._failures: list[BaseException] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    def add(self, topic: str, value: bytes | None, *, key: bytes | None = None,
            partition: int | None = None) -> None:
        """Queue one record for ``topic``: to ``partition``, else by ``key``, else
        to the partitions in turn."""
        self._records[(topic, partition)].append((key, value))

    def __len__(self) -> int:
        """Records added and not handed over yet."""
        return sum(len(records) for records in self._records.values())

    async def send(self) -> list[Awaitable[None]]:
        """Hand every queued record over, one batch per topic partition, each after
        the batches earlier sends made for its partition; awaitables of their
        delivery (followed up even when no one awaits them).

        Returns once the batches are lined up, not when the producer has taken
        them: a partition still waiting for its previous batch to go out (a
        commit's rows, say) holds neither the caller nor the other partitions.
        """
        async with self._grouping:
            by_partition = await self._group()
            deliveries: list[Awaitable[None]] = []
            for (topic, partition), records in by_partition.items():
                key = (topic, partition)
                previous = self._handed.get(key)
                handed = self._handed[key] = asyncio.get_running_loop().create_future()
                task = asyncio.ensure_future(
                    self._deliver(topic, partition, records, previous, handed))
                self._in_flight.add(task)
                task.add_done_callback(self._forget)
                deliveries.append(task)
            return deliveries

    async def _group(self) -> dict[tuple[str, int], list[Record]]:
        queued, self._records = self._records, defaultdict(list)
        by_partition: dict[tuple[str, int], list[Record]] = defaultdict(list)
        for (topic, partition), records in queued.items():
            if partition is not None:
                by_partition[(topic, partition)].extend(records)
                continue
            count = await self._partition_count(topic)
            for record in records:
                key = record[0]
                if key is None:
                    turn = self._turns[topic] = (self._turns.get(topic, -1) + 1) % count
                    by_partition[(topic, turn)].append(record)
                else:
                    by_partition[(topic, key_partition(key, count))].append(record)
        return by_partition

    def sink_for(self, topic: str) -> BatchSink:
        """Where ``topic``'s batches go."""
        return self.routes.get(topic, self.sink)

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            count = self._partitions[topic] = await self.sink_for(topic).partition_count(topic)
        return count

    async def _deliver(self, topic: str, partition: int, records: Sequence[Record],
                       previous: asyncio.Future[None] | None,
                       handed: asyncio.Future[None]) -> None:
        """Hand one partition's records to the sink after the previous batch for
        that partition, then follow their delivery (offsets reported, failures kept)."""
        try:
            started = time.monotonic()
            try:
                if previous is not None:
                    await asyncio.shield(previous)
                deliveries = await self.sink_for(topic).send(topic, partition, records)
            finally:
                handed.set_result(None)  # the next batch may go, whatever became of this one
            if time.monotonic() - started > SLOW_SEND_SECONDS:
                log.warning("handing %d records to %s[%d] took %.1f s", len(records),
                            topic, partition, time.monotonic() - started)
            for delivery in deliveries:
                offset = await delivery
                report = self.on_delivered.get(topic)
                if report is not None:
                    report(TopicPartition(topic, partition), offset)
        except Exception as exc:
            log.error("writing a batch to %s[%d] failed: %r", topic, partition, exc)
            self._failures.append(exc)
            raise

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here; kept in _failures

    async def delivered(self) -> None:
        """Wait until every batch handed over so far is written (or failed)."""
        if self._in_flight:
            await asyncio.wait(list(self._in_flight))

    def check(self) -> None:
        """Raise :class:`DeliveryFailed` if a batch handed over has failed."""
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            self._failures.clear()
            raise DeliveryFailed(f"{count} batch(es) not written, first: {first!r}")
