"""What a neighbour refresh produces, and how a user's list is ranked from it.

:class:`NeighborModel` is the snapshot that ranking reads: item neighbours and the
trending prior, by item position. The offline :class:`core.recommender.Recommender`
builds it from its own co-occurrence table; a stream worker builds it from the
neighbour lists and item statistics that all workers share
(:meth:`NeighborModel.from_neighbor_lists`). Both then rank with the same code,
which is why a replay and the stream agree item for item.

>>> model = NeighborModel.from_neighbor_lists(
...     1, {"a": [("b", 0.5), ("c", 0.25)], "b": [("a", 0.5)]}, {"a": 1.0, "c": 0.5}, k=2)
>>> from core.ratings import UserProfile
>>> profile = UserProfile(ratings={"a": 1.0}, recent=["a"])
>>> model.rank(profile, 2, recency_decay=0.8, popularity_weight=0.0, banned={"a"})
[('b', 0.5), ('c', 0.25)]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.cooccurrence import ItemIndex
from core.ratings import STATE_VERSION, UserProfile, _check_version
from core.similarity import ItemNeighbors
from core.topk import top_k

if TYPE_CHECKING:
    from core.recommender import RecommenderConfig

# Trending scores are rounded so that sums folded in another order (another
# worker, a replay) compare equal; far below anything that matters for ranking.
TRENDING_DECIMALS = 9


def trend_bump(value: float, time: float, ts: float, tau: float) -> tuple[float, float]:
    """Add one interaction at ``ts`` to a count decayed to ``time``; (value, time).

    The result is ``sum(exp((t_k - time) / tau))`` over the interactions, whatever
    their arrival order.

    >>> v, t = trend_bump(0.0, 0.0, 10.0, tau=10.0)
    >>> v, t = trend_bump(v, t, 0.0, tau=10.0)  # a late event counts decayed
    >>> round(v, 4), t
    (1.3679, 10.0)
    """
    if ts >= time:
        return value * math.exp((time - ts) / tau) + 1.0, ts
    return value + math.exp((ts - time) / tau), time


def trending_scale(
    values: Sequence[float] | np.ndarray, times: Sequence[float] | np.ndarray, tau: float
) -> np.ndarray:
    """Decayed counts brought to the latest time, scaled so the top item is 1.

    Scaling makes the result independent of "now": only relative decay matters.

    >>> trending_scale([2.0, 1.0], [0.0, 0.0], tau=1.0).tolist()
    [1.0, 0.5]
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    t = np.asarray(times, dtype=np.float64)
    decayed = v * np.exp((t - t.max()) / tau)
    top = decayed.max()
    scaled = decayed / top if top > 0 else decayed
    return np.asarray(np.round(scaled, TRENDING_DECIMALS))


def id_ranks(ids: Sequence[str]) -> np.ndarray:
    """Each id's rank in sorted order: the tie-break that does not depend on positions.

    >>> id_ranks(["b", "c", "a"]).tolist()
    [1, 2, 0]
    """
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[sorted(range(len(ids)), key=ids.__getitem__)] = np.arange(len(ids))
    return ranks


@dataclass(frozen=True)
class Recommendations:
    """A ranked list for one user; ``cold_start`` when it is trending items only."""

    user_id: str
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    cold_start: bool
    model_version: int

    def as_pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.item_ids, self.scores, strict=True))


