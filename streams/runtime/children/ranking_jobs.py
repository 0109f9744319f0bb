"""What the ranking child runs: each batch's lists and triggers, and the HTTP
lookups, ranked with the snapshot it holds (ranking was a fifth of the event
loop's time at full speed while the second core stood mostly idle).

It also learns the ranking (:mod:`core.outcomes`): each batch brings the rated
events since the last, each judged against the last list ranked for its
customer, and the lists are ranked by what was learned (the fixed blend until
the perceptron has learned enough). The loop takes what was learned now and
then, to keep it in a compacted topic, and hands it back to a child that
replaces this one (:func:`adopt_ranking`).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import orjson

from core.bias import ExposureWindow
from core.config import RecommenderConfig
from core.engagement import Trigger
from core.learned import LearnedRanking
from core.mix import FEATURES, Candidates, published_lists
from core.outcomes import LastShown, OutcomeLearner, Shown
from core.ranking import Recommendations
from core.ratings import UserProfile
from core.snapshot import Snapshot
from streams.runtime.records import recommendation_record, trigger_records

#: The ranking child's niceness: its work is the batches' own, moved off the loop.
RANKER_NICENESS = 0

#: What of a profile the ranking uses, as the loop sends it (JSON): recent items
#: oldest first, purchases (item -> last time), times bought (2 or more), events,
#: last and first event time, active days, ratings (item -> rating: the learned
#: ranking reads which items the user saw). The running mean and the purchase
#: summaries stay behind.
ProfileFields = tuple[Sequence[str], Mapping[str, float], Mapping[str, int], int, float,
                      float, int, Mapping[str, float]]
#: A list the ranking child ranks: (user id, the profile's fields, the event type
#: that changed the user, its event time).
ListRequest = tuple[str, ProfileFields, str, float]
#: A trigger the ranking child ranks the user's items for: (user id, the
#: profile's fields, the trigger).
TriggerRequest = tuple[str, ProfileFields, Trigger]
#: A rated event the ranking learns from: (user id, item id, its time, the time
#: of the user's event before it).
Outcome = tuple[str, str, float, float]


def profile_fields(profile: UserProfile, live: bool = False) -> ProfileFields:
    """What the ranking child needs of ``profile`` (see :data:`ProfileFields`), as
    it is now: copies, since a trigger waits while the profile moves on (``live``:
    the profile's own structures, for a caller that encodes them at once, as the
    lists of a batch are).

    >>> profile = UserProfile(recent=["a"])
    >>> profile_fields(profile)[0] is profile.recent, profile_fields(profile, True)[0] is (
    ...     profile.recent)
    (False, True)
    """
    if live:
        return (profile.recent, profile.purchased, profile.purchase_counts, profile.events,
                profile.last_ts, profile.first_ts, profile.active_days, profile.ratings)
    return (list(profile.recent), dict(profile.purchased), dict(profile.purchase_counts),
            profile.events, profile.last_ts, profile.first_ts, profile.active_days,
            dict(profile.ratings))


def profile_of(fields: ProfileFields) -> UserProfile:
    """The profile the ranking child ranks for, from :func:`profile_fields`.

    >>> profile = UserProfile(recent=["a"], purchased={"a": 5.0}, events=3, last_ts=5.0)
    >>> _ = profile.observe("a", 1.0, ts=5.0, history=5)
    >>> seen = profile_of(profile_fields(profile))
    >>> (seen.recent, seen.purchased, seen.ratings) == (profile.recent, profile.purchased,
    ...                                                 profile.ratings)
    True
    """
    recent, purchased, counts, events, last_ts, first_ts, active_days, ratings = fields
    # decoded for this call alone (JSON, pickle): taken as they are, not copied
    return UserProfile(ratings=_as_dict(ratings),
                       recent=recent if isinstance(recent, list) else list(recent),
                       purchased=_as_dict(purchased), purchase_counts=_as_dict(counts),
                       events=events, last_ts=last_ts, first_ts=first_ts,
                       active_days=active_days)


T = TypeVar("T")


def _as_dict(mapping: Mapping[str, T]) -> dict[str, T]:
    return mapping if isinstance(mapping, dict) else dict(mapping)


#: The snapshot the ranking child ranks with (see hold_snapshot).
_snapshot: Snapshot | None = None


@dataclass(frozen=True)
class Exposure:
    """How the last published lists spread over the catalogue the snapshot knows."""

    lists: int
    coverage: float
    gini: float


#: The window of published lists, and lists added since its figures were taken.
_exposure = ExposureWindow(1)
_lists_since_exposure = 0


def _expose(lists: Sequence[Recommendations], catalogue_size: int, window: int
            ) -> Exposure | None:
    """Add published lists to the last ``window``; its figures each time a tenth
    of a window more came (a sort of the items shown, too dear for every batch)."""
    global _exposure, _lists_since_exposure
    if _exposure.size != window:
        _exposure, _lists_since_exposure = ExposureWindow(window), 0
    for recs in lists:
        _exposure.add(recs.item_ids)
    _lists_since_exposure += len(lists)
    if _lists_since_exposure < window // 10:
        return None
    _lists_since_exposure = 0
    return Exposure(_exposure.lists, _exposure.coverage(catalogue_size),
                    _exposure.gini(catalogue_size))


def hold_snapshot(snapshot: Snapshot) -> None:
    """Rank with ``snapshot`` from now on (in the ranking child)."""
    global _snapshot
    _snapshot = snapshot


def hold_ranking_snapshot(path: str) -> int:
    """Rank with the snapshot the model process wrote to ``path`` (pickled) from now
    on; its version. The loop passes the path, never the snapshot."""
    with open(path, "rb") as file:
        snapshot = pickle.load(file)
    if not isinstance(snapshot, Snapshot):
        raise TypeError(f"{path} holds no snapshot")
    hold_snapshot(snapshot)
    return snapshot.model.version


def held_version() -> int:
    """The version of the snapshot held (-1: none): a call that returns after the
    holds queued before it ran."""
    return -1 if _snapshot is None else _snapshot.model.version


def held_snapshot() -> Snapshot | None:
    """The snapshot the ranking child holds (None before any)."""
    return _snapshot


#: The learned ranking lists are ranked with (None: the fixed blend), what
#: teaches it, and the last list of each customer it is judged against.
_ranking: LearnedRanking | None = None
_learner: OutcomeLearner | None = None
_last_shown = LastShown(0)


def _learner_for(config: RecommenderConfig, customers: int) -> OutcomeLearner | None:
    """The learner of the lists of ``config``, keeping the visits and last lists
    of at most ``customers`` (0: nothing is learned; the mix alone ranks
    candidates to learn from)."""
    global _ranking, _learner, _last_shown
    if customers <= 0 or config.ranking != "mix":
        return None
    if _learner is None or _learner.config != config or _learner.capacity != customers:
        _ranking = _ranking or LearnedRanking.new(len(FEATURES), config)
        _learner = OutcomeLearner(_ranking, config, customers)
        _last_shown = LastShown(customers)
    return _learner


def adopt_ranking(state: Mapping[str, Any]) -> int:
    """Rank with the learned ranking ``state`` (:meth:`LearnedRanking.to_state`)
    from now on, unless the one held learned more; the version held after."""
    global _ranking
    adopted = LearnedRanking.from_state(state)
    if _ranking is None or adopted.version > _ranking.version:
        _ranking = adopted
        if _learner is not None:
            _learner.ranking = adopted
    return _ranking.version


def learned_state() -> dict[str, Any] | None:
    """What the held ranking learned, as :func:`adopt_ranking` takes it (None:
    nothing is learned)."""
    return None if _ranking is None else _ranking.to_state()


def _held(config: RecommenderConfig) -> Snapshot:
    """The snapshot held, with the learned ranking (ranking by the mix)."""
    snapshot = _snapshot or Snapshot.empty(config.neighbors)
    if _ranking is None or config.ranking != "mix":
        return snapshot
    return replace(snapshot, ranker=_ranking)


def recommend_one(user_id: str, fields: ProfileFields | None, n: int,
                  config: RecommenderConfig) -> Recommendations:
    """One user's list with the held snapshot (``fields`` None: an unknown user),
    as the published lists are: the HTTP lookups, ranked here so that a flood of
    them leaves the event loop to the input."""
    profile = None if fields is None else profile_of(fields)
    return published_lists(_held(config), [(user_id, profile)], n, config)[0]


def ranked_records(
    encoded_lists: bytes, triggers: Sequence[TriggerRequest], n: int,
    config: RecommenderConfig, exposure_lists: int, encoded_outcomes: bytes = b"[]",
    learn_customers: int = 0,
) -> tuple[list[bytes], list[list[tuple[str, bytes]]], Exposure | None]:
    """Ranked with the held snapshot (an empty one before any is held), in request
    order: the ``recommendations`` record of each list (``encoded_lists``: the
    :data:`ListRequest` values as one JSON array), the records of each trigger
    (output name, JSON), which name the user's recommended items, and the live
    exposure figures of the last ``exposure_lists`` lists when they were taken
    again (None otherwise).

    First the ranking learns from ``encoded_outcomes`` (the :data:`Outcome` of
    each rated event since the last call, in event order, as one JSON array),
    keeping the visits and last lists of ``learn_customers`` customers (0:
    nothing is learned).

    The lists come as JSON because the worker encodes them 6x faster than it
    pickles them (0.6 vs 4.0 ms for 700 users' histories; pickling was 5% of the
    event loop at full speed).

    >>> from core.snapshot import ItemFacts
    >>> from core.ranking import NeighborModel
    >>> hold_snapshot(Snapshot(NeighborModel.from_neighbor_lists(2, {"a": [("b", 0.5)]}, {}, k=1),
    ...                        ItemFacts.empty(2)))
    >>> fields = profile_fields(UserProfile(recent=["a"]))
    >>> cart = Trigger("cart_abandoned", "left", 9.0, {"item_id": "a"})
    >>> records, triggered, _ = ranked_records(orjson.dumps([("u", fields, "view", 5.0)]),
    ...                                     [("u", fields, cart)], 2, RecommenderConfig(),
    ...                                     exposure_lists=10)
    >>> [(i["item_id"], i["reason"]) for i in orjson.loads(records[0])["items"]]
    [('b', 'similar to a, which you viewed')]
    >>> [(output, orjson.loads(record)["recommended_items"]) for output, record in triggered[0]]
    [('marketing-triggers', ['b'])]
    """
    learner = _learner_for(config, learn_customers)
    if learner is not None:
        known = (_snapshot or Snapshot.empty(config.neighbors)).model.items.positions
        for user_id, item_id, ts, previous_ts in orjson.loads(encoded_outcomes):
            learner.took(user_id, item_id, ts, previous_ts, partial(_last_shown.get, user_id),
                         known=item_id in known)
    snapshot = _held(config)
    lists: list[ListRequest] = orjson.loads(encoded_lists)
    users = [request[:2] for request in lists] + [request[:2] for request in triggers]
    found: list[Candidates] = []
    ranked = published_lists(snapshot, [(user_id, profile_of(fields))
                                        for user_id, fields in users], n, config, found)
    if learner is not None and len(found) == len(users):
        ids = snapshot.model.items.ids
        for (user_id, *_), these in zip(lists, found, strict=False):
            _last_shown.put(user_id, Shown.of(these, ids))
    records = [orjson.dumps(recommendation_record(recs, cause, ts))
               for recs, (_, _, cause, ts) in zip(ranked, lists, strict=False)]
    triggered = []
    for recs, (user_id, _, trigger) in zip(ranked[len(lists):], triggers, strict=True):
        items = list(recs.item_ids)
        triggered.append(trigger_records(user_id, trigger, items))
    return records, triggered, _expose(ranked[:len(lists)], snapshot.model.n_items,
                                       exposure_lists)


