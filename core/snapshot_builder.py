"""A ranking snapshot kept up to date item by item.

Rebuilding a snapshot from every item's neighbour list and figures cost seconds
a round on a shop's catalogue (200,000 lists of 20 neighbours: 8 s), whatever
had changed. Here each change is written into arrays as it comes (O(changed)),
and a snapshot copies them (O(items), in numpy).

Positions follow the order items appeared, not their ids: nothing is ranked by
position (ties go by id). An item whose list and figures are gone, and which no
list names, is dropped at the next snapshot (the others' positions close up).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from core.cooccurrence import ItemIndex
from core.ranking import NeighborModel
from core.repurchase import ItemRepurchases, rates_and_gaps
from core.similarity import ItemNeighbors
from core.snapshot import ItemFacts, Snapshot
from core.topk import offsets_within_rows
from core.trending import trending_scale

#: An item's figures, one column each: users who took it, its trending counter
#: (value, time), its purchase figures and when it was first seen.
FIGURES = ("count", "trend_value", "trend_time", "buyers", "repeats", "log_gaps",
           "first_seen")


class SnapshotBuilder:
    """Neighbour lists and item figures by position, changed item by item.

    >>> builder = SnapshotBuilder()
    >>> builder.set_neighbours({"a": [("b", 0.5), ("c", 0.25)]})
    >>> builder.set_figures({"c": [2.0, 1.0, 0.0, 0, 0, 0, 0.0]})
    >>> snapshot = builder.snapshot(version=1, k=1, tau=86_400.0)
    >>> snapshot.model.items.ids, snapshot.model.neighbors.indices.tolist()
    (['a', 'b', 'c'], [[1], [-1], [-1]])
    >>> snapshot.model.trending.tolist(), snapshot.facts.counts.tolist()
    ([0.0, 0.0, 1.0], [0.0, 0.0, 2.0])
    """

    def __init__(self) -> None:
        self.items = ItemIndex()
        self._indices = np.full((0, 0), -1, dtype=np.int32)
        self._scores = np.zeros((0, 0), dtype=np.float32)
        self._figures = np.zeros((0, len(FIGURES)))
        self._has_figures = np.zeros(0, dtype=np.bool_)

    def __len__(self) -> int:
        return len(self.items)

    def set_neighbours(self, lists: Mapping[str, Sequence[tuple[str, float]]]) -> None:
        """Items' neighbour lists now, best first (empty: none); read once each,
        in C (map, chain, fromiter), as a hand-over may hold every item."""
        if not lists:
            return
        pairs = list(itertools.chain.from_iterable(lists.values()))
        names = list(map(operator.itemgetter(0), pairs))
        position = self._add(itertools.chain(lists, names)).__getitem__
        rows = np.fromiter(map(position, lists), np.int64, len(lists))
        named = np.fromiter(map(position, names), np.int32, len(names))
        widths = np.fromiter(map(len, lists.values()), np.int64, len(lists))
        if int(widths.max()) > self._indices.shape[1]:
            self._widen(int(widths.max()))
        self._indices[rows] = -1
        self._scores[rows] = 0.0
        at = np.repeat(rows, widths), offsets_within_rows(widths)
        self._indices[at] = named
        self._scores[at] = np.fromiter(map(operator.itemgetter(1), pairs), np.float32,
                                       len(pairs))

    def set_figures(self, figures: Mapping[str, Sequence[float] | None]) -> None:
        """Items' :data:`FIGURES` now, in that order (None: they have none any more)."""
        held = {item_id: values for item_id, values in figures.items() if values is not None}
        if held:
            rows = np.fromiter(map(self._add(held).__getitem__, held), np.int64, len(held))
            self._figures[rows] = np.asarray(list(held.values()), dtype=np.float64).reshape(
                len(held), len(FIGURES))
            self._has_figures[rows] = True
        gone = [p for item_id, values in figures.items()
                if values is None and (p := self.items.positions.get(item_id)) is not None]
        self._figures[gone] = 0.0
        self._has_figures[gone] = False

    def snapshot(self, version: int, k: int, tau: float) -> Snapshot:
        """The snapshot of everything set so far: ``k`` neighbours an item, the
        trending prior scaled over the items with figures (``tau``: its decay)."""
        self._forget_dead()
        n = len(self.items)
        width = min(k, self._indices.shape[1])
        indices = np.full((n, k), -1, dtype=np.int32)
        scores = np.zeros((n, k), dtype=np.float32)
        indices[:, :width] = self._indices[:n, :width]
        scores[:, :width] = self._scores[:n, :width]
        figures = self._figures[:n]
        trending = np.zeros(n)
        held = np.flatnonzero(self._has_figures[:n])
        trending[held] = trending_scale(figures[held, 1], figures[held, 2], tau)
        buyers, repeats = figures[:, 3], figures[:, 4]
        # figures of an item nobody bought count for nothing (as RepurchaseStats keeps them)
        log_gaps = np.where((buyers > 0) | (repeats > 0), figures[:, 5], 0.0)
        # whole numbers summed exactly, as the catalogue's totals are kept
        totals = ItemRepurchases(*(int(column.astype(np.int64).sum())
                                   for column in (buyers, repeats, log_gaps)))
        rates, gaps = rates_and_gaps(buyers, repeats, log_gaps, totals)
        model = NeighborModel(self.items.copy(),  # this one keeps growing
                               ItemNeighbors(indices, scores), trending, version)
        facts = ItemFacts(counts=figures[:, 0].copy(), first_seen=figures[:, 6].copy(),
                          repeat_rate=rates, gap_days=gaps)
        return Snapshot(model, facts)

    def _add(self, item_ids: Iterable[str]) -> dict[str, int]:
        """Positions for the items new among ``item_ids`` (the arrays grow by half
        when they must); every position by id."""
        positions = self.items.positions
        for item_id in [i for i in dict.fromkeys(item_ids) if i not in positions]:
            self.items.add(item_id)  # in the order they came: the same in every run
        if len(positions) > self._figures.shape[0]:
            capacity = max(64, len(positions), self._figures.shape[0] * 3 // 2)
            self._indices = _grown(self._indices, capacity, -1)
            self._scores = _grown(self._scores, capacity, 0)
            self._figures = _grown(self._figures, capacity, 0)
            self._has_figures = _grown(self._has_figures, capacity, False)
        return positions

    def _forget_dead(self) -> None:
        """Drop the items with no list, no figures and no list naming them (a
        snapshot built at once would not know them): positions close up."""
        n = len(self.items)
        rows = self._indices[:n]
        named = np.zeros(n, dtype=np.bool_)
        named[rows[rows >= 0]] = True
        live = named | self._has_figures[:n] | (rows >= 0).any(axis=1)
        if live.all():
            return
        kept = np.flatnonzero(live)
        moved = np.full(n + 1, -1, dtype=np.int32)  # the last slot: -1 stays -1
        moved[kept] = np.arange(kept.size, dtype=np.int32)
        self._indices = moved[self._indices[kept]]
        self._scores = self._scores[kept]
        self._figures = self._figures[kept]
        self._has_figures = self._has_figures[kept]
        self.items = ItemIndex([self.items.ids[p] for p in kept.tolist()])

    def _widen(self, width: int) -> None:
        """Room for lists of ``width`` neighbours."""
        rows = self._indices.shape[0]
        indices = np.full((rows, width), -1, dtype=np.int32)
        scores = np.zeros((rows, width), dtype=np.float32)
        indices[:, :self._indices.shape[1]] = self._indices
        scores[:, :self._scores.shape[1]] = self._scores
        self._indices, self._scores = indices, scores


def _grown(array: np.ndarray, rows: int, fill: float | bool) -> np.ndarray:
    """``array`` with ``rows`` rows, the new ones ``fill``."""
    grown = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    grown[:array.shape[0]] = array
    return grown
