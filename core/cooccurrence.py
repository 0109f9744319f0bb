"""Item index and the bounded item co-occurrence table.

When a user gains item i, ``C[i, j] += 1`` and ``C[j, i] += 1`` for every item j in
the user's bounded recent history, and item i's user count grows by one. Pairs are
buffered and folded into a CSR matrix in bulk (vectorised), so observing costs a
list extend; rows wider than ``max_row_width`` keep only their strongest pairs.

>>> table = CooccurrenceTable()
>>> table.observe("a", [])
>>> table.observe("b", ["a"])
>>> table.observe("c", ["a", "b"])
>>> m = table.matrix()
>>> int(m[table.items.get("a"), table.items.get("c")]), table.counts().tolist()
(1, [1.0, 1.0, 1.0])
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np
import scipy.sparse as sp

from core.ratings import STATE_VERSION, _check_version


class ItemIndex:
    """A growing bijection between item ids and dense integer positions.

    >>> index = ItemIndex(["x"])
    >>> index.add("y"), index.add("x"), index.get("z"), len(index)
    (1, 0, None, 2)
    """

    __slots__ = ("ids", "positions")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self.ids: list[str] = []
        self.positions: dict[str, int] = {}
        for item_id in ids:
            self.add(item_id)

    def add(self, item_id: str) -> int:
        position = self.positions.get(item_id)
        if position is None:
            position = len(self.ids)
            self.positions[item_id] = position
            self.ids.append(item_id)
        return position

    def get(self, item_id: str) -> int | None:
        return self.positions.get(item_id)

    def copy(self) -> ItemIndex:
        """An index of the same items that grows apart from this one."""
        copied = ItemIndex()
        copied.ids, copied.positions = list(self.ids), dict(self.positions)
        return copied

    def __len__(self) -> int:
        return len(self.ids)


class CooccurrenceTable:
    """Symmetric item-item co-occurrence counts plus per-item user counts."""

    def __init__(self, max_row_width: int = 2000, *, fold_every: int = 20_000_000) -> None:
        if max_row_width < 1:
            raise ValueError("max_row_width must be positive")
        self.max_row_width = max_row_width
        self.fold_every = fold_every
        self.items = ItemIndex()
        self._counts: list[float] = []
        self._matrix: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float64)
        # Pairs waiting to be folded in, as compact int32 arrays.
        self._rows = array("i")
        self._cols = array("i")

    def observe(self, item_id: str, history: Sequence[str]) -> None:
        """A user gained ``item_id`` while holding ``history``: items the table knows."""
        positions = self.items.positions
        i = positions.get(item_id)
        if i is None:
            i = self.items.add(item_id)
            self._counts.append(1.0)
        else:
            self._counts[i] += 1.0
        if history:
            self._cols.extend(map(positions.__getitem__, history))
            self._rows.extend(repeat(i, len(history)))
            if len(self._rows) >= self.fold_every:
                self._fold()

    def counts(self) -> np.ndarray:
        """Users per item, by item position."""
        return np.asarray(self._counts, dtype=np.float64)

    def matrix(self) -> sp.csr_matrix:
        """The co-occurrence matrix (n_items x n_items, CSR, no diagonal)."""
        self._fold()
        return self._matrix

    def _fold(self) -> None:
        n = len(self.items)
        if self._matrix.shape != (n, n):
            self._matrix.resize((n, n))
        if not self._rows:
            return
        rows = np.frombuffer(self._rows, dtype=np.int32).copy()
        cols = np.frombuffer(self._cols, dtype=np.int32).copy()
        self._rows, self._cols = array("i"), array("i")
        keep = rows != cols
        rows, cols = rows[keep], cols[keep]
        delta = sp.csr_matrix(
            (np.ones(2 * len(rows)), (np.concatenate([rows, cols]), np.concatenate([cols, rows]))),
            shape=(n, n),
        )
        merged = (self._matrix + delta).tocsr()
        merged.sum_duplicates()
        self._matrix = _prune_rows(merged, self.max_row_width)

    def to_state(self) -> dict[str, Any]:
        m = self.matrix()
        return {
            "version": STATE_VERSION,
            "max_row_width": self.max_row_width,
            "items": list(self.items.ids),
            "counts": [float(c) for c in self._counts],
            "indptr": m.indptr.tolist(),
            "indices": m.indices.tolist(),
            "data": m.data.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> CooccurrenceTable:
        _check_version(state, "CooccurrenceTable")
        table = cls(int(state["max_row_width"]))
        table.items = ItemIndex(state["items"])
        table._counts = [float(c) for c in state["counts"]]
        n = len(table.items)
        table._matrix = sp.csr_matrix(
            (
                np.asarray(state["data"], dtype=np.float64),
                np.asarray(state["indices"], dtype=np.int32),
                np.asarray(state["indptr"], dtype=np.int32),
            ),
            shape=(n, n),
        )
        return table


def _prune_rows(matrix: sp.csr_matrix, width: int) -> sp.csr_matrix:
    """Keep each row's ``width`` largest entries (ties broken by column)."""
    lengths = np.diff(matrix.indptr)
    wide = np.flatnonzero(lengths > width)
    if wide.size == 0:
        return matrix
    keep = np.ones(matrix.nnz, dtype=bool)
    for row in wide.tolist():  # only the over-wide rows are sorted
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        order = np.lexsort((matrix.indices[start:stop], -matrix.data[start:stop]))
        keep[start + order[width:]] = False
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int32), lengths)
    return sp.csr_matrix(
        (matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape
    )
