"""Writing Faust table values the worker's way: under the event of the key's
partition, with the changelog record batched in the outbox.

A Faust table write is one producer send per key; the worker writes thousands
per commit, so each goes to the table's store directly and its changelog record
to the outbox (see :mod:`streams.runtime.outbox`), in the same JSON as Faust's
codec, so that Faust's recovery reads them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import faust
from faust.stores.base import SerializedStore
from faust.types import EventT, TableT
from faust.types.stores import StoreT

from streams.runtime.outbox import Outbox
from streams.runtime.state import table_json


@contextmanager
def acting_as(stream: faust.Stream[Any]) -> Iterator[Callable[[EventT[bytes]], None]]:
    """Read and write table keys as if processing given events; restore the stream.

    Inside ``stream.take_events`` the stream's current event is whichever message
    came last, but a table key belongs to the partition of the event that carries
    it: writes go to that partition's changelog, and the rocksdb store reads a key
    from that partition's database only (reading under another event's partition
    returns nothing, and the next write loses what was there). So each key is
    read and written under its own event. Faust's take buffer reads
    ``stream.current_event`` when it resumes after our batch, so the event we
    borrowed must be put back, or the buffer takes it again instead of the next
    message (a message dropped and another delivered twice).
    """
    borrowed: Any = stream  # the setter is private to faust.Stream
    previous = stream.current_event

    def act_as(event: EventT[bytes]) -> None:
        borrowed._set_current_event(event)

    try:
        yield act_as
    finally:
        borrowed._set_current_event(previous)


class TableWriter:
    """What ``table[key] = decoded`` does, with the changelog record in the outbox."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def write(self, table: TableT[Any, Any], key: str, value: bytes,
              decoded: Any = None) -> None:
        """``value`` is the record's value (JSON), ``decoded`` what a memory store
        keeps (None: ``value`` itself, for a table of raw values). The changelog
        record goes to the partition of the current event (see :func:`acting_as`),
        as Faust's own write does."""
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

    def report_delivered_to(self, table: TableT[Any, Any]) -> None:
        """What Faust's own changelog send does once a record is written: the
        rocksdb store keeps the changelog offset it holds (recovery resumes there)."""
        store = cast(StoreT[Any, Any], table.data)
        self.outbox.on_delivered[table.changelog_topic.get_topic_name()] = (
            store.set_persisted_offset)
