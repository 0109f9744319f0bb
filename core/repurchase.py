"""Buy-again: how likely a customer is to buy an item again, and when.

Per item, learned from the purchases as they come: how many customers bought it
(``buyers``), how many purchases were repeats (a customer buying it again), and
the gaps between a customer's consecutive purchases of it (their log, summed).
Its repeat rate and typical gap are shrunk towards the catalogue's, so an item
seen rarely borrows the shop's habits:

- ``rate = (repeats + RATE_PRIOR * global_rate) / (buyers + RATE_PRIOR)``
- ``gap = exp((sum_log_gaps + GAP_PRIOR * global_log_gap) / (repeats + GAP_PRIOR))``

A customer's propensity to buy an item again at time ``t`` (their next visit):
the item's rate, times how far ``t`` is from the customer's last purchase of it
in units of the item's gap, through ``e * exp(1 - e)`` (1 when one gap has
passed, lower before and long after), times how often they bought it
(``n / (n + 1)``, halfway weighted).

>>> stats = RepurchaseStats()
>>> for gap in (7.0, 7.0, 8.0):
...     stats.bought("milk", repeat_gap_days=None)
...     stats.bought("milk", repeat_gap_days=gap)
>>> stats.bought("tv", repeat_gap_days=None)
>>> round(stats.rate("milk"), 3), round(stats.gap_days("milk"), 2), round(stats.rate("tv"), 3)
(0.468, 7.32, 0.357)
>>> due = propensity(stats.rate("milk"), stats.gap_days("milk"), times=3, days_since=7.3)
>>> later = propensity(stats.rate("milk"), stats.gap_days("milk"), times=3, days_since=40.0)
>>> round(due, 3), round(later, 3)
(0.409, 0.026)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Pseudo-buyers and pseudo-repeats an item's own figures are shrunk with.
RATE_PRIOR = 5.0
GAP_PRIOR = 3.0
#: The gap assumed before any repeat was seen, in days.
DEFAULT_GAP_DAYS = 7.0
#: Whether items may come back: learned from the data, or forced.
REPEAT_MODES = ("learned", "always", "never")
#: Log-gaps are summed in whole millionths: integer sums are the same in any
#: order, so a stream that sums each item's gaps as they reach its row (and the
#: catalogue's over its items) agrees with a replay that sums them in event order.
LOG_GAP_UNITS = 1_000_000
STATE_VERSION = 2


def log_gap_units(repeat_gap_days: float) -> int:
    """A repeat's gap as it is summed: its log, in :data:`LOG_GAP_UNITS` (same-day
    repeats count half a day).

    >>> log_gap_units(1.0), log_gap_units(0.0), log_gap_units(7.0)
    (0, -693147, 1945910)
    """
    return round(math.log(max(repeat_gap_days, 0.5)) * LOG_GAP_UNITS)


@dataclass(frozen=True, slots=True)
class Purchase:
    """A purchase as the item's figures learn it: the customer's first of the item
    (``log_gap`` None), or a repeat ``log_gap`` (:func:`log_gap_units`) after
    their last purchase of it. The item and the time are the event's.

    A value rather than the bare log-gap, so that a first purchase (``log_gap``
    None) stays apart from no purchase at all (no :class:`Purchase`).

    >>> Purchase(None), Purchase(log_gap_units(7.0)).log_gap
    (Purchase(log_gap=None), 1945910)
    """

    log_gap: int | None


@dataclass
class ItemRepurchases:
    """One item's purchase figures."""

    buyers: int = 0
    repeats: int = 0
    log_gaps: int = 0  # in LOG_GAP_UNITS

    def bought(self, log_gap: int | None) -> None:
        """A customer's first purchase of the item (None), or a repeat."""
        if log_gap is None:
            self.buyers += 1
        else:
            self.repeats += 1
            self.log_gaps += log_gap


