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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.config import DAY, RecommenderConfig
from core.cooccurrence import CooccurrenceTable
from core.events import PURCHASE, Event
from core.learned import LearnedRanking
from core.mix import FEATURES, RANKINGS, candidates
from core.outcomes import OutcomeLearner, Shown, rates
from core.ranking import NeighborModel, Recommendations, id_ranks
from core.ratings import STATE_VERSION, UserProfile, _check_version
from core.repurchase import Purchase, RepurchaseStats, log_gap_units
from core.similarity import SIMILARITIES
from core.snapshot import ItemFacts, Snapshot
from core.trending import trend_bump, trending_scale


@dataclass(frozen=True, slots=True)
class Gain:
    """A user gained ``item_id`` at ``ts`` while holding ``history`` (oldest first):
    what the co-occurrence table and the trending counts learn from."""

    item_id: str
    history: list[str]
    ts: float


def learn_event(
    profile: UserProfile, event: Event, config: RecommenderConfig
) -> tuple[bool, Gain | None, Purchase | None]:
    """Fold one event into a user's profile: (changed, gain or None, purchase or
    None).

    The one place where an event becomes a rating, a history entry, a purchase
    and a co-occurrence gain; the offline model and the stream both call it.
    """
    rating = config.rating_of(event)
    recent = profile.recent
    before = recent[-1] if recent else None
    gained = profile.observe(event.item_id, rating, event.ts, config.history,
                             config.max_ratings)
    purchase = None
    if event.type == PURCHASE:
        last = profile.purchased.get(event.item_id)
        purchase = Purchase(None if last is None else log_gap_units((event.ts - last) / DAY))
        profile.buy(event.item_id, event.ts, config.max_purchased)
    changed = gained or (purchase is not None and purchase.log_gap is None) or (
        bool(recent) and recent[-1] != before)
    if not gained:
        return changed, None, purchase
    return changed, Gain(event.item_id, recent[-config.paired_items - 1 : -1], event.ts), purchase


