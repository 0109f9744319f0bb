"""Bias of recommendation lists: what they show, beside how accurate they are.

Every offline protocol reports these next to its accuracy, computed from the
lists it produced and the training data they were produced from:

- :func:`catalogue_coverage`: the share of the catalogue that appears in any list;
- :func:`exposure_gini`: how unequally list slots are spread over the catalogue
  (0: every item shown as often, towards 1: a few items take every slot);
- :func:`mean_novelty`: mean self-information ``-log2(share of training users
  who took the item)`` of the recommended items (higher: less obvious items);
- :func:`popularity_lift`: mean popularity of what is recommended over mean
  popularity of what users went on to consume (above 1: lists lean popular);
- :func:`accuracy_by_tertile`: mean per-user accuracy of the least, middle and
  most active thirds of the users.

All are pure functions of their arguments.

>>> train = [("u", "a"), ("u", "b"), ("u", "a"), ("v", "a"), ("v", "c"),
...          ("w", "a"), ("w", "d"), ("x", "a"), ("x", "b")]
>>> popularity = training_popularity(train)
>>> lists = {"u": ["a", "b"], "v": ["a", "c"]}
>>> report = bias_report(lists, popularity=popularity, consumed=["b", "d"],
...                      accuracy={"u": 1.0, "v": 0.0})
>>> report.coverage, round(report.exposure_gini, 3), round(report.novelty, 3)
(0.75, 0.375, 0.75)
>>> round(report.popularity_lift, 3), report.accuracy_by_activity
(1.833, (0.0, 1.0, nan))
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

TERTILES = 3


def catalogue_coverage(lists: Iterable[Sequence[str]], catalogue_size: int) -> float:
    """Distinct recommended items over the catalogue size (0 for an empty catalogue).

    >>> catalogue_coverage([["a", "b"], ["b", "c"]], 6)
    0.5
    """
    if catalogue_size <= 0:
        return 0.0
    shown = set().union(*map(set, lists))
    return min(len(shown) / catalogue_size, 1.0)


def exposure_counts(lists: Iterable[Sequence[str]], catalogue_size: int) -> np.ndarray:
    """Slots per item, padded with zeros for the catalogue items never shown.

    >>> exposure_counts([["a", "b"], ["a"]], 4).tolist()
    [2, 1, 0, 0]
    """
    counts = sorted(Counter(item for items in lists for item in items).values(), reverse=True)
    padded = np.zeros(max(catalogue_size, len(counts)), dtype=np.int64)
    padded[: len(counts)] = counts
    return padded


def exposure_gini(exposure: ArrayLike) -> float:
    """Gini coefficient of non-negative exposure counts, in [0, 1).

    ``sum((2 i - n - 1) x_(i)) / (n sum x)`` over the counts in ascending order;
    0 when every item is shown equally often (or nothing is shown).

    >>> exposure_gini([1, 1, 1, 1]), exposure_gini([0, 0, 0, 4])
    (0.0, 0.75)
    """
    x = np.sort(np.asarray(exposure, dtype=np.float64).ravel())
    n, total = x.size, float(x.sum())
    if n == 0 or total <= 0.0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(np.clip(np.sum((2.0 * ranks - n - 1.0) * x) / (n * total), 0.0, 1.0))


class ExposureWindow:
    """Slots per item over the last ``size`` lists, kept as lists come (O(list
    length) each), for the live figures a worker exports.

    >>> window = ExposureWindow(size=2)
    >>> for items in (["a", "b"], ["a"], ["c"]):
    ...     window.add(items)
    >>> window.lists, window.coverage(4), round(window.gini(4), 3)
    (2, 0.5, 0.5)
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be positive")
        self.size = size
        self._lists: deque[tuple[str, ...]] = deque()
        self._slots: Counter[str] = Counter()

    @property
    def lists(self) -> int:
        return len(self._lists)

    def add(self, items: Sequence[str]) -> None:
        """One more list; the oldest leaves once ``size`` are held."""
        self._lists.append(tuple(items))
        self._slots.update(items)
        if len(self._lists) > self.size:
            gone = self._lists.popleft()
            self._slots.subtract(gone)
            for item in gone:
                if self._slots[item] <= 0:
                    del self._slots[item]

    def coverage(self, catalogue_size: int) -> float:
        """:func:`catalogue_coverage` of the lists held."""
        return min(len(self._slots) / catalogue_size, 1.0) if catalogue_size > 0 else 0.0

    def gini(self, catalogue_size: int) -> float:
        """:func:`exposure_gini` of the lists held, over ``catalogue_size`` items."""
        counts = np.fromiter(self._slots.values(), np.int64, len(self._slots))
        padded = np.zeros(max(catalogue_size, counts.size), dtype=np.int64)
        padded[: counts.size] = counts
        return exposure_gini(padded)


def _share(item: str, item_users: Mapping[str, int], n_users: int) -> float:
    return item_users.get(item, 0) / n_users if n_users > 0 else 0.0


def mean_novelty(
    lists: Iterable[Sequence[str]], item_users: Mapping[str, int], n_users: int
) -> float:
    """Mean self-information ``-log2(item_users[i] / n_users)`` over every list slot.

    An item no training user took counts as taken by one (the most novel an item
    of the catalogue can be). 0.0 when the lists are empty.

    >>> mean_novelty([["a", "b"]], {"a": 4, "b": 1}, 4)
    1.0
    """
    total = 0.0
    slots = 0
    for items in lists:
        for item in items:
            total -= math.log2(max(item_users.get(item, 0), 1) / max(n_users, 1))
            slots += 1
    return total / slots if slots else 0.0


