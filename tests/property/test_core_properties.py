"""Invariants of core, checked on generated data (hypothesis)."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import orjson
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from core.churn import score_customer
from core.config import RecommenderConfig
from core.cooccurrence import CooccurrenceTable
from core.engagement import PRIOR_MODEL, ChurnModel, Engagement, EngagementConfig, due_many
from core.events import Event
from core.ratings import UserProfile
from core.recommender import Recommender
from core.similarity import (
    ROW_LOCAL_SIMILARITIES,
    SIMILARITIES,
    SimilarityParams,
    neighbors_for_rows,
)
from core.topk import top_k_per_row_sparse

ITEMS = [f"i{n}" for n in range(12)]
USERS = [f"u{n}" for n in range(6)]
KINDS = ["view", "click", "add_to_cart", "remove_from_cart", "purchase"]

ratings_lists = st.lists(
    st.tuples(st.sampled_from(ITEMS), st.floats(min_value=1, max_value=5)), max_size=40
)
event_lists = st.lists(
    st.tuples(st.sampled_from(USERS), st.sampled_from(ITEMS), st.sampled_from(KINDS)),
    min_size=1, max_size=60,
)
FAST = settings(max_examples=60, deadline=None)


def to_events(rows: list[tuple[str, str, str]]) -> list[Event]:
    return [Event(u, i, 1_000.0 + t, k) for t, (u, i, k) in enumerate(rows)]


@FAST
@given(ratings_lists)
def test_running_mean_equals_numpy_mean(rows: list[tuple[str, float]]) -> None:
    profile = UserProfile()
    for t, (item, rating) in enumerate(rows):
        profile.observe(item, rating, float(t), history=5)
    if profile.ratings:
        assert np.isclose(profile.mean, np.mean(list(profile.ratings.values())))
        expected = {}
        for item, rating in rows:
            expected[item] = max(expected.get(item, 0.0), rating)
        assert profile.ratings == expected


@FAST
@given(event_lists)
def test_recommender_state_round_trips_through_json(rows: list[tuple[str, str, str]]) -> None:
    model = Recommender(RecommenderConfig(refresh_every=7, history=4))
    model.observe_many(to_events(rows))
    state = model.to_state()
    copy = Recommender.from_state(orjson.loads(orjson.dumps(state)), model.config)
    assert copy.to_state() == state


def _table(rows: list[tuple[str, str, str]], history: int) -> CooccurrenceTable:
    model = Recommender(RecommenderConfig(refresh_every=0, history=history))
    model.observe_many(to_events(rows))
    return model.cooccurrence


@FAST
@given(event_lists, st.sampled_from(["cosine", "jaccard"]))
def test_similarities_are_symmetric_and_bounded(rows: list[tuple[str, str, str]],
                                                name: str) -> None:
    table = _table(rows, history=100)
    n = len(table.items)
    neighbors = SIMILARITIES[name](table.matrix(), table.counts(), n, SimilarityParams())
    dense = np.zeros((n, n))
    for i in range(n):
        for j, s in neighbors.of(i):
            dense[i, j] = s
    assert np.allclose(dense, dense.T, atol=1e-6)
    assert (dense >= 0).all() and (dense <= 1 + 1e-6).all()


@FAST
@given(event_lists, st.randoms(use_true_random=False))
def test_similarities_do_not_depend_on_user_order(rows: list[tuple[str, str, str]],
                                                  rnd: object) -> None:
    # With unbounded history, co-occurrence is a function of the user-item sets:
    # shuffling which user's events come first changes nothing.
    by_user: dict[str, list[tuple[str, str, str]]] = {}
    for row in rows:
        by_user.setdefault(row[0], []).append(row)
    users = list(by_user)
    rnd.shuffle(users)  # type: ignore[attr-defined]
    shuffled = [row for u in users for row in by_user[u]]
    a, b = _table(rows, 100), _table(shuffled, 100)

    def as_dict(t: CooccurrenceTable) -> dict[tuple[str, str], float]:
        m = sp.coo_matrix(t.matrix())
        return {(t.items.ids[i], t.items.ids[j]): v for i, j, v in zip(m.row, m.col, m.data,
                                                                       strict=True)}

    assert as_dict(a) == as_dict(b)
    assert dict(zip(a.items.ids, a.counts(), strict=True)) == dict(
        zip(b.items.ids, b.counts(), strict=True))


@FAST
@given(event_lists, st.sampled_from(USERS), st.lists(st.sampled_from(ITEMS), max_size=4),
       st.sampled_from(sorted(SIMILARITIES)))
def test_recommendations_never_contain_excluded_items_and_are_deterministic(
    rows: list[tuple[str, str, str]], user: str, exclude: list[str], similarity: str
) -> None:
    events = to_events(rows)
    config = RecommenderConfig(refresh_every=5, similarity=similarity,
                               similarity_params=SimilarityParams(ease_lambda=1.0))
    first, second = Recommender(config), Recommender(config)
    first.observe_many(events)
    second.observe_many(events)
    recs = first.recommend(user, 5, exclude=exclude)
    assert recs == second.recommend(user, 5, exclude=exclude)
    profile = first.users.get(user)
    banned = set(exclude) | (set(profile.purchased) if profile else set())
    assert banned.isdisjoint(recs.item_ids)
    liked = first.recommend(user, 5, filter_already_liked_items=True)
    assert set(profile.ratings if profile else ()).isdisjoint(liked.item_ids)
    assert list(recs.scores) == sorted(recs.scores, reverse=True)


@FAST
@given(event_lists, st.sampled_from(sorted(ROW_LOCAL_SIMILARITIES)), st.integers(1, 4))
def test_row_local_refresh_equals_full_refresh(rows: list[tuple[str, str, str]], name: str,
                                               partitions: int) -> None:
    # A worker refreshing only the rows of its partitions gets exactly the rows
    # of a full refresh, ties included: the stream and the replay agree.
    config = RecommenderConfig(refresh_every=0, similarity=name, neighbors=3)
    model = Recommender(config)
    model.observe_many(to_events(rows))
    model.refresh()
    table = model.cooccurrence
    m = table.matrix()
    ids = table.items.ids
    counts = dict(zip(ids, table.counts().tolist(), strict=True))
    all_rows = {
        ids[i]: {ids[j]: float(v) for j, v in zip(m.indices[m.indptr[i]:m.indptr[i + 1]],
                                                    m.data[m.indptr[i]:m.indptr[i + 1]],
                                                    strict=True)}
        for i in range(len(ids))
    }
    for part in range(partitions):
        mine = {i: r for n, (i, r) in enumerate(sorted(all_rows.items())) if n % partitions == part}
        local = neighbors_for_rows(mine, counts, 3, name, SimilarityParams())
        for item_id, pairs in local.items():
            assert pairs == model.neighbors_of(item_id)


sparse_rows = st.lists(
    st.dictionaries(st.integers(0, 29),
                    st.sampled_from([-1.0, 0.0, 0.25, 1.0, 1.0, 2.0, 3.5, float("nan")]),
                    max_size=30),
    min_size=1, max_size=8,
)


@FAST
@given(sparse_rows, st.integers(1, 6), st.booleans(), st.sampled_from([4, 64, 1 << 22]))
def test_sparse_top_k_equals_sorting_each_row(rows: list[dict[int, float]], k: int,
                                              reversed_ranks: bool, block_cells: int) -> None:
    # Columns come unsorted (as inserted), with ties, non-positive and NaN
    # entries; small padded blocks split the rows longer than k one by one.
    data = [v for row in rows for v in row.values()]
    indices = [c for row in rows for c in row]
    indptr = np.cumsum([0, *map(len, rows)])
    matrix = sp.csr_matrix((np.array(data, dtype=float), np.array(indices, dtype=np.int32),
                            indptr), shape=(len(rows), 30))
    tie_rank = np.arange(30)[::-1].copy() if reversed_ranks else None
    with patch("core.topk._PADDED_BLOCK_CELLS", block_cells):
        found, scores = top_k_per_row_sparse(matrix, k, tie_rank=tie_rank)
    for n, row in enumerate(rows):
        rank = (lambda c: 29 - c) if reversed_ranks else (lambda c: c)
        best = sorted((c for c, v in row.items() if v > 0), key=lambda c: (-row[c], rank(c)))[:k]
        assert found[n].tolist() == best + [-1] * (k - len(best))
        assert scores[n].tolist() == [row[c] for c in best] + [0.0] * (k - len(best))


customer_histories = st.lists(
    st.tuples(
        st.lists(st.tuples(st.floats(0.0, 400.0), st.sampled_from(["purchase", "add_to_cart"])),
                 max_size=6),
        st.booleans(),
    ),
    max_size=12,
)


@given(customer_histories, st.floats(0.0, 800.0), st.sampled_from([None, PRIOR_MODEL]))
def test_due_many_fires_each_due_trigger_once(
        histories: list[tuple[list[tuple[float, str]], bool]], now_days: float,
        model: ChurnModel | None) -> None:
    config = EngagementConfig(cart_window_seconds=86_400.0)
    customers = []
    for events, alerted in histories:
        e = Engagement(alerted=alerted)
        for day, kind in events:
            e.observe(Event("u", f"i{int(day) % 3}", day * 86_400.0, kind, price=9.0), config)
        customers.append(e)
    now = now_days * 86_400.0
    # what each should fire, worked out one customer at a time
    expected = []
    for e in customers:
        kinds = [("cart_abandoned", item) for item, added in sorted(e.cart.items())
                 if now - added >= config.cart_window_seconds]
        if model is not None and not e.alerted and not e.customer.is_empty and score_customer(
                model.params, e.customer, now).p_alive < config.churn_threshold:
            kinds.append(("churn_risk", None))
        expected.append(kinds)
    fired = due_many(customers, now, model, config)
    assert [[(t.kind, t.details.get("item_id")) for t in f] for f in fired] == expected
    # each fires once
    assert all(f == [] for f in due_many(customers, now, model, config))


@given(st.lists(st.tuples(st.integers(0, 30), st.sampled_from([None, 1.0, 2.0, 5.0]),
                          st.booleans()), max_size=300),
       st.integers(1, 8), st.integers(0, 8), st.integers(1, 8))
def test_a_profile_stays_within_its_caps_and_consistent(
    events: list[tuple[int, float | None, bool]], history: int, extra: int,
    max_purchased: int,
) -> None:
    """Whatever a user does: at most max_ratings rated items (the least recently
    rated go), recent items all rated, the mean over what is kept, at most
    max_purchased purchases."""
    max_ratings = history + extra
    profile = UserProfile()
    last_rated: dict[str, int] = {}
    for step, (number, rating, bought) in enumerate(events):
        item = f"i{number}"
        profile.observe(item, rating, float(step), history, max_ratings)
        if rating is not None:
            last_rated[item] = step
        if bought:
            profile.buy(item, float(step), max_purchased)
        assert len(profile.ratings) <= max_ratings
        assert len(profile.recent) <= history and len(set(profile.recent)) == len(profile.recent)
        assert set(profile.recent) <= set(profile.ratings)
        assert math.isclose(profile.rating_sum, sum(profile.ratings.values()), abs_tol=1e-9)
        assert len(profile.purchased) <= max_purchased
    # the items kept are the most recently rated ones
    expected = sorted(last_rated, key=last_rated.__getitem__)[-max_ratings:]
    assert sorted(profile.ratings) == sorted(expected)