class RepurchaseStats:
    """Every item's repurchase figures, and the catalogue's, kept incrementally."""

    def __init__(self) -> None:
        self.items: dict[str, ItemRepurchases] = {}
        self.totals = ItemRepurchases()  # the catalogue's, summed over its items

    def bought(self, item_id: str, *, repeat_gap_days: float | None) -> None:
        """A purchase: a customer's first of the item (``None``), or a repeat that
        many days after their last purchase of it."""
        self.add(item_id, None if repeat_gap_days is None else log_gap_units(repeat_gap_days))

    def add(self, item_id: str, log_gap: int | None) -> None:
        """A purchase as :class:`Purchase` carries it."""
        stats = self.items.get(item_id)
        if stats is None:
            stats = self.items[item_id] = ItemRepurchases()
        stats.bought(log_gap)
        self.totals.bought(log_gap)

    @classmethod
    def of_items(cls, items: Mapping[str, ItemRepurchases]) -> RepurchaseStats:
        """The figures of these items, the catalogue's their sums (as a stream
        gathers them from its rows).

        >>> stats = RepurchaseStats.of_items({"milk": ItemRepurchases(2, 3, 5_000_000)})
        >>> stats.totals.buyers, stats.totals.repeats, round(stats.gap_days("milk"), 2)
        (2, 3, 5.29)
        """
        stats = cls()
        for item_id, figures in items.items():
            if figures.buyers or figures.repeats:
                stats.items[item_id] = figures
                totals = stats.totals
                totals.buyers += figures.buyers
                totals.repeats += figures.repeats
                totals.log_gaps += figures.log_gaps
        return stats

    def rate(self, item_id: str) -> float:
        """The share of the item's purchases that are repeats, shrunk."""
        return float(self.rates_and_gaps([item_id])[0][0])

    def gap_days(self, item_id: str) -> float:
        """The item's typical gap between a customer's purchases of it, shrunk."""
        return float(self.rates_and_gaps([item_id])[1][0])

    def rates_and_gaps(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`rate` and :meth:`gap_days` of many items at once."""
        none = ItemRepurchases()
        figures = [self.items.get(item_id, none) for item_id in item_ids]
        return rates_and_gaps(
            np.fromiter((f.buyers for f in figures), np.float64, len(figures)),
            np.fromiter((f.repeats for f in figures), np.float64, len(figures)),
            np.fromiter((f.log_gaps for f in figures), np.float64, len(figures)), self.totals)

    def to_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION,
                "items": {i: [s.buyers, s.repeats, s.log_gaps] for i, s in self.items.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RepurchaseStats:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"RepurchaseStats state version {state.get('version')!r}")
        return cls.of_items({str(item_id): ItemRepurchases(int(b), int(r), int(g))
                             for item_id, (b, r, g) in state["items"].items()})


def rates_and_gaps(buyers: np.ndarray, repeats: np.ndarray, log_gaps: np.ndarray,
                   totals: ItemRepurchases) -> tuple[np.ndarray, np.ndarray]:
    """Repeat rates and typical gaps (days) of items with these figures, each
    shrunk towards the catalogue's (``totals``; see the module docstring).

    >>> catalogue = ItemRepurchases(10, 5, 5_000_000)
    >>> rates, gaps = rates_and_gaps(np.array([1.0, 0.0]), np.array([2.0, 0.0]),
    ...                              np.array([4_000_000.0, 0.0]), catalogue)
    >>> rates.round(3).tolist(), gaps.round(2).tolist()
    ([0.458, 0.333], [4.06, 2.72])
    """
    global_rate = totals.repeats / (totals.buyers + totals.repeats) if totals.buyers else 0.0
    rates = (repeats + RATE_PRIOR * global_rate) / (buyers + repeats + RATE_PRIOR)
    prior = (totals.log_gaps / LOG_GAP_UNITS / totals.repeats if totals.repeats
             else math.log(DEFAULT_GAP_DAYS))
    gaps = np.exp((log_gaps / LOG_GAP_UNITS + GAP_PRIOR * prior) / (repeats + GAP_PRIOR))
    return np.asarray(rates, dtype=np.float64), np.asarray(gaps, dtype=np.float64)


def propensity(rate: float, gap_days: float, *, times: int, days_since: float) -> float:
    """How likely a purchase of an item is now, ``days_since`` days after the
    customer's last purchase of it, bought ``times`` times before (see the module
    docstring).

    >>> propensity(1.0, 7.0, times=1, days_since=7.0), propensity(1.0, 7.0, times=1, days_since=0.0)
    (0.75, 0.0)
    """
    return float(propensities(np.asarray([rate]), np.asarray([gap_days]),
                              times=np.asarray([times]), days_since=np.asarray([days_since]))[0])


def propensities(rate: np.ndarray | float, gap_days: np.ndarray, *, times: np.ndarray,
                 days_since: np.ndarray) -> np.ndarray:
    """:func:`propensity` of many items at once (arrays alike in shape)."""
    due = np.maximum(days_since, 0.0) / np.maximum(gap_days, 1e-6)
    habit = 0.5 + 0.5 * times / (times + 1.0)
    return np.asarray(rate * habit * (due * np.exp(1.0 - due)))
