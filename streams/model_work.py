"""The model work of a worker (neighbour lists, ranking snapshots, churn fits) in a
child process of its own.

Measured at 1,100 events/s with that work in a thread of the worker: every refresh
held the input back 1-2 s. A thread computing neighbour lists wants the GIL as
much as the event loop does, and the consumer thread, which fetches the input,
got its turns last. A child process shares no GIL: the work costs the event loop
the pickling of its arguments (~10 ms for a partition's 140k pairs) and the
results.

The functions run here take and return plain data, and this module imports no
Faust, so that the child starts in about a second.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar, cast

from mode import Service

from core.ranking import NeighborModel, trending_scale
from core.similarity import SimilarityParams, neighbors_for_rows

log = logging.getLogger("recostream.model")

R = TypeVar("R")

#: The child's niceness: its work is background work, and at full priority, on 2
#: cores, it took the CPU the broker and the event loop needed (input held back
#: 1-1.7 s at every refresh at 2,100 events/s).
MODEL_NICENESS = 10


def build_model(
    version: int,
    lists: Mapping[str, Sequence[Sequence[Any]]],
    stats: Mapping[str, list[float]],
    k: int,
    tau: float,
) -> NeighborModel:
    """The ranking snapshot from shared neighbour lists ([item id, score] pairs, as
    stored) and item stats ([count, trend value, trend time], as stored).

    >>> model = build_model(3, {"a": [["b", 0.5]]}, {"a": [2.0, 1.0, 0.0]}, 10, 86400.0)
    >>> model.version, sorted(model.items.positions)
    (3, ['a', 'b'])
    """
    ids = sorted(stats)
    scaled = trending_scale([stats[i][1] for i in ids], [stats[i][2] for i in ids], tau)
    trending = dict(zip(ids, scaled.tolist(), strict=True))
    pairs = cast(Mapping[str, Sequence[tuple[str, float]]], lists)  # unpacked alike
    return NeighborModel.from_neighbor_lists(version, pairs, trending, k)


def start_child(niceness: int) -> None:
    """In the child, first: lower its priority, and end it with its parent.

    A worker killed outright (SIGKILL, the OOM killer) left the child waiting for
    work forever: it holds both ends of the pool's queue, so it never reads an end
    of file. It now watches the parent's sentinel instead.
    """
    os.nice(niceness)
    parent = multiprocessing.parent_process()
    if parent is not None:
        sentinel = parent.sentinel
        threading.Thread(target=_exit_with_parent, args=(sentinel,), daemon=True,
                         name="exit-with-parent").start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def call_pickled(function: Callable[..., R], payload: bytes) -> R:
    """``function`` with the arguments pickled in ``payload`` (in the child)."""
    return function(*pickle.loads(payload))


class RowsNotHeld(Exception):
    """The child does not hold the rows a partial send builds on (a new child)."""


#: Rows of C the child holds per partition: the token of the full send they began
#: with, and the rows (item id -> pairs).
_held_rows: dict[int, tuple[int, dict[str, Mapping[str, float]]]] = {}


def neighbors_of_partition(
    partition: int,
    token: int,
    rows: Mapping[str, Mapping[str, float]],
    full: bool,
    owned: Collection[int],
    counts: Mapping[str, float],
    k: int,
    similarity: str,
    params: SimilarityParams,
) -> dict[str, list[tuple[str, float]]]:
    """Neighbour lists of every row of ``partition`` the child holds once ``rows``
    are in: all of the partition's rows (``full``, which ``token`` names from then
    on), or those changed since the last send under the same ``token``.

    Sending only changed rows keeps the worker's pickling (the event loop's part of
    a refresh) proportional to what changed, not to the partition. A full send
    also drops the rows of partitions no longer ``owned`` (after a rebalance).

    >>> args = ({"a": 2.0, "b": 1.0}, 2, "cosine", SimilarityParams())
    >>> neighbors_of_partition(0, 7, {"a": {"b": 1.0}}, True, {0, 1}, *args)
    {'a': [('b', 0.7071067690849304)]}
    >>> neighbors_of_partition(0, 7, {"b": {"a": 1.0}}, False, {0, 1}, *args)["a"]
    [('b', 0.7071067690849304)]
    >>> neighbors_of_partition(0, 8, {}, False, {0, 1}, *args)
    Traceback (most recent call last):
    ...
    streams.model_work.RowsNotHeld: partition 0 under token 8
    >>> _ = neighbors_of_partition(1, 9, {}, True, {1}, *args)
    >>> sorted(_held_rows)  # partition 0 is another worker's now
    [1]
    """
    if full:
        for other in [p for p in _held_rows if p != partition and p not in owned]:
            del _held_rows[other]
        _held_rows[partition] = (token, dict(rows))
    else:
        held = _held_rows.get(partition)
        if held is None or held[0] != token:
            raise RowsNotHeld(f"partition {partition} under token {token}")
        held[1].update(rows)
    return neighbors_for_rows(_held_rows[partition][1], counts, k, similarity, params)


class ModelProcess(Service):
    """Runs functions in one child process, started on first use and stopped with
    the app (a service of it).

    A child that died (killed, out of memory) is replaced once per call; a second
    failure is raised to the caller.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool: ProcessPoolExecutor | None = None

    async def run(self, function: Callable[..., R], *args: Any) -> R:
        """``function(*args)`` in the child (a module-level function of a module
        without Faust).

        The arguments are pickled here and now, as they are when called: batches
        may change them as soon as this awaits (the pool would pickle them later,
        in a thread of its own).
        """
        payload = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._ensure_pool()
            try:
                return await loop.run_in_executor(pool, call_pickled, function, payload)
            except BrokenProcessPool:
                self.close()
                if attempt == 2:
                    raise
                log.warning("the model process died; starting another")
        raise AssertionError("unreachable")

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process with the consumer's and the producer's threads
            # running copies their locks in whatever state they are
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=start_child, initargs=(MODEL_NICENESS,))
        return self._pool

    def close(self) -> None:
        """Stop the child (what it runs is abandoned); the next call starts another."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def on_stop(self) -> None:
        self.close()
