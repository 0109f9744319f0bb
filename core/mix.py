"""A user's list from every source at once: candidates, their features, a score.

Four sources put candidates forward, each its best ``per_source``:

- ``neighbours``: items similar to the user's recent items (the snapshot's
  neighbour lists, recency-weighted);
- ``trending``: the snapshot's trending order;
- ``popular``: the items most users took, all time;
- ``buy_again``: items the customer bought before, by repurchase propensity
  (see :mod:`core.repurchase`; never, always or as learned).

Every candidate gets the features of :data:`FEATURES`, whichever source put it
forward; the scorer judged best on what customers did next orders them
(:mod:`core.learned`: a fixed blend, the learned perceptron or popularity).
Every listed item says which source put it there and why (:mod:`core.reasons`).

Time is an argument: features are taken at the user's latest event (``now``),
which is when a stream publishes the list, and when an offline replay lists
before the next event.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from core.config import RecommenderConfig
from core.learned import blend
from core.ranking import Recommendations
from core.ratings import DAY_SECONDS, UserProfile
from core.reasons import (
    POPULAR_REASON,
    TRENDING_REASON,
    NeighbourEntries,
    buy_again_reason,
    neighbour_reason,
)
from core.repurchase import DEFAULT_GAP_DAYS, propensities
from core.snapshot import Snapshot

#: What the ranker sees of each candidate, in this order (each about 0..1).
FEATURES = (
    "neighbours",  # log(1 + recency-weighted similarity to the recent items)
    "trending",  # the snapshot's trending prior
    "buy_again",  # repurchase propensity at the customer's next visit
    "bought_before",  # 1 if the customer bought it
    "times_bought",  # log(1 + times) / 3
    "seen_before",  # 1 if the user rated it (any signal)
    "popularity",  # log(1 + users who took it) / log(1 + the most any item has)
    "user_activity",  # log(1 + the user's events) / 8
    "item_age",  # log(1 + days since the item was first seen) / 6
)
SOURCES = ("neighbours", "trending", "popular", "buy_again")


#: A user's neighbour candidates: positions, scores and the entries behind them.
Neighbours = tuple[np.ndarray, np.ndarray, NeighbourEntries | None]


@dataclass(frozen=True)
class Candidates:
    """One user's candidates: positions, features (one row each) and the source
    that put each forward."""

    positions: np.ndarray
    features: np.ndarray
    sources: list[str]
    #: the neighbour entries behind the neighbour scores (for the explanations)
    entries: NeighbourEntries | None = None


def candidates(snapshot: Snapshot, profile: UserProfile | None, config: RecommenderConfig,
               banned: Collection[str] = (), neighbours: Neighbours | None = None
               ) -> Candidates:
    """The user's candidates from every source (see the module docstring);
    ``neighbours``: their :meth:`NeighborModel.neighbour_scores`, when found
    already."""
    return candidates_many(snapshot, [(profile, banned)], config,
                           None if neighbours is None else [neighbours])[0]


def candidates_many(snapshot: Snapshot,
                    requests: Sequence[tuple[UserProfile | None, Collection[str]]],
                    config: RecommenderConfig, neighbours: Sequence[Neighbours] | None = None
                    ) -> list[Candidates]:
    """:func:`candidates` of each (profile, banned items), their propensities and
    features found all at once (per user, the numpy calls cost as much as the
    features)."""
    if neighbours is None:
        neighbours = snapshot.model.neighbour_scores([profile for profile, _ in requests],
                                                     config.recency_decay)
    size = snapshot.model.n_items
    positions_of = snapshot.model.items.positions
    outs = [{p for p in map(positions_of.get, banned) if p is not None and p < size}
            for _, banned in requests]
    again = _buy_again(snapshot, [profile for profile, _ in requests], outs, config)
    chosen = [_chosen(snapshot, config, out, found, bought)
              for out, found, bought in zip(outs, neighbours, again, strict=True)]
    positions = [np.fromiter(sources, np.int64, len(sources)) for sources in chosen]
    features = _features(snapshot, [profile for profile, _ in requests], positions,
                         neighbours, again)
    return [Candidates(at, x, list(sources.values()), found[2])
            for at, x, sources, found in zip(positions, features, chosen, neighbours,
                                             strict=True)]


def _buy_again(snapshot: Snapshot, profiles: Sequence[UserProfile | None],
               outs: Sequence[set[int]], config: RecommenderConfig) -> list[dict[int, float]]:
    """Per user, the buy-again propensity of each item they bought (a position)
    and may be listed, at their next visit; all users' found at once."""
    found: list[dict[int, float]] = [{} for _ in profiles]
    if config.repeat == "never":
        return found
    model, facts = snapshot.model, snapshot.facts
    size = model.n_items
    positions_of = model.items.positions
    owners: list[int] = []
    at: list[int] = []
    times: list[float] = []
    since: list[float] = []
    for u, (profile, out) in enumerate(zip(profiles, outs, strict=True)):
        if profile is None or not profile.purchased:
            continue
        next_visit = profile.last_ts + profile.visit_gap_days(DEFAULT_GAP_DAYS) * DAY_SECONDS
        counts = profile.purchase_counts
        for item_id, last in profile.purchased.items():
            p = positions_of.get(item_id)
            if p is not None and p < size and p not in out:
                owners.append(u)
                at.append(p)
                times.append(counts.get(item_id, 1))
                since.append(next_visit - last)
    if not at:
        return found
    bought = np.asarray(at, dtype=np.int64)
    values = propensities(
        1.0 if config.repeat == "always" else facts.repeat_rate[bought], facts.gap_days[bought],
        times=np.asarray(times, dtype=np.float64),
        days_since=np.asarray(since, dtype=np.float64) / DAY_SECONDS)
    for u, p, value in zip(owners, at, values.tolist(), strict=True):
        found[u][p] = value
    return found


