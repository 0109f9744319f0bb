"""What the model process runs: a partition's neighbour lists and the ranking
snapshot (and the churn fit, :func:`core.engagement.fit_churn_model`), off the
event loop and below its priority.
"""

from __future__ import annotations

import pickle
from collections.abc import Collection, Mapping
from typing import NamedTuple, cast

import orjson

from core.similarity import SimilarityParams, neighbors_for_rows
from core.snapshot import Snapshot
from streams.runtime.children.due_lists import DueLists, new_counts_version
from streams.runtime.children.held_rows import RowsNotHeld
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


#: Rows of C the child holds per partition, and when their lists were computed.
_held_rows: dict[int, DueLists] = {}


#: One item's neighbour list, encoded twice: (item id, its value in the ``neighbors``
#: table, its ``item-neighbors`` record), both JSON.
EncodedList = tuple[str, bytes, bytes]


class PartitionLists(NamedTuple):
    """A partition's round: the lists that changed, and how many of its lists were
    computed before the counts last moved (:attr:`.due_lists.DueLists.lagging`)."""

    lists: list[EncodedList]
    lagging: int


def neighbors_of_partition(
    partition: int,
    token: int,
    rows: Mapping[str, Mapping[str, float]] | bytes,
    full: bool,
    owned: Collection[int],
    counts: Mapping[str, float] | None,
    k: int,
    similarity: str,
    params: SimilarityParams,
    model_version: int,
    replica_token: int | None = None,
) -> PartitionLists:
    """Neighbour lists of a partition's items once ``rows`` are in: all of the
    partition's rows (``full``, which ``token`` names from then on), or those
    changed since the last send under the same ``token``. Which lists are
    recomputed: every one after a full send, then those of changed rows and a
    rotating slice of the others (:mod:`.due_lists`). ``rows`` may come pickled
    (as :func:`streams.runtime.children.held_rows.rows_to_send` gives them: the
    worker passes them on without reading them).

    Sending only changed rows keeps the worker's pickling (the event loop's part of
    a refresh) proportional to what changed, not to the partition. A full send
    also drops the rows of partitions no longer ``owned`` (after a rebalance).

    Each list comes encoded as the worker stores and publishes it (``model_version``
    goes into the record), so that the event loop only compares and hands over
    bytes: decoding the lists and encoding them twice took the loop 66 ms per
    partition refresh of 1,250 items with 100 neighbours each (1.0 ms for these
    bytes), in the refresh's slices, which held every batch back meanwhile.

    >>> args = ({"a": 2.0, "b": 1.0}, 2, "cosine", SimilarityParams(), 7)
    >>> [(item, orjson.loads(value), orjson.loads(record)["model_version"])
    ...  for item, value, record in neighbors_of_partition(
    ...      0, 7, {"a": {"b": 1.0}}, True, {0, 1}, *args).lists]
    [('a', [['b', 0.7071067690849304]], 7)]
    >>> [orjson.loads(value) for item, value, _ in neighbors_of_partition(
    ...      0, 7, {"b": {"a": 1.0}}, False, {0, 1}, *args).lists if item == "a"]
    [[['b', 0.7071067690849304]]]
    >>> neighbors_of_partition(0, 8, {}, False, {0, 1}, *args)
    Traceback (most recent call last):
    ...
    streams.runtime.children.held_rows.RowsNotHeld: partition 0 under token 8
    >>> _ = neighbors_of_partition(1, 9, {}, True, {1}, *args)
    >>> sorted(_held_rows)  # partition 0 is another worker's now
    [1]

    With ``replica_token`` (``counts`` None), the counts are those of the process's
    copy of the item stats, and only lists that differ from the last computed for
    their item come back (see :meth:`.model_replica.ModelReplica.record_own`);
    :class:`.model_replica.ReplicaNotHeld` (before anything is changed) when the
    process holds no copy under that token. Counts given in ``counts`` count as
    moved since the last call.
    """
    held = _held_rows.get(partition)
    if not full and (held is None or held.token != token):
        raise RowsNotHeld(f"partition {partition} under token {token}")
    replica = None if replica_token is None else held_replica(replica_token)
    if counts is None:
        if replica is None:
            raise ValueError("neither counts nor a replica to take them from")
        counts, counts_version = replica.counts, replica.counts_version
    else:
        counts_version = new_counts_version()
    if isinstance(rows, bytes):
        rows = cast(Mapping[str, Mapping[str, float]], pickle.loads(rows))
    if full:
        for other in [p for p in _held_rows if p != partition and p not in owned]:
            del _held_rows[other]
        held = _held_rows[partition] = DueLists(token)
    assert held is not None
    due = held.take(rows, counts_version)
    lists = neighbors_for_rows({item_id: held.rows[item_id] for item_id in due}, counts, k,
                               similarity, params)
    encoded = {item_id: orjson.dumps(pairs) for item_id, pairs in lists.items()}  # JSON arrays
    if replica is not None:
        encoded = replica.record_own(encoded)
    return PartitionLists(
        [(item_id, value,
          orjson.dumps(item_neighbors_record(item_id, lists[item_id], model_version)))
         for item_id, value in encoded.items()],
        held.lagging)