def popularity_lift(
    lists: Iterable[Sequence[str]],
    consumed: Iterable[str],
    item_users: Mapping[str, int],
    n_users: int,
) -> float:
    """Mean popularity of recommended slots over mean popularity of consumed items.

    Popularity is the share of training users who took the item. ``nan`` when
    nothing was consumed or what was consumed was unknown in training.

    >>> popularity_lift([["a"]], ["b", "b"], {"a": 4, "b": 2}, 4)
    2.0
    """
    shown = [_share(i, item_users, n_users) for items in lists for i in items]
    taken = [_share(i, item_users, n_users) for i in consumed]
    if not shown or not taken or sum(taken) == 0.0:
        return math.nan
    return float(np.mean(shown) / np.mean(taken))


def activity_tertiles(activity: Mapping[str, float]) -> dict[str, int]:
    """Each user's activity third: 0 least active, 2 most (ties by user id).

    >>> activity_tertiles({"a": 9, "b": 1, "c": 5})
    {'b': 0, 'c': 1, 'a': 2}
    """
    ordered = sorted(activity, key=lambda user: (activity[user], user))
    n = len(ordered)
    return {user: rank * TERTILES // n for rank, user in enumerate(ordered)}


def accuracy_by_tertile(
    accuracy: Mapping[str, float], activity: Mapping[str, float]
) -> tuple[float, ...]:
    """Mean accuracy of the users of each activity third (``nan`` for an empty third).

    Users are split by ``activity`` (events in training) among those with an
    accuracy.

    >>> accuracy_by_tertile({"a": 1.0, "b": 0.0, "c": 0.5}, {"a": 9, "b": 1, "c": 5})
    (0.0, 0.5, 1.0)
    """
    tertile = activity_tertiles({u: activity.get(u, 0.0) for u in accuracy})
    sums = [0.0] * TERTILES
    counts = [0] * TERTILES
    for user, third in tertile.items():
        sums[third] += accuracy[user]
        counts[third] += 1
    return tuple(s / c if c else math.nan for s, c in zip(sums, counts, strict=True))


@dataclass(frozen=True)
class TrainingPopularity:
    """What the lists are judged against: who took what in training.

    ``item_users``: distinct users per item; ``n_users``: users in training;
    ``activity``: training events per user. The catalogue is ``item_users``' keys.
    """

    item_users: dict[str, int] = field(default_factory=dict)
    n_users: int = 0
    activity: dict[str, int] = field(default_factory=dict)

    @property
    def catalogue_size(self) -> int:
        return len(self.item_users)


def training_popularity(pairs: Iterable[tuple[str, str]]) -> TrainingPopularity:
    """Popularity and activity from training (user, item) events (repeats counted
    once per user in popularity, every time in activity).

    >>> p = training_popularity([("u", "a"), ("u", "a"), ("v", "a"), ("v", "b")])
    >>> p.item_users, p.n_users, p.activity, p.catalogue_size
    ({'a': 2, 'b': 1}, 2, {'u': 2, 'v': 2}, 2)
    """
    seen: set[tuple[str, str]] = set()
    item_users: Counter[str] = Counter()
    activity: Counter[str] = Counter()
    for user, item in pairs:
        activity[user] += 1
        if (user, item) not in seen:
            seen.add((user, item))
            item_users[item] += 1
    return TrainingPopularity(dict(item_users), len(activity), dict(activity))


@dataclass(frozen=True)
class BiasReport:
    """The bias figures of one set of lists (see the module docstring)."""

    coverage: float
    exposure_gini: float
    novelty: float
    popularity_lift: float
    accuracy_by_activity: tuple[float, ...]  # least, middle, most active third

    def as_dict(self) -> dict[str, object]:
        return {
            "coverage": self.coverage,
            "exposure_gini": self.exposure_gini,
            "novelty": self.novelty,
            "popularity_lift": self.popularity_lift,
            "accuracy_by_activity": list(self.accuracy_by_activity),
        }


def bias_report(
    lists: Mapping[str, Sequence[str]] | Sequence[Sequence[str]],
    *,
    popularity: TrainingPopularity,
    consumed: Iterable[str],
    accuracy: Mapping[str, float],
) -> BiasReport:
    """Every bias figure of ``lists`` (per user, or one per tested event).

    Parameters
    ----------
    popularity
        Who took what in training: item shares, the catalogue (the denominator
        of coverage and the zeros of the exposure Gini) and user activity.
    consumed
        What the evaluated users went on to take (one entry per occurrence).
    accuracy
        Per user, the protocol's accuracy (nDCG or hit rate).
    """
    values = list(lists.values()) if isinstance(lists, Mapping) else list(lists)
    item_users, n_users = popularity.item_users, popularity.n_users
    return BiasReport(
        coverage=catalogue_coverage(values, popularity.catalogue_size),
        exposure_gini=exposure_gini(exposure_counts(values, popularity.catalogue_size)),
        novelty=mean_novelty(values, item_users, n_users),
        popularity_lift=popularity_lift(values, consumed, item_users, n_users),
        accuracy_by_activity=accuracy_by_tertile(accuracy, popularity.activity),
    )