def _chosen(snapshot: Snapshot, config: RecommenderConfig, out: set[int],
            neighbours: Neighbours, again: Mapping[int, float]) -> dict[int, str]:
    """A user's candidates (position -> the source that put it forward), items
    at positions ``out`` left out; ``again``: the buy-again propensities of the
    items they bought."""
    model, facts = snapshot.model, snapshot.facts
    per_source = config.per_source
    chosen: dict[int, str] = {}
    ids = model.items.ids
    neighbour_at, neighbour_score, _ = neighbours
    if neighbour_at.size:
        wanted = per_source + len(out)
        best = np.arange(neighbour_at.size)
        if best.size > wanted:  # everything at or above the wanted-th score
            kth = np.partition(neighbour_score, best.size - wanted)[best.size - wanted]
            best = np.flatnonzero(neighbour_score >= kth)
        ranked = sorted(zip((-neighbour_score[best]).tolist(),
                            [ids[p] for p in neighbour_at[best].tolist()],
                            neighbour_at[best].tolist(), strict=True))
        best_first = [p for *_, p in ranked]  # distinct positions
        if out:
            best_first = [p for p in best_first if p not in out]
        chosen = dict.fromkeys(best_first[:per_source], "neighbours")
    for source, prefix in (("trending", model.trending_prefix(per_source + len(out))),
                           ("popular", facts.popular_prefix(per_source + len(out), ids))):
        chosen.update(dict.fromkeys([p for p in prefix.tolist()
                                     if p not in out and p not in chosen], source))
    likely = [p for p, value in again.items() if value > 0.0]
    if len(likely) > per_source:  # a customer's many purchases: the best and ties
        values = np.fromiter(map(again.__getitem__, likely), np.float64, len(likely))
        kth = np.partition(values, len(likely) - per_source)[len(likely) - per_source]
        likely = [p for p, value in zip(likely, values.tolist(), strict=True) if value >= kth]
    for p in sorted(likely, key=lambda p: (-again[p], ids[p]))[:per_source]:
        chosen[p] = "buy_again"  # its own reason wins over the others'
    return chosen


