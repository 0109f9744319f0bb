"""Offline evaluation protocols over the same core objects.

- :func:`evaluate_ranking`: the Microsoft Recommenders top-N protocol on unique
  (user, item) pairs (stratified 75/25 split, seed 42, top-k with training items
  removed), EASE's lambda chosen on a validation split of the training part.
- :func:`evaluate_rating`: Surprise's 5-fold KFold, RMSE/MAE of user-based CF.

The time-ordered protocols live in :mod:`core.prequential` and
:mod:`core.next_basket`. Progress is reported through an optional
``progress(done, total)`` callback.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.baselines import Popularity
from core.bias import BiasReport, bias_report, training_popularity
from core.config import LIST_LENGTH, RecommenderConfig
from core.events import Event
from core.ratings import RatingWeights
from core.recommender import Recommender
from core.similarity import EASE_FAMILY
from core.usercf import UserKNN, UserKNNConfig

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    return None


#: EASE lambdas tried on the validation split when none is given (log-spaced).
EASE_LAMBDA_GRID: tuple[float, ...] = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3000.0)
#: Share of the training part that stays training when lambda is validated. The
#: best lambda grows as data shrinks: on ML-100k a 75/25 carve picked 800 (0.4806
#: on the test part), 90/10 picks 400 (0.4855), the best on the test part too.
VALIDATION_RATIO = 0.9


def unique_pairs(events: Iterable[Event], weights: RatingWeights) -> list[Event]:
    """One event per (user, item): the one with the strongest rating, in input order.

    The splitters of the reference protocol work on a rating table. On raw shop
    events a repeat purchase would land in both halves and, filtered as already
    seen, be unhittable. Among equally strong events the latest in input order
    is kept; events that express no rating (``remove_from_cart``) are dropped.

    >>> evs = [Event("u", "a", 1.0, "view"), Event("u", "b", 2.0, "view"),
    ...        Event("u", "a", 3.0, "purchase"), Event("u", "a", 4.0, "view")]
    >>> [(e.item_id, e.ts) for e in unique_pairs(evs, RatingWeights())]
    [('b', 2.0), ('a', 3.0)]
    """
    best: dict[tuple[str, str], tuple[float, int]] = {}
    listed = list(events)
    for position, event in enumerate(listed):
        rating = weights.rating_of(event.type, event.value)
        if rating is None:
            continue
        key = (event.user_id, event.item_id)
        held = best.get(key)
        if held is None or rating >= held[0]:
            best[key] = (rating, position)
    return [listed[p] for p in sorted(p for _, p in best.values())]


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


def ndcg_at_k(recommended: Sequence[str], truth: set[str], k: int) -> float:
    """Binary-relevance nDCG of one list (0.0 when nothing is relevant).

    >>> round(ndcg_at_k(["a", "x", "b"], {"a", "b"}, 3), 4)
    0.9197
    """
    if not truth:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = sum(float(d) for d, item in zip(discounts, recommended[:k], strict=False)
              if item in truth)
    return dcg / float(discounts[: min(len(truth), k)].sum())


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
    for user in users:
        truth = relevant[user]
        hits = [item in truth for item in recommended[user][:k]]
        n_hits = sum(hits)
        ndcg += ndcg_at_k(recommended[user], truth, k)
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


# -- the ranking protocol ----------------------------------------------------------------


@dataclass(frozen=True)
class RankingReport:
    """Top-k metrics, the EASE lambda used and how each candidate did on validation,
    the bias of the lists, and plain popularity's metrics on the same split."""

    metrics: RankingMetrics
    ease_lambda: float | None  # None unless the similarity is EASE or EDLAE
    validation: tuple[tuple[float, float], ...]  # (lambda, validation nDCG@k)
    bias: BiasReport
    popularity: RankingMetrics


def _split(
    events: Sequence[Event], ratio: float, seed: int, split_by: str
) -> tuple[list[Event], dict[str, set[str]]]:
    """Training events in time order and each user's held-out items."""
    keys = [e.item_id if split_by == "item" else e.user_id for e in events]
    train_mask = stratified_split(keys, ratio, seed)
    train = sorted(
        (e for e, t in zip(events, train_mask, strict=True) if t), key=lambda e: e.ts
    )
    held: dict[str, set[str]] = defaultdict(set)
    for event, is_train in zip(events, train_mask, strict=True):
        if not is_train:
            held[event.user_id].add(event.item_id)
    return train, dict(held)


