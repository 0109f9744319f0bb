"""The item-based recommender that the stream, the replay and the evaluation share.

``observe`` folds one event into the user profiles, the co-occurrence table and
the trending counters; ``refresh`` recomputes item neighbours with the configured
similarity (on the schedule of :class:`RecommenderConfig`); ``recommend`` ranks
items for a user by a recency-weighted sum of neighbour similarities over the
user's recent items plus a small trending prior, and cold users get the trending
items alone.

>>> from core.events import PURCHASE, Event
>>> model = Recommender(RecommenderConfig(refresh_every=0))
>>> for user, item in [("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"), ("u3", "a")]:
...     _ = model.observe(Event(user, item, 1.0, "view"))
>>> _ = model.refresh()
>>> model.recommend("u3", 2, filter_already_liked_items=True).item_ids
('b',)
>>> model.recommend("nobody", 2).cold_start
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.cooccurrence import CooccurrenceTable
from core.events import PURCHASE, Event
from core.ratings import STATE_VERSION, RatingWeights, UserProfile, _check_version
from core.similarity import SIMILARITIES, ItemNeighbors, SimilarityParams
from core.topk import top_k

DAY = 86_400.0


@dataclass(frozen=True)
class RecommenderConfig:
    """How the recommender learns and ranks. Defaults are the evaluated ones.

    similarity: a key of :data:`core.similarity.SIMILARITIES`.
    neighbors: neighbours kept per item for scoring.
    history: recent items kept per user, for ranking.
    pair_window: how many of those a newly gained item is paired with in the
        co-occurrence table (the cost of observing grows with it).
    recency_decay: weight of the r-th most recent item is ``recency_decay ** r``.
    popularity_weight: weight of the trending prior (scaled to [0, 1]).
    popularity_half_life_days: event-time half-life of the trending counts.
    max_row_width: co-occurrence pairs kept per item (weakest pruned).
    refresh_every: observed events between neighbour refreshes (0: manual only).
    """

    similarity: str = "cosine"
    neighbors: int = 100
    history: int = 200
    pair_window: int = 50
    recency_decay: float = 0.8
    popularity_weight: float = 0.01
    popularity_half_life_days: float = 7.0
    max_row_width: int = 2000
    refresh_every: int = 1000
    weights: RatingWeights = field(default_factory=RatingWeights)
    similarity_params: SimilarityParams = field(default_factory=SimilarityParams)

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"unknown similarity {self.similarity!r}; choose from {', '.join(SIMILARITIES)}"
            )
        if self.neighbors < 1 or self.history < 1 or self.pair_window < 1:
            raise ValueError("neighbors, history and pair_window must be positive")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError("recency_decay must be in (0, 1]")
        if self.popularity_half_life_days <= 0:
            raise ValueError("popularity_half_life_days must be positive")


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


class Recommender:
    """Per-user profiles, co-occurrence, trending counts and refreshed neighbours."""

    def __init__(self, config: RecommenderConfig | None = None) -> None:
        self.config = config or RecommenderConfig()
        self.users: dict[str, UserProfile] = {}
        self.cooccurrence = CooccurrenceTable(self.config.max_row_width)
        # Trending: per item position, a count decayed to its own last-update time.
        self._trend_value: list[float] = []
        self._trend_time: list[float] = []
        self._tau = self.config.popularity_half_life_days * DAY / math.log(2.0)
        self.now = 0.0  # event time: the largest timestamp seen
        self.events_since_refresh = 0
        self.model_version = 0
        self.neighbors = ItemNeighbors.empty(0, self.config.neighbors)
        self._trending = np.zeros(0)
        # Hot-path copies of configuration.
        self._rating_by_type = self.config.weights.by_type()
        self._refresh_every = self.config.refresh_every
        self._pair_window = min(self.config.pair_window, self.config.history)

    # -- learning -----------------------------------------------------------------

    def observe(self, event: Event) -> bool:
        """Learn one event; True when it changed the user's ratings or history.

        Refreshes neighbours when ``refresh_every`` events have been observed.
        """
        rating = event.value if event.value is not None else self._rating_by_type.get(event.type)
        user_id = event.user_id
        profile = self.users.get(user_id)
        if profile is None:
            profile = self.users[user_id] = UserProfile()
        ts = event.ts
        if ts > self.now:
            self.now = ts
        recent = profile.recent
        before = recent[-1] if recent else None
        gained = profile.observe(event.item_id, rating, ts, self.config.history)
        if event.type == PURCHASE:
            profile.purchased.add(event.item_id)
        if gained:
            self.cooccurrence.observe(event.item_id, recent[-self._pair_window - 1 : -1])
            self._bump_trending(event.item_id, ts)
        self.events_since_refresh += 1
        if self._refresh_every and self.events_since_refresh >= self._refresh_every:
            self.refresh()
        return gained or (bool(recent) and recent[-1] != before)

    def observe_many(self, events: Iterable[Event]) -> None:
        for event in events:
            self.observe(event)

    def _bump_trending(self, item_id: str, ts: float) -> None:
        position = self.cooccurrence.items.positions[item_id]
        values, times = self._trend_value, self._trend_time
        if position >= len(values):
            missing = position + 1 - len(values)
            values.extend([0.0] * missing)
            times.extend([ts] * missing)
        last = times[position]
        if ts >= last:
            values[position] = values[position] * math.exp((last - ts) / self._tau) + 1.0
            times[position] = ts
        else:  # a late event counts decayed to the item's clock
            values[position] += math.exp((ts - last) / self._tau)

    # -- neighbour refresh ----------------------------------------------------------

    def refresh(self) -> ItemNeighbors:
        """Recompute item neighbours and the trending prior; bump the model version."""
        config = self.config
        similarity = SIMILARITIES[config.similarity]
        self.neighbors = similarity(
            self.cooccurrence.matrix(),
            self.cooccurrence.counts(),
            config.neighbors,
            config.similarity_params,
        )
        self._trending = self.trending_scores()
        self.events_since_refresh = 0
        self.model_version += 1
        return self.neighbors

    def trending_scores(self) -> np.ndarray:
        """Time-decayed interaction counts at ``now``, scaled so the top item is 1."""
        values = np.asarray(self._trend_value, dtype=np.float64)
        if values.size == 0:
            return values
        times = np.asarray(self._trend_time, dtype=np.float64)
        decayed = values * np.exp((times - self.now) / self._tau)
        top = decayed.max()
        return decayed / top if top > 0 else decayed

    # -- ranking ---------------------------------------------------------------------

    def score_items(self, user_id: str) -> np.ndarray:
        """Scores of every item known at the last refresh, for one user."""
        n = self.neighbors.n_items
        scores: np.ndarray = np.zeros(n, dtype=np.float64)
        profile = self.users.get(user_id)
        if profile is not None and profile.recent and n:
            positions = self.cooccurrence.items.positions
            decay = self.config.recency_decay
            hist: list[int] = []
            weights: list[float] = []
            weight = 1.0
            for item_id in reversed(profile.recent):
                position = positions.get(item_id, n)
                if position < n:
                    hist.append(position)
                    weights.append(weight)
                weight *= decay
            if hist:
                neighbor_idx = self.neighbors.indices[hist]
                neighbor_score = self.neighbors.scores[hist] * np.asarray(weights)[:, None]
                # -1 padding lands in the extra last bin, dropped below.
                scores = np.bincount(
                    np.where(neighbor_idx >= 0, neighbor_idx, n).ravel(),
                    weights=neighbor_score.ravel(),
                    minlength=n + 1,
                )[:n]
        if self.config.popularity_weight and self._trending.size:
            scores += self.config.popularity_weight * self._trending[:n]
        return scores

    def recommend(
        self,
        user_id: str,
        n: int = 10,
        *,
        filter_already_liked_items: bool = False,
        filter_purchased: bool = True,
        exclude: Iterable[str] = (),
    ) -> Recommendations:
        """Top-``n`` items for a user, best first.

        Bought items are left out by default, every rated item with
        ``filter_already_liked_items``, and anything in ``exclude``. A user
        without history (or unknown) gets trending items, flagged ``cold_start``.
        """
        scores = self.score_items(user_id)
        profile = self.users.get(user_id)
        positions = self.cooccurrence.items.positions
        size = scores.size
        banned: set[str] = set(exclude)
        if profile is not None:
            if filter_already_liked_items:
                banned.update(profile.ratings)
            if filter_purchased:
                banned.update(profile.purchased)
        for item_id in banned:
            position = positions.get(item_id, size)
            if position < size:
                scores[position] = -np.inf
        ranked = top_k(scores, n, ids=self.cooccurrence.items.ids)
        ids = self.cooccurrence.items.ids
        return Recommendations(
            user_id=user_id,
            item_ids=tuple(ids[p] for p, _ in ranked),
            scores=tuple(s for _, s in ranked),
            cold_start=profile is None or not profile.recent,
            model_version=self.model_version,
        )

    def neighbors_of(self, item_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """An item's most similar items as of the last refresh."""
        position = self.cooccurrence.items.get(item_id)
        if position is None or position >= self.neighbors.n_items:
            return []
        ids = self.cooccurrence.items.ids
        pairs = [(ids[j], s) for j, s in self.neighbors.of(position)]
        return pairs if k is None else pairs[:k]

    # -- state -----------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "users": {u: p.to_state() for u, p in self.users.items()},
            "cooccurrence": self.cooccurrence.to_state(),
            "trend_value": [float(v) for v in self._trend_value],
            "trend_time": [float(t) for t in self._trend_time],
            "now": float(self.now),
            "events_since_refresh": self.events_since_refresh,
            "model_version": self.model_version,
            "neighbors": self.neighbors.to_state(),
            "trending": [float(v) for v in self._trending],
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], config: RecommenderConfig | None = None
    ) -> Recommender:
        _check_version(state, "Recommender")
        model = cls(config)
        model.users = {u: UserProfile.from_state(p) for u, p in state["users"].items()}
        model.cooccurrence = CooccurrenceTable.from_state(state["cooccurrence"])
        model._trend_value = [float(v) for v in state["trend_value"]]
        model._trend_time = [float(t) for t in state["trend_time"]]
        model.now = float(state["now"])
        model.events_since_refresh = int(state["events_since_refresh"])
        model.model_version = int(state["model_version"])
        model.neighbors = ItemNeighbors.from_state(state["neighbors"])
        model._trending = np.asarray(state["trending"], dtype=np.float64)
        return model
