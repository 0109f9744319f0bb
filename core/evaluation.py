"""Offline evaluation protocols (DESIGN.md section 5) over the same core objects.

- :func:`evaluate_ranking`: the Microsoft Recommenders top-N protocol
  (stratified 75/25 split, seed 42, top-k with training items removed).
- :func:`evaluate_prequential`: test-then-learn over the events in time order.
- :func:`evaluate_rating`: Surprise's 5-fold KFold, RMSE/MAE of user-based CF.

Progress is reported through an optional ``progress(done, total)`` callback.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.events import Event
from core.recommender import Recommender, RecommenderConfig
from core.usercf import UserKNN, UserKNNConfig

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    return None


# -- splitting ---------------------------------------------------------------------


def stratified_split(
    groups: Sequence[str], ratio: float = 0.75, seed: int = 42
) -> np.ndarray:
    """Boolean train mask: per group, a random ``ratio`` of its rows go to train.

    Reproduces ``recommenders.datasets.python_splitters.python_stratified_split``:
    one uniform draw per row from ``np.random.seed(seed)``, rows ordered within
    their group by the draw, the first ``round(ratio * count)`` kept for training.

    >>> stratified_split(["a", "a", "a", "a", "b", "b"], 0.5, seed=1).tolist()
    [False, False, True, True, False, True]
    """
    n = len(groups)
    np.random.seed(seed)  # the reference protocol seeds the global generator
    draws = np.random.rand(n)
    codes = np.unique(np.asarray(groups, dtype=object), return_inverse=True)[1]
    order = np.lexsort((draws, codes))
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[codes[order]] + 1
    limit = np.round(ratio * counts)
    return np.asarray(rank <= limit[codes])


def kfold_indices(n: int, folds: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Test indices of each fold, as Surprise's ``KFold(shuffle=True, random_state=seed)``.

    >>> [f.tolist() for f in kfold_indices(5, 2, seed=0)]
    [[2, 0, 1], [3, 4]]
    """
    indices = np.arange(n)
    np.random.RandomState(seed).shuffle(indices)
    sizes = [n // folds + (1 if f < n % folds else 0) for f in range(folds)]
    bounds = np.cumsum([0, *sizes])
    return [indices[bounds[f] : bounds[f + 1]] for f in range(folds)]


# -- ranking metrics -----------------------------------------------------------------


@dataclass(frozen=True)
class RankingMetrics:
    users: int
    ndcg_at_k: float
    map_at_k: float
    precision_at_k: float
    recall_at_k: float


def ranking_metrics(
    recommended: dict[str, Sequence[str]], relevant: dict[str, set[str]], k: int
) -> RankingMetrics:
    """Binary-relevance top-k metrics averaged over users present in both.

    MAP divides by the number of relevant items (as Microsoft Recommenders does).

    >>> m = ranking_metrics({"u": ["a", "x", "b"]}, {"u": {"a", "b"}}, k=3)
    >>> round(m.ndcg_at_k, 4), round(m.map_at_k, 4), round(m.precision_at_k, 4)
    (0.9197, 0.8333, 0.6667)
    """
    users = [u for u in recommended if relevant.get(u)]
    ndcg = ap = precision = recall = 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for user in users:
        truth = relevant[user]
        hits = [item in truth for item in recommended[user][:k]]
        n_hits = sum(hits)
        dcg = sum(d for d, h in zip(discounts, hits, strict=False) if h)
        idcg = discounts[: min(len(truth), k)].sum()
        ndcg += dcg / idcg
        running = 0
        precision_sum = 0.0
        for rank, hit in enumerate(hits, start=1):
            if hit:
                running += 1
                precision_sum += running / rank
        ap += precision_sum / len(truth)
        precision += n_hits / k
        recall += n_hits / len(truth)
    count = max(len(users), 1)
    return RankingMetrics(
        users=len(users),
        ndcg_at_k=float(ndcg) / count,
        map_at_k=ap / count,
        precision_at_k=precision / count,
        recall_at_k=recall / count,
    )


# -- protocols -------------------------------------------------------------------------


def evaluate_ranking(
    events: Sequence[Event],
    config: RecommenderConfig,
    *,
    k: int = 10,
    ratio: float = 0.75,
    seed: int = 42,
    split_by: str = "item",
    progress: Progress = _no_progress,
) -> RankingMetrics:
    """Train on a stratified split in time order, rank top-k for every test user."""
    keys = [e.item_id if split_by == "item" else e.user_id for e in events]
    train_mask = stratified_split(keys, ratio, seed)
    train = sorted(
        (e for e, t in zip(events, train_mask, strict=True) if t), key=lambda e: e.ts
    )
    test_items: dict[str, set[str]] = defaultdict(set)
    for event, is_train in zip(events, train_mask, strict=True):
        if not is_train:
            test_items[event.user_id].add(event.item_id)
    model = Recommender(_manual_refresh(config))
    model.observe_many(train)
    model.refresh()
    test_users = [u for u in test_items if u in model.users]
    recommended: dict[str, Sequence[str]] = {}
    for done, user in enumerate(test_users, start=1):
        recommended[user] = model.recommend(user, k, filter_already_liked_items=True).item_ids
        if done % 50 == 0 or done == len(test_users):
            progress(done, len(test_users))
    return ranking_metrics(recommended, dict(test_items), k)


def _manual_refresh(config: RecommenderConfig) -> RecommenderConfig:
    from dataclasses import replace

    return replace(config, refresh_every=0)


@dataclass(frozen=True)
class PrequentialMetrics:
    events: int
    hr_at_k: float
    mrr_at_k: float


def evaluate_prequential(
    events: Sequence[Event],
    config: RecommenderConfig,
    *,
    k: int = 10,
    progress: Progress = _no_progress,
) -> PrequentialMetrics:
    """Test-then-learn: before learning each new (user, item) of a user with history,
    recommend top-k without seen items and score a hit if the item is in it.

    Events are taken in time order (stable for equal timestamps); the model
    refreshes on its own schedule (``config.refresh_every``), as the stream does.
    """
    ordered = sorted(events, key=lambda e: e.ts)
    model = Recommender(config)
    tested = hits = 0
    reciprocal = 0.0
    total = len(ordered)
    for done, event in enumerate(ordered, start=1):
        profile = model.users.get(event.user_id)
        if profile is not None and profile.recent and event.item_id not in profile.ratings:
            ranked = model.recommend(event.user_id, k, filter_already_liked_items=True)
            tested += 1
            if event.item_id in ranked.item_ids:
                hits += 1
                reciprocal += 1.0 / (ranked.item_ids.index(event.item_id) + 1)
        model.observe(event)
        if done % 1000 == 0 or done == total:
            progress(done, total)
    return PrequentialMetrics(
        events=tested,
        hr_at_k=hits / tested if tested else 0.0,
        mrr_at_k=reciprocal / tested if tested else 0.0,
    )


@dataclass(frozen=True)
class RatingMetrics:
    folds: int
    rmse: float
    mae: float
    fold_rmse: tuple[float, ...]


def evaluate_rating(
    events: Sequence[Event],
    config: UserKNNConfig,
    *,
    folds: int = 5,
    seed: int = 0,
    progress: Progress = _no_progress,
) -> RatingMetrics:
    """Surprise's KFold protocol for the seed formula; metrics averaged over folds.

    Each event must carry an explicit rating (``value``).
    """
    triples = [(e.user_id, e.item_id, e.value) for e in events if e.value is not None]
    if len(triples) < folds:
        raise ValueError("rating evaluation needs events with explicit values")
    rmses: list[float] = []
    maes: list[float] = []
    for fold, test_idx in enumerate(kfold_indices(len(triples), folds, seed), start=1):
        test_mask = np.zeros(len(triples), dtype=bool)
        test_mask[test_idx] = True
        train = [(u, i, float(r)) for (u, i, r), t in zip(triples, test_mask, strict=True) if not t]
        test = [triples[j] for j in test_idx]
        model = UserKNN.fit(train, config)
        predicted = model.predict_many([(u, i) for u, i, _ in test])
        errors = predicted - np.asarray([float(r) for _, _, r in test])
        rmses.append(math.sqrt(float(np.mean(errors**2))))
        maes.append(float(np.mean(np.abs(errors))))
        progress(fold, folds)
    return RatingMetrics(
        folds=folds,
        rmse=float(np.mean(rmses)),
        mae=float(np.mean(maes)),
        fold_rmse=tuple(rmses),
    )
