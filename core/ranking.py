"""What a neighbour refresh produces, and how a user's list is ranked from it.

:class:`NeighborModel` is the snapshot that ranking reads: item neighbours and the
trending prior, by item position. The offline :class:`core.recommender.Recommender`
builds it from its own co-occurrence table; a stream worker from the neighbour
lists and item statistics that all workers share, kept up to date item by item
(:class:`core.snapshot_builder.SnapshotBuilder`). Both then rank with the same code,
which is why a replay and the stream agree item for item.

Ranking a user means scoring every item of the snapshot and listing the best by
(-score, id); users are ranked in batches (:meth:`NeighborModel.rank_many`), one
user being a batch of one. Only a neighbour of one of the user's recent items
(a *candidate*) gets a similarity; every other item scores its trending prior
alone, so among those the order is the trending order, fixed per snapshot. The
top ``n`` therefore lies among the candidates plus the first ``n`` items of the
trending order that are neither candidates nor banned, whatever the ties: a
user with few neighbour entries (recent items times neighbours per item) is
ranked from those alone, at a cost that does not grow with the catalogue. A user
with many (``n_items / 16`` or more) is scored over every item, which is then
the cheaper way. Either way every
candidate's similarities are added one by one from 0.0 in history order (most
recent first, then neighbour slot), so a user gets the very same floats alone
or in any batch, and ties fall the same way.

>>> model = NeighborModel.from_neighbor_lists(
...     1, {"a": [("b", 0.5), ("c", 0.25)], "b": [("a", 0.5)]}, {"a": 1.0, "c": 0.5}, k=2)
>>> from core.ratings import UserProfile
>>> profile = UserProfile(ratings={"a": 1.0}, recent=["a"])
>>> model.rank(profile, 2, recency_decay=0.8, popularity_weight=0.0, banned={"a"})
[('b', 0.5), ('c', 0.25)]
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import RecommenderConfig
from core.cooccurrence import ItemIndex
from core.ratings import STATE_VERSION, UserProfile, _check_version
from core.reasons import (
    TRENDING_REASON,
    NeighbourEntries,
    because_many,
    neighbour_reason,
)
from core.similarity import ItemNeighbors
from core.topk import offsets_within_rows, top_k

# Neighbour entries (history items x neighbours) gathered together: bounds the
# temporary arrays of a batch (about 20 bytes an entry).
_CHUNK_ENTRIES = 1 << 15
# A user with at least n_items / _DENSE_SHARE neighbour entries is scored over
# every item (fewer, longer steps: cheaper then); any other user over the
# candidates and the trending order. Both add the same floats in the same order.
_DENSE_SHARE = 16
_NO_ITEMS = np.zeros(0, dtype=np.int64)
_NO_POSITIONS: list[int] = []


def id_ranks(ids: Sequence[str]) -> np.ndarray:
    """Each id's rank in sorted order: the tie-break that does not depend on positions.

    >>> id_ranks(["b", "c", "a"]).tolist()
    [1, 2, 0]
    """
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[sorted(range(len(ids)), key=ids.__getitem__)] = np.arange(len(ids))
    return ranks


class _TrendingTail:
    """Every item's prior (``popularity_weight * trending``) and the items in
    ranking order by it, (-prior, id), over those whose prior could be listed.

    The order is built as far as asked: an exact prefix, extended by doubling.

    >>> tail = _TrendingTail(np.array([0.5, 0.0, 0.5, 1.0]), ["d", "c", "b", "a"])
    >>> tail.prefix(2).tolist()
    [3, 2, 0]
    >>> tail.first_free(2, stamp=np.array([0, 0, 5, 0]), floor=5).tolist()
    [3, 0]
    """

    def __init__(self, values: np.ndarray, ids: Sequence[str]) -> None:
        self.values = values
        self._ids = ids
        self._usable = np.flatnonzero(np.isfinite(values) & (values > 0))
        self._order = _NO_ITEMS

    def prefix(self, length: int) -> np.ndarray:
        """The first ``length`` or more items of the order (all of it when shorter)."""
        order, usable = self._order, self._usable
        if length <= order.size or order.size == usable.size:
            return order
        want = min(max(length, 2 * order.size, 64), usable.size)
        chosen = usable
        if want < usable.size:
            values = self.values[usable]
            # Everything at or above the want-th largest prior: ties at the cut
            # come along, so the prefix is exact whatever the ids.
            threshold = np.partition(values, values.size - want)[values.size - want]
            chosen = usable[values >= threshold]
        positions = chosen.tolist()
        keys = zip((-self.values[chosen]).tolist(), [self._ids[p] for p in positions],
                   positions, strict=True)
        order = np.asarray([p for _, _, p in sorted(keys)], dtype=np.int64)
        self._order = order
        return order

    def first_free(self, n: int, stamp: np.ndarray, floor: int) -> np.ndarray:
        """The first ``n`` items of the order whose ``stamp`` is below ``floor``."""
        step = 2 * n + 16
        chunk = self.prefix(step)[:step]
        taken: np.ndarray = chunk[stamp[chunk] < floor][:n]
        if taken.size == n or chunk.size < step:
            return taken
        found = [taken]
        need, start = n - taken.size, step
        while need > 0:
            step *= 2
            chunk = self.prefix(start + step)[start : start + step]
            if chunk.size == 0:
                break
            taken = chunk[stamp[chunk] < floor][:need]
            found.append(taken)
            need -= taken.size
            start += step
        return np.concatenate(found)


def _sums_sparse(
    items: np.ndarray, values: np.ndarray, mark: np.ndarray, entry: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct items of one user's entries and each one's sum, in O(entries).

    ``items`` (-1 for padding) and ``values`` are the entries; ``mark`` is
    scratch with one slot per item plus a last one for the padding, and
    ``entry`` holds 0, 1, ... at least as long as ``items``. Every entry gets a
    representative (one entry of its item, whichever the scatter kept), and one
    bincount over representatives adds each item's values in entry order.

    >>> items, sums = _sums_sparse(np.array([2, -1, 0, 2]), np.array([0.5, 9.0, 1.0, 0.25]),
    ...                            np.empty(4, dtype=np.int64), np.arange(4))
    >>> sorted(zip(items.tolist(), sums.tolist()))
    [(0, 1.0), (2, 0.75)]
    """
    padding_slot = mark.size - 1
    entries = entry[: items.size]
    mark[padding_slot] = entries.size  # stays out of range unless there is padding
    mark[items] = entries  # -1 lands in the padding slot
    representative = mark[items]
    stands_for_item = representative == entries
    padding = int(mark[padding_slot])
    if padding < entries.size:
        stands_for_item[padding] = False
    sums = np.bincount(representative, weights=values, minlength=entries.size)
    kept = np.flatnonzero(stands_for_item)
    return items[kept], sums[kept]