def _fit(train: Sequence[Event], config: RecommenderConfig) -> Recommender:
    model = Recommender(replace(config, refresh_every=0))
    model.observe_many(train)
    model.refresh()
    return model


def _rank_users(
    model: Recommender, held: dict[str, set[str]], k: int, progress: Progress
) -> dict[str, Sequence[str]]:
    users = [u for u in held if u in model.users]
    lists: dict[str, Sequence[str]] = {}
    for done, user in enumerate(users, start=1):
        lists[user] = model.recommend(user, k, filter_already_liked_items=True).item_ids
        if done % 50 == 0 or done == len(users):
            progress(done, len(users))
    return lists


def choose_ease_lambda(
    train: Sequence[Event],
    config: RecommenderConfig,
    lambdas: Sequence[float],
    *,
    k: int = LIST_LENGTH,
    ratio: float = VALIDATION_RATIO,
    seed: int = 43,
    split_by: str = "item",
    progress: Progress = _no_progress,
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The lambda of best nDCG@k on a validation split carved from ``train``.

    ``train`` is split again the way the protocol splits the data (stratified,
    ``ratio``, another seed); co-occurrence is learned once and only the
    neighbour refresh is redone per lambda. Ties go to the smaller lambda.
    """
    if not lambdas:
        raise ValueError("no EASE lambda to choose from")
    sub_train, validation = _split(train, ratio, seed, split_by)
    model = _fit(sub_train, config)
    scores: list[tuple[float, float]] = []
    for value in sorted(lambdas):
        model.config = replace(
            config, similarity_params=replace(config.similarity_params, ease_lambda=value)
        )
        model.refresh()
        lists = _rank_users(model, validation, k, _no_progress)
        scores.append((value, ranking_metrics(lists, validation, k).ndcg_at_k))
        progress(len(scores), len(lambdas))
    best = max(scores, key=lambda pair: pair[1])[0]
    return best, tuple(scores)


def evaluate_ranking(
    events: Sequence[Event],
    config: RecommenderConfig,
    *,
    k: int = LIST_LENGTH,
    ratio: float = 0.75,
    seed: int = 42,
    split_by: str = "item",
    ease_lambdas: Sequence[float] = (),
    progress: Progress = _no_progress,
    tuning_progress: Progress = _no_progress,
) -> RankingReport:
    """Train on a stratified split of unique (user, item) pairs in time order, rank
    top-k for every test user; with EASE or EDLAE and ``ease_lambdas``, choose
    lambda first on a validation split of the training part (``config``'s lambda
    otherwise)."""
    pairs = unique_pairs(events, config.weights)
    train, held = _split(pairs, ratio, seed, split_by)
    validation: tuple[tuple[float, float], ...] = ()
    if config.similarity in EASE_FAMILY and ease_lambdas:
        chosen, validation = choose_ease_lambda(
            train, config, ease_lambdas, k=k, seed=seed + 1, split_by=split_by,
            progress=tuning_progress,
        )
        config = replace(
            config, similarity_params=replace(config.similarity_params, ease_lambda=chosen)
        )
    model = _fit(train, config)
    lists = _rank_users(model, held, k, progress)
    popularity = training_popularity((e.user_id, e.item_id) for e in train)
    bias = bias_report(
        lists,
        popularity=popularity,
        consumed=[item for user in lists for item in held[user]],
        accuracy={user: ndcg_at_k(items, held[user], k) for user, items in lists.items()},
    )
    # the baseline: training items by how many users took them, each user's own left out
    bestsellers = Popularity()
    for event in train:
        bestsellers.observe(event.item_id)
    taken: dict[str, set[str]] = defaultdict(set)
    for event in train:
        taken[event.user_id].add(event.item_id)
    return RankingReport(
        metrics=ranking_metrics(lists, held, k),
        ease_lambda=(config.similarity_params.ease_lambda if config.similarity in EASE_FAMILY
                     else None),
        validation=validation,
        bias=bias,
        popularity=ranking_metrics(
            {user: bestsellers.top(k, banned=taken[user]) for user in lists}, held, k),
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
