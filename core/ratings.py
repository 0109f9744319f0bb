"""Implicit ratings and the per-user profile (ratings, running mean, recent items).

A user's rating of an item is the strongest signal seen for it: the configured
weight of each event type, or the explicit ``value`` of a click when given. The
mean rating is kept incrementally (sum and count), so it is exact at any time.

>>> profile = UserProfile()
>>> weights = RatingWeights()
>>> profile.observe("i1", weights.rating_of("view", None), ts=1.0, history=3)
True
>>> profile.observe("i1", weights.rating_of("purchase", None), ts=2.0, history=3)
False
>>> profile.ratings, profile.mean
({'i1': 5.0}, 5.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

STATE_VERSION = 1
DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class RatingWeights:
    """Implicit rating of each event type; ``remove_from_cart`` carries none."""

    view: float = 1.0
    click: float = 2.0
    add_to_cart: float = 3.0
    purchase: float = 5.0

    def rating_of(self, event_type: str, value: float | None) -> float | None:
        """The rating an event expresses, or None when it expresses no preference.

        >>> RatingWeights().rating_of("add_to_cart", None), RatingWeights().rating_of("view", 4)
        (3.0, 4.0)
        """
        if value is not None:
            return float(value)
        return self.by_type().get(event_type)

    def by_type(self) -> dict[str, float]:
        """Event type -> rating; types absent here (``remove_from_cart``) rate nothing."""
        return {
            "view": float(self.view),
            "click": float(self.click),
            "add_to_cart": float(self.add_to_cart),
            "purchase": float(self.purchase),
        }


@dataclass
class UserProfile:
    """What we keep per user: ratings, their running mean, recent items, purchases.

    Every structure is bounded by the caller's configuration, the least recently
    used entry evicted first, so that a user's state has a known size however
    long the user stays:

    - ``ratings``: at most ``max_ratings`` items, least recently rated first (an
      item rated again moves to the end); the mean is over the items kept;
    - ``recent``: the most recent distinct rated items, oldest first, at most
      ``history`` of them (``max_ratings >= history``, so they are all rated);
    - ``purchased``: item -> its latest purchase time, least recently bought
      first, at most ``max_purchased`` items.

    ``last_ts`` is the user's latest event time.

    >>> profile = UserProfile()
    >>> for item in ["a", "b", "a", "c"]:
    ...     _ = profile.observe(item, 1.0, ts=1.0, history=2, max_ratings=2)
    >>> list(profile.ratings), profile.recent
    (['a', 'c'], ['a', 'c'])
    """

    ratings: dict[str, float] = field(default_factory=dict)
    rating_sum: float = 0.0
    recent: list[str] = field(default_factory=list)
    purchased: dict[str, float] = field(default_factory=dict)
    #: times each purchased item was bought (missing: once), evicted with it
    purchase_counts: dict[str, int] = field(default_factory=dict)
    events: int = 0
    last_ts: float = 0.0
    first_ts: float = 0.0
    #: distinct days with an event (counted as events come in time order)
    active_days: int = 0

    @property
    def mean(self) -> float:
        """Mean rating over the rated items (0.0 before any rating)."""
        return self.rating_sum / len(self.ratings) if self.ratings else 0.0

    def observe(self, item_id: str, rating: float | None, ts: float, history: int,
                max_ratings: int | None = None) -> bool:
        """Record an event on ``item_id``; True when the user gained the item.

        The rating only ever strengthens (the strongest signal wins). An event
        without a rating (``remove_from_cart``) expresses no preference: it only
        advances the user's clock, so ``recent`` holds rated items only. Beyond
        ``max_ratings`` rated items (None: no bound) the least recently rated
        goes.
        """
        if not self.events:
            self.first_ts, self.active_days = ts, 1
        elif ts // DAY_SECONDS > self.last_ts // DAY_SECONDS:
            self.active_days += 1
        self.events += 1
        if ts > self.last_ts:
            self.last_ts = ts
        if rating is None:
            return False
        ratings = self.ratings
        old = ratings.pop(item_id, None)  # re-inserted at the end: most recent
        gained = old is None
        if old is None:
            ratings[item_id] = rating
            self.rating_sum += rating
            if max_ratings is not None and len(ratings) > max_ratings:
                self.rating_sum -= ratings.pop(next(iter(ratings)))
        elif rating > old:
            ratings[item_id] = rating
            self.rating_sum += rating - old
        else:
            ratings[item_id] = old
        self._touch(item_id, history, known=not gained)
        return gained

    def buy(self, item_id: str, ts: float, max_purchased: int | None = None) -> bool:
        """Record a purchase of ``item_id`` at ``ts``; True when it is bought for the
        first time (as far as the profile remembers: beyond ``max_purchased``
        items the least recently bought goes).

        >>> profile = UserProfile()
        >>> [profile.buy(i, 1.0, max_purchased=2) for i in ["a", "b", "a", "c"]]
        [True, True, False, True]
        >>> profile.purchased
        {'a': 1.0, 'c': 1.0}
        """
        purchased = self.purchased
        last = purchased.pop(item_id, None)
        purchased[item_id] = ts if last is None else max(last, ts)
        if last is not None:
            self.purchase_counts[item_id] = self.purchase_counts.get(item_id, 1) + 1
        if max_purchased is not None and len(purchased) > max_purchased:
            oldest = next(iter(purchased))
            del purchased[oldest]
            self.purchase_counts.pop(oldest, None)
        return last is None

    def visit_gap_days(self, default: float) -> float:
        """The customer's mean time between active days, in days (``default``
        before a second one)."""
        if self.active_days < 2:
            return default
        return max((self.last_ts - self.first_ts) / DAY_SECONDS / (self.active_days - 1), 0.5)

    def _touch(self, item_id: str, history: int, *, known: bool) -> None:
        recent = self.recent
        if recent and recent[-1] == item_id:
            return
        # recent holds rated items only: a newly rated item cannot be in it, which
        # spares the linear scan on the common path.
        if known and item_id in recent:
            recent.remove(item_id)
        recent.append(item_id)
        if len(recent) > history:
            del recent[: len(recent) - history]

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "ratings": dict(self.ratings),
            "rating_sum": float(self.rating_sum),
            "recent": list(self.recent),
            "purchased": dict(self.purchased),
            "purchase_counts": dict(self.purchase_counts),
            "events": self.events,
            "last_ts": float(self.last_ts),
            "first_ts": float(self.first_ts),
            "active_days": self.active_days,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> UserProfile:
        _check_version(state, "UserProfile")
        return cls(
            ratings={str(k): float(v) for k, v in state["ratings"].items()},
            rating_sum=float(state["rating_sum"]),
            recent=[str(i) for i in state["recent"]],
            purchased=_purchased(state["purchased"]),
            purchase_counts={str(k): int(v)
                             for k, v in state.get("purchase_counts", {}).items()},
            events=int(state["events"]),
            last_ts=float(state["last_ts"]),
            first_ts=float(state.get("first_ts", 0.0)),
            active_days=int(state.get("active_days", 0)),
        )


def _purchased(value: Any) -> dict[str, float]:
    """Purchases as stored: item -> latest purchase time (states written before
    purchase times were kept hold a list of items: time 0)."""
    if isinstance(value, Mapping):
        return {str(k): float(v) for k, v in value.items()}
    return dict.fromkeys((str(i) for i in value), 0.0)


def _check_version(state: Mapping[str, Any], kind: str) -> None:
    version = state.get("version")
    if version != STATE_VERSION:
        raise ValueError(f"{kind} state version {version!r} is not {STATE_VERSION}")
