"""Small state every worker reads in full: item statistics, neighbour lists, churn.

Like Kafka Streams' global tables: the one worker that owns a key writes it, as a
keyed record, to a compacted topic; every worker runs a reader outside any consumer
group that reads all partitions of those topics from the beginning and keeps the
latest value of each key in memory.

Why not Faust's ``GlobalTable``: in faust-streaming 0.15.3 it applies the records
that other workers write only ``recovery_buffer_size`` at a time (1,000 by default),
so their writes stayed invisible; with ``recovery_buffer_size=1`` Faust's recovery
resumes the stream flow before it seeks the stream partitions, then clears the
agents' queues while the fetcher goes on past them. Seen here: 319 input messages
dropped in one rebalance, their offsets never processed. Without a global table
that path is never taken (no message was lost in the same test since).

A worker also reads back its own writes, later than it made them, so an older one
read back could hide a newer one for a while; for the keys it owns, its own last
writes are laid over what the reader has (:meth:`ReplicatedTable.view`).

Values are kept as the JSON they travel as, decoded when read. Decoded, the
neighbour lists alone were half a million small lists, replaced every refresh
round, which the garbage collector traversed again and again (GC pauses in one
latency run: 6.4 s in all, 2.6 s once kept as JSON); and the snapshot is built
from the JSON in the model process (:meth:`ReplicatedTable.view_encoded`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import orjson

log = logging.getLogger("recostream")

#: Sends one record (key, value or None for a tombstone) to a table's topic.
Send = Callable[[bytes, bytes | None], None]


class ReplicatedTable:
    """The latest value per key of one compacted topic, plus this worker's writes.

    Keys are spread over partitions (``partition_of``); this worker owns the keys of
    the partitions ``owned()`` returns.

    >>> sent = []
    >>> table = ReplicatedTable("stats", lambda k, v: sent.append((k, v)),
    ...                         partition_of=lambda key: ord(key) % 2, owned=lambda: {1})
    >>> table.set("a", [1.0])
    >>> table.apply(b"a", b"[0.5]")  # an older write of ours, read back late
    >>> table.apply(b"b", b"[2.0]")  # another worker's key
    >>> table.view()
    {'a': [1.0], 'b': [2.0]}
    >>> table.set_if_changed("a", [1.0])  # the same again: not sent
    False
    >>> sent
    [(b'a', b'[1.0]')]
    >>> table.apply(b"a", b"[1.0]")  # our last write, read back: not another's
    >>> table.others_writes
    2
    """

    def __init__(
        self,
        name: str,
        send: Send,
        partition_of: Callable[[str], int],
        owned: Callable[[], Collection[int]],
    ) -> None:
        self.name = name
        self._send = send
        self._partition_of = partition_of
        self._owned = owned
        # JSON values: what the reader has seen, and local writes; this worker's
        # last write per key
        self._read: dict[str, bytes] = {}
        self._own: dict[str, bytes] = {}
        #: records read that are not this worker's last write of their key: what
        #: other workers wrote (and, rarely, an older write of ours read back late)
        self.others_writes = 0

    def set(self, key: str, value: Any) -> None:
        """Write a key: visible here at once, and to every worker through the topic."""
        self._write(key, orjson.dumps(value))

    def set_if_changed(self, key: str, value: Any) -> bool:
        """:meth:`set`, unless ``value`` is this worker's last write of ``key``;
        whether it was written."""
        return self.set_encoded_if_changed(key, orjson.dumps(value))

    def set_encoded_if_changed(self, key: str, encoded: bytes) -> bool:
        """:meth:`set_if_changed` with the value encoded already (JSON)."""
        if self._own.get(key) == encoded:
            return False
        self._write(key, encoded)
        return True

    def _write(self, key: str, encoded: bytes) -> None:
        self._own[key] = self._read[key] = encoded
        self._send(key.encode(), encoded)

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Fold in one record read from the topic (None: the key was deleted)."""
        name = key.decode()
        if value is None:
            self._read.pop(name, None)
            self.others_writes += 1
        else:
            self._read[name] = value
            if value != self._own.get(name):
                self.others_writes += 1

    def get(self, key: str) -> Any:
        encoded = self._own.get(key)
        if encoded is None or self._partition_of(key) not in self._owned():
            encoded = self._read.get(key)
        return None if encoded is None else orjson.loads(encoded)

    def view(self) -> dict[str, Any]:
        """All keys, with this worker's own writes over what was read for keys it owns."""
        return {key: orjson.loads(value) for key, value in self.view_encoded().items()}

    def view_encoded(self) -> dict[str, bytes]:
        """:meth:`view` with the values as JSON."""
        merged = dict(self._read)
        owned, partition_of = self._owned(), self._partition_of
        merged.update((k, v) for k, v in self._own.items() if partition_of(k) in owned)
        return merged

    def __iter__(self) -> Iterator[str]:
        return iter(self.view())

    def __len__(self) -> int:
        return len(self.view())


class ReplicaReader:
    """Reads every partition of the tables' topics, outside any consumer group."""

    def __init__(
        self,
        tables: Mapping[str, ReplicatedTable],
        partitions: int,
        client_options: Mapping[str, Any],
    ) -> None:
        self.tables = dict(tables)  # real topic name -> table
        self.partitions = partitions
        self.client_options = dict(client_options)
        self.records = 0
        self.caught_up = asyncio.Event()

    async def run(self, declare: Sequence[Callable[[], Any]] = ()) -> None:
        """Read until cancelled. ``declare``: coroutine functions that create the topics."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        for create in declare:
            await create()
        consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
            **self.client_options,
        )
        await consumer.start()
        try:
            assigned = [TopicPartition(topic, p) for topic in self.tables
                        for p in range(self.partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            pending = {tp for tp, end in ends.items() if end > 0}
            if not pending:
                self.caught_up.set()
            while True:
                batches = await consumer.getmany(timeout_ms=500, max_records=10_000)
                for tp, records in batches.items():
                    table = self.tables[tp.topic]
                    for record in records:
                        if record.key is not None:
                            table.apply(record.key, record.value)
                    self.records += len(records)
                    if pending and records and records[-1].offset + 1 >= ends[tp]:
                        pending.discard(tp)
                        if not pending:
                            self.caught_up.set()
        finally:
            await consumer.stop()
