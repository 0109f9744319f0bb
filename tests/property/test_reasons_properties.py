"""Explanations of a batch of lists: each listed item names the recent item the
definition names, whatever the ties, duplicates and padding."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.reasons import REASON_RECENT, NeighbourEntries, because_many

FAST = settings(max_examples=150, deadline=None)
VALUES = [0.0, 0.25, 0.5, 1.0, -0.5]  # few, so that weights tie often


@st.composite
def users(draw: st.DrawFn, n_items: int, width: int
          ) -> tuple[NeighbourEntries | None, list[int]]:
    listed = draw(st.lists(st.integers(0, n_items - 1), unique=True, max_size=6))
    if draw(st.integers(0, 4)) == 0:
        return None, listed
    n_recent = draw(st.integers(0, REASON_RECENT + 3))
    recent = np.asarray(draw(st.lists(st.integers(0, n_items - 1), min_size=n_recent,
                                      max_size=n_recent)), dtype=np.int64)
    size = n_recent * width
    items = np.asarray(draw(st.lists(st.integers(-1, n_items - 1), min_size=size,
                                     max_size=size)), dtype=np.int64)
    values = np.asarray(draw(st.lists(st.sampled_from(VALUES), min_size=size,
                                      max_size=size)), dtype=np.float64)
    return NeighbourEntries(items, values, recent, width), listed


def definition(entries: NeighbourEntries | None, listed: list[int]) -> list[int | None]:
    """Per listed item: the recent item (of the first REASON_RECENT) naming it
    with the largest value, the more recent on ties."""
    if entries is None:
        return [None] * len(listed)
    named: list[int | None] = []
    for position in listed:
        best: tuple[float, int] | None = None
        for e in range(min(entries.recent.size, REASON_RECENT) * entries.width):
            if entries.items[e] == position:
                age = e // entries.width
                if best is None or (entries.values[e], -age) > (best[0], -best[1]):
                    best = (float(entries.values[e]), age)
        named.append(None if best is None else int(entries.recent[best[1]]))
    return named


@FAST
@given(st.data(), st.integers(1, 8), st.integers(1, 4))
def test_because_many_equals_the_definition_user_by_user(data: st.DataObject, n_items: int,
                                                         width: int) -> None:
    batch = data.draw(st.lists(users(n_items, width), max_size=6))
    entries = [e for e, _ in batch]
    listed = [positions for _, positions in batch]
    assert because_many(listed, entries, n_items) == [
        definition(e, positions) for e, positions in batch]
