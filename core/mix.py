"""A user's list from every source at once: candidates, their features, a score.

Four sources put candidates forward, each its best ``per_source``:

- ``neighbours``: items similar to the user's recent items (the snapshot's
  neighbour lists, recency-weighted);
- ``trending``: the snapshot's trending order;
- ``popular``: the items most users took, all time;
- ``buy_again``: items the customer bought before, by repurchase propensity
  (see :mod:`core.repurchase`; never, always or as learned).

Every candidate gets the features of :data:`FEATURES`, whichever source put it
forward; the scorer judged best on what customers did next orders them
(:mod:`core.learned`: a fixed blend, the learned perceptron or popularity).
Every listed item says which source put it there and why (:mod:`core.reasons`).

Time is an argument: features are taken at the user's latest event (``now``),
which is when a stream publishes the list, and when an offline replay lists
before the next event.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.config import RecommenderConfig
from core.learned import LearnedRanking, blend
from core.ranking import NeighborModel, Recommendations
from core.ratings import DAY_SECONDS, UserProfile
from core.reasons import (
    POPULAR_REASON,
    TRENDING_REASON,
    NeighbourEntries,
    buy_again_reason,
    neighbour_reason,
)
from core.repurchase import DEFAULT_GAP_DAYS, RepurchaseStats, propensity

#: What the ranker sees of each candidate, in this order (each about 0..1).
FEATURES = (
    "neighbours",  # log(1 + recency-weighted similarity to the recent items)
    "trending",  # the snapshot's trending prior
    "buy_again",  # repurchase propensity at the customer's next visit
    "bought_before",  # 1 if the customer bought it
    "times_bought",  # log(1 + times) / 3
    "seen_before",  # 1 if the user rated it (any signal)
    "popularity",  # log(1 + users who took it) / log(1 + the most any item has)
    "user_activity",  # log(1 + the user's events) / 8
    "item_age",  # log(1 + days since the item was first seen) / 6
)
SOURCES = ("neighbours", "trending", "popular", "buy_again")


@dataclass(frozen=True)
class ItemFacts:
    """What the snapshot knows of each item beyond its neighbours, by position:
    users who took it, when it was first seen, its repeat rate and gap (days)."""

    counts: np.ndarray
    first_seen: np.ndarray
    repeat_rate: np.ndarray
    gap_days: np.ndarray

    def popular_prefix(self, length: int) -> np.ndarray:
        """The ``length`` items most taken (positions), most first; items tied at
        the cut are taken in no set order (the same each time), then ordered by
        position."""
        length = min(length, self.counts.size)
        if length <= 0:
            return np.zeros(0, dtype=np.int64)
        top = np.argpartition(-self.counts, length - 1)[:length] if length < self.counts.size \
            else np.arange(self.counts.size)
        return top[np.lexsort((top, -self.counts[top]))]

    @classmethod
    def empty(cls, n: int = 0) -> ItemFacts:
        return cls(np.zeros(n), np.zeros(n), np.zeros(n), np.full(n, DEFAULT_GAP_DAYS))

    @classmethod
    def from_stats(cls, ids: Sequence[str], counts: Mapping[str, float],
                   first_seen: Mapping[str, float], repurchase: RepurchaseStats) -> ItemFacts:
        """Facts of the items ``ids`` (in position order)."""
        return cls(
            counts=np.fromiter((counts.get(i, 0.0) for i in ids), np.float64, len(ids)),
            first_seen=np.fromiter((first_seen.get(i, 0.0) for i in ids), np.float64,
                                   len(ids)),
            repeat_rate=np.fromiter((repurchase.rate(i) for i in ids), np.float64, len(ids)),
            gap_days=np.fromiter((repurchase.gap_days(i) for i in ids), np.float64, len(ids)),
        )


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


@dataclass(frozen=True)
class Candidates:
    """One user's candidates: positions, features (one row each) and the source
    that put each forward."""

    positions: np.ndarray
    features: np.ndarray
    sources: list[str]
    #: the neighbour entries behind the neighbour scores (for the explanations)
    entries: NeighbourEntries | None = None


def candidates(snapshot: Snapshot, profile: UserProfile | None, config: RecommenderConfig,
               banned: Collection[str] = ()) -> Candidates:
    """The user's candidates from every source (see the module docstring)."""
    model, facts = snapshot.model, snapshot.facts
    size = model.n_items
    positions_of = model.items.positions
    out = {p for p in map(positions_of.get, banned) if p is not None and p < size}
    per_source = config.per_source
    chosen: dict[int, str] = {}
    neighbour_at, neighbour_score, entries = model.neighbour_scores(profile,
                                                                    config.recency_decay)
    if neighbour_at.size:
        wanted = per_source + len(out)
        best = np.arange(neighbour_at.size)
        if best.size > wanted:  # everything at or above the wanted-th score
            kth = np.partition(neighbour_score, best.size - wanted)[best.size - wanted]
            best = np.flatnonzero(neighbour_score >= kth)
        order = best[np.lexsort((neighbour_at[best], -neighbour_score[best]))]
        for p in neighbour_at[order].tolist():
            if p not in out:
                chosen.setdefault(p, "neighbours")
                if len(chosen) >= per_source:
                    break
    for p in model.trending_prefix(per_source + len(out)).tolist():
        if p not in out and p not in chosen:
            chosen[p] = "trending"
    for p in facts.popular_prefix(per_source + len(out)).tolist():
        if p not in out and p not in chosen:
            chosen[p] = "popular"
    now = profile.last_ts if profile is not None else 0.0
    propensities: dict[int, float] = {}
    if profile is not None and profile.purchased and config.repeat != "never":
        next_visit = now + profile.visit_gap_days(DEFAULT_GAP_DAYS) * DAY_SECONDS
        for item_id, last in profile.purchased.items():
            p = positions_of.get(item_id)
            if p is None or p >= size or p in out:
                continue
            rate = 1.0 if config.repeat == "always" else float(facts.repeat_rate[p])
            propensities[p] = propensity(rate, float(facts.gap_days[p]),
                                         times=profile.purchase_counts.get(item_id, 1),
                                         days_since=(next_visit - last) / DAY_SECONDS)
        again = sorted(propensities, key=lambda p: (-propensities[p], p))[:per_source]
        for p in again:
            if propensities[p] > 0.0:
                chosen[p] = "buy_again"  # its own reason wins over the others'
    positions = np.fromiter(chosen, np.int64, len(chosen))
    return Candidates(positions, _features(snapshot, profile, positions, neighbour_at,
                                           neighbour_score, propensities, now),
                      list(chosen.values()), entries)