@dataclass(frozen=True)
class Recommendations:
    """A ranked list for one user; ``cold_start`` when it is trending items only."""

    user_id: str
    item_ids: tuple[str, ...]
    scores: tuple[float, ...]
    cold_start: bool
    model_version: int
    #: per item, the source that put it there and why
    sources: tuple[str, ...]
    reasons: tuple[str, ...]

    def as_pairs(self) -> list[tuple[str, float]]:
        return list(zip(self.item_ids, self.scores, strict=True))


@dataclass(frozen=True)
class NeighborModel:
    """Neighbours and trending prior by item position, as of one refresh.

    ``items`` may know more items than the snapshot (it can be the live index of
    a co-occurrence table); positions at or beyond ``n_items`` are ignored.
    """

    items: ItemIndex
    neighbors: ItemNeighbors
    trending: np.ndarray
    version: int
    # Derived once per snapshot, on first use: recency weights per decay, and
    # the trending order per popularity weight. Arrays above are not mutated.
    _powers: dict[float, np.ndarray] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _tails: dict[float, _TrendingTail] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def n_items(self) -> int:
        return self.neighbors.n_items

    @classmethod
    def empty(cls, k: int) -> NeighborModel:
        return cls(ItemIndex(), ItemNeighbors.empty(0, k), np.zeros(0), 0)

    @classmethod
    def from_neighbor_lists(
        cls,
        version: int,
        neighbor_lists: Mapping[str, Sequence[tuple[str, float]]],
        trending: Mapping[str, float],
        k: int,
    ) -> NeighborModel:
        """Build from per-item lists (best first) and per-item trending scores,
        items by id; each pair is read once, in C (map, chain, fromiter).

        >>> model = NeighborModel.from_neighbor_lists(
        ...     1, {"a": [("b", 0.5), ("c", 0.25)]}, {"d": 1.0}, k=1)
        >>> model.items.ids, model.neighbors.indices.tolist(), model.trending.tolist()
        (['a', 'b', 'c', 'd'], [[1], [-1], [-1], [-1]], [0.0, 0.0, 0.0, 1.0])
        """
        kept = [pairs[:k] for pairs in neighbor_lists.values()]
        pairs = list(itertools.chain.from_iterable(kept))
        names = list(map(operator.itemgetter(0), pairs))
        known = set(names).union(neighbor_lists, trending)
        for full in neighbor_lists.values():
            if len(full) > k:  # neighbours past the k kept are items all the same
                known.update(map(operator.itemgetter(0), full[k:]))
        items = ItemIndex(sorted(known))
        n = len(items)
        positions = items.positions
        indices = np.full((n, k), -1, dtype=np.int32)
        scores = np.zeros((n, k), dtype=np.float32)
        widths = np.fromiter(map(len, kept), np.int64, len(kept))
        rows = np.repeat(np.fromiter(map(positions.__getitem__, neighbor_lists), np.int64,
                                     len(kept)), widths)
        slots = offsets_within_rows(widths)
        indices[rows, slots] = np.fromiter(map(positions.__getitem__, names), np.int32,
                                           len(names))
        scores[rows, slots] = np.fromiter(map(operator.itemgetter(1), pairs), np.float32,
                                          len(pairs))
        trend = np.zeros(n)
        trend[np.fromiter(map(positions.__getitem__, trending), np.int64, len(trending))] = (
            np.fromiter(trending.values(), np.float64, len(trending)))
        return cls(items, ItemNeighbors(indices, scores), trend, version)

    def rank(
        self,
        profile: UserProfile | None,
        n: int,
        *,
        recency_decay: float,
        popularity_weight: float,
        banned: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """The user's top-``n`` (item id, score), leaving out ``banned`` items.

        :meth:`rank_many` for a batch of one: there is one way to rank.

        >>> model = NeighborModel.from_neighbor_lists(1, {"a": [("b", 0.5)]}, {"c": 1.0}, k=1)
        >>> model.rank(UserProfile(recent=["a"]), 3, recency_decay=1.0, popularity_weight=0.1)
        [('b', 0.5), ('c', 0.1)]
        """
        return self.rank_many(
            [profile],
            n,
            recency_decay=recency_decay,
            popularity_weight=popularity_weight,
            banned=[banned],
        )[0]

    def rank_many(
        self,
        profiles: Sequence[UserProfile | None],
        n: int,
        *,
        recency_decay: float,
        popularity_weight: float,
        banned: Sequence[Iterable[str]] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Each user's top-``n`` (item id, score), best first, one list per profile.

        An item's score is the sum, over the user's recent items known to the
        snapshot (most recent first, the r-th weighted ``recency_decay ** r``),
        of its similarity as their neighbour, plus ``popularity_weight`` times
        its trending score. Only finite, positive scores are listed, equal
        scores in item id order. A user's list depends on nothing else in the
        batch; the batch shares the setup and the gathering of neighbour rows.
        See the module docstring for why few items need looking at.

        Parameters
        ----------
        profiles
            The users, ``None`` for one without a profile (trending items only).
        n
            Items per list.
        recency_decay, popularity_weight
            As in :class:`core.config.RecommenderConfig`.
        banned
            Per profile, item ids to leave out; as long as ``profiles``.

        Returns
        -------
        list of list of (str, float)
            Per profile, in the order given. Each list depends on that profile
            alone, not on the rest of the batch or its order.

        Examples
        --------
        >>> model = NeighborModel.from_neighbor_lists(
        ...     1, {"a": [("b", 0.5), ("c", 0.5)]}, {"a": 1.0, "d": 0.5}, k=2)
        >>> model.rank_many([UserProfile(recent=["a"]), None], 2, recency_decay=1.0,
        ...                 popularity_weight=0.0, banned=[{"b"}, ()])
        [[('c', 0.5)], []]
        """
        ids = self.items.ids
        return [[(ids[p], score) for p, score in listed]
                for listed, _ in self._ranked(profiles, n, recency_decay, popularity_weight,
                                              banned)]

    def _ranked(
        self,
        profiles: Sequence[UserProfile | None],
        n: int,
        recency_decay: float,
        popularity_weight: float,
        banned: Sequence[Iterable[str]] | None,
    ) -> list[tuple[list[tuple[int, float]], NeighbourEntries | None]]:
        """:meth:`rank_many` by position, with each user's neighbour entries."""
        if banned is not None and len(banned) != len(profiles):
            raise ValueError("banned must hold one collection per profile")
        size = self.n_items
        if n <= 0 or size == 0:
            return [([], None) for _ in profiles]
        ranked: list[tuple[list[tuple[int, float]], NeighbourEntries | None]] = []
        ids = self.items.ids
        get = self.items.positions.get
        tail = self._tail(popularity_weight)
        # User u stamps the items it bans 2u + 1 and its candidates 2u + 2, so
        # "stamped by this user" is stamp >= 2u + 1: nothing needs clearing.
        stamp = np.zeros(size, dtype=np.int64)
        scored = self._scores(profiles, recency_decay, tail)
        for user, (items, scores, entries) in enumerate(scored):
            out = _NO_POSITIONS
            if banned is not None:
                out = [p for p in map(get, banned[user]) if p is not None and p < size]
            if items is None:  # scores of every item
                if out:
                    scores[out] = -np.inf  # top_k lists finite scores only
                ranked.append((top_k(scores, n, ids=ids), entries))
                continue
            floor = 2 * user + 1
            if out:
                stamp[out] = floor
                scores[stamp[items] == floor] = -np.inf
            if tail is not None:
                stamp[items] = floor + 1
                extra = tail.first_free(n, stamp, floor)
                items = np.concatenate((items, extra))
                scores = np.concatenate((scores, tail.values[extra]))
            ranked.append((top_k(scores, n, ids=ids, positions=items), entries))
        return ranked

    def recommend(
        self,
        user_id: str,
        profile: UserProfile | None,
        n: int,
        config: RecommenderConfig,
        *,
        filter_already_liked_items: bool = False,
        filter_purchased: bool = True,
        exclude: Iterable[str] = (),
    ) -> Recommendations:
        """:meth:`recommend_many` for one user, leaving out ``exclude`` too.

        >>> from core.config import RecommenderConfig
        >>> model = NeighborModel.from_neighbor_lists(1, {"a": [("b", 0.5)]}, {"a": 1.0}, k=1)
        >>> profile = UserProfile(ratings={"a": 1.0}, recent=["a"], purchased={"a": 0.0})
        >>> model.recommend("u", profile, 2, RecommenderConfig()).item_ids
        ('b',)
        """
        return self.recommend_many(
            [(user_id, profile)],
            n,
            config,
            filter_already_liked_items=filter_already_liked_items,
            filter_purchased=filter_purchased,
            exclude={user_id: exclude},
        )[0]

    def recommend_many(
        self,
        requests: Sequence[tuple[str, UserProfile | None]],
        n: int,
        config: RecommenderConfig,
        *,
        filter_already_liked_items: bool = False,
        filter_purchased: bool = True,
        exclude: Mapping[str, Iterable[str]] | None = None,
    ) -> list[Recommendations]:
        """Top-``n`` lists for many users at once, with the usual exclusions.

        Each list equals what :meth:`recommend` gives that user alone (it is the
        same code), whatever else is in the batch and in what order.

        Parameters
        ----------
        requests
            (user id, profile or ``None``) pairs; a user may appear more than once.
        n
            Items per list.
        config
            Supplies ``recency_decay`` and ``popularity_weight``.
        filter_already_liked_items, filter_purchased
            Leave out every rated item; every bought item (the default).
        exclude
            Per user id, further item ids to leave out.

        Returns
        -------
        list of Recommendations
            One per request, in the order given.

        Examples
        --------
        >>> from core.config import RecommenderConfig
        >>> model = NeighborModel.from_neighbor_lists(
        ...     3, {"a": [("b", 0.5), ("c", 0.25)]}, {"a": 1.0, "c": 0.5}, k=2)
        >>> recs = model.recommend_many(
        ...     [("u", UserProfile(ratings={"a": 1.0}, recent=["a"])), ("v", None)], 2,
        ...     RecommenderConfig(popularity_weight=0.0),
        ...     filter_already_liked_items=True, exclude={"u": ["b"]})
        >>> [(r.user_id, r.item_ids, r.cold_start) for r in recs]
        [('u', ('c',), False), ('v', (), True)]
        """
        banned: list[set[str]] = []
        for user_id, profile in requests:
            out: set[str] = set(exclude.get(user_id, ())) if exclude else set()
            if profile is not None:
                if filter_already_liked_items:
                    out.update(profile.ratings)
                if filter_purchased:
                    out.update(profile.purchased)
            banned.append(out)
        ranked = self._ranked([profile for _, profile in requests], n,
                              config.recency_decay, config.popularity_weight, banned)
        ids = self.items.ids
        reasons = because_many([[p for p, _ in listed] for listed, _ in ranked],
                                [entries for _, entries in ranked], self.n_items)
        results = []
        for (user_id, profile), (listed, _), because in zip(requests, ranked, reasons,
                                                            strict=True):
            bought = profile.purchased if profile is not None else {}
            results.append(Recommendations(
                user_id=user_id,
                item_ids=tuple(ids[p] for p, _ in listed),
                scores=tuple(score for _, score in listed),
                cold_start=profile is None or not profile.recent,
                model_version=self.version,
                sources=tuple("trending" if b is None else "neighbours" for b in because),
                reasons=tuple(TRENDING_REASON if b is None
                              else neighbour_reason(ids[b], ids[b] in bought)
                              for b in because),
            ))
        return results

    def trending_prefix(self, length: int) -> np.ndarray:
        """The first ``length`` items (or more) by trending prior, best first, ties
        by id; positions.

        >>> NeighborModel.from_neighbor_lists(1, {}, {"b": 0.5, "a": 1.0}, k=1
        ...                                   ).trending_prefix(1).tolist()
        [0]
        """
        tail = self._tail(1.0)
        return _NO_ITEMS if tail is None else tail.prefix(length)[:length]

    def neighbour_scores(self, profiles: Sequence[UserProfile | None], recency_decay: float
                         ) -> list[tuple[np.ndarray, np.ndarray, NeighbourEntries | None]]:
        """Per profile: positions and scores of every item its recent items name as
        a neighbour, without the trending prior (the floats :meth:`rank` adds), and
        the entries they were summed from (for :meth:`because`); all at once.

        >>> model = NeighborModel.from_neighbor_lists(1, {"a": [("b", 0.5)]}, {}, k=1)
        >>> [[a.tolist() for a in found[:2]] for found in model.neighbour_scores(
        ...     [UserProfile(recent=["a"]), None], 1.0)]
        [[[1], [0.5]], [[], []]]
        """
        found: list[tuple[np.ndarray, np.ndarray, NeighbourEntries | None]] = [
            (_NO_ITEMS, np.zeros(0), None) for _ in profiles]
        live = [u for u, profile in enumerate(profiles) if profile is not None and profile.recent]
        if not live or self.n_items == 0:
            return found
        for u, (items, scores, entries) in zip(
                live, self._scores([profiles[u] for u in live], recency_decay, None),
                strict=True):
            if items is None:
                items = np.flatnonzero(scores > 0)
                scores = scores[items]
            found[u] = (items, scores, entries)
        return found

    def because(self, entries: Sequence[NeighbourEntries | None],
                positions: Sequence[Sequence[int]]) -> list[list[int | None]]:
        """Per user (their :meth:`neighbour_scores` entries) and per item position
        of theirs, the recent item (a position) that names it with the largest
        weighted similarity (None: none does); see :func:`because_many`.

        >>> model = NeighborModel.from_neighbor_lists(1, {"a": [("c", 0.2)], "b": [("c", 0.5)]},
        ...                                           {}, k=1)
        >>> [(*_, entries)] = model.neighbour_scores([UserProfile(recent=["a", "b"])], 0.8)
        >>> [[model.items.ids[p] for p in found]
        ...  for found in model.because([entries], [[model.items.positions["c"]]])]
        [['b']]
        """
        return because_many(positions, entries, self.n_items)

    # -- ranking internals ---------------------------------------------------------

    def _scores(
        self,
        profiles: Sequence[UserProfile | None],
        recency_decay: float,
        tail: _TrendingTail | None,
    ) -> Iterator[tuple[np.ndarray | None, np.ndarray, NeighbourEntries]]:
        """Per profile, (items, scores, entries): its candidates and their scores,
        or (None, scores of every item) for a user with many neighbour entries;
        and the neighbour entries they were summed from (for :func:`because_many`).

        A candidate is a neighbour of a recent item, listed once, in no set
        order. Its score is its weighted similarities added one by one from 0.0
        in history order (most recent first, then neighbour slot), plus its
        prior when there is one: the very floats of a ``np.bincount`` over
        every item, which is how the full vector is computed. Scores are fresh
        arrays, the caller's to change.
        """
        size = self.n_items
        width = self.neighbors.k
        mark = np.empty(size + 1, dtype=np.int64)  # scratch of _sums_sparse
        entry = _NO_ITEMS
        for start, stop in self._chunks(profiles):
            hist, weights, rows = self._history(profiles[start:stop], recency_decay)
            neighbor_idx = self.neighbors.indices[hist].ravel()
            contribution = (self.neighbors.scores[hist] * weights[:, None]).ravel()
            bounds = [row * width for row in rows]
            for user in range(stop - start):
                first, last = bounds[user], bounds[user + 1]
                items, values = neighbor_idx[first:last], contribution[first:last]
                entries = NeighbourEntries(items, values, hist[rows[user]:rows[user + 1]], width)
                if (last - first) * _DENSE_SHARE >= size and first < last:
                    # -1 padding goes to bin 0, dropped.
                    dense = np.bincount(items + 1, weights=values, minlength=size + 1)[1:]
                    if tail is not None:
                        dense += tail.values
                    yield None, dense, entries
                    continue
                if first == last:
                    yield _NO_ITEMS, np.zeros(0), entries
                    continue
                if entry.size < last - first:
                    entry = np.arange(last - first, dtype=np.int64)
                items, sums = _sums_sparse(items, values, mark, entry)
                if tail is not None:
                    sums += tail.values[items]
                yield items, sums, entries

    def _chunks(self, profiles: Sequence[UserProfile | None]) -> Iterator[tuple[int, int]]:
        """Runs of users whose neighbour entries together stay near ``_CHUNK_ENTRIES``."""
        width = max(self.neighbors.k, 1)
        start = entries = 0
        for user, profile in enumerate(profiles):
            if profile is not None:
                entries += len(profile.recent) * width
            if entries >= _CHUNK_ENTRIES:
                yield start, user + 1
                start, entries = user + 1, 0
        if start < len(profiles):
            yield start, len(profiles)

    def _history(
        self, profiles: Sequence[UserProfile | None], recency_decay: float
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """The users' recent items known to the snapshot, most recent first.

        Returns (positions, weights, rows): user ``u``'s are
        ``positions[rows[u]:rows[u + 1]]``. The r-th most recent item weighs
        ``recency_decay ** r``, unknown items counted in r (they age the rest).
        """
        size = self.n_items
        get = self.items.positions.get
        hist: list[int] = []
        ages: list[int] = []
        rows = [0]
        longest = 0
        for profile in profiles:
            recent = profile.recent if profile is not None else ()
            if recent:
                positions = [get(item_id, size) for item_id in reversed(recent)]
                if max(positions) < size:
                    hist += positions
                    ages += range(len(positions))
                else:
                    for age, position in enumerate(positions):
                        if position < size:
                            hist.append(position)
                            ages.append(age)
                longest = max(longest, len(positions))
            rows.append(len(hist))
        weights = self._decay_powers(recency_decay, longest)[np.asarray(ages, dtype=np.int64)]
        return np.asarray(hist, dtype=np.int64), weights, rows

    def _decay_powers(self, decay: float, length: int) -> np.ndarray:
        """``decay ** r`` for r < length, as repeated products (1.0, d, d*d, ...)."""
        powers = self._powers.get(decay)
        if powers is None or powers.size < length:
            values = [1.0]
            weight = 1.0
            for _ in range(max(length, 256) - 1):
                weight *= decay
                values.append(weight)
            powers = self._powers[decay] = np.asarray(values)
        return powers

    def _tail(self, popularity_weight: float) -> _TrendingTail | None:
        """Items by prior for this weight, or None when scores carry no prior."""
        if not popularity_weight or not self.trending.size:
            return None
        tail = self._tails.get(popularity_weight)
        if tail is None:
            size = self.n_items
            values = np.zeros(size, dtype=np.float64)
            m = min(size, self.trending.size)
            values[:m] = popularity_weight * self.trending[:m]
            tail = self._tails[popularity_weight] = _TrendingTail(values, self.items.ids)
        return tail

    def neighbors_of(self, item_id: str, k: int | None = None) -> list[tuple[str, float]]:
        """An item's most similar items in this snapshot, best first."""
        position = self.items.get(item_id)
        if position is None or position >= self.n_items:
            return []
        ids = self.items.ids
        pairs = [(ids[j], s) for j, s in self.neighbors.of(position)]
        return pairs if k is None else pairs[:k]

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "model_version": self.version,
            "neighbors": self.neighbors.to_state(),
            "trending": [float(v) for v in self.trending],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], items: ItemIndex) -> NeighborModel:
        _check_version(state, "NeighborModel")
        return cls(
            items=items,
            neighbors=ItemNeighbors.from_state(state["neighbors"]),
            trending=np.asarray(state["trending"], dtype=np.float64),
            version=int(state["model_version"]),
        )
