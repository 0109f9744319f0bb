"""The model work of a worker in child processes: neighbour lists, ranking
snapshots and churn fits in one (niced: background work), the ranking of each
batch's recommendations in another.

Measured at 1,100 events/s with that work in a thread of the worker: every refresh
held the input back 1-2 s. A thread computing neighbour lists wants the GIL as
much as the event loop does, and the consumer thread, which fetches the input,
got its turns last. A child process shares no GIL: the work costs the event loop
the pickling of its arguments (~10 ms for a partition's 140k pairs) and the
results.

Ranking was a fifth of the event loop's time at full speed (py-spy), while the
second core was two thirds idle (the broker used 0.1-0.2 of it). Ranked in a
child, a batch's lists are published when they come back, in batch order.

The functions run here take and return plain data, and this module imports no
Faust, so that the child starts in well under a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import signal
import struct
import threading
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson
from mode import Service

from core.engagement import Trigger
from core.ranking import NeighborModel, Recommendations, trending_scale
from core.ratings import UserProfile
from core.recommender import RecommenderConfig
from core.similarity import SimilarityParams, neighbors_for_rows
from streams.held_rows import RowsNotHeld
from streams.records import (
    churn_alert_record,
    item_neighbors_record,
    recommendation_record,
    trigger_record,
)

log = logging.getLogger("recostream.model")

R = TypeVar("R")

#: The child's niceness: its work is background work, and at full priority, on 2
#: cores, it took the CPU the broker and the event loop needed (input held back
#: 1-1.7 s at every refresh at 2,100 events/s).
MODEL_NICENESS = 10
#: The ranking child's niceness: its work is the batches' own, moved off the loop.
RANKER_NICENESS = 0
#: The rows process's niceness: applying row updates is the batches' own work too
#: (niced, it would fall behind whenever the loop and the broker want both cores).
ROWS_NICENESS = 0

#: How long stopping waits for the calls under way.
STOP_GRACE_SECONDS = 5.0

#: A list the ranking child ranks: (user id, recent items oldest first, purchased
#: items, the event type that changed the user, its event time).
ListRequest = tuple[str, Sequence[str], Collection[str], str, float]
#: A trigger the ranking child ranks the user's items for: (user id, recent items,
#: purchased items, the trigger).
TriggerRequest = tuple[str, Sequence[str], Collection[str], Trigger]


def build_model(
    version: int,
    encoded_lists: Mapping[str, bytes],
    encoded_stats: Mapping[str, bytes],
    k: int,
    tau: float,
) -> NeighborModel:
    """The ranking snapshot from shared neighbour lists ([item id, score] pairs) and
    item stats ([count, trend value, trend time]), as stored (JSON); empty ones
    are left out.

    >>> model = build_model(3, {"a": b'[["b",0.5]]', "b": b"[]"}, {"a": b"[2.0,1.0,0.0]"},
    ...                     10, 86400.0)
    >>> model.version, sorted(model.items.positions)
    (3, ['a', 'b'])
    """
    lists = {item_id: pairs for item_id, value in encoded_lists.items()
             if (pairs := orjson.loads(value))}
    stats = {item_id: values for item_id, value in encoded_stats.items()
             if (values := orjson.loads(value))}
    ids = sorted(stats)
    scaled = trending_scale([stats[i][1] for i in ids], [stats[i][2] for i in ids], tau)
    trending = dict(zip(ids, scaled.tolist(), strict=True))
    pairs = cast(Mapping[str, Sequence[tuple[str, float]]], lists)  # unpacked alike
    return NeighborModel.from_neighbor_lists(version, pairs, trending, k)


def start_child(niceness: int, process_name: str = "") -> None:
    """In the child, first: name it (as ``ps``, ``top`` and ``/proc/<pid>/comm``
    show it, on Linux), lower its priority, leave stopping to its parent, and
    end it with its parent.

    Every child runs the same command line (multiprocessing's spawn), so without
    a name of its own nothing outside tells the ranking child from a rows
    process (the bench reports CPU per child by these names).

    Ctrl-C, and a supervisor's SIGTERM to the process group (systemd, the bench,
    ``WorkerProcess.stop``), reach the children too: they died first, and the
    stopping worker logged a dead child, started another and an ERROR for the
    refresh it failed. The parent closes the pipe of calls when it stops.

    A worker killed outright (SIGKILL, the OOM killer) must not leave the child
    behind: the pipe of calls ends with it, and the child also watches the
    parent's sentinel (with a pool of processes, which held both ends of its
    queue in the child, that was the only way it noticed).
    """
    if process_name:
        with contextlib.suppress(OSError):  # not Linux: unnamed
            Path("/proc/self/comm").write_text(process_name[:15])
    os.nice(niceness)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        sentinel = parent.sentinel
        threading.Thread(target=_exit_with_parent, args=(sentinel,), daemon=True,
                         name="exit-with-parent").start()


def _exit_with_parent(sentinel: int) -> None:
    multiprocessing.connection.wait([sentinel])
    os._exit(0)


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a call the model process holds failed", exc_info=future.exception())


#: Rows of C the child holds per partition: the token of the full send they began
#: with, and the rows (item id -> pairs).
_held_rows: dict[int, tuple[int, dict[str, Mapping[str, float]]]] = {}


#: One item's neighbour list, encoded twice: (item id, its value in the ``neighbors``
#: table, its ``item-neighbors`` record), both JSON.
EncodedList = tuple[str, bytes, bytes]


def neighbors_of_partition(
    partition: int,
    token: int,
    rows: Mapping[str, Mapping[str, float]] | bytes,
    full: bool,
    owned: Collection[int],
    counts: Mapping[str, float],
    k: int,
    similarity: str,
    params: SimilarityParams,
    model_version: int,
) -> list[EncodedList]:
    """Neighbour lists of every row of ``partition`` the child holds once ``rows``
    are in: all of the partition's rows (``full``, which ``token`` names from then
    on), or those changed since the last send under the same ``token``. ``rows``
    may come pickled (as :func:`streams.held_rows.rows_to_send` gives them: the
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
    ...      0, 7, {"a": {"b": 1.0}}, True, {0, 1}, *args)]
    [('a', [['b', 0.7071067690849304]], 7)]
    >>> [orjson.loads(value) for item, value, _ in neighbors_of_partition(
    ...      0, 7, {"b": {"a": 1.0}}, False, {0, 1}, *args) if item == "a"]
    [[['b', 0.7071067690849304]]]
    >>> neighbors_of_partition(0, 8, {}, False, {0, 1}, *args)
    Traceback (most recent call last):
    ...
    streams.held_rows.RowsNotHeld: partition 0 under token 8
    >>> _ = neighbors_of_partition(1, 9, {}, True, {1}, *args)
    >>> sorted(_held_rows)  # partition 0 is another worker's now
    [1]
    """
    if isinstance(rows, bytes):
        rows = cast(Mapping[str, Mapping[str, float]], pickle.loads(rows))
    if full:
        for other in [p for p in _held_rows if p != partition and p not in owned]:
            del _held_rows[other]
        _held_rows[partition] = (token, dict(rows))
    else:
        held = _held_rows.get(partition)
        if held is None or held[0] != token:
            raise RowsNotHeld(f"partition {partition} under token {token}")
        held[1].update(rows)
    lists = neighbors_for_rows(_held_rows[partition][1], counts, k, similarity, params)
    return [(item_id, orjson.dumps(pairs),  # pairs as JSON arrays
             orjson.dumps(item_neighbors_record(item_id, pairs, model_version)))
            for item_id, pairs in lists.items()]


#: The snapshot the ranking child ranks with (see hold_ranking_model).
_ranking_model: NeighborModel | None = None


def hold_ranking_model(model: NeighborModel) -> None:
    """Rank with ``model`` from now on (in the ranking child)."""
    global _ranking_model
    _ranking_model = model


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
        out = [("marketing-triggers", orjson.dumps(trigger_record(user_id, trigger, items)))]
        if trigger.kind == "churn_risk":
            out.insert(0, ("churn-alerts",
                           orjson.dumps(churn_alert_record(user_id, trigger, items))))
        triggered.append(out)
    return records, triggered


#: A frame on the pipes to and from a child: its length, then its pickle.
FRAME_HEADER = struct.Struct("!Q")
#: Pipe buffer asked for (Linux allows up to 1 MiB unprivileged; 64 KiB otherwise):
#: a batch's lists, a commit's rows, a snapshot go in fewer turns of the loop.
PIPE_BYTES = 1 << 20


class ChildDied(Exception):
    """The child process ended (killed, out of memory) with calls under way."""


class ChildTraceback(Exception):
    """Where a call failed in the child (the cause of the exception raised here)."""


class ChildPipes:
    """One child process, fed calls and read for results by the event loop itself.

    A pool of processes (``concurrent.futures``) hands every call and result over
    through two threads of the worker, each waiting for the GIL while the loop
    is busy: a batch's ranking took 40 ms there for 21 ms in the child (p50,
    half load; 79 against 39 ms at p90). Here the loop writes the call to a
    pipe without blocking (what does not fit waits for the pipe to drain) and
    reads the results as they come, in the order of the calls.
    """

    def __init__(self, niceness: int, process_name: str = "") -> None:
        self.loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        results_in, results_out = context.Pipe(duplex=False)
        calls_in, calls_out = context.Pipe(duplex=False)
        # spawn: forking a process with the consumer's and the producer's threads
        # running copies their locks in whatever state they are
        self.process = context.Process(target=serve_calls, name="recostream-child",
                                       args=(calls_in, results_out, niceness, process_name),
                                       daemon=True)
        self.process.start()
        calls_in.close()
        results_out.close()
        self._calls, self._results = calls_out, results_in  # they own the fds
        # Python's exit joins every child: before that, the child must read an end
        # of file (it ignores SIGTERM, see start_child), or the exit never ends
        multiprocessing.util.Finalize(self, calls_out.close, exitpriority=10)
        self._calls_fd, self._results_fd = calls_out.fileno(), results_in.fileno()
        for fd in (self._calls_fd, self._results_fd):
            os.set_blocking(fd, False)
            # over /proc/sys/fs/pipe-max-size: the default will do
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self._unsent: deque[memoryview] = deque()
        self._received = bytearray()
        self._pending: deque[asyncio.Future[Any]] = deque()
        self.died: ChildDied | None = None
        self.loop.add_reader(self._results_fd, self._read)

    def call(self, frame: bytes) -> asyncio.Future[Any]:
        """Send a call, ``(function, args)`` pickled; the future of its result.
        :class:`ChildDied` (raised, or the future's) when the child is gone."""
        if self.died is not None:
            raise self.died
        future: asyncio.Future[Any] = self.loop.create_future()
        self._pending.append(future)
        writing = bool(self._unsent)
        self._unsent.append(memoryview(FRAME_HEADER.pack(len(frame))))
        self._unsent.append(memoryview(frame))
        if not writing:
            self._write()
        return future

    def _write(self) -> None:
        while self._unsent:
            head = self._unsent[0]
            try:
                sent = os.write(self._calls_fd, head)
            except BlockingIOError:
                break
            except OSError as exc:  # EPIPE: the child is gone
                self._lost(f"writing to it failed: {exc!r}")
                return
            if sent < len(head):
                self._unsent[0] = head[sent:]
            else:
                self._unsent.popleft()
        if self._unsent:
            self.loop.add_writer(self._calls_fd, self._write)
        else:
            self.loop.remove_writer(self._calls_fd)

    def _read(self) -> None:
        try:
            chunk = os.read(self._results_fd, PIPE_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(f"reading from it failed: {exc!r}")
            return
        if not chunk:
            self._lost(f"it ended (exit code {self.process.exitcode})")
            return
        received = self._received
        received += chunk
        start = 0
        while len(received) - start >= FRAME_HEADER.size:
            (size,) = FRAME_HEADER.unpack_from(received, start)
            end = start + FRAME_HEADER.size + size
            if len(received) < end:
                break
            try:
                ok, value, where = pickle.loads(
                    memoryview(received)[start + FRAME_HEADER.size:end])
            except Exception as exc:  # what follows cannot be matched to calls
                self._lost(f"a result could not be read: {exc!r}")
                return
            start = end
            future = self._pending.popleft()
            if future.done():  # cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                value.__cause__ = ChildTraceback(where)
                future.set_exception(value)
        del received[:start]

    def _lost(self, reason: str) -> None:
        self.died = ChildDied(f"the child process died: {reason}")
        self._disconnect()
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(self.died)

    def _disconnect(self) -> None:
        self.loop.remove_reader(self._results_fd)
        self.loop.remove_writer(self._calls_fd)
        self._unsent.clear()
        # the child reads an end of file, finishes what it runs and exits
        self._calls.close()
        self._results.close()

    def close(self) -> None:
        """Let the child go (it ends after the call it runs); calls under way are
        cancelled."""
        if self.died is None:
            self.died = ChildDied("the child process was stopped")
            self._disconnect()
        while self._pending:
            future = self._pending.popleft()
            if not self.loop.is_closed():  # else no one can await it any more
                future.cancel()


def serve_calls(calls: multiprocessing.connection.Connection,
                results: multiprocessing.connection.Connection, niceness: int,
                process_name: str = "") -> None:
    """The child: run the calls as they come, send each one's result (or the
    exception, with where it was raised), until the worker closes the pipe."""
    start_child(niceness, process_name)
    calls_fd, results_fd = calls.fileno(), results.fileno()
    while True:
        header = _read_exactly(calls_fd, FRAME_HEADER.size)
        if header is None:
            return
        frame = _read_exactly(calls_fd, FRAME_HEADER.unpack(header)[0])
        if frame is None:
            return
        function, args = pickle.loads(frame)
        try:
            outcome = pickle.dumps((True, function(*args), ""),
                                   protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # every failure goes back to the caller
            where = traceback.format_exc()
            try:
                outcome = pickle.dumps((False, exc, where), protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # an exception that does not pickle
                outcome = pickle.dumps((False, RuntimeError(repr(exc)), where),
                                       protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(results_fd, FRAME_HEADER.pack(len(outcome)))
        _write_all(results_fd, outcome)


def _read_exactly(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None at an end of file."""
    parts: list[bytes] = []
    left = size
    while left:
        chunk = os.read(fd, min(left, PIPE_BYTES))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class ChildLost(RuntimeError):
    """The child died, and with it what it held that exists nowhere else."""


class ModelProcess(Service):
    """Runs functions in one child process, started on first use and stopped with
    the app (a service of it). Calls run in the order made.

    A child that died (killed, out of memory) is replaced once per call; a second
    failure is raised to the caller. A replacement first runs the call last made
    with :meth:`hold`, so that it holds what its predecessor held.

    ``replace_dead=False``: for a child that holds what no one else has (the rows
    process). Once it died, every call raises :class:`ChildLost`, and none starts
    another child until :meth:`close`.
    """

    def __init__(self, niceness: int = MODEL_NICENESS, replace_dead: bool = True,
                 process_name: str = "reco-model", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.niceness = niceness
        self.process_name = process_name  # the child's (at most 15 characters)
        self.replace_dead = replace_dead
        self._child: ChildPipes | None = None
        self._held: bytes | None = None  # the call held, pickled
        self._in_flight: set[asyncio.Future[Any]] = set()

    async def run(self, function: Callable[..., R], *args: Any) -> R:
        """``function(*args)`` in the child (see :meth:`submit`)."""
        return await self.submit(function, *args)

    def submit(self, function: Callable[..., R], *args: Any) -> Awaitable[R]:
        """Queue ``function(*args)`` for the child (a module-level function of a
        module without Faust) now; await the result.

        The call is pickled here and now, its arguments as they are when called:
        batches may change them as soon as the caller awaits.
        """
        frame = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        return cast(Awaitable[R], self._result(frame, *self._start(frame)))

    def hold(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(*args)`` now, and again first in any child that replaces
        this one: for what the child keeps (the ranking snapshot). Not awaited; a
        failure is logged."""
        self._held = pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL)
        if self._child is not None and self._child.died is None:
            self._start_held(self._child)

    def _start(self, frame: bytes) -> tuple[ChildPipes, asyncio.Future[Any]]:
        child = self._ensure_child()
        try:
            future = child.call(frame)
        except ChildDied as exc:  # it died before, and that was noticed
            if not self.replace_dead:
                raise ChildLost(str(exc)) from exc
            self._replace(child)
            child = self._ensure_child()
            future = child.call(frame)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)
        return child, future

    async def _result(self, frame: bytes, child: ChildPipes,
                      future: asyncio.Future[Any]) -> Any:
        try:
            return await future
        except ChildDied as exc:
            if not self.replace_dead:
                raise ChildLost(str(exc)) from exc
            self._replace(child)
        return await self._start(frame)[1]

    def _replace(self, child: ChildPipes) -> None:
        """Drop a dead child; the next call starts another. Only the first of its
        calls to fail does: the others find a new child already."""
        if self._child is child:
            self.close()
            log.warning("the model process died; starting another")

    def _ensure_child(self) -> ChildPipes:
        if self._child is None:
            self._child = ChildPipes(self.niceness, self.process_name)
            if self._held is not None:
                self._start_held(self._child)
        return self._child

    def _start_held(self, child: ChildPipes) -> None:
        try:
            child.call(cast(bytes, self._held)).add_done_callback(_log_failure)
        except ChildDied:  # the next call's new child runs it first
            self._replace(child)

    def close(self) -> None:
        """Stop the child (what it runs is abandoned); the next call starts another."""
        child, self._child = self._child, None
        if child is not None:
            child.close()

    async def on_stop(self) -> None:
        # calls under way finish first (a batch's ranking: milliseconds), so that
        # the last commit can include what they were for
        if self._in_flight:
            await asyncio.wait(list(self._in_flight), timeout=STOP_GRACE_SECONDS)
        self.close()
