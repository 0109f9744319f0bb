"""What the ranking child runs: each batch's lists and triggers, and the HTTP
lookups, ranked with the snapshot it holds (ranking was a fifth of the event
loop's time at full speed while the second core stood mostly idle).
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Sequence

import orjson

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
    config: RecommenderConfig,
) -> tuple[list[bytes], list[list[tuple[str, bytes]]]]:
    """Ranked with the held snapshot (an empty one before any is held), in request
    order: the ``recommendations`` record of each list (``encoded_lists``: the
    :data:`ListRequest` values as one JSON array), and the records of each trigger
    (output name, JSON), which name the user's recommended items.

    The lists come as JSON because the worker encodes them 6x faster than it
    pickles them (0.6 vs 4.0 ms for 700 users' histories; pickling was 5% of the
    event loop at full speed).

    >>> model = NeighborModel.from_neighbor_lists(2, {"a": [("b", 0.5)]}, {}, k=1)
    >>> hold_ranking_model(model)
    >>> cart = Trigger("cart_abandoned", "left", 9.0, {"item_id": "a"})
    >>> records, triggered = ranked_records(orjson.dumps([("u", ["a"], [], "view", 5.0)]),
    ...                                     [("u", ["a"], set(), cart)], 2, RecommenderConfig())
    >>> orjson.loads(records[0])["items"]
    [{'item_id': 'b', 'score': 0.5}]
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
    return records, triggered


