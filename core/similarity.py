"""Item neighbours from co-occurrence: cosine, jaccard, EASE and EDLAE, chosen by name.

Every function takes the co-occurrence matrix ``C`` (CSR, no diagonal), the
per-item user counts, the number of neighbours ``k`` and optionally a rank per
item that orders equal scores (the rank of the item id, so that processes that
number items differently agree), and returns :class:`ItemNeighbors`: for each
item its ``k`` best neighbours, padded with -1.

>>> import scipy.sparse as sp
>>> C = sp.csr_matrix(np.array([[0, 2, 1], [2, 0, 0], [1, 0, 0]], dtype=float))
>>> nb = SIMILARITIES["cosine"](C, np.array([2.0, 2.0, 1.0]), 2, SimilarityParams())
>>> nb.indices.tolist(), [[round(float(s), 3) for s in row] for row in nb.scores]
([[1, 2], [0, -1], [0, -1]], [[1.0, 0.707], [1.0, 0.0], [0.707, 0.0]])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from core.ratings import STATE_VERSION, _check_version
from core.topk import top_k_per_row_dense, top_k_per_row_sparse


@dataclass(frozen=True)
class SimilarityParams:
    """Knobs of the similarity functions (each uses the ones it needs).

    ``shrinkage`` damps cosine/jaccard scores of rare pairs:
    ``s * c / (c + shrinkage)`` with ``c`` the co-occurrence count.
    ``ease_lambda`` is the L2 weight of EASE and EDLAE; ``edlae_dropout`` is
    EDLAE's dropout probability p (its emphasised penalty on each item is
    ``p / (1 - p)`` times the item's user count); ``ease_max_items`` refuses
    catalogues whose dense Gram matrix would not fit.
    """

    shrinkage: float = 0.0
    ease_lambda: float = 400.0
    edlae_dropout: float = 0.5
    ease_max_items: int = 20_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.edlae_dropout < 1.0:
            raise ValueError("edlae_dropout must be in [0, 1)")


@dataclass(frozen=True)
class ItemNeighbors:
    """Top-k neighbours per item position: ``indices`` (-1 = none) and ``scores``."""

    indices: np.ndarray  # (n_items, k) int32
    scores: np.ndarray  # (n_items, k) float32, 0 where indices == -1

    @property
    def n_items(self) -> int:
        return int(self.indices.shape[0])

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def of(self, position: int) -> list[tuple[int, float]]:
        """Neighbours of one item as (position, score), best first."""
        # plain ints and floats in one call each: per-element numpy scalars cost
        # more than the rest of a refresh's conversion
        row, scores = self.indices[position].tolist(), self.scores[position].tolist()
        return [(j, s) for j, s in zip(row, scores, strict=True) if j >= 0]

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "indices": self.indices.tolist(),
            "scores": [[float(s) for s in row] for row in self.scores],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> ItemNeighbors:
        _check_version(state, "ItemNeighbors")
        indices = np.asarray(state["indices"], dtype=np.int32)
        scores = np.asarray(state["scores"], dtype=np.float32)
        if indices.ndim != 2:
            indices = indices.reshape(0, 0)
            scores = scores.reshape(0, 0)
        return cls(indices=indices, scores=scores)

    @classmethod
    def empty(cls, n_items: int = 0, k: int = 0) -> ItemNeighbors:
        return cls(
            indices=np.full((n_items, k), -1, dtype=np.int32),
            scores=np.zeros((n_items, k), dtype=np.float32),
        )


SimilarityFunction = Callable[
    [sp.csr_matrix, np.ndarray, int, SimilarityParams, np.ndarray | None], ItemNeighbors
]


def _shrunk(C: sp.csr_matrix, sims: np.ndarray, shrinkage: float) -> np.ndarray:
    if shrinkage > 0:
        return np.asarray(sims * (C.data / (C.data + shrinkage)))
    return sims


def _pair_rows_cols(C: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(C.shape[0], dtype=np.int32), np.diff(C.indptr))
    return rows, C.indices


def neighbors_cosine(
    C: sp.csr_matrix,
    counts: np.ndarray,
    k: int,
    params: SimilarityParams,
    tie_rank: np.ndarray | None = None,
) -> ItemNeighbors:
    """Cosine of binary user vectors: ``C[i, j] / sqrt(n_i n_j)``."""
    rows, cols = _pair_rows_cols(C)
    norms = np.sqrt(np.maximum(counts, 1.0))
    sims = _shrunk(C, C.data / (norms[rows] * norms[cols]), params.shrinkage)
    return _from_pairs(C, sims, k, tie_rank)


def neighbors_jaccard(
    C: sp.csr_matrix,
    counts: np.ndarray,
    k: int,
    params: SimilarityParams,
    tie_rank: np.ndarray | None = None,
) -> ItemNeighbors:
    """Jaccard of the item's user sets: ``C / (n_i + n_j - C)``."""
    rows, cols = _pair_rows_cols(C)
    union = np.maximum(counts[rows] + counts[cols] - C.data, 1.0)
    sims = _shrunk(C, C.data / union, params.shrinkage)
    return _from_pairs(C, sims, k, tie_rank)


