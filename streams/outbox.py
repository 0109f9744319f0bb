"""Records to Kafka in one producer batch per topic partition, not one send each.

Measured on the throughput benchmark: a Faust ``topic.send`` (or a table write, which
is a changelog send) costs the worker far more than the record itself: futures,
callbacks, a task per buffered write, a producer wake-up. With recommendations and
user changelog records sent one by one, the worker used 55-57 CPU-seconds for
200,000 events; handing the same records over as whole batches, 32-34 s.

So every record the worker writes is added to an :class:`Outbox`, grouped by topic
partition in the order added, and :meth:`Outbox.send` hands each group to the
producer as one batch (aiokafka's ``BatchBuilder`` / ``send_batch``). Records for
one partition keep their order across sends (a send waits until the producer has
taken the previous batch of that partition). The producer behind it is Faust's, so
Faust's flush before each offset commit waits for these batches too.

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
        self.on_delivered: dict[str, OnDelivered] = {}
        self._records: dict[tuple[str, int | None], list[Record]] = defaultdict(list)
        self._partitions: dict[str, int] = {}
        self._turns: dict[str, int] = {}  # last partition a keyless record went to
        # One send at a time: records of a partition go out in the order added.
        self._sending = asyncio.Lock()
        self._failures: list[BaseException] = []
        self._in_flight: set[asyncio.Task[int]] = set()

    def add(self, topic: str, value: bytes | None, *, key: bytes | None = None,
            partition: int | None = None) -> None:
        """Queue one record for ``topic``: to ``partition``, else by ``key``, else
        to the partitions in turn."""
        self._records[(topic, partition)].append((key, value))

    def __len__(self) -> int:
        """Records added and not handed over yet."""
        return sum(len(records) for records in self._records.values())

    async def send(self) -> list[Awaitable[int]]:
        """Hand every queued record over; awaitables of their batches' delivery."""
        async with self._sending:
            return await self._send()

    async def _send(self) -> list[Awaitable[int]]:
        if not self._records:
            return []
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
        deliveries: list[Awaitable[int]] = []
        for (topic, partition), records in by_partition.items():
            started = time.monotonic()
            for delivery in await self.sink.send(topic, partition, records):
                deliveries.append(self._watch(topic, partition, delivery))
            if time.monotonic() - started > SLOW_SEND_SECONDS:
                log.warning("handing %d records to %s[%d] took %.1f s", len(records),
                            topic, partition, time.monotonic() - started)
        return deliveries

    async def _partition_count(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            log.info("asking for the partitions of %s", topic)
            count = self._partitions[topic] = await self.sink.partition_count(topic)
            log.info("%s has %d partitions", topic, count)
        return count

    def _watch(self, topic: str, partition: int, delivery: Awaitable[int]) -> Awaitable[int]:
        """The delivery, followed up (offsets reported, failures kept) even when no
        one awaits it."""
        async def follow() -> int:
            try:
                offset = await delivery
            except Exception as exc:
                log.error("writing a batch to %s[%d] failed: %r", topic, partition, exc)
                self._failures.append(exc)
                raise
            report = self.on_delivered.get(topic)
            if report is not None:
                report(TopicPartition(topic, partition), offset)
            return offset

        task = asyncio.ensure_future(follow())
        self._in_flight.add(task)
        task.add_done_callback(self._forget)
        return task

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
