"""Top-k selection: of one score vector, and per row of a dense or sparse matrix.

Ties are broken deterministically (by position for rows; by item id for
:func:`top_k`), so the same inputs always give the same order.

>>> top_k(np.array([0.5, 2.0, 2.0, 0.0]), 3, ids=["a", "c", "b", "d"])
[(2, 2.0), (1, 2.0), (0, 0.5)]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def top_k(
    scores: np.ndarray,
    k: int,
    *,
    ids: Sequence[str] | None = None,
    positions: np.ndarray | None = None,
) -> list[tuple[int, float]]:
    """The ``k`` best finite, positive entries as (position, score), best first.

    Equal scores are ordered by ``ids[position]`` when ids are given (stable
    across processes whose positions differ), else by position. With
    ``positions`` the vector is sparse: ``scores[i]`` is the score of item
    ``positions[i]`` (distinct positions), and both the result and the tie-break
    refer to those positions.

    >>> top_k(np.array([1.0, 2.0, 1.0]), 2, ids=["x", "c", "b", "a"], positions=np.array([2, 1, 3]))
    [(1, 2.0), (3, 1.0)]
    """
    if k <= 0 or scores.size == 0:
        return []
    usable = _usable_at_or_above_kth(scores, k)
    if usable.size == 0:
        return []
    if usable.size > k:
        values = scores[usable]
        # Everything at or above the k-th largest value, so ties at the
        # boundary are all candidates and the id tie-break decides.
        threshold = np.partition(values, values.size - k)[values.size - k]
        usable = usable[values >= threshold]
    where = usable if positions is None else positions[usable]
    candidates = list(zip(where.tolist(), scores[usable].tolist(), strict=True))
    if ids is None:
        candidates.sort(key=lambda c: (-c[1], c[0]))
    else:
        candidates.sort(key=lambda c: (-c[1], ids[c[0]]))
    return candidates[:k]


_SAMPLE_STRIDE = 16


def _usable_at_or_above_kth(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of finite, positive scores: all of them, or, on long vectors,
    a subset that surely holds every one at or above the k-th largest.

    The floor is the k-th largest usable value among every ``_SAMPLE_STRIDE``-th
    score: k usable scores reach it, so the k-th largest does too.

    >>> _usable_at_or_above_kth(np.array([0.0, np.nan, 3.0, -1.0, np.inf, 2.0]), 1).tolist()
    [2, 5]
    """
    if scores.size >= _SAMPLE_STRIDE * 2 * k:
        sample = scores[::_SAMPLE_STRIDE]
        sample = sample[np.isfinite(sample) & (sample > 0)]
        if sample.size >= k:
            floor = np.partition(sample, sample.size - k)[sample.size - k]
            reach = np.flatnonzero(scores >= floor)
            finite: np.ndarray = reach[np.isfinite(scores[reach])]
            return finite
    return np.flatnonzero(np.isfinite(scores) & (scores > 0))


