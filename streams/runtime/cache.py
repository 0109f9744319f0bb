"""Decoded table values by key, with the changed ones kept until they are written."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

V = TypeVar("V")
T = TypeVar("T")


class DecodedCache(Generic[V, T]):
    """Decoded table values by key, so a batch does not decode again what the
    worker wrote itself (values are changed in place, then written back).

    Right only while no one else writes the keys: the worker owns their
    partitions, so it is emptied on every rebalance, and after a failed batch.
    Holds at most ``capacity`` keys; the least recently used go first.

    A value changed but not yet written to its table is *dirty*: it is kept (never
    evicted) with a token saying where it goes, until :meth:`take_dirty` hands it
    to the writer. Writing a key once per commit instead of once per batch is what
    this is for (an active user changes in batch after batch).

    >>> cache: DecodedCache[list[int], str] = DecodedCache(capacity=2)
    >>> cache.put("a", [1]); cache.put("b", [2]); _ = cache.get("a"); cache.put("c", [3])
    >>> cache.get("b") is None, cache.get("a"), len(cache)
    (True, [1], 2)
    >>> cache.mark_dirty("a", [1, 0], "partition 0"); cache.put("d", [4]); cache.put("e", [5])
    >>> cache.get("a"), cache.take_dirty(), cache.take_dirty()
    ([1, 0], [('a', [1, 0], 'partition 0')], [])
    >>> cache.mark_dirty("x", [7], "p1"); cache.mark_dirty("y", [8], "p2")
    >>> cache.take_dirty(limit=1), cache.dirty_count(), cache.get("y")
    ([('x', [7], 'p1')], 1, [8])
    >>> [(key, change)] = [(k, c) for k, _, _, c in cache.peek_dirty()]
    >>> cache.mark_dirty("y", [9], "p2")  # changed again after it was read
    >>> cache.mark_clean(key, change), cache.dirty_count()
    (False, 1)
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Clean values in least recently used order, and dirty ones apart in order
        # of first change: eviction takes the oldest clean value in O(1). (Kept in
        # one order, every eviction scanned past the dirty values from the old
        # end: past 100,000 users, 82% of the worker's time.)
        self._clean: OrderedDict[str, V] = OrderedDict()
        self._dirty: dict[str, tuple[V, T, int]] = {}  # key -> (value, token, change)
        self._changes = itertools.count()

    def get(self, key: str) -> V | None:
        dirty = self._dirty.get(key)
        if dirty is not None:
            return dirty[0]
        value = self._clean.get(key)
        if value is not None:
            self._clean.move_to_end(key)
        return value

    def get_or_load(self, key: str, load: Callable[[], V]) -> V:
        """The cached value, or ``load()``'s, which is then cached."""
        value = self.get(key)
        if value is None:
            value = load()
            self.put(key, value)
        return value

    def put(self, key: str, value: V) -> None:
        dirty = self._dirty.get(key)
        if dirty is not None:
            self._dirty[key] = (value, dirty[1], dirty[2])
            return
        self._clean[key] = value
        self._clean.move_to_end(key)
        self._evict()

    def _evict(self) -> None:
        # dirty values stay (over capacity until they are written)
        clean = self._clean
        while clean and len(clean) + len(self._dirty) > self.capacity:
            clean.popitem(last=False)

    def mark_dirty(self, key: str, value: V, token: T) -> None:
        """``key`` has changed to ``value``, which must be written (``token``: where).

        Kept until taken even beyond the capacity (with a capacity of 0 too); a
        key changed again while dirty keeps its place among the dirty ones."""
        self._clean.pop(key, None)
        self._dirty[key] = (value, token, next(self._changes))
        self._evict()

    def dirty(self) -> Iterator[str]:
        """Keys changed and not yet written."""
        return iter(self._dirty)

    def dirty_count(self) -> int:
        """How many keys are changed and not yet written."""
        return len(self._dirty)

    def take_dirty(self, limit: int | None = None) -> list[tuple[str, V, T]]:
        """The changed values with their tokens, first changed first (the first
        ``limit`` of them); these are now clean.

        A key changed again while dirty keeps its place, so taking as many as were
        dirty at some moment takes every key dirty then."""
        taken = self.peek_dirty(limit)
        for key, _, _, change in taken:
            self.mark_clean(key, change)
        return [(key, value, token) for key, value, token, _ in taken]

    def peek_dirty(self, limit: int | None = None) -> list[tuple[str, V, T, int]]:
        """As :meth:`take_dirty`, with each key's change number, leaving the keys
        dirty (cached, never evicted) until :meth:`mark_clean`: for a writer that
        awaits between reading the values and writing them."""
        return [(key, value, token, change) for key, (value, token, change)
                in itertools.islice(self._dirty.items(), limit)]

    def mark_clean(self, key: str, change: int) -> bool:
        """``key`` is written as it was at ``change``: clean, unless it changed since
        (then it stays dirty, for the next writer)."""
        dirty = self._dirty.get(key)
        if dirty is None or dirty[2] != change:
            return False
        del self._dirty[key]
        self._clean[key] = dirty[0]  # the most recently used clean value
        self._evict()
        return True

    def clear(self) -> None:
        """Forget every value, dirty ones included (their changes are lost)."""
        self._clean.clear()
        self._dirty.clear()

    def __len__(self) -> int:
        return len(self._clean) + len(self._dirty)
