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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Pseudo-buyers and pseudo-repeats an item's own figures are shrunk with.
RATE_PRIOR = 5.0
GAP_PRIOR = 3.0
#: The gap assumed before any repeat was seen, in days.
DEFAULT_GAP_DAYS = 7.0
#: Whether items may come back: learned from the data, or forced.
REPEAT_MODES = ("learned", "always", "never")
STATE_VERSION = 1


@dataclass
class ItemRepurchases:
    """One item's purchase figures."""

    buyers: int = 0
    repeats: int = 0
    log_gaps: float = 0.0


class RepurchaseStats:
    """Every item's repurchase figures, and the catalogue's, kept incrementally."""

    def __init__(self) -> None:
        self.items: dict[str, ItemRepurchases] = {}
        self.buyers = 0
        self.repeats = 0
        self.log_gaps = 0.0

    def bought(self, item_id: str, *, repeat_gap_days: float | None) -> None:
        """A purchase: a customer's first of the item (``None``), or a repeat that
        many days after their last purchase of it."""
        stats = self.items.get(item_id)
        if stats is None:
            stats = self.items[item_id] = ItemRepurchases()
        if repeat_gap_days is None:
            stats.buyers += 1
            self.buyers += 1
            return
        log_gap = math.log(max(repeat_gap_days, 0.5))  # same-day repeats count half a day
        stats.repeats += 1
        stats.log_gaps += log_gap
        self.repeats += 1
        self.log_gaps += log_gap

    def global_rate(self) -> float:
        return self.repeats / (self.buyers + self.repeats) if self.buyers else 0.0

    def rate(self, item_id: str) -> float:
        """The share of the item's purchases that are repeats, shrunk."""
        stats = self.items.get(item_id, ItemRepurchases())
        bought = stats.buyers + stats.repeats
        return (stats.repeats + RATE_PRIOR * self.global_rate()) / (bought + RATE_PRIOR)

    def gap_days(self, item_id: str) -> float:
        """The item's typical gap between a customer's purchases of it, shrunk."""
        prior = self.log_gaps / self.repeats if self.repeats else math.log(DEFAULT_GAP_DAYS)
        stats = self.items.get(item_id, ItemRepurchases())
        return math.exp((stats.log_gaps + GAP_PRIOR * prior) / (stats.repeats + GAP_PRIOR))

    def to_state(self) -> dict[str, Any]:
        # the totals as summed so far: summed again in another order, the floats differ
        return {"version": STATE_VERSION,
                "items": {i: [s.buyers, s.repeats, s.log_gaps] for i, s in self.items.items()},
                "totals": [self.buyers, self.repeats, self.log_gaps]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RepurchaseStats:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"RepurchaseStats state version {state.get('version')!r}")
        stats = cls()
        for item_id, (buyers, repeats, log_gaps) in state["items"].items():
            stats.items[str(item_id)] = ItemRepurchases(int(buyers), int(repeats),
                                                       float(log_gaps))
        buyers, repeats, log_gaps = state["totals"]
        stats.buyers, stats.repeats, stats.log_gaps = int(buyers), int(repeats), float(log_gaps)
        return stats


def propensity(rate: float, gap_days: float, *, times: int, days_since: float) -> float:
    """How likely a purchase of an item is now, ``days_since`` days after the
    customer's last purchase of it, bought ``times`` times before (see the module
    docstring).

    >>> propensity(1.0, 7.0, times=1, days_since=7.0), propensity(1.0, 7.0, times=1, days_since=0.0)
    (0.75, 0.0)
    """
    due = max(days_since, 0.0) / max(gap_days, 1e-6)
    timing = due * math.exp(1.0 - due)
    habit = 0.5 + 0.5 * times / (times + 1.0)
    return rate * habit * timing
