"""User-based collaborative filtering with the mean-centred seed formula.

    r_hat(u, i) = mean_u + sum_v w_uv (r_vi - mean_v) / sum_v |w_uv|

over the ``k`` users v most similar to u among those who rated i. ``w_uv`` is the
Pearson-like correlation of the two users' mean-centred ratings over their
common items, shrunk towards 0 for small overlaps:
``w_uv * (n_uv - 1) / (n_uv - 1 + shrinkage)``.

>>> ratings = [("a", "x", 5.0), ("a", "y", 3.0), ("b", "x", 4.0), ("b", "y", 2.0),
...            ("b", "z", 4.0)]
>>> model = UserKNN.fit(ratings, UserKNNConfig(k=5, shrinkage=0.0))
>>> round(model.estimate("a", "z"), 3)  # 4 + (4 - 10/3): b is a's only neighbour
4.667
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from core.cooccurrence import ItemIndex


@dataclass(frozen=True)
class UserKNNConfig:
    """k neighbours, shrinkage of the correlation, and the rating scale for clipping."""

    k: int = 40
    shrinkage: float = 100.0
    min_rating: float = 1.0
    max_rating: float = 5.0
    max_users: int = 50_000  # the user-user matrix is dense

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError("k must be positive")
        if self.shrinkage < 0:
            raise ValueError("shrinkage must be non-negative")


class UserKNN:
    """A fitted user-user model: means, similarities and the training ratings."""

    def __init__(
        self,
        config: UserKNNConfig,
        users: ItemIndex,
        items: ItemIndex,
        ratings: np.ndarray,
        rated: np.ndarray,
        means: np.ndarray,
        similarities: np.ndarray,
    ) -> None:
        self.config = config
        self.users = users
        self.items = items
        self.ratings = ratings
        self.rated = rated
        self.means = means
        self.similarities = similarities
        self.global_mean = float(ratings[rated].mean()) if rated.any() else 0.0
        self._raters = [np.flatnonzero(rated[:, i]) for i in range(rated.shape[1])]

    @classmethod
    def fit(cls, triples: Iterable[tuple[str, str, float]], config: UserKNNConfig) -> UserKNN:
        users, items = ItemIndex(), ItemIndex()
        coords = [(users.add(u), items.add(i), float(r)) for u, i, r in triples]
        if len(users) > config.max_users:
            raise ValueError(f"{len(users)} users exceed max_users={config.max_users}")
        ratings = np.zeros((len(users), len(items)))
        rated = np.zeros_like(ratings, dtype=bool)
        if coords:
            u_idx, i_idx, values = (np.asarray(c) for c in zip(*coords, strict=True))
            ratings[u_idx.astype(int), i_idx.astype(int)] = values
            rated[u_idx.astype(int), i_idx.astype(int)] = True
        return cls(
            config, users, items, ratings, rated,
            *user_means_and_similarities(ratings, rated, config.shrinkage),
        )

    def estimate(self, user_id: str, item_id: str) -> float:
        """The seed formula's prediction, clipped to the rating scale."""
        return float(self.predict_many([(user_id, item_id)])[0])

    def predict_many(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        out = np.empty(len(pairs))
        by_item: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for row, (user_id, item_id) in enumerate(pairs):
            u = self.users.get(user_id)
            i = self.items.get(item_id)
            if u is None:
                out[row] = self.global_mean
            elif i is None:
                out[row] = self.means[u]
            else:
                by_item[i].append((row, u))
        k = self.config.k
        for i, requests in by_item.items():
            raters = self._raters[i]
            deviations = self.ratings[raters, i] - self.means[raters]
            for row, u in requests:
                candidates = raters[raters != u]
                dev = deviations[raters != u]
                weights = self.similarities[u, candidates]
                if weights.size > k:
                    best = np.argpartition(-weights, k - 1)[:k]
                    weights, dev = weights[best], dev[best]
                out[row] = seed_formula(self.means[u], weights, dev)
        return np.clip(out, self.config.min_rating, self.config.max_rating)


def seed_formula(mean_u: float, weights: np.ndarray, deviations: np.ndarray) -> float:
    """``mean_u + sum(w * dev) / sum(|w|)``; ``mean_u`` when all weights are 0.

    >>> seed_formula(3.0, np.array([0.5, -0.25]), np.array([1.0, -2.0]))
    4.333333333333333
    """
    norm = float(np.abs(weights).sum())
    if norm == 0.0:
        return float(mean_u)
    return float(mean_u + float(weights @ deviations) / norm)


def user_means_and_similarities(
    ratings: np.ndarray, rated: np.ndarray, shrinkage: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-user means and the shrunk correlation of mean-centred ratings.

    >>> r = np.array([[5.0, 3.0, 0.0], [4.0, 2.0, 4.0]])
    >>> means, sims = user_means_and_similarities(r, r > 0, 0.0)
    >>> means.tolist(), np.round(sims, 3).tolist()
    ([4.0, 3.333...], [[0.0, 0.949], [0.949, 0.0]])
    """
    mask = rated.astype(np.float64)
    counts = mask.sum(axis=1)
    means = np.divide(ratings.sum(axis=1), counts, out=np.zeros(len(counts)), where=counts > 0)
    centred = (ratings - means[:, None]) * mask
    numerator = centred @ centred.T
    squares = centred**2
    left = squares @ mask.T  # sum over common items of u's squared deviations
    denominator = np.sqrt(left * left.T)
    sims = np.divide(
        numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0
    )
    if shrinkage > 0:
        common = mask @ mask.T
        sims *= np.maximum(common - 1.0, 0.0) / (np.maximum(common - 1.0, 0.0) + shrinkage)
    np.fill_diagonal(sims, 0.0)
    return means, sims
