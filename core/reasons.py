"""Why an item is in a list: the words a customer reads, and the recent item
behind a neighbour's place, found for a whole batch of lists at once.

>>> neighbour_reason("50", False), buy_again_reason(13.6), TRENDING_REASON
('similar to 50, which you viewed', 'you buy this about every 14 days', 'trending')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Recent items an explanation may name: the weights of older ones are small,
#: and looking further cost the ranking child as much as ranking.
REASON_RECENT = 10
#: The reason of an item listed for its trending score alone.
TRENDING_REASON = "trending"


def neighbour_reason(because: str, bought: bool) -> str:
    """Why an item similar to one of the user's recent items is listed.

    >>> neighbour_reason("50", False), neighbour_reason("7", True)
    ('similar to 50, which you viewed', 'similar to 7, which you bought')
    """
    return f"similar to {because}, which you {'bought' if bought else 'viewed'}"


#: The reason of an item listed for how many users took it.
POPULAR_REASON = "popular with other customers"


def buy_again_reason(gap_days: float) -> str:
    """Why an item the customer bought before is listed: its typical gap."""
    return f"you buy this about every {max(round(gap_days), 1)} days"


@dataclass(frozen=True)
class NeighbourEntries:
    """One user's neighbour entries (what explanations are found in), before
    they are summed per item: entry ``e`` says that recent item
    ``recent[e // width]`` names item ``items[e]`` with weighted similarity
    ``values[e]`` (most recent item first)."""

    items: np.ndarray
    values: np.ndarray
    recent: np.ndarray
    width: int


def because_many(listed: Sequence[Sequence[int]], entries: Sequence[NeighbourEntries | None],
                  pairs: PairIndex) -> list[list[int | None]]:
    """Per user, per listed position, the one of the user's last
    :data:`REASON_RECENT` items (a position) that names it as a neighbour with
    the largest weighted similarity, the more recent on ties; None where none
    does. Every (recent item, listed item) pair of every user is looked up at
    once in ``pairs`` (numpy calls per user cost as much as the ranking)."""
    found: list[list[int | None]] = [[None] * len(positions) for positions in listed]
    held = [(u, e) for u, e in enumerate(entries)
            if e is not None and e.recent.size and listed[u]]
    if not held or not pairs.keys.size:
        return found
    width = held[0][1].width
    n_recent = np.fromiter((min(e.recent.size, REASON_RECENT) for _, e in held), np.int64,
                           len(held))
    n_listed = np.fromiter((len(listed[u]) for u, _ in held), np.int64, len(held))
    recent = np.concatenate([e.recent[:REASON_RECENT] for _, e in held])
    values = np.concatenate([e.values[:REASON_RECENT * width] for _, e in held])
    shown = np.fromiter((p for u, _ in held for p in listed[u]), np.int64, int(n_listed.sum()))
    # pair q of user h: recent item i = within // n_listed, listed item j = within % n_listed
    count = n_recent * n_listed
    owner = np.repeat(np.arange(len(held)), count)
    within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    i = within // n_listed[owner]
    j = within % n_listed[owner]
    recent_at = np.repeat(np.cumsum(n_recent) - n_recent, count) + i
    shown_at = np.repeat(np.cumsum(n_listed) - n_listed, count) + j
    keys = recent[recent_at] * pairs.span + shown[shown_at]
    at = np.minimum(np.searchsorted(pairs.keys, keys), pairs.keys.size - 1)
    hit = np.flatnonzero(pairs.keys[at] == keys)
    if not hit.size:
        return found
    value_at = (np.repeat(np.cumsum(n_recent * width) - n_recent * width, count)[hit]
                + i[hit] * width + pairs.slots[at[hit]])
    # per listed item: the largest weighted similarity, then the most recent
    best = np.lexsort((i[hit], -values[value_at], shown_at[hit]))
    first = best[np.flatnonzero(np.diff(shown_at[hit][best], prepend=-1))]
    users = [u for u, _ in held]
    for h, slot, position in zip(owner[hit][first].tolist(), j[hit][first].tolist(),
                                 recent[recent_at[hit][first]].tolist(), strict=True):
        found[users[h]][slot] = position
    return found


@dataclass(frozen=True)
class PairIndex:
    """Every (item, neighbour) pair of a snapshot as a sorted key
    ``item * span + neighbour``, with the neighbour's slot in the item's row."""

    keys: np.ndarray
    slots: np.ndarray
    span: int

    @classmethod
    def of(cls, indices: np.ndarray) -> PairIndex:
        n, width = indices.shape
        span = n + 1
        flat = indices.ravel().astype(np.int64)
        kept = np.flatnonzero(flat >= 0)
        keys = (kept // max(width, 1)) * span + flat[kept]
        order = np.argsort(keys, kind="stable")
        return cls(keys[order], (kept % max(width, 1))[order], span)
