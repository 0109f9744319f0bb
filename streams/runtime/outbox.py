"""Records to Kafka in one producer batch per topic partition, not one send each.

A Faust ``topic.send`` (or a table write, which is a changelog send) costs the
worker far more than the record itself: futures, callbacks, a task per buffered
write, a producer wake-up. Handed over as whole batches, the same records cost the
worker about 40% less CPU (bench/README.md).

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
from typing import Any, NamedTuple, Protocol

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import RecordMetadata, TopicPartition

log = logging.getLogger("recostream.outbox")

#: Handing one partition's records to the producer longer than this is logged.
SLOW_SEND_SECONDS = 5.0
#: Bytes a record takes in a batch beyond its key, value and headers (varints,
#: attributes, deltas), and the batch's own header: what the broker counts.
RECORD_OVERHEAD_BYTES = 96
#: Broker errors about a record's own content, by Kafka error code: corrupt (2),
#: too large (10), record list too large (18), invalid timestamp (32), unsupported
#: for the message format (43), invalid record (87). Retrying cannot help.
CONTENT_ERRORS = frozenset({2, 10, 18, 32, 43, 87})


class Record(NamedTuple):
    """One record: either key or value may be None (a None value deletes the key)."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def size(self) -> int:
        """Bytes the broker counts for this record, about.

        >>> Record(b"k", b"value", (("h", b"v"),)).size()
        104
        """
        return (len(self.key or b"") + len(self.value or b"") + RECORD_OVERHEAD_BYTES
                + sum(len(name) + len(value) for name, value in self.headers))


#: Called with the partition and the offset of the last record of a delivered batch.
OnDelivered = Callable[[TopicPartition, int], None]
#: Told of a record that cannot be written (topic, the record, why): it becomes a
#: dead letter, and the worker goes on.
OnRejected = Callable[[str, Record, str], None]


def content_error(exc: BaseException) -> bool:
    """Whether a failed delivery was refused for the record's own content.

    >>> from aiokafka.errors import MessageSizeTooLargeError, RequestTimedOutError
    >>> content_error(MessageSizeTooLargeError()), content_error(RequestTimedOutError())
    (True, False)
    """
    return isinstance(exc, KafkaError) and getattr(exc, "errno", None) in CONTENT_ERRORS


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
    """:class:`BatchSink` on an aiokafka producer (the app's, started by Faust).

    A batch the broker refuses for its content (:data:`CONTENT_ERRORS`: a topic
    whose ``max.message.bytes`` is below the worker's record limit, say) is sent
    again record by record, and each record refused again goes to ``on_rejected``
    instead of stopping the worker. Those records may then land after records
    handed over later; nothing else is reordered.
    """

    def __init__(self, producer: Callable[[], Any],
                 on_rejected: OnRejected | None = None) -> None:
        self._producer = producer  # called each time: Faust creates it on start
        self.on_rejected = on_rejected

    async def partition_count(self, topic: str) -> int:
        return len(await self._producer().partitions_for(topic))

    async def send(self, topic: str, partition: int,
                   records: Sequence[Record]) -> list[Awaitable[int]]:
        producer = self._producer()
        delivered: list[Awaitable[int]] = []
        batch, first = producer.create_batch(), 0
        for n, (key, value, headers) in enumerate(records):
            if batch.append(key=key, value=value, timestamp=None,
                            headers=list(headers)) is None:  # full
                delivered.append(await self._send(producer, batch, topic, partition,
                                                  records[first:n]))
                batch, first = producer.create_batch(), n
                batch.append(key=key, value=value, timestamp=None, headers=list(headers))
        delivered.append(await self._send(producer, batch, topic, partition,
                                          records[first:]))
        return delivered

    async def _send(self, producer: Any, batch: Any, topic: str, partition: int,
                    records: Sequence[Record]) -> Awaitable[int]:
        # Closed: no producer.send() may add to it, so its records are ours and its
        # last offset is the base offset plus our count.
        batch.close()
        future: asyncio.Future[RecordMetadata] = await producer.send_batch(
            batch, topic, partition=partition)
        return self._last_offset(future, topic, partition, records)

    async def _last_offset(self, future: Awaitable[RecordMetadata], topic: str,
                           partition: int, records: Sequence[Record]) -> int:
        """The offset of the last record written (-1: none was)."""
        try:
            metadata = await future
        except Exception as exc:
            if self.on_rejected is None or not content_error(exc):
                raise
            if len(records) == 1:
                self.on_rejected(topic, records[0], f"the broker refused it: {exc!r}")
                return -1
            log.warning("%s[%d] refused a batch of %d records (%r): sending them one by one",
                        topic, partition, len(records), exc)
            last = -1
            for record in records:
                [delivery] = await self.send(topic, partition, [record])
                last = max(last, await delivery)
            return last
        return int(metadata.offset) + len(records) - 1


