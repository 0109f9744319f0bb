"""How a row of C is stored in the ``cooccurrence`` table: a base and deltas, so
that a commit writes the pairs that changed, not whole rows.

A popular item's row holds thousands of pairs. Written whole whenever one of
them changed, a commit's bytes followed the widths of the rows it touched, not
what changed in them. Now a changed row writes one record per commit, either:

- its *base*, under the item id: the whole row (as every earlier version wrote
  it) plus ``seq``, the number of this write of the row; or
- a *delta*, under ``<item id>\\x1f<slot>`` (an item id never holds a control
  character: the input refuses them), slot = ``seq`` modulo :data:`MAX_DELTAS`:
  everything of the row but its pairs (:meth:`CooccurrenceRow.head_json`: count,
  trend, applied offsets, purchase figures), the new counts of the pairs
  changed since the row's last write (``"set"``) and those pruned away
  (``"drop"``).

A row reads as its base with the deltas of a higher ``seq`` applied in order.
A delta is written while the row is wider than :data:`WHOLE_ROW_PAIRS`, fewer
than :data:`MAX_DELTAS` deltas follow the base, and they hold fewer bytes than
the base; otherwise the base is written again. So a commit's bytes follow what
changed (plus, amortised, at most as much again for the bases), and the table
holds at most twice a row.

Each record holds a whole state of the row (with the offsets it applied), and a
row's records all go to its partition's changelog, in order: whatever prefix of
a commit a crash leaves, the row reads back as it was after its last record in
it, never a mix. Deltas older than the base, or from before a base the reader
never saw, are never applied: a row read from a record without ``seq`` (written
by an earlier version) is written as a base next, with a ``seq`` above any delta
the table still holds of it.

This module imports no Faust: the rows processes use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

from streams.runtime.state import CooccurrenceRow, table_json

#: Deltas that may follow a base: what a reader applies at most per row, and how
#: many commits a row changed in every commit goes between two bases.
MAX_DELTAS = 32
#: Rows this narrow are always written whole (a base): a delta costs the row's
#: count, trend and offsets besides its pairs, and saves little on a narrow row.
WHOLE_ROW_PAIRS = 64
#: Between the item id and the slot in a delta's key.
DELTA_SEPARATOR = "\x1f"

#: A record to write: table key and value.
RowRecord = tuple[str, bytes]


def delta_key(item_id: str, seq: int) -> str:
    """The table key of the delta of ``item_id``'s row numbered ``seq``.

    >>> split_key(delta_key("a", 33)), split_key("a")
    (('a', 1), ('a', None))
    """
    return f"{item_id}{DELTA_SEPARATOR}{seq % MAX_DELTAS}"


def split_key(key: str) -> tuple[str, int | None]:
    """The item id of a table key, and its delta slot (None: a base)."""
    item_id, separator, slot = key.rpartition(DELTA_SEPARATOR)
    return (item_id, int(slot)) if separator else (key, None)


class RowLayout(NamedTuple):
    """What the table holds of a row, as its writer needs to know.

    ``seq``: the highest number of a write of the row in the table;
    ``base_bytes``: the size of its base (0: the next write is a base);
    ``deltas`` and ``delta_bytes``: how many deltas follow the base, and their size.
    """

    seq: int
    base_bytes: int
    deltas: int
    delta_bytes: int


#: A row not written yet, or whose next write is a base.
NEW = RowLayout(0, 0, 0, 0)


def read_row(base: bytes | None, deltas: Iterable[bytes]) -> tuple[CooccurrenceRow, RowLayout]:
    """A row from its table records: the base and the deltas (in any order)."""
    value = None if base is None else orjson.loads(base)
    row = CooccurrenceRow.from_json(value)
    decoded = [(orjson.loads(delta), len(delta)) for delta in deltas]
    highest = max((int(delta["seq"]) for delta, _ in decoded), default=0)
    if value is None or "seq" not in value:  # an earlier version's row: a base next
        return row, RowLayout(highest, 0, 0, 0) if highest else NEW
    seq = int(value["seq"])
    live = sorted(((delta, size) for delta, size in decoded if delta["seq"] > seq),
                  key=lambda live_delta: int(live_delta[0]["seq"]))
    pairs = row.pairs
    for delta, _ in live:
        pairs.update((str(k), float(v)) for k, v in delta["set"].items())
        for dropped in delta["drop"]:
            pairs.pop(dropped, None)
        row.take_head(delta)
    base_bytes = len(base) if base is not None and len(pairs) > WHOLE_ROW_PAIRS else 0
    layout = RowLayout(max(seq, highest), base_bytes, len(live), sum(size for _, size in live))
    return row, NEW if layout == (0, 0, 0, 0) else layout


def row_record(item_id: str, row: CooccurrenceRow, layout: RowLayout
               ) -> tuple[RowRecord, RowLayout]:
    """The record that brings the table from ``layout`` to ``row`` (a delta, or
    the base), and the layout after it. The row's changed pairs are forgotten:
    they count as written.

    >>> row = CooccurrenceRow(pairs={f"i{n}": 1.0 for n in range(100)}, count=1.0)
    >>> (key, value), layout = row_record("a", row, NEW)
    >>> key, len(value), layout
    ('a', 1093, RowLayout(seq=1, base_bytes=1093, deltas=0, delta_bytes=0))
    >>> row.pairs["i7"] += 1.0; row.changed_pairs().add("i7")
    >>> (key, value), layout = row_record("a", row, layout)
    >>> key, orjson.loads(value)["set"], layout
    ('a\\x1f2', {'i7': 2.0}, RowLayout(seq=2, base_bytes=1093, deltas=1, delta_bytes=120))
    """
    changed = row.changed or ()
    row.changed = None
    pairs = row.pairs
    seq = layout.seq + 1
    # a delta is encoded only when it may fit: its pairs at the base's bytes per pair
    room = layout.base_bytes - layout.delta_bytes
    if (layout.base_bytes and len(pairs) > WHOLE_ROW_PAIRS and layout.deltas < MAX_DELTAS
            and len(changed) * layout.base_bytes < room * len(pairs)):
        delta = table_json({
            **row.head_json(), "seq": seq,
            "set": {other: pairs[other] for other in changed if other in pairs},
            "drop": [other for other in changed if other not in pairs]})
        if len(delta) <= room:
            return (delta_key(item_id, seq), delta), RowLayout(
                seq, layout.base_bytes, layout.deltas + 1, layout.delta_bytes + len(delta))
    if len(pairs) <= WHOLE_ROW_PAIRS and not layout.seq:
        # a narrow row that never had a delta: no number needed, none kept
        return (item_id, table_json({**row.to_json(), "seq": 0})), NEW
    base = table_json({**row.to_json(), "seq": seq})
    return (item_id, base), RowLayout(
        seq, len(base) if len(pairs) > WHOLE_ROW_PAIRS else 0, 0, 0)


def group_records(encoded: Mapping[str, bytes]) -> tuple[dict[str, bytes],
                                                         dict[str, list[bytes]]]:
    """Table records by key as the bases by item id and the deltas by item id.

    >>> group_records({"a": b"{}", delta_key("a", 3): b"{}"})
    ({'a': b'{}'}, {'a': [b'{}']})
    """
    bases: dict[str, bytes] = {}
    deltas: dict[str, list[bytes]] = {}
    for key, value in encoded.items():
        item_id, slot = split_key(key)
        if slot is None:
            bases[item_id] = value
        else:
            deltas.setdefault(item_id, []).append(value)
    return bases, deltas


def rows_of_table(items: Iterable[tuple[str, Any]]) -> dict[str, CooccurrenceRow]:
    """Every row a table holds (its key, value pairs; None values left out)."""
    bases, deltas = group_records({key: value for key, value in items if value is not None})
    return {item_id: read_row(bases.get(item_id), deltas.get(item_id, ()))[0]
            for item_id in bases.keys() | deltas.keys()}
