"""Prequential evaluation (test-then-learn, Vinagre et al. 2014), with baselines.

Events are replayed in time order (stable for equal timestamps) through the
model, which refreshes on its own schedule as the stream does. Before learning
an event of a user with history, the event is tested:

- a *new-item* event (an item the user never took): the model's top-k without
  the user's items, and plain popularity's (same exclusions); hit if the item
  is listed;
- a *repeat* event (a purchase of an item the user bought before): lists with
  repeats allowed, from the model, popularity and buy-again.

Popularity and buy-again learn from the same events. Each track reports HR@k
and MRR@k per source, a hit timeline for plots, and the bias of every source's
lists (judged against the whole log's popularity).

>>> from core.config import RecommenderConfig
>>> evs = [Event(u, i, float(t), "purchase") for t, (u, i) in enumerate(
...     [("u", "a"), ("v", "a"), ("v", "b"), ("u", "b"), ("u", "a")])]
>>> report = evaluate_prequential(evs, RecommenderConfig(refresh_every=1))
>>> report.new_items["popularity"].events, report.new_items["popularity"].hr_at_k
(2, 0.5)
>>> report.repeats["buy_again"].hr_at_k
1.0
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from core.baselines import BuyAgain, Popularity
from core.bias import BiasReport, TrainingPopularity, bias_report, training_popularity
from core.config import LIST_LENGTH, RecommenderConfig
from core.events import Event
from core.recommender import Recommender

Progress = Callable[[int, int], None]

#: The sources each track compares, the model's first.
NEW_ITEM_SOURCES = ("default", "popularity")
REPEAT_SOURCES = ("default", "popularity", "buy_again")


def _no_progress(done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class SourceMetrics:
    """One source's figures on one track."""

    events: int
    hr_at_k: float
    mrr_at_k: float
    bias: BiasReport


@dataclass
class Track:
    """Per tested event: its time, and per source the rank of the item (0: missed)."""

    sources: tuple[str, ...]
    ts: list[float] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ranks: dict[str, list[int]] = field(default_factory=dict)
    lists: dict[str, list[Sequence[str]]] = field(default_factory=dict)

    def record(self, event: Event, lists: dict[str, Sequence[str]]) -> None:
        self.ts.append(event.ts)
        self.users.append(event.user_id)
        self.items.append(event.item_id)
        for source in self.sources:
            listed = lists[source]
            rank = listed.index(event.item_id) + 1 if event.item_id in listed else 0
            self.ranks.setdefault(source, []).append(rank)
            self.lists.setdefault(source, []).append(listed)

    def hits(self, source: str) -> np.ndarray:
        """Boolean hit per tested event, in time order."""
        return np.asarray(self.ranks.get(source, []), dtype=np.int64) > 0


@dataclass(frozen=True)
class PrequentialReport:
    """The model's new-item figures first (the protocol's headline), then per track
    and source; ``timelines`` hold the per-event hits for plots."""

    events: int
    hr_at_k: float
    mrr_at_k: float
    new_items: dict[str, SourceMetrics]
    repeats: dict[str, SourceMetrics]
    timelines: dict[str, Track]


def evaluate_prequential(
    events: Sequence[Event],
    config: RecommenderConfig,
    *,
    k: int = LIST_LENGTH,
    progress: Progress = _no_progress,
) -> PrequentialReport:
    """Test-then-learn over ``events`` (see the module docstring)."""
    ordered = sorted(events, key=lambda e: e.ts)
    model = Recommender(config)
    popularity = Popularity()
    buy_again = BuyAgain()
    new_items = Track(NEW_ITEM_SOURCES)
    repeats = Track(REPEAT_SOURCES)
    rating_of = config.weights.rating_of
    total = len(ordered)
    for done, event in enumerate(ordered, start=1):
        user = event.user_id
        profile = model.users.get(user)
        if profile is not None and profile.recent:
            if event.item_id not in profile.ratings:
                new_items.record(event, {
                    "default": model.recommend(user, k, filter_already_liked_items=True).item_ids,
                    "popularity": popularity.top(k, banned=profile.ratings),
                })
            elif event.is_purchase and event.item_id in profile.purchased:
                repeats.record(event, {
                    "default": model.recommend(user, k, filter_purchased=False).item_ids,
                    "popularity": popularity.top(k),
                    "buy_again": buy_again.top(user, k),
                })
        model.observe(event)
        if rating_of(event.type, event.value) is not None:
            popularity.observe(event.item_id)
            if event.is_purchase:
                buy_again.observe(user, event.item_id, event.ts)
        if done % 1000 == 0 or done == total:
            progress(done, total)
    learned = training_popularity(
        (e.user_id, e.item_id) for e in ordered if rating_of(e.type, e.value) is not None
    )
    summary = {name: _summarise(track, learned) for name, track in
               (("new_items", new_items), ("repeats", repeats))}
    headline = summary["new_items"]["default"]
    return PrequentialReport(
        events=headline.events,
        hr_at_k=headline.hr_at_k,
        mrr_at_k=headline.mrr_at_k,
        new_items=summary["new_items"],
        repeats=summary["repeats"] if repeats.ts else {},
        timelines={"new_items": new_items, "repeats": repeats},
    )


def _summarise(track: Track, learned: TrainingPopularity) -> dict[str, SourceMetrics]:
    out: dict[str, SourceMetrics] = {}
    for source in track.sources:
        ranks = np.asarray(track.ranks.get(source, []), dtype=np.float64)
        tested = int(ranks.size)
        hit = ranks > 0
        per_user: dict[str, list[float]] = defaultdict(list)
        for user, h in zip(track.users, hit.tolist(), strict=True):
            per_user[user].append(float(h))
        out[source] = SourceMetrics(
            events=tested,
            hr_at_k=float(hit.mean()) if tested else 0.0,
            mrr_at_k=float(np.where(hit, 1.0 / np.maximum(ranks, 1.0), 0.0).mean())
            if tested else 0.0,
            bias=bias_report(
                track.lists.get(source, []),
                popularity=learned,
                consumed=track.items,
                accuracy={u: float(np.mean(h)) for u, h in per_user.items()},
            ),
        )
    return out


def rolling_hit_rate(hits: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` hits at each tested event (fewer at the start).

    >>> rolling_hit_rate(np.array([1, 0, 1, 1]), 2).tolist()
    [1.0, 0.5, 0.5, 1.0]
    """
    if window < 1:
        raise ValueError("window must be at least 1")
    x = np.asarray(hits, dtype=np.float64)
    sums = np.cumsum(x)
    shifted = np.concatenate([np.zeros(window), sums])[: x.size]
    counts = np.minimum(np.arange(1, x.size + 1), window)
    return np.asarray((sums - shifted) / counts)

