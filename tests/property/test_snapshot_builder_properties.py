"""A snapshot kept up to date item by item says of every item what a snapshot
built at once from the final lists and figures says, whatever the order of the
changes, and ranks alike."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import RecommenderConfig
from core.mix import published_lists
from core.ranking import NeighborModel
from core.ratings import UserProfile
from core.repurchase import ItemRepurchases, RepurchaseStats
from core.snapshot import ItemFacts, Snapshot
from core.snapshot_builder import SnapshotBuilder
from core.trending import trending_scale

NAMES = ["b", "a", "d", "c", "f", "e"]
K = 2
TAU = 86_400.0

pairs = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from([0.125, 0.5, 1.0])),
                 max_size=4, unique_by=lambda pair: pair[0])
figures = st.tuples(st.sampled_from([1.0, 2.0, 3.0]), st.sampled_from([0.5, 1.0]),
                    st.sampled_from([0.0, 100.0]), st.integers(0, 3), st.integers(0, 3),
                    st.integers(-1_000_000, 3_000_000), st.sampled_from([0.0, 5.0]))
changes = st.lists(st.one_of(
    st.tuples(st.just("list"), st.sampled_from(NAMES), pairs),
    st.tuples(st.just("figures"), st.sampled_from(NAMES), st.none() | figures)), max_size=25)


def by_item(snapshot: Snapshot) -> dict[str, tuple[Any, ...]]:
    """What the snapshot says of each item that it says anything of."""
    model, facts = snapshot.model, snapshot.facts
    ids = model.items.ids
    said = {}
    for p in range(model.n_items):
        neighbours = tuple((ids[j], s) for j, s in model.neighbors.of(p))
        row = (neighbours, float(model.trending[p]), float(facts.counts[p]),
               float(facts.first_seen[p]), float(facts.repeat_rate[p]), float(facts.gap_days[p]))
        if neighbours or any(row[1:4]):
            said[ids[p]] = row
    return said


def at_once(lists: dict[str, list[tuple[str, float]]],
            held: dict[str, tuple[float, ...]]) -> Snapshot:
    """The snapshot of the final tables, the way the offline recommender builds one."""
    ids = list(held)
    trending = dict(zip(ids, trending_scale([held[i][1] for i in ids],
                                            [held[i][2] for i in ids], TAU).tolist(),
                        strict=True))
    model = NeighborModel.from_neighbor_lists(1, {i: p for i, p in lists.items() if p},
                                              trending, K)
    repurchase = RepurchaseStats.of_items({i: ItemRepurchases(int(f[3]), int(f[4]), int(f[5]))
                                           for i, f in held.items()})
    facts = ItemFacts.from_stats(model.items.ids, {i: f[0] for i, f in held.items()},
                                 {i: f[6] for i, f in held.items()}, repurchase)
    return Snapshot(model, facts)


@settings(max_examples=150, deadline=None)
@given(changes, st.lists(st.sampled_from(NAMES), max_size=4))
def test_item_by_item_equals_at_once(steps: list[tuple[Any, ...]], recent: list[str]) -> None:
    builder = SnapshotBuilder()
    lists: dict[str, list[tuple[str, float]]] = {}
    held: dict[str, tuple[float, ...]] = {}
    for kind, item_id, value in steps:
        if kind == "list":
            builder.set_neighbours({item_id: value})
            lists[item_id] = value
        else:
            builder.set_figures({item_id: None if value is None else list(value)})
            if value is None:
                held.pop(item_id, None)
            else:
                held[item_id] = value
    built, expected = builder.snapshot(1, K, TAU), at_once(lists, held)
    assert by_item(built) == by_item(expected)
    config = RecommenderConfig(repeat="always")
    profile = UserProfile(recent=recent, purchased=dict.fromkeys(recent[:1], 0.0))
    lists_of = [published_lists(snapshot, [("u", profile)], 3, config)[0]
                for snapshot in (built, expected)]
    assert lists_of[0] == lists_of[1]
