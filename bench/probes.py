"""Produce-to-list latency: a paced load with probe events, and a /health timer.

One message in :data:`PROBE_EVERY` of the load is replaced by a probe: a click by a
user never seen before, so the first ``recommendations`` record keyed by that user
answers that event. A probe is timed from its hand-over to the bench's producer to
the moment the bench reads its list, and split at that record's timestamp (set by
the worker's producer when it takes the record: in the worker before it, delivery
after it). One clock: the broker's record timestamps are wall-clock too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import orjson
from workload import Messages, zipf_probabilities

from streams.cli.produce import OutMessage, Pacer
from streams.devtools.worker_process import WorkerProcess

PROBE_EVERY = 10  # one message in ten is a probe from a user never seen before
LATENCY_DRAIN_S = 10.0  # after the load: a probe not answered by then counts as infinite
LOAD_CHUNK = 5_000  # messages of the load built at a time


class LoopProbe:
    """Times /health answers in a thread while the load runs.

    The worker serves HTTP on the event loop that runs its agents, so a /health
    answer that takes 800 ms means the loop was blocked (a long synchronous batch,
    a refresh) for that long: the latency of every event waiting behind it.
    ``on_health`` gets each answer (the series read the events applied from it).
    """

    def __init__(self, worker: WorkerProcess, interval_s: float = 0.1,
                 on_health: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.worker = worker
        self.interval_s = interval_s
        self.on_health = on_health
        self.times_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(OSError, ValueError):
                health = self.worker.health()
                self.times_ms.append((time.perf_counter() - started) * 1000.0)
                if self.on_health is not None:
                    self.on_health(health)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> LoopProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def probe_message(prefix: str, user: str, item: int, ts: float) -> OutMessage:
    body = {"user_id": user, "item_id": f"i{item}", "ts": ts, "type": "click",
            "event_id": f"e-{user}"}
    return OutMessage(prefix + "clicks", user.encode(), orjson.dumps(body))


class ProbedLoad(Sequence[OutMessage]):
    """``count`` messages of ``messages`` from ``start``, one in :data:`PROBE_EVERY`
    replaced by a probe of user ``p<label>-<n>`` (``probe_users``: position -> user)
    clicking an item drawn from the workload's item law with ``rng``, at the time of
    the message it replaces. Built a chunk at a time as the load is sent."""

    def __init__(self, messages: Messages, start: int, count: int, prefix: str, label: str,
                 rng: np.random.Generator) -> None:
        self.messages = messages
        self.start = start
        self.count = min(count, len(messages) - start)
        workload = messages.draws.workload
        items = rng.choice(workload.items, size=self.count // PROBE_EVERY + 1,
                           p=zipf_probabilities(workload.items, workload.item_exponent))
        self.probe_users: dict[int, str] = {}
        self.probes: dict[int, OutMessage] = {}
        for j, position in enumerate(range(PROBE_EVERY - 1, self.count, PROBE_EVERY)):
            user = f"p{label}-{j}"
            self.probe_users[position] = user
            ts = float(messages.draws.ts[start + position])
            self.probes[position] = probe_message(prefix, user, int(items[j]), ts)
        self._cached_from = -1
        self._cached: list[OutMessage] = []

    def __len__(self) -> int:
        return self.count

    @overload
    def __getitem__(self, index: int) -> OutMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[OutMessage]: ...

    def __getitem__(self, index: int | slice) -> OutMessage | list[OutMessage]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.count))]
        if not 0 <= index < self.count:
            raise IndexError(index)
        probe = self.probes.get(index)
        if probe is not None:
            return probe
        if not self._cached_from <= index < self._cached_from + len(self._cached):
            self._cached_from = index
            self._cached = self.messages.chunk(self.start + index,
                                               self.start + min(index + LOAD_CHUNK, self.count))
        return self._cached[index - self._cached_from]

    def replaced(self) -> set[int]:
        """Positions in ``messages`` whose events were never sent (probes instead)."""
        return {self.start + position for position in self.probes}


@dataclass
class ProbeTimes:
    """Wall-clock seconds per measured probe user, filled while the load runs."""

    sent: dict[str, float] = field(default_factory=dict)  # handed to our producer
    created: dict[str, float] = field(default_factory=dict)  # recommendation record made
    seen: dict[str, float] = field(default_factory=dict)  # recommendation consumed here
    offered_rate: float = 0.0
    started: float = 0.0  # wall time the measured part of the load began
    ended: float = 0.0  # and when its last message was handed over

    def latencies(self) -> list[tuple[float, float]]:
        """(sent, ms) per measured probe so far; infinity while unanswered."""
        sent, seen = self.sent.copy(), self.seen.copy()
        return [(t, (seen[u] - t) * 1000.0 if u in seen else math.inf)
                for u, t in sent.items()]


async def paced_load(bootstrap: str, prefix: str, partitions: int, load: Sequence[OutMessage],
                     probe_users: dict[int, str], rate: float, lead_in: int,
                     times: ProbeTimes | None = None) -> ProbeTimes:
    """Send ``load`` at ``rate`` and time the probes after the first ``lead_in`` messages
    (into ``times`` if given, which others may read meanwhile)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    times = ProbeTimes() if times is None else times
    sent_at: dict[str, float] = {}
    measured = {user for position, user in probe_users.items() if position >= lead_in}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    # linger 0: every message leaves with the next send of the sender task; a linger
    # would add its own milliseconds to every probe
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
    await consumer.start()
    await producer.start()
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=50)
            now = time.time()
            for records in batch.values():
                for record in records:
                    key = record.key.decode() if record.key else ""
                    if key in sent_at and key not in times.seen:
                        times.created[key] = record.timestamp / 1000.0
                        times.seen[key] = now

    try:
        consumer.assign([TopicPartition(prefix + "recommendations", p)
                         for p in range(partitions)])
        await consumer.seek_to_end()
        watcher = asyncio.create_task(watch())
        pacer = Pacer(rate, origin=time.perf_counter())
        step = pacer.step()
        sent = 0
        measure_from = 0.0
        while sent < len(load):
            wait = pacer.wait_s(sent, time.perf_counter())
            if wait > 0:
                await asyncio.sleep(wait)
            for position in range(sent, min(sent + step, len(load))):
                if position == lead_in:
                    measure_from = time.perf_counter()
                    times.started = time.time()
                message = load[position]
                user = probe_users.get(position)
                if user is not None:
                    sent_at[user] = time.time()
                    if user in measured:
                        times.sent[user] = sent_at[user]
                await producer.send(message.topic, message.value, message.key)
            sent = min(sent + step, len(load))
        await producer.flush()
        times.ended = time.time()
        times.offered_rate = (len(load) - lead_in) / (time.perf_counter() - measure_from)
        deadline = time.perf_counter() + LATENCY_DRAIN_S
        while time.perf_counter() < deadline and not measured <= times.seen.keys():
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
    finally:
        await producer.stop()
        await consumer.stop()
    times.seen = {u: t for u, t in times.seen.items() if u in measured}
    times.created = {u: t for u, t in times.created.items() if u in measured}
    return times


def nearest_rank(ordered: Sequence[float], q: float) -> float | None:
    """The q-th percentile by nearest rank (a value really observed; no interpolation
    towards a missing probe's infinity); None when it falls on a missing probe.

    >>> nearest_rank([1.0, 2.0, 3.0, 4.0], 50), nearest_rank([1.0, math.inf], 99)
    (2.0, None)
    """
    if not ordered:
        return None
    value = ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]
    return None if math.isinf(value) else value


def write_probe_log(path: Path, fraction: float, times: ProbeTimes) -> None:
    """Append one CSV line per probe: load fraction, wall time sent, ms until the
    worker's producer took its list and until it was read (empty: unanswered), to
    lay the latency over time against a worker's own logs."""
    new = not path.exists()
    with path.open("a") as out:
        if new:
            out.write("fraction,sent_unix,in_worker_ms,latency_ms\n")
        for user, sent in sorted(times.sent.items(), key=lambda item: item[1]):
            created, seen = times.created.get(user), times.seen.get(user)
            out.write(f"{fraction},{sent:.3f},"
                      f"{'' if created is None else f'{(created - sent) * 1000.0:.1f}'},"
                      f"{'' if seen is None else f'{(seen - sent) * 1000.0:.1f}'}\n")