def _features(snapshot: Snapshot, profiles: Sequence[UserProfile | None],
              positions: Sequence[np.ndarray], neighbours: Sequence[Neighbours],
              propensities: Sequence[Mapping[int, float]]) -> list[np.ndarray]:
    """Each user's candidates' :data:`FEATURES` (one row each), taken at the user's
    latest event; every user's rows found together, each the same floats as alone."""
    model, facts = snapshot.model, snapshot.facts
    sizes = [at.size for at in positions]
    bounds = list(itertools.accumulate(sizes, initial=0))
    at = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
    n = at.size
    x = np.zeros((n, len(FEATURES)))
    if n:
        listed = at.tolist()
        names = list(map(model.items.ids.__getitem__, listed))
        # neighbours: each (user, position) looked up among the user's few entries
        base = model.n_items + 1
        keys = np.concatenate([found[0] + u * base for u, found in enumerate(neighbours)])
        if keys.size:
            scores = np.concatenate([found[1] for found in neighbours])
            order = np.argsort(keys, kind="stable")
            ordered = keys[order]
            wanted = at + np.repeat(np.arange(len(sizes)) * base, sizes)
            found_at = np.minimum(np.searchsorted(ordered, wanted), keys.size - 1)
            x[:, 0] = np.log1p(np.where(ordered[found_at] == wanted, scores[order[found_at]],
                                        0.0))
        trending = model.trending
        x[:, 1] = np.where(at < trending.size,
                           trending[np.minimum(at, max(trending.size - 1, 0))]
                           if trending.size else 0.0, 0.0)
        now = np.zeros(n)
        for profile, again, (lo, hi) in zip(profiles, propensities, itertools.pairwise(bounds),
                                            strict=True):
            if again:
                x[lo:hi, 2] = np.fromiter(map(again.get, listed[lo:hi], itertools.repeat(0.0)),
                                          np.float64, hi - lo)
            if profile is None or lo == hi:
                continue
            these = names[lo:hi]
            purchased, counts = profile.purchased, profile.purchase_counts
            if purchased:
                bought = np.fromiter(map(purchased.__contains__, these), np.bool_, hi - lo)
                x[lo:hi, 3] = bought
                rows = np.flatnonzero(bought)
                x[lo + rows, 4] = [math.log1p(counts.get(these[row], 1)) / 3.0
                                   for row in rows.tolist()]
            x[lo:hi, 5] = np.fromiter(map(profile.ratings.__contains__, these), np.bool_,
                                      hi - lo)
            x[lo:hi, 7] = math.log1p(profile.events) / 8.0
            now[lo:hi] = profile.last_ts
        if facts.counts.size:
            kept = np.minimum(at, facts.counts.size - 1)
            top = facts.most_taken
            x[:, 6] = np.log1p(facts.counts[kept]) / math.log1p(top) if top > 0 else 0.0
            seen = facts.first_seen[kept]
            x[:, 8] = np.where(seen > 0,
                               np.log1p(np.maximum(now - seen, 0.0) / DAY_SECONDS) / 6.0, 0.0)
    # copies: a list kept to learn from must not hold on to the whole batch's rows
    return [x[lo:hi].copy() for lo, hi in itertools.pairwise(bounds)]


def rank(snapshot: Snapshot, user_id: str, profile: UserProfile | None, n: int,
         config: RecommenderConfig, banned: Collection[str] = ()) -> Recommendations:
    """The user's top ``n`` over every source, best first (ties by item id), each
    item with its source and the reason it is there."""
    return rank_mix(snapshot, [(user_id, profile, banned)], n, config)[0]


#: A list asked for: the user, their profile (None: unknown) and items to leave out.
RankRequest = tuple[str, UserProfile | None, Collection[str]]


