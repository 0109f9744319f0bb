"""Child processes of a worker, fed calls and read for results by its event loop.

The model work (neighbour lists, ranking snapshots, churn fits), the ranking of
each batch's lists and the rows of C run in child processes, not threads: a
thread wanting the GIL as much as the event loop held the input back 1-2 s at
every refresh, and a child shares no GIL. What each child runs is in the jobs
modules beside this one (:mod:`.model_jobs`, :mod:`.ranking_jobs`,
:mod:`.held_rows`): module-level functions of plain data, in modules that import
no Faust, so that a child starts in well under a second.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

from mode import Service

log = logging.getLogger("recostream.children")

R = TypeVar("R")

#: How long stopping waits for the calls under way.
STOP_GRACE_SECONDS = 5.0


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


class ChildProcess(Service):
    """Runs functions in one child process, started on first use and stopped with
    the app (a service of it). Calls run in the order made.

    A child that died (killed, out of memory) is replaced once per call; a second
    failure is raised to the caller. A replacement first runs the call last made
    with :meth:`hold`, so that it holds what its predecessor held.

    ``replace_dead=False``: for a child that holds what no one else has (the rows
    process). Once it died, every call raises :class:`ChildLost`, and none starts
    another child until :meth:`close`.
    """

    def __init__(self, niceness: int, process_name: str, replace_dead: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.niceness = niceness
        self.process_name = process_name  # the child's (at most 15 characters)
        self.replace_dead = replace_dead
        self._child: ChildPipes | None = None
        #: the calls held (pickled), one per slot, in the order first held
        self._held: dict[str, bytes] = {}
        self._in_flight: set[asyncio.Future[Any]] = set()

    @property
    def process(self) -> multiprocessing.process.BaseProcess | None:
        """The running child (None before the first call, or once closed)."""
        return None if self._child is None else self._child.process

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

    def hold(self, slot: str, function: Callable[..., Any], *args: Any) -> None:
        """Queue ``function(*args)`` now, and again first in any child that replaces
        this one, after the calls held in other slots: for what the child keeps (the
        ranking snapshot, the learned ranking); a later call in the same ``slot``
        replaces this one. Not awaited; a failure is logged."""
        held = self._held[slot] = pickle.dumps((function, args),
                                               protocol=pickle.HIGHEST_PROTOCOL)
        if self._child is not None and self._child.died is None:
            self._start_held(self._child, [held])

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
            if self._held:
                self._start_held(self._child, list(self._held.values()))
        return self._child

    def _start_held(self, child: ChildPipes, held: list[bytes]) -> None:
        try:
            for frame in held:
                child.call(frame).add_done_callback(_log_failure)
        except ChildDied:  # the next call's new child runs them first
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
