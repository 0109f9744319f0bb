"""The model process's copy of the replicated neighbour lists and item stats, and
the ranking snapshot it builds from them into a file.

The event loop once copied every list and stat at each rebuild, pickled them to
the model process, unpickled the snapshot it got back and pickled it again to the
ranking child; and decoded every item's stats at each partition's refresh (for
the counts). On a shop's catalogue that was seconds of the loop per round, and
the snapshot lived three times over. Now the loop hands over only the keys that
changed (:meth:`streams.runtime.replicated.ReplicatedTable.take_changed`), the
lists computed here are recorded here, and the snapshot goes to a file the
ranking child loads: the loop never holds it. The snapshot itself is kept up to
date with the keys changed (a rebuild from every key cost seconds a round).

This module imports no Faust, so that the child starts in well under a second.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import orjson

from core.snapshot import Snapshot
from core.snapshot_builder import SnapshotBuilder
from streams.runtime.state import ITEM_STATS


class ReplicaNotHeld(Exception):
    """The model process holds no copy under that token (a new process): the worker
    hands over every key again."""


class ModelReplica:
    """Neighbour lists (JSON) as the worker's replicated tables hold them, plus the
    lists computed here; item counts; and the ranking snapshot they make, kept up
    to date key by key (:class:`core.snapshot_builder.SnapshotBuilder`).

    >>> replica = ModelReplica(token=3)
    >>> replica.update({"a": b'[["b",0.5]]'}, {"a": b"[2.0,1.0,0.0]", "b": b"[1.0,0.0,0.0]"})
    >>> replica.counts
    {'a': 2.0, 'b': 1.0}
    >>> replica.update({"a": None}, {"b": None}); replica.lists, replica.counts
    ({}, {'a': 2.0})
    >>> replica.record_own({"a": b"[]"}, {"a": []}), replica.record_own({"a": b"[]"}, {"a": []})
    ({'a': b'[]'}, {})
    """

    def __init__(self, token: int) -> None:
        self.token = token
        self.lists: dict[str, bytes] = {}
        #: the last list computed here per item: a list equal to it is not new
        self.own: dict[str, bytes] = {}
        #: users per item (stats[0]): what cosine and jaccard divide by
        self.counts: dict[str, float] = {}
        self.builder = SnapshotBuilder()

    def update(self, lists: Mapping[str, bytes | None],
               stats: Mapping[str, bytes | None]) -> None:
        """Keys changed in the worker's tables: their values now (None: gone)."""
        # the lists computed here come back through the table: the builder has them
        new = {item_id: value for item_id, value in lists.items()
               if value is None or self.lists.get(item_id) != value}
        for item_id, value in new.items():
            if value is None:
                self.lists.pop(item_id, None)
            else:  # kept once in memory when it is the list computed here
                own = self.own.get(item_id)
                self.lists[item_id] = own if own == value else value
        self.builder.set_neighbours({item_id: () if value is None else orjson.loads(value)
                                     for item_id, value in new.items()})
        figures: dict[str, list[float] | None] = {}
        for item_id, value in stats.items():
            decoded = None if value is None else orjson.loads(value)
            if decoded:
                self.counts[item_id] = float(decoded[0])
                figures[item_id] = figures_of(decoded)
            else:
                self.counts.pop(item_id, None)
                figures[item_id] = None
        self.builder.set_figures(figures)

    def record_own(self, lists: Mapping[str, bytes],
                   pairs: Mapping[str, Sequence[tuple[str, float]]]) -> dict[str, bytes]:
        """Lists computed here (encoded, and the ``pairs`` they encode), which the
        worker writes to its table: those that differ from the last computed for
        their item (the others it would not write again)."""
        new = {item_id: value for item_id, value in lists.items()
               if self.own.get(item_id) != value}
        self.own.update(new)
        self.lists.update(new)
        # the pairs as computed: decoding what was just encoded took a tenth of
        # the process at half load on a shop's scale
        self.builder.set_neighbours({item_id: pairs[item_id] for item_id in new})
        return new

    def snapshot(self, version: int, k: int, tau: float) -> Snapshot:
        """The ranking snapshot of the lists and stats held."""
        return self.builder.snapshot(version, k, tau)


def figures_of(stats: Sequence[float]) -> list[float]:
    """An item's :data:`core.snapshot_builder.FIGURES` from its stats
    (:data:`streams.runtime.state.ITEM_STATS`, which they are); stats written
    before purchases were kept have none of their purchase figures."""
    return list(stats) if len(stats) == len(ITEM_STATS) else [*stats[:3], 0, 0, 0, 0.0]


def snapshot_of(version: int, encoded_lists: Mapping[str, bytes],
                stats: Mapping[str, Sequence[float]], k: int, tau: float) -> Snapshot:
    """The ranking snapshot from neighbour lists ([item id, score] pairs, JSON) and
    item stats (:data:`streams.runtime.state.ITEM_STATS`); empty ones are left out.

    >>> snapshot = snapshot_of(1, {"a": b'[["b",0.5]]'}, {"a": [2.0, 1.0, 0.0, 2, 1, 0, 5.0]},
    ...                        10, 86400.0)
    >>> snapshot.model.items.ids, snapshot.facts.counts.tolist(), snapshot.facts.first_seen.tolist()
    (['a', 'b'], [2.0, 0.0], [5.0, 0.0])
    """
    builder = SnapshotBuilder()
    builder.set_neighbours({item_id: pairs for item_id, value in encoded_lists.items()
                            if (pairs := orjson.loads(value))})
    builder.set_figures({item_id: figures_of(values) for item_id, values in stats.items()
                         if values})
    return builder.snapshot(version, k, tau)


#: The copy this process holds (None: none yet).
_replica: ModelReplica | None = None


def held_replica(token: int) -> ModelReplica:
    """The copy held under ``token``; :class:`ReplicaNotHeld` otherwise."""
    if _replica is None or _replica.token != token:
        raise ReplicaNotHeld(f"no replica under token {token}")
    return _replica


def update_replica(token: int, full: bool, lists: Mapping[str, bytes | None],
                   stats: Mapping[str, bytes | None]) -> None:
    """Keys changed in the worker's tables (``full``: the first part of every key,
    under a new ``token``; what was held before is dropped)."""
    global _replica
    if full:
        _replica = ModelReplica(token)
    held_replica(token).update(lists, stats)


def build_snapshot(version: int, k: int, tau: float, path: str, token: int) -> int:
    """The ranking snapshot of the copy held, pickled to ``path`` (written whole,
    then renamed: a reader never sees half of it); how many items it knows."""
    snapshot = held_replica(token).snapshot(version, k, tau)
    part = Path(f"{path}.part")
    with part.open("wb") as file:
        pickle.dump(snapshot, file, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(part, path)
    return snapshot.model.n_items
