"""Ranking many users at once: exactly the single-user lists, and the dense definition.

:func:`reference_rank` is the definition written out the slow way: every item's
score, summed in history order, every item sorted by (-score, id). The batch
path must equal it item for item and float for float, on both of its
strategies (candidates plus trending order; scores over every item).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest

import core.ranking as ranking
from core.config import RecommenderConfig
from core.cooccurrence import ItemIndex
from core.events import Event
from core.ranking import NeighborModel, _TrendingTail
from core.ratings import UserProfile
from core.recommender import Recommender
from core.similarity import ItemNeighbors
from core.topk import top_k

#: _DENSE_SHARE values forcing each strategy: 0 never scores every item, a huge
#: share always does; 16 is the default mix.
STRATEGIES = (0, ranking._DENSE_SHARE, 1 << 40)


def reference_rank(
    model: NeighborModel,
    profile: UserProfile | None,
    n: int,
    *,
    recency_decay: float,
    popularity_weight: float,
    banned: Iterable[str] = (),
) -> list[tuple[str, float]]:
    """Every item scored one float at a time, every item sorted: the definition."""
    size = model.n_items
    ids = model.items.ids
    positions = model.items.positions
    totals = [0.0] * size
    weight = 1.0
    for item_id in reversed(profile.recent if profile is not None else []):
        row = positions.get(item_id, size)
        if row < size:
            for j, s in zip(model.neighbors.indices[row].tolist(),
                            model.neighbors.scores[row].tolist(), strict=True):
                if j >= 0:
                    totals[j] += s * weight
        weight *= recency_decay
    if popularity_weight and model.trending.size:
        trending = model.trending.tolist()
        for j in range(size):
            totals[j] += popularity_weight * (trending[j] if j < len(trending) else 0.0)
    out = set(banned)
    listed = [(ids[j], totals[j]) for j in range(size)
              if math.isfinite(totals[j]) and totals[j] > 0 and ids[j] not in out]
    listed.sort(key=lambda pair: (-pair[1], pair[0]))
    return listed[: max(n, 0)]


@contextmanager
def strategy(dense_share: int, chunk_entries: int | None = None) -> Iterator[None]:
    """Force the strategy (and optionally the chunk size) of the batch path."""
    with mock.patch.object(ranking, "_DENSE_SHARE", dense_share), mock.patch.object(
        ranking, "_CHUNK_ENTRIES", chunk_entries or ranking._CHUNK_ENTRIES
    ):
        yield


def random_model(
    rng: np.random.Generator,
    n_items: int,
    k: int,
    *,
    score_levels: Sequence[float] = (0.25, 0.5, 1.0),
    trend_levels: Sequence[float] = (0.0, 0.5, 1.0),
    extra_ids: int = 2,
) -> NeighborModel:
    """A snapshot whose ids are not in position order, with ties everywhere."""
    names = [f"i{n:03d}" for n in range(n_items + extra_ids)]
    rng.shuffle(names)
    indices = rng.integers(-1, n_items, size=(n_items, k)).astype(np.int32)
    scores = rng.choice(np.asarray(score_levels, dtype=np.float32), size=(n_items, k))
    scores[indices < 0] = 0.0
    trending = rng.choice(np.asarray(trend_levels), size=n_items)
    return NeighborModel(ItemIndex(names), ItemNeighbors(indices, scores), trending, 7)


def random_profile(rng: np.random.Generator, ids: Sequence[str], length: int) -> UserProfile:
    pool = [*ids, "unknown-1", "unknown-2"]
    recent = list(dict.fromkeys(rng.choice(pool, size=length).tolist()))
    return UserProfile(ratings=dict.fromkeys(recent, 1.0), recent=recent,
                       purchased=dict.fromkeys(rng.choice(pool, size=2).tolist(), 0.0))


def test_reference_agrees_with_the_module_example() -> None:
    model = NeighborModel.from_neighbor_lists(
        1, {"a": [("b", 0.5), ("c", 0.25)], "b": [("a", 0.5)]}, {"a": 1.0, "c": 0.5}, k=2)
    profile = UserProfile(ratings={"a": 1.0}, recent=["a"])
    expected = [("b", 0.5), ("c", 0.25)]
    assert reference_rank(model, profile, 2, recency_decay=0.8, popularity_weight=0.0,
                          banned={"a"}) == expected
    for share in STRATEGIES:
        with strategy(share):
            assert model.rank(profile, 2, recency_decay=0.8, popularity_weight=0.0,
                              banned={"a"}) == expected


@pytest.mark.parametrize("share", STRATEGIES)
@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_single_equals_reference_on_larger_models(share: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    model = random_model(rng, n_items=300, k=6)
    ids = model.items.ids[: model.n_items]
    profiles: list[UserProfile | None] = [
        random_profile(rng, ids, int(length)) for length in rng.integers(0, 60, size=25)
    ]
    profiles += [None, UserProfile()]
    banned = [set(p.purchased) if p is not None else set() for p in profiles]
    for pw, decay in [(0.01, 0.8), (0.0, 1.0), (1.0, 0.5)]:
        with strategy(share, chunk_entries=64):
            batch = model.rank_many(profiles, 12, recency_decay=decay, popularity_weight=pw,
                                    banned=banned)
            single = [model.rank(p, 12, recency_decay=decay, popularity_weight=pw, banned=b)
                      for p, b in zip(profiles, banned, strict=True)]
        expected = [reference_rank(model, p, 12, recency_decay=decay, popularity_weight=pw,
                                   banned=b) for p, b in zip(profiles, banned, strict=True)]
        assert batch == single == expected


def test_trending_walk_goes_past_many_candidates_and_bans() -> None:
    # The top 150 trending items are banned or candidates that score below any
    # prior (negative similarities), and trending is tied
    # in long runs: the walk must double its window several times and still
    # take the first free items in (-prior, id) order.
    n_items = 400
    names = [f"t{(n * 7919) % 1000:03d}" for n in range(n_items)]  # distinct, unsorted
    trending = np.repeat([1.0, 0.5, 0.25, 0.125], n_items // 4)
    indices = np.full((n_items, 100), -1, dtype=np.int32)
    scores = np.zeros((n_items, 100), dtype=np.float32)
    indices[0, :] = np.arange(1, 101)  # item 0's neighbours: the next 100 items
    scores[0, :] = -0.5  # negative: candidates that rank below the tail
    model = NeighborModel(ItemIndex(names), ItemNeighbors(indices, scores), trending, 1)
    profile = UserProfile(recent=[names[0]])
    banned = {names[0], *names[101:150]}
    for share in STRATEGIES:
        with strategy(share):
            got = model.rank(profile, 5, recency_decay=1.0, popularity_weight=0.2,
                             banned=banned)
        want = reference_rank(model, profile, 5, recency_decay=1.0, popularity_weight=0.2,
                              banned=banned)
        assert got == want
        assert [i for i, _ in got] == sorted(names[150:200])[:5]


def test_trending_prefix_is_exact_with_ties_at_every_cut() -> None:
    rng = np.random.default_rng(3)
    values = rng.choice([0.0, 0.1, 0.2, 0.3, np.nan, np.inf, -1.0], size=500)
    ids = [f"x{n}" for n in rng.permutation(500)]
    full = sorted((j for j in range(500) if np.isfinite(values[j]) and values[j] > 0),
                  key=lambda j: (-values[j], ids[j]))
    tail = _TrendingTail(values, ids)
    for length in (1, 5, 64, 65, 200, 10_000):
        prefix = tail.prefix(length).tolist()
        assert len(prefix) >= min(length, len(full))
        assert prefix == full[: len(prefix)]


def test_cold_and_empty_cases_match_the_old_behaviour() -> None:
    model = NeighborModel.from_neighbor_lists(
        1, {"a": [("b", 0.5)]}, {"a": 1.0, "b": 0.0, "c": 0.5}, k=1)
    cold = UserProfile()
    # No prior: zero scores are never listed.
    assert model.rank(None, 3, recency_decay=0.8, popularity_weight=0.0) == []
    assert model.rank(cold, 3, recency_decay=0.8, popularity_weight=0.0) == []
    # With a prior a cold user gets the trending items, zero-trending ones left out.
    assert model.rank(None, 5, recency_decay=0.8, popularity_weight=0.5) == [
        ("a", 0.5), ("c", 0.25)]
    # Unknown and beyond-snapshot items in the history only age the known ones.
    profile = UserProfile(recent=["a", "zzz"])
    assert model.rank(profile, 5, recency_decay=0.5, popularity_weight=0.0) == [("b", 0.25)]
    assert model.rank(profile, 0, recency_decay=0.5, popularity_weight=0.0) == []
    empty = NeighborModel.empty(3)
    assert empty.rank_many([profile, None], 4, recency_decay=0.8, popularity_weight=0.01) == [
        [], []]
    assert model.rank_many([], 4, recency_decay=0.8, popularity_weight=0.01) == []


def test_banned_must_match_profiles() -> None:
    model = NeighborModel.empty(2)
    with pytest.raises(ValueError, match="one collection per profile"):
        model.rank_many([None, None], 3, recency_decay=0.8, popularity_weight=0.0, banned=[()])


def test_recommend_many_equals_recommend_for_a_trained_recommender() -> None:
    # the ranking the stream publishes with: the snapshot's neighbours alone
    model = Recommender(RecommenderConfig(refresh_every=0, history=6, neighbors=4,
                                          ranking="neighbours"))
    rng = np.random.default_rng(11)
    items = [f"m{n}" for n in range(40)]
    kinds = ["view", "click", "purchase"]
    for t in range(600):
        user = f"u{int(rng.integers(0, 30))}"
        model.observe(Event(user, items[int(rng.zipf(1.5)) % 40], float(t),
                            kinds[int(rng.integers(0, 3))]))
    snapshot = model.refresh()
    users = [*sorted(model.users), "nobody"]
    requests = [(u, model.users.get(u)) for u in users]
    exclude = {u: items[:3] for u in users[::2]}
    for liked in (False, True):
        many = snapshot.recommend_many(requests, 8, model.config,
                                       filter_already_liked_items=liked, exclude=exclude)
        one = [model.recommend(u, 8, filter_already_liked_items=liked,
                               exclude=exclude.get(u, ())) for u in users]
        assert many == one
        for recs, (user, profile) in zip(many, requests, strict=True):
            assert recs.model_version == snapshot.version
            assert recs.cold_start == (profile is None or not profile.recent)
            out = set(exclude.get(user, ()))
            if profile is not None:
                out |= set(profile.purchased) | (set(profile.ratings) if liked else set())
            assert out.isdisjoint(recs.item_ids)


def test_top_k_with_positions_matches_a_full_sort() -> None:
    rng = np.random.default_rng(5)
    for size, tied in [(10, True), (100, True), (2_000, True), (100, False), (2_000, False)]:
        scores = rng.choice([0.0, 0.5, 1.0, 2.0, -1.0, np.nan, np.inf, -np.inf], size=size)
        if not tied:  # long runs of distinct values: the sampled floor must stay low
            scores = np.where(rng.random(size) < 0.9, rng.random(size), scores)
        positions = rng.permutation(3 * size)[:size]
        ids = [f"p{n}" for n in rng.permutation(3 * size)]
        for k in (1, 3, 50):
            want = sorted(((int(p), float(s)) for p, s in zip(positions, scores, strict=True)
                           if np.isfinite(s) and s > 0), key=lambda c: (-c[1], ids[c[0]]))[:k]
            assert top_k(scores, k, ids=ids, positions=positions) == want
