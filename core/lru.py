"""A map that keeps at most so many keys, the least recently put dropped first:
what bounds per-customer memory (visits under way, last lists shown).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LeastRecentlyUsed(OrderedDict[K, V]):
    """An ordered map of at most ``capacity`` keys (None: no bound), least
    recently put or touched first; reads do not reorder.

    >>> kept = LeastRecentlyUsed[str, int](2)
    >>> kept.put("a", 1); kept.put("b", 2); kept.touch("a"); kept.put("c", 3)
    >>> list(kept.items())
    [('a', 1), ('c', 3)]
    """

    def __init__(self, capacity: int | None = None) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recent; drop the least recent
        key past the capacity."""
        self[key] = value
        self.move_to_end(key)
        if self.capacity is not None and len(self) > self.capacity:
            self.popitem(last=False)

    def touch(self, key: K) -> None:
        """``key`` (held) becomes the most recent."""
        self.move_to_end(key)
