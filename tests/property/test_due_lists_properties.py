"""The lists a partition recomputes round by round (changed rows, then a bounded
rotation of the others): a changed row's list is fresh at once, no list lags the
counts by more than the rotation's length, and once rows and counts stop moving
the rotation catches up with a full refresh."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from core.similarity import SimilarityParams, neighbors_for_rows
from streams.runtime.children.due_lists import DueLists

NAMES = [f"i{n}" for n in range(12)]
K = 3

row = st.dictionaries(st.sampled_from(NAMES), st.sampled_from([1.0, 2.0, 5.0]), max_size=5)
# a round: rows changed, counts moved (item -> new count)
rounds = st.lists(st.tuples(st.dictionaries(st.sampled_from(NAMES), row, max_size=4),
                            st.dictionaries(st.sampled_from(NAMES), st.integers(1, 9),
                                            max_size=3)),
                  min_size=1, max_size=12)


def lists_of(rows: dict[str, dict[str, float]], counts: dict[str, float]
             ) -> dict[str, list[tuple[str, float]]]:
    return neighbors_for_rows(rows, counts, K, "cosine", SimilarityParams())


@settings(max_examples=200, deadline=None)
@given(rounds, st.integers(1, 4))
def test_rotation_keeps_lists_within_bounds_and_catches_up(
        plan: list[tuple[dict[str, dict[str, float]], dict[str, int]]],
        rotation: int) -> None:
    due_lists = DueLists()
    rows: dict[str, dict[str, float]] = {}
    counts: dict[str, float] = dict.fromkeys(NAMES, 1.0)
    version = 1
    published: dict[str, list[tuple[str, float]]] = {}
    computed_at: dict[str, int] = {}  # round of each row's last computation
    moves = [0]  # rounds the counts moved at
    for n, (changed, moved) in enumerate(plan, 1):
        rows.update(changed)
        if any(counts[item_id] != count for item_id, count in moved.items()):
            counts.update({item_id: float(count) for item_id, count in moved.items()})
            version += 1
            moves.append(n)
        due = due_lists.take(changed.keys(), version, rotation)
        assert due[:len(changed)] == list(changed)  # changed rows, every one, first
        assert len(due) - len(changed) <= rotation
        assert len(set(due)) == len(due)
        published.update(lists_of({i: rows[i] for i in due}, counts))
        computed_at.update(dict.fromkeys(due, n))
        for item_id in changed:  # a changed row is fresh at once
            assert published[item_id] == lists_of({item_id: rows[item_id]}, counts)[item_id]
        # no row computed before the counts last moved but one the rotation had
        # no room for: the oldest are taken first
        behind = [i for i in rows if computed_at[i] < moves[-1]]
        assert due_lists.lagging == len(behind)
        if behind:
            assert len(due) - len(changed) == rotation
        # a row lags the counts at most as many rounds as the rotation needs
        for item_id in behind:
            stale_since = min(m for m in moves if m > computed_at[item_id])
            assert n - stale_since < math.ceil(len(rows) / rotation)
    # rows and counts stop moving: the rotation catches up with a full refresh
    for _ in range(math.ceil(len(rows) / rotation)):
        published.update(lists_of({i: rows[i] for i in due_lists.take((), version, rotation)},
                                  counts))
    assert due_lists.lagging == 0
    assert due_lists.take((), version, rotation) == []
    assert published == lists_of(rows, counts)
