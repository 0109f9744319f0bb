"""Batch ranking on generated snapshots: equal to the single-user path and to the
dense definition, float for float, whatever the ties, the batch and its order."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import RecommenderConfig
from core.cooccurrence import ItemIndex
from core.ranking import NeighborModel
from core.ratings import UserProfile
from core.similarity import ItemNeighbors
from core.topk import top_k
from tests.unit.test_ranking_batch import STRATEGIES, reference_rank, strategy

FAST = settings(max_examples=80, deadline=None)
NAMES = ["b", "a", "d", "c", "f", "e", "h", "g", "j", "i", "l", "k", "n", "m"]
UNKNOWN = ["zz", "yy"]
# Few distinct values, so that sums, priors and scores tie often.
SIMILARITIES = [0.0, 0.125, 0.25, 0.5, 1.0, -0.25, 1 / 3]
TRENDS = [0.0, 0.0, 0.25, 0.5, 1.0, 1e-9]


@dataclass
class Case:
    model: NeighborModel
    profiles: list[UserProfile | None]
    banned: list[set[str]]
    n: int
    recency_decay: float
    popularity_weight: float


@st.composite
def cases(draw: st.DrawFn) -> Case:
    n_items = draw(st.integers(0, 10))
    k = draw(st.integers(0, 4))
    # Ids in no particular order; some known to the index beyond the snapshot.
    names = draw(st.permutations(NAMES))[: n_items + draw(st.integers(0, 3))]
    cell = st.tuples(st.integers(-1, max(n_items - 1, -1)), st.sampled_from(SIMILARITIES))
    rows = [draw(st.lists(cell, min_size=k, max_size=k)) for _ in range(n_items)]
    indices = np.array([[j for j, _ in row] for row in rows], dtype=np.int32).reshape(n_items, k)
    scores = np.array([[s for _, s in row] for row in rows], dtype=np.float32).reshape(n_items, k)
    trending = np.array(draw(st.lists(st.sampled_from(TRENDS), min_size=n_items,
                                      max_size=n_items)), dtype=np.float64)
    if draw(st.booleans()):
        trending = trending[: draw(st.integers(0, n_items))]  # short or empty prior
    model = NeighborModel(ItemIndex(names), ItemNeighbors(indices, scores), trending, 3)
    pool = names + UNKNOWN
    item = st.sampled_from(pool) if pool else st.nothing()
    profiles: list[UserProfile | None] = []
    banned: list[set[str]] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 5)) == 0:
            profiles.append(None)
        else:
            recent = draw(st.lists(item, unique=True, max_size=8))
            bought = draw(st.lists(item, max_size=2))
            profiles.append(UserProfile(ratings=dict.fromkeys(recent, 1.0), recent=recent,
                                        purchased=dict.fromkeys(bought, 0.0)))
        banned.append(set(draw(st.lists(item, max_size=4))))
    return Case(
        model=model,
        profiles=profiles,
        banned=banned,
        n=draw(st.integers(0, 14)),
        recency_decay=draw(st.sampled_from([1.0, 0.8, 0.5, 0.3])),
        popularity_weight=draw(st.sampled_from([0.0, 0.01, 0.5, 1.0, -0.5])),
    )


@FAST
@given(cases(), st.sampled_from(STRATEGIES), st.sampled_from([1, 5, None]))
def test_rank_many_equals_rank_equals_the_definition(
    case: Case, share: int, chunk: int | None
) -> None:
    kw = {"recency_decay": case.recency_decay, "popularity_weight": case.popularity_weight}
    with strategy(share, chunk):
        batch = case.model.rank_many(case.profiles, case.n, banned=case.banned, **kw)
        single = [case.model.rank(p, case.n, banned=b, **kw)
                  for p, b in zip(case.profiles, case.banned, strict=True)]
    expected = [reference_rank(case.model, p, case.n, banned=b, **kw)
                for p, b in zip(case.profiles, case.banned, strict=True)]
    assert batch == single == expected  # same ids, same order, same floats
    for ranked, out in zip(batch, case.banned, strict=True):
        assert out.isdisjoint(i for i, _ in ranked)
        assert len(ranked) <= max(case.n, 0)


@FAST
@given(cases(), st.randoms(use_true_random=False))
def test_batch_is_deterministic_and_independent_of_its_order(case: Case, rnd: object) -> None:
    kw = {"recency_decay": case.recency_decay, "popularity_weight": case.popularity_weight}
    first = case.model.rank_many(case.profiles, case.n, banned=case.banned, **kw)
    order = list(range(len(case.profiles)))
    rnd.shuffle(order)  # type: ignore[attr-defined]
    shuffled = case.model.rank_many([case.profiles[u] for u in order], case.n,
                                    banned=[case.banned[u] for u in order], **kw)
    assert [shuffled[order.index(u)] for u in range(len(order))] == first
    # Doubling the batch (every user twice) changes nobody's list.
    twice = case.model.rank_many(case.profiles * 2, case.n, banned=case.banned * 2, **kw)
    assert twice == first * 2


@FAST
@given(cases(), st.booleans(), st.booleans())
def test_recommend_many_equals_recommend_and_leaves_out_what_it_must(
    case: Case, liked: bool, purchased: bool
) -> None:
    config = RecommenderConfig(recency_decay=case.recency_decay,
                               popularity_weight=case.popularity_weight)
    users = [f"u{n}" for n in range(len(case.profiles))]
    requests = list(zip(users, case.profiles, strict=True))
    exclude = dict(zip(users, case.banned, strict=True))
    many = case.model.recommend_many(requests, case.n, config, exclude=exclude,
                                     filter_already_liked_items=liked,
                                     filter_purchased=purchased)
    for recs, (user, profile) in zip(many, requests, strict=True):
        assert recs == case.model.recommend(user, profile, case.n, config,
                                            exclude=exclude[user],
                                            filter_already_liked_items=liked,
                                            filter_purchased=purchased)
        out = set(exclude[user])
        if profile is not None:
            out |= set(profile.ratings) if liked else set()
            out |= set(profile.purchased) if purchased else set()
        assert out.isdisjoint(recs.item_ids)
        assert list(recs.scores) == sorted(recs.scores, reverse=True)
        assert all(s > 0 for s in recs.scores)


@FAST
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, -1.0, float("nan"), float("inf"),
                                 float("-inf")])
                | st.floats(-1.0, 4.0, allow_nan=False), max_size=400),
       st.integers(0, 12), st.randoms(use_true_random=False))
def test_top_k_equals_a_full_sort(values: list[float], k: int, rnd: object) -> None:
    scores = np.asarray(values, dtype=np.float64)
    ids = [f"id{n:03d}" for n in range(2 * len(values))]
    rnd.shuffle(ids)  # type: ignore[attr-defined]
    positions = np.arange(len(values), dtype=np.int64) * 2
    want = sorted(((int(p), s) for p, s in zip(positions, values, strict=True)
                   if np.isfinite(s) and s > 0), key=lambda c: (-c[1], ids[c[0]]))[:k]
    assert top_k(scores, k, ids=ids, positions=positions) == want
    dense = [(p // 2, s) for p, s in want]
    assert top_k(scores, k, ids=ids[::2]) == dense
