"""The rows of C a worker owns, held and updated in child processes of their own
(the rows processes, each holding a share of the partitions), off the event loop.

Applying row updates was the largest share of the event loop (23% at half load,
py-spy), and at full speed the rows agent ran behind the events (7-10 s of
updates left at the last of 200k events). The loop now hands the row-update
messages over as they came (bytes), and the child decodes and applies them to
the rows it holds. What the loop gets back is small: how many updates were
applied, and the per-item stats of the rows whose count moved. At a commit the
child hands over a record per row changed since the last one, the whole row or
what changed in it (see :mod:`streams.runtime.row_records`), JSON ready for the
table and its changelog; for a refresh, the rows whose neighbour lists are due
(:mod:`.due_lists`: those changed since the last round and a rotation of the
others), pickled here so that the loop only passes bytes on to the model process,
which keeps no rows: this is the worker's one copy of them.

A partition's rows come from the ``cooccurrence`` table once, when the worker
first needs them after a rebalance (:meth:`HeldRows.hold`). The child holds the
only copy of changes not written yet: if it dies, the worker must stop, not
start another child (it resumes from the last commit, and reads the rows
again).

This module imports no Faust, so that the child starts in well under a second.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import orjson

from streams.runtime.children.due_lists import DueLists, rotation_size
from streams.runtime.row_records import (
    NEW,
    RowLayout,
    RowRecord,
    group_records,
    read_row,
    row_record,
)
from streams.runtime.state import CooccurrenceRow, RowBatch

#: The rows processes' niceness: applying row updates is the batches' own work
#: (niced, it fell behind whenever the loop and the broker wanted both cores).
ROWS_NICENESS = 0

#: A message of row updates as the loop hands it over: (partition, the token of
#: the partition's rows, the message's value).
RowMessage = tuple[int, int, bytes]


class RowsDue(NamedTuple):
    """A partition's rows whose neighbour lists are due (item id -> pairs,
    pickled), how many of its lists lag the counts once they are computed, and
    how many rows it holds."""

    rows: bytes
    lagging: int
    held: int


class RowsNotHeld(Exception):
    """A message or request names rows this holder does not hold (or not under
    that token): a holder that lost them, or rows re-read since."""


class HeldPartition:
    """One partition's rows: decoded when first met, with what changed since they
    were written and since they were sent for a refresh."""

    def __init__(self, token: int, encoded: Mapping[str, bytes]) -> None:
        self.token = token
        # as the table holds them, not met yet: bases and deltas
        self.encoded_bases, self.encoded_deltas = group_records(encoded)
        self.rows: dict[str, CooccurrenceRow] = {}
        #: how the table holds each row met, when not :data:`NEW` (wide rows only)
        self.layouts: dict[str, RowLayout] = {}
        self.unwritten: dict[str, None] = {}  # in order of first change
        self.counted: set[str] = set()  # count moved since the rows were taken
        # changed since the last refresh: all of them at first (the lists in the
        # table may be another worker's, or older than the rows read again)
        self.unsent: set[str] = set(self.encoded_bases).union(self.encoded_deltas)
        self.due = DueLists()

    def row(self, item_id: str) -> CooccurrenceRow:
        row = self.rows.get(item_id)
        if row is None:
            base = self.encoded_bases.pop(item_id, None)
            deltas = self.encoded_deltas.pop(item_id, None)
            if base is None and deltas is None:
                row = CooccurrenceRow()
            else:
                row, layout = read_row(base, deltas or ())
                if layout.seq:
                    # written whole next: with a local store (rocksdb) the table
                    # may be ahead of its changelog after a crash (written, not
                    # delivered), and a base sets the changelog right again
                    self.layouts[item_id] = RowLayout(layout.seq, 0, 0, 0)
            self.rows[item_id] = row
        return row

    def all_rows(self) -> dict[str, CooccurrenceRow]:
        for item_id in [*self.encoded_bases, *self.encoded_deltas]:
            self.row(item_id)
        return self.rows

    def record_of(self, item_id: str) -> RowRecord:
        """The record that writes a changed row (see
        :func:`streams.runtime.row_records.row_record`)."""
        record, layout = row_record(item_id, self.rows[item_id],
                                    self.layouts.get(item_id, NEW))
        if layout == NEW:
            self.layouts.pop(item_id, None)
        else:
            self.layouts[item_id] = layout
        return record


class HeldRows:
    """The rows of the partitions a worker owns (in the rows process).

    >>> holder = HeldRows()
    >>> holder.hold(1, token=7, encoded={"a": b'{"pairs":{"b":1.0},"count":1.0,'
    ...                                       b'"trend":[1.0,0.0],"applied":{}}'})
    >>> gain = ["a", ["c"], "clicks/0", 3, 0.0, []]
    >>> applied, skipped, stats = holder.apply([(1, 7, orjson.dumps({"gains": [gain]}))],
    ...                                        tau=86400.0, max_width=10)
    >>> applied, skipped, [item_id for item_id, _ in stats]
    (1, 0, ['a'])
    >>> rows, stats = holder.take_unwritten()
    >>> [(p, key, orjson.loads(value)["pairs"]) for p, key, value in rows], stats
    ([(1, 'a', {'b': 1.0, 'c': 1.0})], [('a', b'[2.0,2.0,0.0,0,0,0,0.0]')])
    >>> holder.take_unwritten()
    ([], [])
    >>> rows, lagging, held = holder.to_send(1, counts_version=1)
    >>> pickle.loads(rows), lagging, held
    ({'a': {'b': 1.0, 'c': 1.0}}, 0, 1)
    >>> [pickle.loads(holder.to_send(1, 1, everything)[0]) for everything in (False, True)]
    [{}, {'a': {'b': 1.0, 'c': 1.0}}]
    >>> holder.apply([(1, 6, b"{}")], tau=86400.0, max_width=10)
    Traceback (most recent call last):
    ...
    streams.runtime.children.held_rows.RowsNotHeld: partition 1 under token 6
    """

    def __init__(self) -> None:
        self.partitions: dict[int, HeldPartition] = {}

    def hold(self, partition: int, token: int, encoded: Mapping[str, bytes]) -> None:
        """Hold a partition's rows as the table holds them (JSON by table key: a
        row's base and deltas, see :mod:`streams.runtime.row_records`), under
        ``token`` from now on (what was held of it before is dropped)."""
        self.partitions[partition] = HeldPartition(token, encoded)

    def release(self) -> None:
        """Drop every row (after a rebalance: the worker reads them again)."""
        self.partitions.clear()

    def _held(self, partition: int, token: int) -> HeldPartition:
        held = self.partitions.get(partition)
        if held is None or held.token != token:
            raise RowsNotHeld(f"partition {partition} under token {token}")
        return held

    def apply(self, messages: Sequence[RowMessage], tau: float, max_width: int
              ) -> tuple[int, int, list[tuple[str, bytes]]]:
        """Apply messages of row updates in order: how many updates were applied
        and skipped (replays), and the stats of each row whose count moved (JSON
        of :meth:`CooccurrenceRow.stats`). Every message is checked first: none is
        applied unless all name rows held under their tokens."""
        held = [(self._held(partition, token), value) for partition, token, value in messages]
        applied = skipped = 0
        counted: dict[str, CooccurrenceRow] = {}
        for part, value in held:
            message = orjson.loads(value)
            rows = RowBatch(part.row, tau, max_width)
            rows.apply(message.get("gains", ()))
            # one update per row, as workers before RowGain sent them: still
            # applied, so that none left in the topic by an upgrade is lost
            rows.apply_updates(message.get("updates", ()))
            applied += rows.applied
            skipped += rows.skipped
            for item_id in rows.changed:
                part.unwritten[item_id] = None
            part.unsent.update(rows.changed)
            part.counted.update(rows.counted)
            for item_id in rows.counted:
                counted[item_id] = rows.changed[item_id]
        stats = [(item_id, orjson.dumps(row.stats())) for item_id, row in counted.items()]
        return applied, skipped, stats

    def take_unwritten(self) -> tuple[list[tuple[int, str, bytes]], list[tuple[str, bytes]]]:
        """The rows changed since they were last taken, as (partition, table key,
        table value: see :mod:`streams.runtime.row_records`), each partition's in
        order of change (they count as written from now on); and the stats of
        those whose count moved meanwhile.

        The stats went out with the batches that moved them, unless the worker
        stopped between a batch's update and its stats (a cancelled agent): a
        replay then skips the update, and without these the stats would stay
        behind the written row."""
        taken: list[tuple[int, str, bytes]] = []
        stats: list[tuple[str, bytes]] = []
        for partition, part in self.partitions.items():
            for item_id in part.unwritten:
                taken.append((partition, *part.record_of(item_id)))
            stats.extend((item_id, orjson.dumps(part.rows[item_id].stats()))
                         for item_id in part.counted)
            part.unwritten.clear()
            part.counted.clear()
        return taken, stats

    def to_send(self, partition: int, counts_version: int, everything: bool = False
                ) -> RowsDue:
        """The rows of a partition whose neighbour lists are due (item id -> pairs,
        pickled): those changed since the last send, then a rotation of the others
        computed before ``counts_version`` (see :mod:`.due_lists`); all of them
        with ``everything`` (the lists of the last send were lost)."""
        part = self.partitions.get(partition)
        if part is None:
            raise RowsNotHeld(f"partition {partition}")
        if everything:
            part.unsent.update(part.all_rows())
        # rows not met yet are changed, so due this round: all are met after it
        held = len(part.rows) + len(part.encoded_bases)
        due = part.due.take(part.unsent, counts_version, rotation_size(held))
        sent = {item_id: part.row(item_id).pairs for item_id in due}
        part.unsent = set()
        return RowsDue(pickle.dumps(sent, protocol=pickle.HIGHEST_PROTOCOL), part.due.lagging,
                       len(part.rows))


#: What the rows process holds (one holder per process).
_holder = HeldRows()


def hold_rows(partition: int, token: int, encoded: Mapping[str, bytes]) -> None:
    """:meth:`HeldRows.hold` in the rows process."""
    _holder.hold(partition, token, encoded)


def release_rows() -> None:
    """:meth:`HeldRows.release` in the rows process."""
    _holder.release()


def apply_row_messages(messages: Sequence[RowMessage], tau: float, max_width: int
                       ) -> tuple[int, int, list[tuple[str, bytes]]]:
    """:meth:`HeldRows.apply` in the rows process."""
    return _holder.apply(messages, tau, max_width)


def take_unwritten_rows() -> tuple[list[tuple[int, str, bytes]], list[tuple[str, bytes]]]:
    """:meth:`HeldRows.take_unwritten` in the rows process."""
    return _holder.take_unwritten()


def rows_to_send(partition: int, counts_version: int, everything: bool = False
                 ) -> RowsDue:
    """:meth:`HeldRows.to_send` in the rows process."""
    return _holder.to_send(partition, counts_version, everything)


def held_rows_summary() -> dict[int, Any]:
    """Per held partition: rows met, rows not met yet, and rows not written (for
    tests and diagnostics)."""
    return {partition: {"rows": len(part.rows),
                        "encoded": len(part.encoded_bases.keys() | part.encoded_deltas.keys()),
                        "unwritten": len(part.unwritten)}
            for partition, part in _holder.partitions.items()}