def top_k_per_row_dense(
    matrix: np.ndarray, k: int, *, by_magnitude: bool = False, tie_rank: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` largest positive entries: (indices int32, scores float32).

    With ``by_magnitude`` the ``k`` entries of largest absolute value are kept
    with their sign (non-zero ones), for signed weights such as EASE's.
    Equal entries are ordered by ``tie_rank[column]`` (default: the column).
    Missing slots hold index -1 and score 0.

    >>> idx, val = top_k_per_row_dense(np.array([[0.0, 3.0, 1.0], [2.0, -1.0, 0.0]]), 2)
    >>> idx.tolist(), val.tolist()
    ([[1, 2], [0, -1]], [[3.0, 1.0], [2.0, 0.0]])
    """
    n_rows, n_cols = matrix.shape
    k_eff = min(k, n_cols)
    indices = np.full((n_rows, k), -1, dtype=np.int32)
    scores = np.zeros((n_rows, k), dtype=np.float32)
    if k_eff == 0 or n_rows == 0:
        return indices, scores
    # Row blocks bound the temporary index arrays on large catalogues.
    for start in range(0, n_rows, _DENSE_BLOCK_ROWS):
        block = matrix[start : start + _DENSE_BLOCK_ROWS]
        key = np.abs(block) if by_magnitude else block
        if k_eff < n_cols:
            part = np.argpartition(-key, k_eff - 1, axis=1)[:, :k_eff]
        else:
            part = np.tile(np.arange(n_cols), (block.shape[0], 1))
        values = np.take_along_axis(block, part, axis=1)
        keys = np.take_along_axis(key, part, axis=1)
        ties = part if tie_rank is None else tie_rank[part]
        order = np.lexsort((ties, -keys), axis=1)
        part = np.take_along_axis(part, order, axis=1)
        values = np.take_along_axis(values, order, axis=1)
        positive = (values != 0) if by_magnitude else (values > 0)
        stop = start + block.shape[0]
        indices[start:stop, :k_eff] = np.where(positive, part, -1)
        scores[start:stop, :k_eff] = np.where(positive, values, 0.0)
    return indices, scores


_DENSE_BLOCK_ROWS = 1024


def top_k_per_row_sparse(
    matrix: sp.csr_matrix, k: int, *, tie_rank: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of a CSR matrix, the ``k`` largest positive entries.

    Equal entries are ordered by ``tie_rank[column]`` (default: the column), so
    callers whose positions differ can still agree (rank of the item id).
    Column indices need not be sorted within a row.

    >>> m = sp.csr_matrix(np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 2.0]]))
    >>> idx, val = top_k_per_row_sparse(m, 1)
    >>> idx.tolist(), val.tolist()
    ([[1], [0]], [[3.0], [2.0]])
    """
    n_rows = matrix.shape[0]
    indices = np.full((n_rows, k), -1, dtype=np.int32)
    scores = np.zeros((n_rows, k), dtype=np.float32)
    if k <= 0 or matrix.nnz == 0:
        return indices, scores
    lengths = np.diff(matrix.indptr)
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), lengths)
    data, cols = matrix.data, matrix.indices
    keep = data > 0
    # Sorting every entry by (row, score, tie) was most of a neighbour refresh
    # (rows of up to 2,000 pairs, k = 100): rows longer than k first drop what
    # lies below their k-th largest score, and only the rest is sorted.
    long_rows = np.flatnonzero(lengths > k)
    if long_rows.size:
        floor = np.full(n_rows, -np.inf)
        floor[long_rows] = _kth_largest_positive(matrix, long_rows, k)
        keep &= data >= floor[rows]
    rows, data, cols = rows[keep], data[keep], cols[keep]
    order = np.lexsort((cols if tie_rank is None else tie_rank[cols], -data, rows))
    rows, data, cols = rows[order], data[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n_rows))
    rank = np.arange(rows.size) - starts[rows]
    take = rank < k
    indices[rows[take], rank[take]] = cols[take]
    scores[rows[take], rank[take]] = data[take]
    return indices, scores


def offsets_within_rows(lengths: np.ndarray) -> np.ndarray:
    """For rows of ``lengths`` entries laid end to end, each entry's place in its row.

    >>> offsets_within_rows(np.array([2, 0, 3])).tolist()
    [0, 1, 0, 1, 2]
    """
    offsets: np.ndarray = np.arange(int(lengths.sum())) - np.repeat(
        np.cumsum(lengths) - lengths, lengths)
    return offsets


#: Cells of the padded block :func:`_kth_largest_positive` selects in at once.
_PADDED_BLOCK_CELLS = 1 << 22


def _kth_largest_positive(matrix: sp.csr_matrix, rows: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th largest positive entry of each of ``rows`` (each longer than
    ``k``; -inf where a row has fewer positive entries).

    The rows are laid out padded with -inf, a block of rows at a time, and
    partitioned in one call per block.

    >>> m = sp.csr_matrix(np.array([[5.0, 0.0, 4.0, 9.0], [-1.0, 2.0, 0.0, 0.0]]))
    >>> _kth_largest_positive(m, np.array([0, 1]), 2).tolist()
    [5.0, -inf]
    """
    indptr = matrix.indptr
    lengths = indptr[rows + 1] - indptr[rows]
    kth = np.empty(rows.size)
    first = 0
    while first < rows.size:
        # as many rows as fit the block, at least one (each row is longer than k,
        # so no more than cells // (k + 1) can)
        widest = np.maximum.accumulate(lengths[first:first + _PADDED_BLOCK_CELLS // (k + 1)])
        fits = np.arange(1, widest.size + 1) * widest <= _PADDED_BLOCK_CELLS
        stop = first + max(1, int(np.count_nonzero(fits)))
        block, block_lengths = rows[first:stop], lengths[first:stop]
        width = int(block_lengths.max())
        row_of = np.repeat(np.arange(block.size), block_lengths)
        column = offsets_within_rows(block_lengths)
        entry = np.repeat(indptr[block], block_lengths) + column
        values = matrix.data[entry]
        padded = np.full((block.size, width), -np.inf)
        padded[row_of, column] = np.where(values > 0, values, -np.inf)
        padded.partition(width - k, axis=1)
        kth[first:stop] = padded[:, width - k]
        first = stop
    return kth
