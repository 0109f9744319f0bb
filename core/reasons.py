"""Why an item is in a list: the words a customer reads, and the recent item
behind a neighbour's place, found for a whole batch of lists at once.

>>> neighbour_reason("50", False), buy_again_reason(13.6), TRENDING_REASON
('similar to 50, which you viewed', 'you buy this about every 14 days', 'trending')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.topk import offsets_within_rows

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
                 n_items: int) -> list[list[int | None]]:
    """Per user, per listed position, the one of the user's last
    :data:`REASON_RECENT` items (a position) that names it as a neighbour with
    the largest weighted similarity, the more recent on ties; None where none
    does. The users' own entries say it (positions below ``n_items``); every
    user's are searched at once (numpy calls per user cost as much as the ranking).

    >>> entries = NeighbourEntries(items=np.array([2, 3, 2, -1]), values=np.array([.1, .2, .3, 0.]),
    ...                            recent=np.array([0, 1]), width=2)
    >>> because_many([[3, 2, 1]], [entries], 4)
    [[0, 1, None]]
    """
    found: list[list[int | None]] = [[None] * len(positions) for positions in listed]
    held = [(u, e) for u, e in enumerate(entries)
            if e is not None and e.recent.size and listed[u]]
    if not held:
        return found
    width = held[0][1].width
    span = n_items + 1
    n_recent = np.fromiter((min(e.recent.size, REASON_RECENT) for _, e in held), np.int64,
                           len(held))
    n_entries = n_recent * width
    n_listed = np.fromiter((len(listed[u]) for u, _ in held), np.int64, len(held))
    kept = list(zip(held, n_recent.tolist(), strict=True))
    recent = np.concatenate([e.recent[:n] for (_, e), n in kept])
    items = np.concatenate([e.items[:n * width] for (_, e), n in kept])
    values = np.concatenate([e.values[:n * width] for (_, e), n in kept])
    # entry e of held user h: key h * span + item, named by recent item e // width
    owner = np.repeat(np.arange(len(held)), n_entries)
    age = offsets_within_rows(n_entries) // width
    keys = owner * span + np.where(items >= 0, items, n_items)  # padding names no one
    shown = np.fromiter((p for u, _ in held for p in listed[u]), np.int64, int(n_listed.sum()))
    shown_keys = np.repeat(np.arange(len(held)), n_listed) * span + shown
    hit = np.flatnonzero(np.isin(keys, shown_keys))
    if not hit.size:
        return found
    # per named item: the largest weighted similarity, then the most recent
    best = hit[np.lexsort((age[hit], -values[hit], keys[hit]))]
    first = best[np.flatnonzero(np.diff(keys[best], prepend=-1))]
    at = np.searchsorted(keys[first], shown_keys)
    named = np.flatnonzero(at < first.size)
    named = named[keys[first[at[named]]] == shown_keys[named]]
    by = first[at[named]]
    recent_at = (np.cumsum(n_recent) - n_recent)[owner[by]] + age[by]
    slot = offsets_within_rows(n_listed)[named]
    users = [u for u, _ in held]
    for h, j, position in zip(owner[by].tolist(), slot.tolist(), recent[recent_at].tolist(),
                              strict=True):
        found[users[h]][j] = position
    return found