def _features(snapshot: Snapshot, profile: UserProfile | None, positions: np.ndarray,
              neighbour_at: np.ndarray, neighbour_score: np.ndarray,
              propensities: Mapping[int, float], now: float) -> np.ndarray:
    model, facts = snapshot.model, snapshot.facts
    n = positions.size
    x = np.zeros((n, len(FEATURES)))
    if n == 0:
        return x
    ids = model.items.ids
    if neighbour_at.size:
        similarity = np.zeros(model.n_items)
        similarity[neighbour_at] = neighbour_score
        x[:, 0] = np.log1p(similarity[positions])
    trending = model.trending
    x[:, 1] = np.where(positions < trending.size,
                       trending[np.minimum(positions, max(trending.size - 1, 0))]
                       if trending.size else 0.0, 0.0)
    x[:, 2] = np.fromiter((propensities.get(p, 0.0) for p in positions.tolist()), np.float64, n)
    if profile is not None:
        bought = [ids[p] in profile.purchased for p in positions.tolist()]
        x[:, 3] = bought
        x[:, 4] = [math.log1p(profile.purchase_counts.get(ids[p], 1) if b else 0) / 3.0
                   for p, b in zip(positions.tolist(), bought, strict=True)]
        x[:, 5] = [ids[p] in profile.ratings for p in positions.tolist()]
        x[:, 7] = math.log1p(profile.events) / 8.0
    if facts.counts.size:
        at = np.minimum(positions, facts.counts.size - 1)
        top = float(facts.counts.max())
        x[:, 6] = np.log1p(facts.counts[at]) / math.log1p(top) if top > 0 else 0.0
        seen = facts.first_seen[at]
        x[:, 8] = np.where(seen > 0, np.log1p(np.maximum(now - seen, 0.0) / DAY_SECONDS) / 6.0,
                           0.0)
    return x


