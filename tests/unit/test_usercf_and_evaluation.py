from __future__ import annotations

import math

import numpy as np
import pytest

from core.evaluation import kfold_indices, ranking_metrics, stratified_split
from core.usercf import UserKNN, UserKNNConfig, seed_formula, user_means_and_similarities


def test_seed_formula_hand_computed_example() -> None:
    # Users rate items x, y, z (u has not rated z).
    #   u: x=4, y=2          mean 3
    #   v: x=5, y=1, z=4     mean 10/3
    #   w: x=1, y=5, z=2     mean 8/3
    ratings = [("u", "x", 4), ("u", "y", 2), ("v", "x", 5), ("v", "y", 1), ("v", "z", 4),
               ("w", "x", 1), ("w", "y", 5), ("w", "z", 2)]
    model = UserKNN.fit([(a, b, float(r)) for a, b, r in ratings], UserKNNConfig(shrinkage=0))
    # Over common items {x, y}, mean-centred by each user's overall mean:
    #   u: (1, -1); v: (5/3, -7/3); w: (-5/3, 7/3)
    cu = np.array([1.0, -1.0])
    cv = np.array([5 / 3, -7 / 3])
    w_uv = cu @ cv / (np.linalg.norm(cu) * np.linalg.norm(cv))
    w_uw = -w_uv
    expected = 3 + (w_uv * (4 - 10 / 3) + w_uw * (2 - 8 / 3)) / (abs(w_uv) + abs(w_uw))
    assert w_uv == pytest.approx(12 / math.sqrt(2) / math.sqrt(74 / 9) / 3)
    assert model.estimate("u", "z") == pytest.approx(expected)
    assert expected == pytest.approx(3 + 2 / 3)


def test_seed_formula_uses_the_k_most_similar_raters() -> None:
    ratings = [("u", "x", 5.0), ("u", "y", 1.0),
               ("near", "x", 5.0), ("near", "y", 1.0), ("near", "z", 5.0),
               ("far", "x", 1.0), ("far", "y", 5.0), ("far", "z", 5.0)]
    model = UserKNN.fit(ratings, UserKNNConfig(k=1, shrinkage=0))
    # only "near" (w = 1) counts: mean_u + (5 - 11/3) = 3 + 4/3
    assert model.estimate("u", "z") == pytest.approx(3 + 4 / 3)


def test_unknown_user_gets_global_mean_and_unknown_item_user_mean() -> None:
    model = UserKNN.fit([("a", "x", 4.0), ("b", "x", 2.0), ("a", "y", 2.0)], UserKNNConfig())
    assert model.estimate("nobody", "x") == pytest.approx(8 / 3)
    assert model.estimate("a", "never") == pytest.approx(3.0)


def test_seed_formula_with_no_weight_is_the_user_mean() -> None:
    assert seed_formula(3.5, np.zeros(2), np.array([1.0, 2.0])) == 3.5


def test_shrinkage_pulls_small_overlaps_towards_zero() -> None:
    r = np.array([[5.0, 3.0, 1.0], [4.0, 3.0, 1.0]])
    _, raw = user_means_and_similarities(r, r > 0, 0.0)
    _, shrunk = user_means_and_similarities(r, r > 0, 10.0)
    assert shrunk[0, 1] == pytest.approx(raw[0, 1] * 2 / 12)


def test_stratified_split_keeps_ratio_per_group() -> None:
    groups = ["a"] * 8 + ["b"] * 4 + ["c"] * 1
    mask = stratified_split(groups, 0.75, seed=42)
    per = {g: int(mask[[x == g for x in groups]].sum()) for g in "abc"}
    assert per == {"a": 6, "b": 3, "c": 1}
    assert np.array_equal(mask, stratified_split(groups, 0.75, seed=42))


def test_kfold_partitions_every_index_once() -> None:
    folds = kfold_indices(23, 5, seed=0)
    assert [len(f) for f in folds] == [5, 5, 5, 4, 4]
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))


def test_ranking_metrics_hand_example() -> None:
    recs = {"u": ["a", "x", "b"], "v": ["y", "z", "c"], "only_recs": ["a"]}
    truth = {"u": {"a", "b"}, "v": {"c", "d", "e", "f"}}
    m = ranking_metrics(recs, truth, k=3)
    ndcg_u = (1 + 1 / 2) / (1 + 1 / math.log2(3))
    ndcg_v = (1 / 2) / (1 + 1 / math.log2(3) + 1 / 2)
    assert m.users == 2
    assert m.ndcg_at_k == pytest.approx((ndcg_u + ndcg_v) / 2)
    assert m.map_at_k == pytest.approx(((1 + 2 / 3) / 2 + (1 / 3) / 4) / 2)
    assert m.precision_at_k == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m.recall_at_k == pytest.approx((1 + 1 / 4) / 2)
