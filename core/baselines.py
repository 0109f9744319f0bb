"""Single-source baselines that the evaluation protocols report beside the model.

- :class:`Popularity`: items by how often they were taken so far, exact after
  every event (O(1) per event, O(k) per list).
- :class:`BuyAgain`: a customer's own past items, most often taken first, then
  most recently.

Both learn from the same events as the model, in the same order.

>>> pop = Popularity()
>>> for item in ["a", "b", "b", "c", "c", "c"]:
...     pop.observe(item)
>>> pop.top(2), pop.top(2, banned={"c"})
(['c', 'b'], ['b', 'a'])
>>> again = BuyAgain()
>>> for ts, item in enumerate(["a", "b", "a", "c"]):
...     again.observe("u", item, float(ts))
>>> again.top("u", 3), again.top("nobody", 3)
(['a', 'c', 'b'], [])
"""

from __future__ import annotations

import heapq
from collections.abc import Container


class Popularity:
    """Items in descending order of count, kept sorted as counts grow by one.

    ``order`` holds the items sorted by count (descending); ``start[c]`` is the
    number of items counted more than ``c`` times, i.e. where the items counted
    exactly ``c`` times begin. A count going from ``c`` to ``c + 1`` swaps the
    item with the first of its block and moves that block's start one on. Among
    equal counts the item that reached the count first comes first.
    """

    def __init__(self) -> None:
        self.order: list[str] = []
        self._where: dict[str, int] = {}
        self._count: dict[str, int] = {}
        self._start: list[int] = [0]

    def __len__(self) -> int:
        return len(self.order)

    def count(self, item: str) -> int:
        return self._count.get(item, 0)

    def observe(self, item: str) -> None:
        """Count one more taking of ``item``."""
        where = self._where
        c = self._count.get(item)
        if c is None:
            c = 0
            where[item] = len(self.order)
            self.order.append(item)
        j, s = where[item], self._start[c]
        other = self.order[s]
        self.order[s], self.order[j] = item, other
        where[item], where[other] = s, j
        self._start[c] = s + 1
        self._count[item] = c + 1
        if len(self._start) <= c + 1:
            self._start.append(0)

    def top(self, k: int, banned: Container[str] = ()) -> list[str]:
        """The ``k`` most counted items not in ``banned``."""
        out: list[str] = []
        for item in self.order:
            if len(out) == k:
                break
            if item not in banned:
                out.append(item)
        return out


class BuyAgain:
    """Per customer, how often and when last each item was taken."""

    def __init__(self) -> None:
        self.history: dict[str, dict[str, tuple[int, float]]] = {}

    def observe(self, user: str, item: str, ts: float) -> None:
        items = self.history.setdefault(user, {})
        count, last = items.get(item, (0, ts))
        items[item] = (count + 1, max(last, ts))

    def bought(self, user: str) -> dict[str, tuple[int, float]]:
        """The customer's items: (times taken, last time)."""
        return self.history.get(user, {})

    def top(self, user: str, k: int) -> list[str]:
        """The customer's ``k`` most taken items, the most recent first among equals."""
        items = self.history.get(user)
        if not items:
            return []
        best = heapq.nsmallest(k, items.items(), key=lambda kv: (-kv[1][0], -kv[1][1], kv[0]))
        return [item for item, _ in best]
