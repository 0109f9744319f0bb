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
latency run: 6.4 s in all, 2.6 s once kept as JSON).

The model process keeps a copy of the neighbour lists and item stats (it builds
the snapshot and refreshes from them): a table made with ``track_changes`` names
the keys whose value in :meth:`ReplicatedTable.view` may have moved since the last
:meth:`ReplicatedTable.take_changed`, so that the worker hands over what changed,
not every key at every refresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
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
        track_changes: bool = False,
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
        # keys whose merged value may have moved since take_changed (None: untracked),
        # and the partitions owned then (a rebalance moves the merged value of keys
        # written here)
        self._changed: dict[str, None] | None = {} if track_changes else None
        self._owned_when_taken: frozenset[int] = frozenset()

    def set(self, key: str, value: Any) -> None:
        """Write a key: visible here at once, and to every worker through the topic."""
        self._write(key, orjson.dumps(value))

    def set_if_changed(self, key: str, value: Any) -> bool:
        """:meth:`set`, unless ``value`` is this worker's last write of ``key``;
        whether it was written."""
        return self.set_encoded_if_changed(key, orjson.dumps(value))

    def set_encoded_if_changed(self, key: str, encoded: bytes, track: bool = True) -> bool:
        """:meth:`set_if_changed` with the value encoded already (JSON); ``track``
        False: the holder of the copy has the value already (not a change to take)."""
        if self._own.get(key) == encoded:
            return False
        self._write(key, encoded, track)
        return True

    def _write(self, key: str, encoded: bytes, track: bool = True) -> None:
        self._own[key] = self._read[key] = encoded
        if track and self._changed is not None:
            self._changed[key] = None
        self._send(key.encode(), encoded)

    def apply(self, key: bytes, value: bytes | None) -> None:
        """Fold in one record read from the topic (None: the key was deleted)."""
        self.apply_many(((key, value),))

    def apply_many(self, records: Iterable[tuple[bytes, bytes | None]]) -> None:
        """Fold in records read from the topic, in order (see :meth:`apply`)."""
        changed, owned = self._changed, None
        for key, value in records:
            name = key.decode()
            own = self._own.get(name)
            if value is None:
                self._read.pop(name, None)
                self.others_writes += 1
            elif value == own:  # our last write, read back: kept once in memory
                self._read[name] = own
                if changed is None:
                    continue
                if owned is None:
                    owned = self._owned()
                if self._partition_of(name) in owned:
                    continue  # the merged value is that write already
            else:
                self._read[name] = value
                self.others_writes += 1
            if changed is not None:
                changed[name] = None

    def take_changed(self) -> dict[str, bytes | None]:
        """The merged value (as :meth:`view_encoded`, None: gone) of every key that
        may have changed since the last call: written, read, or its partition
        gained or lost since (O(changed); O(own writes) after a rebalance)."""
        if self._changed is None:
            raise RuntimeError(f"table {self.name} does not track changes")
        owned = frozenset(self._owned())
        moved = owned.symmetric_difference(self._owned_when_taken)
        if moved:
            partition_of = self._partition_of
            self._changed.update((k, None) for k in self._own if partition_of(k) in moved)
        self._owned_when_taken = owned
        keys, self._changed = self._changed, {}
        own, read, partition_of = self._own, self._read, self._partition_of
        taken: dict[str, bytes | None] = {}
        for key in keys:
            value = own.get(key)
            taken[key] = value if value is not None and partition_of(key) in owned \
                else read.get(key)
        return taken

    def take_all(self) -> dict[str, bytes]:
        """:meth:`view_encoded`, and nothing changed since (for a new copy: O(all))."""
        if self._changed is not None:
            self._changed.clear()
        self._owned_when_taken = frozenset(self._owned())
        return self.view_encoded()

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
                    self.tables[tp.topic].apply_many(
                        (record.key, record.value) for record in records
                        if record.key is not None)
                    self.records += len(records)
                    if pending and records and records[-1].offset + 1 >= ends[tp]:
                        pending.discard(tp)
                        if not pending:
                            self.caught_up.set()
        finally:
            await consumer.stop()
