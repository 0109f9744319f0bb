"""What the ranking child runs: each batch's lists and triggers, and the HTTP
lookups, ranked with the snapshot it holds (ranking was a fifth of the event
loop's time at full speed while the second core stood mostly idle).
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import orjson

from core.bias import ExposureWindow
from core.config import RecommenderConfig
from core.engagement import Trigger
from core.ranking import NeighborModel, Recommendations
from core.ratings import UserProfile
from streams.runtime.records import recommendation_record, trigger_records

#: The ranking child's niceness: its work is the batches' own, moved off the loop.
RANKER_NICENESS = 0

#: A list the ranking child ranks: (user id, recent items oldest first, purchased
#: items, the event type that changed the user, its event time).
ListRequest = tuple[str, Sequence[str], Collection[str], str, float]
#: A trigger the ranking child ranks the user's items for: (user id, recent items,
#: purchased items, the trigger).
TriggerRequest = tuple[str, Sequence[str], Collection[str], Trigger]


#: The snapshot the ranking child ranks with (see hold_ranking_model).
_ranking_model: NeighborModel | None = None


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


def hold_ranking_model(model: NeighborModel) -> None:
    """Rank with ``model`` from now on (in the ranking child)."""
    global _ranking_model
    _ranking_model = model


def hold_ranking_snapshot(path: str) -> int:
    """Rank with the snapshot the model process wrote to ``path`` (pickled) from now
    on; its version. The loop passes the path, never the snapshot."""
    with open(path, "rb") as file:
        model = pickle.load(file)
    if not isinstance(model, NeighborModel):
        raise TypeError(f"{path} holds no snapshot")
    hold_ranking_model(model)
    return model.version


def held_version() -> int:
    """The version of the snapshot held (-1: none): a call that returns after the
    holds queued before it ran."""
    return -1 if _ranking_model is None else _ranking_model.version


def held_model() -> NeighborModel | None:
    """The snapshot the ranking child holds (None before any)."""
    return _ranking_model


def recommend_one(user_id: str, recent: Sequence[str] | None, purchased: Collection[str],
                  n: int, config: RecommenderConfig) -> Recommendations:
    """One user's list with the held snapshot (``recent`` None: an unknown user):
    the HTTP lookups, ranked here so that a flood of them leaves the event loop
    to the input."""
    model = _ranking_model or NeighborModel.empty(config.neighbors)
    profile = None if recent is None else UserProfile(
        recent=list(recent), purchased=dict.fromkeys(purchased, 0.0))
    return model.recommend(user_id, profile, n, config)


def ranked_records(
    encoded_lists: bytes, triggers: Sequence[TriggerRequest], n: int,
    config: RecommenderConfig, exposure_lists: int,
) -> tuple[list[bytes], list[list[tuple[str, bytes]]], Exposure | None]:
    """Ranked with the held snapshot (an empty one before any is held), in request
    order: the ``recommendations`` record of each list (``encoded_lists``: the
    :data:`ListRequest` values as one JSON array), the records of each trigger
    (output name, JSON), which name the user's recommended items, and the live
    exposure figures of the last ``exposure_lists`` lists when they were taken
    again (None otherwise).

    The lists come as JSON because the worker encodes them 6x faster than it
    pickles them (0.6 vs 4.0 ms for 700 users' histories; pickling was 5% of the
    event loop at full speed).

    >>> model = NeighborModel.from_neighbor_lists(2, {"a": [("b", 0.5)]}, {}, k=1)
    >>> hold_ranking_model(model)
    >>> cart = Trigger("cart_abandoned", "left", 9.0, {"item_id": "a"})
    >>> records, triggered, _ = ranked_records(orjson.dumps([("u", ["a"], [], "view", 5.0)]),
    ...                                     [("u", ["a"], set(), cart)], 2, RecommenderConfig(),
    ...                                     exposure_lists=10)
    >>> [(i["item_id"], i["reason"]) for i in orjson.loads(records[0])["items"]]
    [('b', 'similar to a, which you viewed')]
    >>> [(output, orjson.loads(record)["recommended_items"]) for output, record in triggered[0]]
    [('marketing-triggers', ['b'])]
    """
    model = _ranking_model or NeighborModel.empty(config.neighbors)
    lists: list[ListRequest] = orjson.loads(encoded_lists)
    users = [request[:3] for request in lists] + [request[:3] for request in triggers]
    ranked = model.recommend_many(
        [(user_id, UserProfile(recent=list(recent), purchased=dict.fromkeys(purchased, 0.0)))
         for user_id, recent, purchased in users], n, config)
    records = [orjson.dumps(recommendation_record(recs, cause, ts))
               for recs, (_, _, _, cause, ts) in zip(ranked, lists, strict=False)]
    triggered = []
    for recs, (user_id, _, _, trigger) in zip(ranked[len(lists):], triggers, strict=True):
        items = list(recs.item_ids)
        triggered.append(trigger_records(user_id, trigger, items))
    return records, triggered, _expose(ranked[:len(lists)], model.n_items, exposure_lists)


