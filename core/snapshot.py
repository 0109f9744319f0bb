"""What a list is ranked from: the neighbour snapshot and what is known of each
item beyond its neighbours, aligned by position (:class:`Snapshot`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.learned import LearnedRanking
from core.ranking import NeighborModel
from core.repurchase import DEFAULT_GAP_DAYS, RepurchaseStats


@dataclass(frozen=True)
class ItemFacts:
    """What the snapshot knows of each item beyond its neighbours, by position:
    users who took it, when it was first seen, its repeat rate and gap (days)."""

    counts: np.ndarray
    first_seen: np.ndarray
    repeat_rate: np.ndarray
    gap_days: np.ndarray
    # popular_prefix by length, made on first use (the arrays are not mutated)
    _popular: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False,
                                            compare=False)

    @functools.cached_property
    def most_taken(self) -> float:
        """The most users any item has (0.0: none), found once per snapshot."""
        return float(self.counts.max()) if self.counts.size else 0.0

    def popular_prefix(self, length: int, ids: Sequence[str]) -> np.ndarray:
        """The ``length`` items most taken (positions), most first, ties by id
        (``ids``: by position, the same at every call), so that any order of
        positions lists alike.

        >>> facts = ItemFacts.from_stats(["c", "b", "a"], {"a": 1.0, "b": 2.0, "c": 1.0}, {},
        ...                              RepurchaseStats())
        >>> facts.popular_prefix(2, ["c", "b", "a"]).tolist()
        [1, 2]
        """
        asked = length
        known = self._popular.get(asked)
        if known is not None:
            return known
        counts = self.counts
        taken = np.flatnonzero(counts > 0)  # an item nobody took is not popular
        length = min(length, taken.size)
        if length <= 0:
            return np.zeros(0, dtype=np.int64)
        top = taken
        if length < taken.size:  # everything at or above the length-th count
            kth = np.partition(counts[taken], taken.size - length)[taken.size - length]
            top = taken[counts[taken] >= kth]
        ranked = sorted(zip((-counts[top]).tolist(), [ids[p] for p in top.tolist()],
                            top.tolist(), strict=True))
        prefix = self._popular[asked] = np.fromiter((p for *_, p in ranked[:length]),
                                                     np.int64, length)
        return prefix

    @classmethod
    def empty(cls, n: int = 0) -> ItemFacts:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.full(n, DEFAULT_GAP_DAYS))

    @classmethod
    def from_stats(cls, ids: Sequence[str], counts: Mapping[str, float],
                   first_seen: Mapping[str, float], repurchase: RepurchaseStats) -> ItemFacts:
        """Facts of the items ``ids`` (in position order)."""
        rates, gaps = repurchase.rates_and_gaps(ids)
        return cls(
            counts=np.fromiter(map(counts.get, ids, itertools.repeat(0.0)), np.float64,
                               len(ids)),
            first_seen=np.fromiter(map(first_seen.get, ids, itertools.repeat(0.0)), np.float64,
                                   len(ids)),
            repeat_rate=rates, gap_days=gaps)

    def to_state(self) -> dict[str, list[float]]:
        return {"counts": self.counts.tolist(), "first_seen": self.first_seen.tolist(),
                "repeat_rate": self.repeat_rate.tolist(), "gap_days": self.gap_days.tolist()}

    @classmethod
    def from_state(cls, state: Mapping[str, Sequence[float]]) -> ItemFacts:
        return cls(*(np.asarray(state[name], dtype=np.float64)
                     for name in ("counts", "first_seen", "repeat_rate", "gap_days")))


@dataclass(frozen=True)
class Snapshot:
    """Everything a list is ranked from: the neighbour snapshot, the item facts
    aligned with its positions, and what was learned of ranking (None: the fixed
    blend)."""

    model: NeighborModel
    facts: ItemFacts
    ranker: LearnedRanking | None = None

    @classmethod
    def empty(cls, k: int) -> Snapshot:
        return cls(NeighborModel.empty(k), ItemFacts.empty())
