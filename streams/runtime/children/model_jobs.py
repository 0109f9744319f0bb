"""What the model process runs: a partition's neighbour lists and the ranking
snapshot (and the churn fit, :func:`core.engagement.fit_churn_model`), off the
event loop and below its priority.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import cast

import orjson

from core.similarity import SimilarityParams, neighbors_for_rows
from core.snapshot import Snapshot
from streams.runtime.children.model_replica import held_replica, snapshot_of
from streams.runtime.records import item_neighbors_record

#: The model process's niceness: its work is background work, and at full
#: priority, on 2 cores, it took the CPU the broker and the event loop needed.
MODEL_NICENESS = 10


def snapshot_from_json(
    version: int,
    encoded_lists: Mapping[str, bytes],
    encoded_stats: Mapping[str, bytes],
    k: int,
    tau: float,
) -> Snapshot:
    """The ranking snapshot from shared neighbour lists ([item id, score] pairs) and
    item stats (:data:`streams.runtime.state.ITEM_STATS`), as stored (JSON); empty
    ones are left out.

    >>> snapshot = snapshot_from_json(3, {"a": b'[["b",0.5]]', "b": b"[]"},
    ...                               {"a": b"[2.0,1.0,0.0]"}, 10, 86400.0)
    >>> snapshot.model.version, sorted(snapshot.model.items.positions)
    (3, ['a', 'b'])
    """
    stats = {item_id: values for item_id, value in encoded_stats.items()
             if (values := orjson.loads(value))}
    return snapshot_of(version, encoded_lists, stats, k, tau)


#: One item's neighbour list, encoded twice: (item id, its value in the ``neighbors``
#: table, its ``item-neighbors`` record), both JSON.
EncodedList = tuple[str, bytes, bytes]


def neighbors_of_rows(
    rows: Mapping[str, Mapping[str, float]] | bytes,
    counts: Mapping[str, float] | None,
    k: int,
    similarity: str,
    params: SimilarityParams,
    model_version: int,
    replica_token: int | None = None,
) -> list[EncodedList]:
    """Neighbour lists of ``rows`` (item id -> pairs: the rows of a partition whose
    lists are due, as :func:`streams.runtime.children.held_rows.rows_to_send` gives
    them, pickled: the worker passes them on without reading them). The process
    keeps no rows: the rows processes hold the worker's one copy.

    Each list comes encoded as the worker stores and publishes it (``model_version``
    goes into the record), so that the event loop only compares and hands over
    bytes: decoding the lists and encoding them twice took the loop 66 ms per
    partition refresh of 1,250 items with 100 neighbours each (1.0 ms for these
    bytes), in the refresh's slices, which held every batch back meanwhile.

    >>> [(item, orjson.loads(value), orjson.loads(record)["model_version"])
    ...  for item, value, record in neighbors_of_rows(
    ...      {"a": {"b": 1.0}}, {"a": 2.0, "b": 1.0}, 2, "cosine", SimilarityParams(), 7)]
    [('a', [['b', 0.7071067690849304]], 7)]

    With ``replica_token`` (``counts`` None), the counts are those of the process's
    copy of the item stats, and only lists that differ from the last computed for
    their item come back (see :meth:`.model_replica.ModelReplica.record_own`);
    :class:`.model_replica.ReplicaNotHeld` (before anything is changed) when the
    process holds no copy under that token.
    """
    replica = None if replica_token is None else held_replica(replica_token)
    if counts is None:
        if replica is None:
            raise ValueError("neither counts nor a replica to take them from")
        counts = replica.counts
    if isinstance(rows, bytes):
        rows = cast(Mapping[str, Mapping[str, float]], pickle.loads(rows))
    lists = neighbors_for_rows(rows, counts, k, similarity, params)
    encoded = {item_id: orjson.dumps(pairs) for item_id, pairs in lists.items()}  # JSON arrays
    if replica is not None:
        encoded = replica.record_own(encoded, lists)
    return [(item_id, value,
             orjson.dumps(item_neighbors_record(item_id, lists[item_id], model_version)))
            for item_id, value in encoded.items()]