class Recommender:
    """Per-user profiles, co-occurrence, trending counts and refreshed neighbours."""

    def __init__(self, config: RecommenderConfig | None = None) -> None:
        self.config = config or RecommenderConfig()
        self.users: dict[str, UserProfile] = {}
        self.cooccurrence = CooccurrenceTable(self.config.max_row_width)
        # Trending: per item position, a count decayed to its own last-update time.
        self._trend_value: list[float] = []
        self._trend_time: list[float] = []
        self.now = 0.0  # event time: the largest timestamp seen
        self.events_since_refresh = 0
        self.model = NeighborModel.empty(self.config.neighbors)
        self._refresh_every = self.config.refresh_every
        # buy-again and the learned ranker (see core.mix)
        self.repurchase = RepurchaseStats()
        self.first_seen: dict[str, float] = {}
        self.outcomes = OutcomeLearner(LearnedRanking.new(len(FEATURES), self.config),
                                       self.config)
        self.snapshot = Snapshot.empty(self.config.neighbors)

    # -- learning -----------------------------------------------------------------

    def observe(self, event: Event) -> bool:
        """Learn one event; True when it changed the user's ratings or history.

        Refreshes neighbours when ``refresh_every`` events have been observed.
        """
        profile = self.users.get(event.user_id)
        if profile is None:
            profile = self.users[event.user_id] = UserProfile()
        if event.ts > self.now:
            self.now = event.ts
        if self.config.learn_ranker:
            self.learn_outcome(event.user_id, profile, event)
        changed, gain, purchase = learn_event(profile, event, self.config)
        if purchase is not None:
            self.repurchase.add(event.item_id, purchase.log_gap)
        if (gain is not None or purchase is not None) and (
                event.ts < self.first_seen.get(event.item_id, float("inf"))):
            # an item is first seen when first gained or bought: what its row learns
            self.first_seen[event.item_id] = event.ts
        if gain is not None:
            self.cooccurrence.observe(gain.item_id, gain.history)
            self._bump_trending(gain.item_id, gain.ts)
        self.events_since_refresh += 1
        if self._refresh_every and self.events_since_refresh >= self._refresh_every:
            self.refresh()
        return changed

    def learn_outcome(self, user_id: str, profile: UserProfile, event: Event) -> None:
        """The ranker learns from what each visit took against the list of the
        profile as it stood before the visit's first event (lists follow every
        event: sessions of films are judged event by event, which visits would
        misjudge; see :mod:`core.outcomes`)."""
        if not rates(event, self.config):
            return
        ids = self.snapshot.model.items.ids

        def shown() -> Shown | None:
            if not profile.recent:
                return None
            return Shown.of(candidates(self.snapshot, profile, self.config), ids)

        self.outcomes.took(user_id, event.item_id, event.ts, profile.last_ts, shown,
                           known=event.item_id in self.snapshot.model.items.positions)

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
        values[position], times[position] = trend_bump(
            values[position], times[position], ts, self.config.tau
        )

    # -- neighbour refresh ----------------------------------------------------------

    def refresh(self) -> NeighborModel:
        """Recompute item neighbours and the trending prior; bump the model version."""
        config = self.config
        items = self.cooccurrence.items
        neighbors = SIMILARITIES[config.similarity](
            self.cooccurrence.matrix(),
            self.cooccurrence.counts(),
            config.neighbors,
            config.similarity_params,
            id_ranks(items.ids),
        )
        self.model = NeighborModel(
            items=items,
            neighbors=neighbors,
            trending=trending_scale(self._trend_value, self._trend_time, self.config.tau),
            version=self.model.version + 1,
        )
        counts = self.cooccurrence.counts()
        self.snapshot = self._snapshot(ItemFacts.from_stats(
            items.ids, dict(zip(items.ids, counts.tolist(), strict=False)), self.first_seen,
            self.repurchase))
        self.events_since_refresh = 0
        return self.model

    @property
    def ranker(self) -> LearnedRanking:
        """The learned ranking, as it keeps learning."""
        return self.outcomes.ranking

    def _snapshot(self, facts: ItemFacts) -> Snapshot:
        """What lists are ranked from: the neighbour model, ``facts`` as of its
        refresh, and the ranker as it keeps learning."""
        return Snapshot(self.model, facts, self.ranker if self.config.learn_ranker else None)

    @property
    def model_version(self) -> int:
        return self.model.version

    # -- ranking ---------------------------------------------------------------------

    def recommend(
        self,
        user_id: str,
        n: int = 10,
        *,
        filter_already_liked_items: bool = False,
        filter_purchased: bool = True,
        exclude: Iterable[str] = (),
    ) -> Recommendations:
        """Top-``n`` items for a user, best first, from the last refreshed model.

        Bought items are left out by default (a stream's lists leave them out
        unless :attr:`RecommenderConfig.lists_bought_items`), every rated item
        with ``filter_already_liked_items``, and anything in ``exclude``. A user
        without history (or unknown) gets trending items, flagged ``cold_start``.
        """
        profile = self.users.get(user_id)
        banned = set(exclude)
        if profile is not None:
            if filter_already_liked_items:
                banned.update(profile.ratings)
            if filter_purchased:
                banned.update(profile.purchased)
        return RANKINGS[self.config.ranking](self.snapshot, [(user_id, profile, banned)], n,
                                             self.config)[0]

    def neighbors_of(self, item_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """An item's most similar items as of the last refresh."""
        return self.model.neighbors_of(item_id, k)

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
            "model": self.model.to_state(),
            "facts": self.snapshot.facts.to_state(),
            "repurchase": self.repurchase.to_state(),
            "first_seen": dict(self.first_seen),
            "ranker": self.ranker.to_state(),
            "visits": {user: [list(shown.item_ids), shown.features.tolist(), taken.tolist()]
                       for user, (shown, taken) in self.outcomes.visits.items()},
            "rated": self.outcomes.known_events,
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
        model.model = NeighborModel.from_state(state["model"], model.cooccurrence.items)
        model.repurchase = RepurchaseStats.from_state(state["repurchase"])
        model.first_seen = {str(i): float(ts) for i, ts in state["first_seen"].items()}
        outcomes = model.outcomes = OutcomeLearner(
            LearnedRanking.from_state(state["ranker"]), model.config)
        for user, (item_ids, features, taken) in state["visits"].items():
            outcomes.visits[str(user)] = (
                Shown(tuple(map(str, item_ids)), np.asarray(features, dtype=np.float64).reshape(
                    len(item_ids), len(FEATURES))), np.asarray(taken, dtype=np.float64))
        outcomes.known_events = int(state["rated"])
        model.snapshot = model._snapshot(ItemFacts.from_state(state["facts"]))
        return model
