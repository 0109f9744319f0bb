"""Invariants of the evaluation's metrics and baselines, on generated data."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.baselines import BuyAgain, Popularity
from core.bias import catalogue_coverage, exposure_gini, mean_novelty
from core.evaluation import unique_pairs
from core.events import Event
from core.prequential import rolling_hit_rate
from core.ratings import RatingWeights

ITEMS = [f"i{n}" for n in range(8)]
USERS = [f"u{n}" for n in range(4)]
KINDS = ["view", "click", "add_to_cart", "remove_from_cart", "purchase"]
FAST = settings(max_examples=80, deadline=None)

lists_of_lists = st.lists(st.lists(st.sampled_from(ITEMS), max_size=5), max_size=12)


@FAST
@given(st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS),
                          st.sampled_from(KINDS)), max_size=50))
def test_unique_pairs_keeps_the_max_rating_once_per_pair(rows: list[tuple[str, str, str]]) -> None:
    weights = RatingWeights()
    events = [Event(u, i, float(t), k) for t, (u, i, k) in enumerate(rows)]
    kept = unique_pairs(events, weights)
    keys = [(e.user_id, e.item_id) for e in kept]
    assert len(keys) == len(set(keys))
    best: dict[tuple[str, str], float] = {}
    for e in events:
        rating = weights.rating_of(e.type, e.value)
        if rating is not None:
            best[(e.user_id, e.item_id)] = max(best.get((e.user_id, e.item_id), 0.0), rating)
    assert {(e.user_id, e.item_id): weights.rating_of(e.type, e.value) for e in kept} == best
    assert [e.ts for e in kept] == sorted(e.ts for e in kept)


@FAST
@given(st.lists(st.integers(min_value=0, max_value=1000), max_size=40))
def test_gini_is_in_unit_interval_and_zero_when_equal(counts: list[int]) -> None:
    g = exposure_gini(counts)
    assert 0.0 <= g < 1.0
    if counts:
        assert exposure_gini([counts[0]] * len(counts)) == 0.0


@FAST
@given(lists_of_lists, st.integers(min_value=0, max_value=20))
def test_coverage_is_bounded(lists: list[list[str]], catalogue: int) -> None:
    c = catalogue_coverage(lists, catalogue)
    assert 0.0 <= c <= 1.0
    if catalogue >= len(ITEMS):
        assert c == len({i for items in lists for i in items}) / catalogue


@FAST
@given(lists_of_lists, st.integers(min_value=1, max_value=9))
def test_novelty_is_non_negative_and_bounded(lists: list[list[str]], n_users: int) -> None:
    item_users = {item: 1 + n % n_users for n, item in enumerate(ITEMS)}
    novelty = mean_novelty(lists, item_users, n_users)
    assert 0.0 <= novelty <= np.log2(n_users) + 1e-12


@FAST
@given(st.lists(st.sampled_from(ITEMS), max_size=80), st.integers(min_value=1, max_value=8),
       st.sets(st.sampled_from(ITEMS)))
def test_popularity_lists_the_most_counted_items(taken: list[str], k: int,
                                                 banned: set[str]) -> None:
    pop = Popularity()
    for item in taken:
        pop.observe(item)
    counts = Counter(taken)
    top = pop.top(k, banned=banned)
    allowed = sorted((c for i, c in counts.items() if i not in banned), reverse=True)
    assert [counts[i] for i in top] == allowed[:k]
    assert [pop.count(i) for i in pop.order] == sorted(counts.values(), reverse=True)


@FAST
@given(st.lists(st.sampled_from(ITEMS), max_size=40), st.integers(min_value=1, max_value=8))
def test_buy_again_lists_own_items_most_taken_first(taken: list[str], k: int) -> None:
    again = BuyAgain()
    for t, item in enumerate(taken):
        again.observe("u", item, float(t))
    top = again.top("u", k)
    counts = Counter(taken)
    assert set(top) <= set(taken)
    assert [counts[i] for i in top] == sorted(counts.values(), reverse=True)[:k]


@FAST
@given(st.lists(st.booleans(), max_size=60), st.integers(min_value=1, max_value=10))
def test_rolling_hit_rate_is_a_rate(hits: list[bool], window: int) -> None:
    rate = rolling_hit_rate(np.array(hits, dtype=bool), window)
    assert rate.shape == (len(hits),)
    assert np.all((rate >= 0.0) & (rate <= 1.0))
    if hits:
        assert rate[-1] == np.mean(hits[-window:])