@dataclass(frozen=True)
class NeighborModel:
    """Neighbours and trending prior by item position, as of one refresh.

    ``items`` may know more items than the snapshot (it can be the live index of
    a co-occurrence table); positions at or beyond ``n_items`` are ignored.
    """

    items: ItemIndex
    neighbors: ItemNeighbors
    trending: np.ndarray
    version: int

    @property
    def n_items(self) -> int:
        return self.neighbors.n_items

    @classmethod
    def empty(cls, k: int) -> NeighborModel:
        return cls(ItemIndex(), ItemNeighbors.empty(0, k), np.zeros(0), 0)

    @classmethod
    def from_neighbor_lists(
        cls,
        version: int,
        neighbor_lists: Mapping[str, Sequence[tuple[str, float]]],
        trending: Mapping[str, float],
        k: int,
    ) -> NeighborModel:
        """Build from per-item lists (best first) and per-item trending scores."""
        known = set(neighbor_lists) | set(trending)
        for pairs in neighbor_lists.values():
            known.update(j for j, _ in pairs)
        items = ItemIndex(sorted(known))
        n = len(items)
        indices = np.full((n, k), -1, dtype=np.int32)
        scores = np.zeros((n, k), dtype=np.float32)
        positions = items.positions
        for item_id, pairs in neighbor_lists.items():
            row = positions[item_id]
            for slot, (j, score) in enumerate(pairs[:k]):
                indices[row, slot] = positions[j]
                scores[row, slot] = score
        trend = np.zeros(n)
        for item_id, value in trending.items():
            trend[positions[item_id]] = value
        return cls(items, ItemNeighbors(indices, scores), trend, version)

    def scores(
        self, recent: Sequence[str], recency_decay: float, popularity_weight: float
    ) -> np.ndarray:
        """Score of every item in the snapshot for a user whose recent items are given.

        The r-th most recent item contributes its neighbours' similarities times
        ``recency_decay ** r``; the trending prior is added with its weight.
        """
        n = self.n_items
        scores: np.ndarray = np.zeros(n, dtype=np.float64)
        if recent and n:
            positions = self.items.positions
            hist: list[int] = []
            weights: list[float] = []
            weight = 1.0
            for item_id in reversed(recent):
                position = positions.get(item_id, n)
                if position < n:
                    hist.append(position)
                    weights.append(weight)
                weight *= recency_decay
            if hist:
                neighbor_idx = self.neighbors.indices[hist]
                neighbor_score = self.neighbors.scores[hist] * np.asarray(weights)[:, None]
                # -1 padding lands in the extra last bin, dropped below.
                scores = np.bincount(
                    np.where(neighbor_idx >= 0, neighbor_idx, n).ravel(),
                    weights=neighbor_score.ravel(),
                    minlength=n + 1,
                )[:n]
        if popularity_weight and self.trending.size:
            scores += popularity_weight * self.trending[:n]
        return scores

    def rank(
        self,
        profile: UserProfile | None,
        n: int,
        *,
        recency_decay: float,
        popularity_weight: float,
        banned: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """The user's top-``n`` (item id, score), leaving out ``banned`` items."""
        recent = profile.recent if profile is not None else []
        scores = self.scores(recent, recency_decay, popularity_weight)
        size = scores.size
        positions = self.items.positions
        for item_id in banned:
            position = positions.get(item_id, size)
            if position < size:
                scores[position] = -np.inf
        ids = self.items.ids
        return [(ids[p], s) for p, s in top_k(scores, n, ids=ids)]

    def recommend(
        self,
        user_id: str,
        profile: UserProfile | None,
        n: int,
        config: RecommenderConfig,
        *,
        filter_already_liked_items: bool = False,
        filter_purchased: bool = True,
        exclude: Iterable[str] = (),
    ) -> Recommendations:
        """:meth:`rank` with the usual exclusions, as a :class:`Recommendations`."""
        banned: set[str] = set(exclude)
        if profile is not None:
            if filter_already_liked_items:
                banned.update(profile.ratings)
            if filter_purchased:
                banned.update(profile.purchased)
        ranked = self.rank(
            profile,
            n,
            recency_decay=config.recency_decay,
            popularity_weight=config.popularity_weight,
            banned=banned,
        )
        return Recommendations(
            user_id=user_id,
            item_ids=tuple(i for i, _ in ranked),
            scores=tuple(s for _, s in ranked),
            cold_start=profile is None or not profile.recent,
            model_version=self.version,
        )

    def neighbors_of(self, item_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """An item's most similar items in this snapshot, best first."""
        position = self.items.get(item_id)
        if position is None or position >= self.n_items:
            return []
        ids = self.items.ids
        pairs = [(ids[j], s) for j, s in self.neighbors.of(position)]
        return pairs if k is None else pairs[:k]

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "model_version": self.version,
            "neighbors": self.neighbors.to_state(),
            "trending": [float(v) for v in self.trending],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], items: ItemIndex) -> NeighborModel:
        _check_version(state, "NeighborModel")
        return cls(
            items=items,
            neighbors=ItemNeighbors.from_state(state["neighbors"]),
            trending=np.asarray(state["trending"], dtype=np.float64),
            version=int(state["model_version"]),
        )