class Outbox:
    """Records gathered per topic partition until :meth:`send` hands them over.

    ``on_delivered[topic]`` is told the last offset of each batch written to that
    topic (the rocksdb store keeps it as the changelog position it has).
    A failed batch is remembered and raised by :meth:`check` (the worker then
    stops before committing offsets whose effects were not written).
    """

    def __init__(self, sink: BatchSink, *, max_record_bytes: int | None = None,
                 on_rejected: OnRejected | None = None) -> None:
        self.sink = sink
        #: records larger than this go to ``on_rejected`` instead (see :meth:`add`)
        self.max_record_bytes = max_record_bytes
        self.on_rejected = on_rejected
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
        self._rejected = False  # records were rejected since the last delivered()
        self._in_flight: set[asyncio.Task[None]] = set()

    def add(self, topic: str, value: bytes | None, *, key: bytes | None = None,
            partition: int | None = None,
            headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        """Queue one record for ``topic``: to ``partition``, else by ``key``, else
        to the partitions in turn.

        A record over ``max_record_bytes`` is never handed over (the broker would
        refuse it, and the worker stop): ``on_rejected`` is told instead."""
        record = Record(key, value, headers)
        if self.max_record_bytes is not None and self.on_rejected is not None:
            size = record.size()
            if size > self.max_record_bytes:
                self.reject(topic, record,
                            f"{size} bytes, over the record limit {self.max_record_bytes}")
                return
        self._records[(topic, partition)].append(record)

    def reject(self, topic: str, record: Record, why: str) -> None:
        """A record that cannot be written: ``on_rejected`` replaces it (with a
        dead letter, queued here), which goes with the next send, or at the
        latest with :meth:`delivered`."""
        if self.on_rejected is None:
            raise DeliveryFailed(f"a record for {topic} cannot be written: {why}")
        self._rejected = True
        self.on_rejected(topic, record, why)

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
                if report is not None and offset >= 0:  # -1: every record refused
                    report(TopicPartition(topic, partition), offset)
        except Exception as exc:
            log.error("writing a batch to %s[%d] failed: %r", topic, partition, exc)
            self._failures.append(exc)
            raise

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here; kept in _failures

    def handed(self) -> bool:
        """Whether every batch lined up so far is with the sink (its delivery may
        still be under way)."""
        return all(handed.done() for handed in self._handed.values())

    async def delivered(self) -> None:
        """Wait until every batch handed over so far is written (or failed), and
        the records the broker refused meanwhile are replaced (their dead letters
        handed over and written too)."""
        while True:
            if self._in_flight:
                await asyncio.wait(list(self._in_flight))
            if not self._rejected:
                return
            self._rejected = False  # their dead letters go now
            await self.send()

    def check(self) -> None:
        """Raise :class:`DeliveryFailed` if a batch handed over has failed."""
        if self._failures:
            first, count = self._failures[0], len(self._failures)
            self._failures.clear()
            raise DeliveryFailed(f"{count} batch(es) not written, first: {first!r}")