def rank_neighbours(snapshot: Snapshot, requests: Sequence[RankRequest], n: int,
                    config: RecommenderConfig, found: list[Candidates] | None = None
                    ) -> list[Recommendations]:
    """The neighbour snapshot's lists alone (similar items, then trending), all
    at once (``RECOSTREAM_RANKING=neighbours``); a user's requests in one call
    leave out the same items. No candidates are ranked (``found`` stays as it is)."""
    return snapshot.model.recommend_many(
        [(user_id, profile) for user_id, profile, _ in requests], n, config,
        filter_purchased=False, exclude={user_id: banned for user_id, _, banned in requests})


def rank_mix(snapshot: Snapshot, requests: Sequence[RankRequest], n: int,
             config: RecommenderConfig, found: list[Candidates] | None = None
             ) -> list[Recommendations]:
    """:func:`rank` for each request; the neighbour scores and the explanations
    of all of them at once (per user, their numpy calls cost as much as the
    ranking). ``found``: each request's candidates are added to it, in order
    (what the customer had, to learn from what they do next)."""
    model, learned = snapshot.model, snapshot.ranker
    ids = model.items.ids
    profiles = [profile for _, profile, _ in requests]
    ranked: list[tuple[list[int], list[str], list[float]]] = []
    entries = []
    for these in candidates_many(snapshot, [(profile, banned) for _, profile, banned in requests],
                                 config):
        if found is not None:
            found.append(these)
        scores = (blend(these.features, config) if learned is None
                  else learned.score(these.features, config))
        rows = np.arange(scores.size)
        if scores.size > n:  # everything at or above the n-th score, ties at the cut too
            rows = (np.flatnonzero(-scores <= np.partition(-scores, n - 1)[n - 1]) if n > 0
                    else rows[:0])
        order = [i for *_, i in sorted(zip((-scores[rows]).tolist(),
                                           [ids[p] for p in these.positions[rows].tolist()],
                                           rows.tolist(), strict=True))[:n]]
        ranked.append(([int(these.positions[i]) for i in order],
                       [these.sources[i] for i in order], [float(scores[i]) for i in order]))
        entries.append(these.entries)
    reasons = explain(snapshot, profiles, [listed for listed, _, _ in ranked],
                      [sources for _, sources, _ in ranked], entries)
    return [Recommendations(
        user_id=user_id,
        item_ids=tuple(ids[p] for p in listed),
        scores=tuple(scores),
        cold_start=profile is None or not profile.recent,
        model_version=model.version,
        sources=tuple(sources),
        reasons=why,
    ) for (user_id, profile, _), (listed, sources, scores), why in zip(
        requests, ranked, reasons, strict=True)]


class Ranking(Protocol):
    """Lists of many requests at once, each as it would be alone (``found``: the
    candidates ranked, for rankings that rank candidates)."""

    def __call__(self, snapshot: Snapshot, requests: Sequence[RankRequest], n: int,
                 config: RecommenderConfig, found: list[Candidates] | None = None
                 ) -> list[Recommendations]: ...


#: How lists are ranked, by the name :attr:`RecommenderConfig.ranking` gives.
RANKINGS: dict[str, Ranking] = {
    "mix": rank_mix,
    "neighbours": rank_neighbours,
}


