"""Unit tests of the recommender's parts: ratings, co-occurrence, similarities, ranking."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import scipy.sparse as sp

from core.config import RecommenderConfig
from core.cooccurrence import CooccurrenceTable, _prune_rows
from core.events import Event
from core.ratings import RatingWeights, UserProfile
from core.recommender import Recommender
from core.similarity import SIMILARITIES, SimilarityParams
from core.topk import top_k, top_k_per_row_dense, top_k_per_row_sparse


def make_events(rows: list[tuple[str, str]], kind: str = "view") -> list[Event]:
    return [Event(u, i, float(t), kind) for t, (u, i) in enumerate(rows, start=1)]


def test_rating_is_the_strongest_signal_and_mean_is_exact() -> None:
    weights = RatingWeights()
    profile = UserProfile()
    profile.observe("a", weights.rating_of("view", None), 1.0, history=10)
    profile.observe("b", weights.rating_of("add_to_cart", None), 2.0, history=10)
    profile.observe("a", weights.rating_of("purchase", None), 3.0, history=10)
    profile.observe("b", weights.rating_of("view", None), 4.0, history=10)  # weaker: ignored
    assert profile.ratings == {"a": 5.0, "b": 3.0}
    assert profile.mean == pytest.approx(4.0)
    assert profile.recent == ["a", "b"]


def test_remove_from_cart_expresses_no_preference() -> None:
    profile = UserProfile()
    assert not profile.observe("a", RatingWeights().rating_of("remove_from_cart", None), 5.0, 10)
    assert profile.ratings == {} and profile.recent == [] and profile.last_ts == 5.0


def test_history_is_bounded_and_most_recent_last() -> None:
    profile = UserProfile()
    for t, item in enumerate("abcdea"):
        profile.observe(item, 1.0, float(t), history=3)
    assert profile.recent == ["d", "e", "a"]
    assert len(profile.ratings) == 5


def test_cooccurrence_counts_pairs_both_ways() -> None:
    table = CooccurrenceTable()
    table.observe("a", [])
    table.observe("b", ["a"])
    table.observe("a", ["b"])  # a second user
    m = table.matrix().toarray()
    a, b = table.items.get("a"), table.items.get("b")
    assert m[a, b] == m[b, a] == 2.0
    assert np.trace(m) == 0
    assert table.counts().tolist() == [2.0, 1.0]


def test_cooccurrence_row_width_is_bounded_keeping_strongest() -> None:
    m = sp.csr_matrix(np.array([[0, 5, 1, 3], [5, 0, 0, 0], [1, 0, 0, 2], [3, 0, 2, 0]], float))
    pruned = _prune_rows(m, 2).toarray()
    assert pruned[0].tolist() == [0, 5, 0, 3]
    assert pruned[2].tolist() == [1, 0, 0, 2]


def test_cooccurrence_state_round_trip() -> None:
    table = CooccurrenceTable(max_row_width=10)
    for item, hist in [("a", []), ("b", ["a"]), ("c", ["a", "b"])]:
        table.observe(item, hist)
    copy = CooccurrenceTable.from_state(orjson.loads(orjson.dumps(table.to_state())))
    assert (copy.matrix() != table.matrix()).nnz == 0
    assert copy.items.ids == table.items.ids and copy.counts().tolist() == table.counts().tolist()


def test_cosine_and_jaccard_match_hand_computation() -> None:
    # users: u1 {a, b}, u2 {a, b}, u3 {a, c}
    C = sp.csr_matrix(np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]], float))
    counts = np.array([3.0, 2.0, 1.0])
    cos = SIMILARITIES["cosine"](C, counts, 2, SimilarityParams())
    assert cos.of(0) == [(1, pytest.approx(2 / np.sqrt(6))), (2, pytest.approx(1 / np.sqrt(3)))]
    jac = SIMILARITIES["jaccard"](C, counts, 2, SimilarityParams())
    assert jac.of(0) == [(1, pytest.approx(2 / 3)), (2, pytest.approx(1 / 3))]


def test_ease_matches_closed_form() -> None:
    rng = np.random.default_rng(0)
    X = (rng.random((40, 6)) < 0.4).astype(float)
    gram = X.T @ X
    C = sp.csr_matrix(gram - np.diag(np.diag(gram)))
    lam = 2.0
    P = np.linalg.inv(gram + lam * np.eye(6))
    B = np.eye(6) - P / np.diag(P)
    nb = SIMILARITIES["ease"](C, np.diag(gram), 5, SimilarityParams(ease_lambda=lam))
    for i in range(6):
        for j, s in nb.of(i):
            assert s == pytest.approx(B[i, j], rel=1e-4)


def test_edlae_matches_closed_form_with_the_dropout_emphasised_penalty() -> None:
    rng = np.random.default_rng(1)
    X = (rng.random((50, 7)) < 0.4).astype(float)
    gram = X.T @ X
    C = sp.csr_matrix(gram - np.diag(np.diag(gram)))
    lam, p = 3.0, 0.25
    P = np.linalg.inv(gram + np.diag(p / (1 - p) * np.diag(gram) + lam))
    B = np.eye(7) - P / np.diag(P)
    nb = SIMILARITIES["edlae"](C, np.diag(gram), 6,
                               SimilarityParams(ease_lambda=lam, edlae_dropout=p))
    found = 0
    for i in range(7):
        for j, s in nb.of(i):
            assert s == pytest.approx(B[i, j], rel=1e-4)
            found += 1
    assert found > 7


def test_edlae_without_dropout_is_ease() -> None:
    rng = np.random.default_rng(2)
    X = (rng.random((30, 5)) < 0.5).astype(float)
    gram = X.T @ X
    C = sp.csr_matrix(gram - np.diag(np.diag(gram)))
    params = SimilarityParams(ease_lambda=2.0, edlae_dropout=0.0)
    edlae = SIMILARITIES["edlae"](C, np.diag(gram), 4, params)
    ease = SIMILARITIES["ease"](C, np.diag(gram), 4, params)
    assert edlae.indices.tolist() == ease.indices.tolist()
    np.testing.assert_allclose(edlae.scores, ease.scores)


@pytest.mark.parametrize("dropout", [-0.1, 1.0])
def test_edlae_dropout_must_be_a_probability_below_one(dropout: float) -> None:
    with pytest.raises(ValueError, match="edlae_dropout"):
        SimilarityParams(edlae_dropout=dropout)


def test_ease_refuses_catalogues_that_do_not_fit() -> None:
    C = sp.csr_matrix((5, 5))
    with pytest.raises(ValueError, match="EASE needs"):
        SIMILARITIES["ease"](C, np.ones(5), 2, SimilarityParams(ease_max_items=4))


def test_top_k_orders_ties_by_id_and_drops_non_positive() -> None:
    scores = np.array([1.0, 3.0, 3.0, 0.0, -np.inf, 2.0])
    ids = ["f", "z", "b", "x", "y", "c"]
    assert top_k(scores, 3, ids=ids) == [(2, 3.0), (1, 3.0), (5, 2.0)]
    assert [p for p, _ in top_k(scores, 10)] == [1, 2, 5, 0]


def test_top_k_per_row_dense_and_sparse_agree() -> None:
    rng = np.random.default_rng(1)
    dense = np.where(rng.random((30, 30)) < 0.3, rng.random((30, 30)), 0.0)
    np.fill_diagonal(dense, 0)
    i1, s1 = top_k_per_row_dense(dense, 4)
    i2, s2 = top_k_per_row_sparse(sp.csr_matrix(dense), 4)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)


def test_recommender_ranks_by_neighbours_and_excludes_purchases() -> None:
    model = Recommender(RecommenderConfig(refresh_every=0, popularity_weight=0.0))
    model.observe_many(make_events([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "b"),
                                    ("u2", "c"), ("u3", "a")]))
    model.observe(Event("u3", "b", 10.0, "purchase"))
    model.refresh()
    recs = model.recommend("u3", 5)
    assert "b" not in recs.item_ids and recs.item_ids[0] == "c"
    assert "a" in model.recommend("u3", 5).item_ids  # viewed, not bought: allowed
    assert "a" not in model.recommend("u3", 5, filter_already_liked_items=True).item_ids
    assert "c" not in model.recommend("u3", 5, exclude=["c"]).item_ids


def test_cold_user_gets_trending_items_flagged() -> None:
    model = Recommender(RecommenderConfig(refresh_every=0))
    model.observe_many(make_events([("u1", "a"), ("u2", "a"), ("u3", "b")]))
    model.refresh()
    recs = model.recommend("stranger", 3)
    assert recs.cold_start and recs.item_ids == ("a", "b")


def test_trending_decays_with_event_time() -> None:
    day = 86_400.0
    model = Recommender(RecommenderConfig(refresh_every=0, popularity_half_life_days=1.0))
    model.observe(Event("u1", "old", 0.0 + 1, "view"))
    model.observe(Event("u2", "old", 0.0 + 2, "view"))
    model.observe(Event("u3", "new", 3 * day, "view"))
    model.refresh()
    trending = dict(zip(model.cooccurrence.items.ids, model.model.trending, strict=True))
    assert trending["new"] == 1.0 and trending["old"] == pytest.approx(2 / 8, rel=1e-3)


def test_refresh_runs_on_schedule() -> None:
    model = Recommender(RecommenderConfig(refresh_every=3))
    model.observe_many(make_events([("u1", "a"), ("u1", "b")]))
    assert model.model_version == 0
    model.observe(Event("u2", "a", 9.0, "view"))
    assert model.model_version == 1 and model.events_since_refresh == 0


def test_recommender_state_round_trip_gives_same_recommendations() -> None:
    model = Recommender(RecommenderConfig(refresh_every=4))
    model.observe_many(make_events([("u1", "a"), ("u1", "b"), ("u2", "a"), ("u2", "c"),
                                    ("u3", "b"), ("u3", "c"), ("u1", "d")]))
    copy = Recommender.from_state(orjson.loads(orjson.dumps(model.to_state())), model.config)
    for user in ("u1", "u2", "u3", "nobody"):
        assert copy.recommend(user, 3) == model.recommend(user, 3)
    event = Event("u2", "d", 20.0, "click")
    model.observe(event)
    copy.observe(event)
    assert copy.to_state() == model.to_state()


def test_unknown_similarity_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown similarity"):
        RecommenderConfig(similarity="pearson")