def neighbors_ease(
    C: sp.csr_matrix,
    counts: np.ndarray,
    k: int,
    params: SimilarityParams,
    tie_rank: np.ndarray | None = None,
) -> ItemNeighbors:
    """EASE (Steck 2019): ``B = I - P diag(1/diag P)``, ``P = (G + lambda I)^-1``.

    ``G`` is the Gram matrix: ``C`` with the item counts on the diagonal. Dense,
    O(n^3): only for catalogues up to ``params.ease_max_items``. The ``k``
    weights of largest magnitude are kept with their sign: EASE's negative
    weights carry real information (items one set of users does not take).
    """
    return _zero_diagonal_regression(C, counts, k, params, tie_rank,
                                     np.full(C.shape[0], params.ease_lambda))


def neighbors_edlae(
    C: sp.csr_matrix,
    counts: np.ndarray,
    k: int,
    params: SimilarityParams,
    tie_rank: np.ndarray | None = None,
) -> ItemNeighbors:
    """EDLAE (Steck 2020, "Autoencoders that don't overfit towards the identity"):
    EASE's zero-diagonal regression with the dropout-emphasised penalty
    ``Lambda = p / (1 - p) diag(G) + lambda I``, ``p = params.edlae_dropout``.

    Denoising with dropout p penalises each item's weights in proportion to how
    often the item occurs, so popular items are regularised more than EASE's
    uniform ``lambda`` does; ``p = 0`` is EASE. Same cost and limit as EASE.

    >>> C = sp.csr_matrix(np.array([[0.0, 2.0], [2.0, 0.0]]))
    >>> nb = neighbors_edlae(C, np.array([3.0, 2.0]), 1,
    ...                      SimilarityParams(ease_lambda=1.0, edlae_dropout=0.5))
    >>> [[round(float(s), 4) for s in row] for row in nb.scores]
    [[0.2857], [0.4]]
    """
    p = params.edlae_dropout
    return _zero_diagonal_regression(C, counts, k, params, tie_rank,
                                     p / (1.0 - p) * counts + params.ease_lambda)


def _zero_diagonal_regression(
    C: sp.csr_matrix,
    counts: np.ndarray,
    k: int,
    params: SimilarityParams,
    tie_rank: np.ndarray | None,
    penalty: np.ndarray,
) -> ItemNeighbors:
    """``B = I - P diag(1/diag P)``, ``P = (G + diag(penalty))^-1``: the least-squares
    item-to-item regression with a zero diagonal and a per-item L2 ``penalty``,
    its ``k`` weights of largest magnitude per item kept with their sign."""
    n = C.shape[0]
    if n > params.ease_max_items:
        raise ValueError(
            f"EASE needs a dense {n}x{n} matrix; the limit is {params.ease_max_items} items"
        )
    if n == 0:
        return ItemNeighbors.empty(0, k)
    gram = C.toarray()
    gram[np.diag_indices(n)] = counts + penalty
    precision = scipy.linalg.inv(gram, overwrite_a=True, check_finite=False)
    weights = precision / (-np.diag(precision))
    weights[np.diag_indices(n)] = 0.0
    indices, scores = top_k_per_row_dense(weights, k, by_magnitude=True, tie_rank=tie_rank)
    return ItemNeighbors(indices=indices, scores=scores)