def rank(snapshot: Snapshot, user_id: str, profile: UserProfile | None, n: int,
         config: RecommenderConfig, banned: Collection[str] = ()) -> Recommendations:
    """The user's top ``n`` over every source, best first (ties by item id), each
    item with its source and the reason it is there."""
    found = candidates(snapshot, profile, config, banned)
    learned = snapshot.ranker
    scores = (blend(found.features, config) if learned is None
              else learned.score(found.features, config))
    ids = snapshot.model.items.ids
    order = [i for *_, i in sorted(zip((-scores).tolist(),
                                       [ids[p] for p in found.positions.tolist()],
                                       range(found.positions.size), strict=True))[:n]]
    listed = [int(found.positions[i]) for i in order]
    sources = tuple(found.sources[i] for i in order)
    return Recommendations(
        user_id=user_id,
        item_ids=tuple(ids[p] for p in listed),
        scores=tuple(float(scores[i]) for i in order),
        cold_start=profile is None or not profile.recent,
        model_version=snapshot.model.version,
        sources=sources,
        reasons=explain(snapshot, profile, listed, sources, found.entries),
    )


def rank_neighbours(snapshot: Snapshot, user_id: str, profile: UserProfile | None, n: int,
                    config: RecommenderConfig, banned: Collection[str] = ()) -> Recommendations:
    """The neighbour snapshot's list alone (similar items, then trending): what
    the stream publishes until it keeps the facts buy-again needs."""
    return snapshot.model.recommend(user_id, profile, n, config, filter_purchased=False,
                                    exclude=banned)


#: How a list is ranked, by the name :attr:`RecommenderConfig.ranking` gives.
RANKINGS: dict[str, Callable[[Snapshot, str, UserProfile | None, int, RecommenderConfig,
                              Collection[str]], Recommendations]] = {
    "mix": rank,
    "neighbours": rank_neighbours,
}


def explain(snapshot: Snapshot, profile: UserProfile | None, positions: Sequence[int],
            sources: Sequence[str], entries: NeighbourEntries | None) -> tuple[str, ...]:
    """Why each listed item (position, and the source that put it there) is in a
    list, in words a customer could read (``entries``: the user's neighbour
    entries, as :func:`candidates` found them).

    >>> explain(Snapshot.empty(1), None, [0], ["trending"], None)
    ('trending',)
    """
    model, gaps = snapshot.model, snapshot.facts.gap_days
    similar = [p for p, source in zip(positions, sources, strict=True) if source == "neighbours"]
    because = dict(zip(similar, model.because(entries, similar), strict=True))
    bought = profile.purchased if profile is not None else {}
    reasons = []
    for position, source in zip(positions, sources, strict=True):
        recent = because.get(position)
        if source == "buy_again":
            reasons.append(buy_again_reason(float(gaps[position]) if position < gaps.size
                                            else 0.0))
        elif recent is not None:
            item_id = model.items.ids[recent]
            reasons.append(neighbour_reason(item_id, item_id in bought))
        elif source == "popular":
            reasons.append(POPULAR_REASON)
        else:
            reasons.append(TRENDING_REASON)
    return tuple(reasons)