def published_lists(snapshot: Snapshot, requests: Sequence[tuple[str, UserProfile | None]],
                    n: int, config: RecommenderConfig, found: list[Candidates] | None = None
                    ) -> list[Recommendations]:
    """The lists a stream publishes, one per (user id, profile), in order: bought
    items left out unless :attr:`RecommenderConfig.lists_bought_items`;
    ``found``: the candidates ranked, as :data:`RANKINGS` add them.

    >>> from core.ranking import NeighborModel
    >>> from core.snapshot import ItemFacts
    >>> snapshot = Snapshot(NeighborModel.from_neighbor_lists(1, {"a": [("b", 0.5)]}, {}, k=1),
    ...                     ItemFacts.empty(2))
    >>> profile = UserProfile(recent=["a"], purchased={"b": 0.0})
    >>> [published_lists(snapshot, [("u", profile)], 2, RecommenderConfig(ranking=ranking))[0]
    ...  .item_ids for ranking in ("mix", "neighbours")]
    [('b',), ()]

    Before the snapshot knows any item (a new worker, its first rows not applied
    yet), the lists are of :func:`popular_among` the requests.
    """
    banned = [(user_id, profile, banned_items(profile, config)) for user_id, profile in requests]
    if snapshot.model.n_items == 0:
        return popular_among(banned, n, snapshot.model.version)
    return RANKINGS[config.ranking](snapshot, banned, n, config, found)


def popular_among(requests: Sequence[RankRequest], n: int, version: int
                  ) -> list[Recommendations]:
    """Lists of the items most users of ``requests`` hold among their recent ones
    (ties by id), what was left out apart: all a worker knows before its first
    snapshot, rather than no list at all.

    >>> [recs.item_ids for recs in popular_among(
    ...     [("u", UserProfile(recent=["b", "a"]), ()), ("v", UserProfile(recent=["b"]), ["b"]),
    ...      ("w", None, ())], 2, 0)]
    [('b', 'a'), ('a',), ('b', 'a')]
    """
    users: dict[str, int] = {}
    for _, profile, _ in requests:
        for item_id in set(profile.recent if profile is not None else ()):
            users[item_id] = users.get(item_id, 0) + 1
    order = sorted(users, key=lambda item_id: (-users[item_id], item_id))
    lists = []
    for user_id, profile, banned in requests:
        listed = [item_id for item_id in order[: n + len(banned)] if item_id not in banned][:n]
        lists.append(Recommendations(
            user_id=user_id, item_ids=tuple(listed),
            scores=tuple(users[item_id] / len(requests) for item_id in listed),
            cold_start=profile is None or not profile.recent, model_version=version,
            sources=("popular",) * len(listed), reasons=(POPULAR_REASON,) * len(listed)))
    return lists


def banned_items(profile: UserProfile | None, config: RecommenderConfig) -> Collection[str]:
    """What a published list leaves out: the customer's purchases, unless
    :attr:`RecommenderConfig.lists_bought_items`."""
    return () if profile is None or config.lists_bought_items else profile.purchased


def explain(snapshot: Snapshot, profiles: Sequence[UserProfile | None],
            positions: Sequence[Sequence[int]], sources: Sequence[Sequence[str]],
            entries: Sequence[NeighbourEntries | None]) -> list[tuple[str, ...]]:
    """Per user, why each listed item (position, and the source that put it
    there) is in their list, in words a customer could read (``entries``: the
    user's neighbour entries, as :func:`candidates` found them).

    >>> explain(Snapshot.empty(1), [None], [[0]], [["trending"]], [None])
    [('trending',)]
    """
    model, gaps = snapshot.model, snapshot.facts.gap_days
    similar = [[p for p, source in zip(listed, kinds, strict=True) if source == "neighbours"]
               for listed, kinds in zip(positions, sources, strict=True)]
    found = model.because(entries, similar)
    reasons = []
    for profile, listed, kinds, near, named in zip(profiles, positions, sources, similar, found,
                                                   strict=True):
        because = dict(zip(near, named, strict=True))
        bought = profile.purchased if profile is not None else {}
        why = []
        for position, source in zip(listed, kinds, strict=True):
            recent = because.get(position)
            if source == "buy_again":
                why.append(buy_again_reason(float(gaps[position]) if position < gaps.size
                                            else 0.0))
            elif recent is not None:
                item_id = model.items.ids[recent]
                why.append(neighbour_reason(item_id, item_id in bought))
            elif source == "popular":
                why.append(POPULAR_REASON)
            else:
                why.append(TRENDING_REASON)
        reasons.append(tuple(why))
    return reasons