def _from_pairs(
    C: sp.csr_matrix, sims: np.ndarray, k: int, tie_rank: np.ndarray | None
) -> ItemNeighbors:
    scored = sp.csr_matrix((sims, C.indices, C.indptr), shape=C.shape)
    indices, scores = top_k_per_row_sparse(scored, k, tie_rank=tie_rank)
    return ItemNeighbors(indices=indices, scores=scores)


#: The similarity a neighbour refresh uses, by configured name.
SIMILARITIES: dict[str, SimilarityFunction] = {
    "cosine": neighbors_cosine,
    "jaccard": neighbors_jaccard,
    "ease": neighbors_ease,
    "edlae": neighbors_edlae,
}


#: Similarities with EASE's L2 weight (``ease_lambda``): the one a ranking
#: evaluation chooses on a validation split.
EASE_FAMILY = frozenset({"ease", "edlae"})

#: Similarities a row can be computed from alone (its own row of C plus item
#: counts): the ones a worker can refresh for just the items of its partitions.
ROW_LOCAL_SIMILARITIES = frozenset({"cosine", "jaccard"})


def neighbors_for_rows(
    rows: Mapping[str, Mapping[str, float]],
    counts: Mapping[str, float],
    k: int,
    similarity: str,
    params: SimilarityParams,
) -> dict[str, list[tuple[str, float]]]:
    """Neighbours of some items from their own rows of C, best first.

    For the row-local similarities this equals the rows of a full refresh: the
    same function runs on a matrix holding just these rows, and ties are broken
    by item id in both.

    >>> rows = {"a": {"b": 2.0, "c": 1.0}}
    >>> neighbors_for_rows(rows, {"a": 3.0, "b": 2.0, "c": 1.0}, 2, "jaccard", SimilarityParams())
    {'a': [('b', 0.6666666865348816), ('c', 0.3333333432674408)]}
    """
    if similarity not in ROW_LOCAL_SIMILARITIES:
        raise ValueError(f"{similarity} needs the whole co-occurrence matrix, not rows")
    # A partition holds ~1,250 rows of up to 2,000 pairs: every per-pair step
    # runs in C (map, chain, fromiter), not in a Python generator.
    # the items these rows name, not every item counted: a round costs what changed
    ids = sorted(set(rows).union(*rows.values()))
    position = {item_id: p for p, item_id in enumerate(ids)}
    n = len(ids)
    # the rows in position order, so that their pairs come out as CSR rows
    held = sorted(rows, key=position.__getitem__)
    ordered = [rows[item_id] for item_id in held]
    widths = np.fromiter(map(len, ordered), np.int64, len(ordered))
    total = int(widths.sum())
    row_pos = np.repeat(np.fromiter(map(position.__getitem__, held), np.int64, len(held)),
                        widths)
    col_pos = np.fromiter(map(position.__getitem__, itertools.chain.from_iterable(ordered)),
                          np.int32, total)
    data = np.fromiter(itertools.chain.from_iterable(row.values() for row in ordered),
                       np.float64, total)
    off_diagonal = row_pos != col_pos
    row_pos = row_pos[off_diagonal]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(row_pos, minlength=n), out=indptr[1:])
    C = sp.csr_matrix((data[off_diagonal], col_pos[off_diagonal], indptr), shape=(n, n))
    count_vector = np.asarray([float(counts.get(item_id, 0.0)) for item_id in ids])
    # ids are sorted, so positions are already id ranks.
    neighbors = SIMILARITIES[similarity](C, count_vector, k, params, None)
    mine = np.fromiter(map(position.__getitem__, rows), np.int64, len(rows))
    found = np.count_nonzero(neighbors.indices[mine] >= 0, axis=1).tolist()
    # -1 pads the end of a row only: each row's first ``found`` slots are its list
    names = np.asarray(ids, dtype=object)[np.maximum(neighbors.indices[mine], 0)].tolist()
    scores = neighbors.scores[mine].tolist()
    return {item_id: list(zip(row_names[:m], row_scores[:m], strict=True))
            for item_id, row_names, row_scores, m in zip(rows, names, scores, found, strict=True)}
