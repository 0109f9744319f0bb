"""Stream throughput and latency on a local Kafka broker, every configuration in one run.

    .venv/bin/python bench/stream_throughput.py                    # table (~12 minutes)
    .venv/bin/python bench/stream_throughput.py --json             # plus one JSON object
    .venv/bin/python bench/stream_throughput.py --events 50000 --skip naive,two,latency
    .venv/bin/python bench/stream_throughput.py --skip bare,noop,naive,rocksdb,two \
        --profile /tmp/prof                                        # py-spy the workers

Starts its own Apache Kafka 4.0.2 (:class:`streams.devtools.local_broker.LocalBroker` in a temp
dir, free ports; stopped at the end, on failure and on Ctrl-C too), produces a
synthetic Zipf stream once (default 600,000 events: 20k users, 5k items, 95% clicks
of mixed types, 5% purchases; keyed by user, 4 partitions) and runs, on that same
data and each with its own consumer group:

- ``bare``: an aiokafka ``getmany`` + ``orjson.loads`` loop (the physical limit;
  median of ``--bare-repeats``);
- ``noop``: a Faust agent that only decodes and counts (the framework's ceiling);
- ``noop-ours``: the same agent on recostream's consumer
  (:mod:`streams.runtime.transport`), whose hand-over of each message to the agents is
  cheaper than Faust's: the worker's own ceiling, reported beside the stock one;
- ``naive``: a Faust agent with a per-event dict model, top-10 and one send per
  event (the shape of the public flurs Faust example); capped at ``--naive-seconds``;
- ``worker``: ``recostream worker`` (memory store), rate from its /health counters,
  timed from its first snapshot (see :func:`measure_workers`);
- ``rocksdb``: the same with the rocksdb store;
- ``two``: two workers in one group, counters summed;
- ``latency``: a fresh worker on fresh topics, warmed up, fed by a paced load
  generator at 1/4, 1/2 and 3/4 of the worker's rate; probe events of unique users
  are matched to their first ``recommendations`` record, and the latency is split
  at that record's timestamp (inside the worker / delivery) while a thread times
  the worker's /health (how long its event loop is blocked).

The Faust agents run in child processes (``--role noop|noop-ours|naive``, internal). Every
configuration is bounded by ``--max-seconds``; a capped one reports its rate over
what it consumed. Progress goes to stderr; the table to stdout, or with ``--json``
to stderr and exactly one JSON object to stdout. Figures move with the machine:
the ratios, measured in one run on the same broker, are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import heapq
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from provenance import REPO, revision

from streams.cli.produce import OutMessage, Pacer, produce_events
from streams.devtools.local_broker import LocalBroker
from streams.devtools.worker_process import (
    Samples,
    WorkerProcess,
    free_port,
    row_updates_caught_up,
    worker_env,
)
from streams.runtime.settings import Settings
from streams.runtime.topic_admin import TOPICS, TopicSpec, ensure_topics_sync

PARTS = ("bare", "noop", "noop-ours", "naive", "worker", "rocksdb", "two", "latency")
NAIVE_TOPIC = "naive-recommendations"
# Event mix: 95% clicks of the four click types, 5% purchases.
KINDS = ("view", "click", "add_to_cart", "remove_from_cart", "purchase")
KIND_SHARE = (0.60, 0.20, 0.12, 0.03, 0.05)
START_TS = 1_700_000_000.0
# Targets of issue 7, as (name, ratio key, comparison, bound).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("worker / noop", "worker_over_noop", ">=", 0.6),
    ("worker / naive", "worker_over_naive", ">=", 5.0),
    ("two / one", "two_over_one", ">=", 1.2),
    ("rocksdb / noop", "rocksdb_over_noop", ">=", 0.5),
    ("p99 at half load (ms)", "p99_ms", "<=", 100.0),
)
HEALTH_POLL_S = 0.2
ROWS_SETTLE_TIMEOUT_S = 120.0
STALL_S = 20.0  # no progress this long: the configuration is stuck, stop measuring it
LATENCY_WARMUP = 20_000
LATENCY_LEAD_IN_S = 3.0  # paced but unmeasured: the worker settles at the new rate
LATENCY_DRAIN_S = 10.0
PROBE_EVERY = 10  # one message in ten is a probe from a user never seen before


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- workload ---------------------------------------------------------------------------


def zipf_probabilities(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    probabilities: np.ndarray = weights / weights.sum()
    return probabilities


@dataclass(frozen=True)
class Workload:
    users: int = 20_000
    items: int = 5_000
    user_exponent: float = 0.8
    item_exponent: float = 1.0
    seed: int = 7


def synthetic_messages(count: int, prefix: str, workload: Workload, *, seed: int,
                       tag: str, start_ts: float = START_TS) -> list[OutMessage]:
    """``count`` contract-JSON events in time order, keyed by user, with unique event ids."""
    rng = np.random.default_rng(seed)
    users = rng.choice(workload.users, size=count,
                       p=zipf_probabilities(workload.users, workload.user_exponent))
    items = rng.choice(workload.items, size=count,
                       p=zipf_probabilities(workload.items, workload.item_exponent))
    kinds = rng.choice(len(KINDS), size=count, p=KIND_SHARE)
    prices = np.round(rng.uniform(1.0, 200.0, size=count), 2)
    # 30 days of event time: trending decay and recency see a realistic spread
    ts = start_ts + np.sort(rng.uniform(0.0, 30 * 86_400.0, size=count))
    clicks, purchases = prefix + "clicks", prefix + "purchases"
    out: list[OutMessage] = []
    for i, (u, it, k, t, price) in enumerate(zip(users.tolist(), items.tolist(), kinds.tolist(),
                                                 ts.tolist(), prices.tolist(), strict=True)):
        user = f"u{u}"
        body: dict[str, Any] = {"user_id": user, "item_id": f"i{it}", "ts": t,
                                "event_id": f"{tag}{i}"}
        if KINDS[k] == "purchase":
            body["order_id"] = f"o{tag}{i}"
            body["price"] = price
            out.append(OutMessage(purchases, user.encode(), orjson.dumps(body)))
        else:
            body["type"] = KINDS[k]
            out.append(OutMessage(clicks, user.encode(), orjson.dumps(body)))
    return out


def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    specs = [TopicSpec(prefix + spec.name, spec.config) for spec in TOPICS.values()]
    specs.append(TopicSpec(prefix + NAIVE_TOPIC))
    ensure_topics_sync(bootstrap, specs, partitions)


# --- the naive model (runs inside the naive Faust child) ----------------------------------


class NaiveModel:
    """Per-user recent items and item-item co-occurrence counts in plain dicts.

    What a first Faust recommender looks like: update on every event, rank the
    rows of the user's last few items, drop what the user has seen, take the top k.
    """

    def __init__(self, history: int = 20, recent: int = 3, k: int = 10) -> None:
        self.history = history
        self.recent = recent
        self.k = k
        self.users: dict[str, deque[str]] = {}
        self.rows: dict[str, dict[str, int]] = {}

    def update(self, user: str, item: str) -> list[tuple[str, int]]:
        seen = self.users.get(user)
        if seen is None:
            seen = self.users[user] = deque(maxlen=self.history)
        if item not in seen:
            row = self.rows.setdefault(item, {})
            for other in seen:
                row[other] = row.get(other, 0) + 1
                other_row = self.rows.setdefault(other, {})
                other_row[item] = other_row.get(item, 0) + 1
            seen.append(item)
        scores: dict[str, int] = {}
        for anchor in list(seen)[-self.recent:]:
            for other, count in self.rows.get(anchor, {}).items():
                scores[other] = scores.get(other, 0) + count
        for other in seen:
            scores.pop(other, None)
        return heapq.nlargest(self.k, scores.items(), key=itemgetter(1))


# --- child role: a tiny Faust app ----------------------------------------------------------


class Tally:
    """Counts events in the child, times first to last, writes progress and the result."""

    def __init__(self, expect: int, max_seconds: float, result: Path) -> None:
        self.expect = expect
        self.max_seconds = max_seconds
        self.result = result
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = False

    def add(self) -> None:
        now = time.perf_counter()
        if self.count == 0:
            self.first = now
        self.count += 1
        self.last = now
        if self.count >= self.expect and not self.done:
            self.finish(capped=False)

    def check(self) -> None:
        """Called by a timer: progress for the parent, and the time cap."""
        if self.done:
            return
        if self.count and time.perf_counter() - self.first > self.max_seconds:
            self.finish(capped=True)
        else:
            self._write(self.result.with_suffix(".progress"), {"count": self.count})

    def finish(self, *, capped: bool) -> None:
        self.done = True
        seconds = self.last - self.first
        # first to last message: count - 1 intervals
        eps = (self.count - 1) / seconds if seconds > 0 else 0.0
        self._write(self.result, {"count": self.count, "seconds": seconds, "eps": eps,
                                  "capped": capped})

    @staticmethod
    def _write(path: Path, value: dict[str, Any]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(value))
        os.replace(tmp, path)  # the parent never reads half a file


def run_faust_role(args: argparse.Namespace) -> int:
    """``--role noop|noop-ours|naive``: consume the prefixed topics from earliest, report
    the rate."""
    import faust

    from streams.runtime.transport import App as RecostreamApp

    app_class = RecostreamApp if args.role == "noop-ours" else faust.App
    app = app_class(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        datadir=args.data_dir,
        topic_partitions=args.partitions,
        # the worker's own consumer settings, so that only the agent body differs
        processing_guarantee="at_least_once",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        table_standby_replicas=0,
    )
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    source = app.topic(args.prefix + "clicks", args.prefix + "purchases", **raw)
    tally = Tally(args.expect, args.max_seconds, Path(args.result))

    if args.role in ("noop", "noop-ours"):
        @app.agent(source, name="noop")
        async def noop(stream: Any) -> None:
            async for value in stream:
                orjson.loads(value)
                tally.add()
    else:
        out = app.topic(args.prefix + NAIVE_TOPIC, **raw)
        model = NaiveModel()

        @app.agent(source, name="naive")
        async def naive(stream: Any) -> None:
            async for event in stream.events():
                body = orjson.loads(event.value)
                top = model.update(body["user_id"], body["item_id"])
                await out.send(key=event.key, value=orjson.dumps({
                    "user_id": body["user_id"],
                    "items": [{"item_id": i, "score": s} for i, s in top],
                    "ts": body["ts"],
                }))
                tally.add()

    @app.timer(0.5)  # type: ignore[untyped-decorator]
    async def report() -> None:
        tally.check()

    faust.Worker(app, loglevel="warn", quiet=True).execute_from_commandline()
    return 0


# --- parent: the pieces every configuration uses --------------------------------------------


@dataclass
class Run:
    """One configuration's figures."""

    name: str
    eps: float | None = None
    consumed: int = 0
    seconds: float = 0.0
    capped: bool = False
    rss_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    """What the configurations share: broker, data, temp dir and the processes to stop."""

    args: argparse.Namespace
    tmp: Path
    bootstrap: str = ""
    prefix: str = ""
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    broker_pid: int | None = None  # when the bench started the broker itself

    def settings(self, name: str, prefix: str, store: str, app_id: str | None = None) -> Settings:
        base = Settings(
            broker=f"kafka://{self.bootstrap}",
            app_id=app_id or f"bench-{self.tag}-{name}",
            topic_prefix=prefix,
            partitions=self.args.partitions,
            store=store,
            data_dir=self.tmp / f"{name}-{uuid.uuid4().hex[:4]}",
            web_port=free_port(),
        )
        if self.args.refresh_seconds is not None:
            base = replace(base, refresh_seconds=self.args.refresh_seconds)
        if self.args.batch_seconds is not None:
            base = replace(base, batch_seconds=self.args.batch_seconds)
        return base


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the kernel's high-water mark of resident memory) of a live process."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return None


def child_pids(pid: int) -> list[int]:
    """The child processes of a live process (any of its threads' children)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def worker_peak_rss_mb(pid: int) -> float | None:
    """VmHWM of a worker plus that of its child processes (its model, ranking and
    rows processes, and multiprocessing's resource tracker): an upper bound of
    their peak together."""
    own = peak_rss_mb(pid)
    if own is None:
        return None
    return own + sum(peak_rss_mb(child) or 0.0 for child in child_pids(pid))


def process_cpu_seconds(pid: int) -> float:
    """CPU-seconds a live process has used, all its threads (0.0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(")") + 2:].split()  # after the command, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: What each process of a worker is, by the name its children give themselves
#: (streams.runtime.children.process.start_child): the worker's own process is "worker" (the
#: event loop and the Kafka clients' threads).
CHILD_ROLES = {"reco-ranker": "ranker", "reco-model": "model"}


def cpu_seconds_by_process(workers: Sequence[WorkerProcess], broker_pid: int | None
                           ) -> dict[str, float]:
    """CPU-seconds used so far by the workers' processes, summed by role (worker,
    ranker, rows, model, other), and by the broker."""
    used: defaultdict[str, float] = defaultdict(float)
    for worker in workers:
        if worker.proc is None:
            continue
        used["worker"] += process_cpu_seconds(worker.proc.pid)
        for child in child_pids(worker.proc.pid):
            try:
                name = Path(f"/proc/{child}/comm").read_text().strip()
            except OSError:
                continue
            role = "rows" if name.startswith("reco-rows") else CHILD_ROLES.get(name, "other")
            used[role] += process_cpu_seconds(child)
    if broker_pid is not None:
        used["broker"] += process_cpu_seconds(broker_pid)
    used["machine"] = machine_busy_seconds()
    return dict(used)


def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the child's own process group (it was started in a new session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


# --- bare aiokafka --------------------------------------------------------------------------


async def bare_once(bootstrap: str, topics: Sequence[str], partitions: int, expect: int,
                    timeout_s: float) -> tuple[int, float]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(t, p) for t in topics for p in range(partitions)])
        await consumer.seek_to_beginning()
        count, first, last = 0, 0.0, 0.0
        deadline = time.monotonic() + timeout_s
        while count < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                for record in records:
                    orjson.loads(record.value or b"")
                if records:
                    if count == 0:
                        first = time.perf_counter()
                    count += len(records)
            if count:
                last = time.perf_counter()
        # first getmany's records count as arriving at `first`: rate over the rest
        return count, last - first
    finally:
        await consumer.stop()


def run_bare(bench: Bench, expect: int) -> Run:
    rates: list[float] = []
    run = Run("bare aiokafka getmany + orjson")
    topics = [bench.prefix + "clicks", bench.prefix + "purchases"]
    for attempt in range(bench.args.bare_repeats):
        count, seconds = asyncio.run(bare_once(bench.bootstrap, topics, bench.args.partitions,
                                               expect, bench.args.max_seconds))
        rate = count / seconds if seconds > 0 else 0.0
        say(f"bare #{attempt + 1}: {count:,} events in {seconds:.2f} s = {rate:,.0f}/s")
        rates.append(rate)
        run.consumed, run.seconds = count, seconds
    run.eps = statistics.median(rates)
    run.capped = run.consumed < expect
    run.note = f"median of {len(rates)}: " + ", ".join(f"{r:,.0f}" for r in rates)
    return run


# --- Faust children -------------------------------------------------------------------------


def run_faust_child(bench: Bench, role: str, expect: int, cap_s: float) -> Run:
    name = f"{role}-{uuid.uuid4().hex[:4]}"
    result = bench.tmp / f"{name}.json"
    progress = result.with_suffix(".progress")
    log = bench.tmp / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role,
           "--bootstrap", bench.bootstrap, "--prefix", bench.prefix,
           "--app-id", f"bench-{bench.tag}-{name}", "--expect", str(expect),
           "--partitions", str(bench.args.partitions), "--max-seconds", str(cap_s),
           "--result", str(result), "--data-dir", str(bench.tmp / name)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
    bench.cleanups.append(lambda: stop_child(proc))
    # startup (a Faust worker joins its group in a few seconds) + the cap + margin
    deadline = time.monotonic() + 90 + cap_s + 30
    last_report = time.monotonic()
    try:
        while not result.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"{role} child exited with {proc.returncode}:\n{log_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role} child gave no result in time:\n{log_tail(log)}")
            if time.monotonic() - last_report > 10 and progress.exists():
                last_report = time.monotonic()
                with contextlib.suppress(ValueError, OSError):
                    say(f"{role}: {orjson.loads(progress.read_bytes())['count']:,} events")
            time.sleep(0.2)
        figures = orjson.loads(result.read_bytes())
    finally:
        stop_child(proc)
    run = Run(role, eps=figures["eps"], consumed=figures["count"], seconds=figures["seconds"],
              capped=figures["capped"], note=f"time cap {cap_s:g} s" if figures["capped"] else "")
    say(f"{role}: {run.consumed:,} events in {run.seconds:.1f} s = {run.eps:,.0f}/s"
        + (" (time cap)" if run.capped else ""))
    return run


# --- our worker -----------------------------------------------------------------------------


def start_workers(bench: Bench, settings: Sequence[Settings], name: str) -> list[WorkerProcess]:
    workers = [WorkerProcess(worker_env(s), bench.tmp / f"{name}-{i}.log", s.web_port)
               for i, s in enumerate(settings)]
    for worker in workers:
        bench.cleanups.append(worker.stop)
    # Started together, so that both join the group's first generation where they can.
    errors: list[BaseException] = []

    def start(worker: WorkerProcess) -> None:
        try:
            worker.start(timeout=120)
        except BaseException as exc:  # re-raised below, in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return workers


def progress_of(workers: Sequence[WorkerProcess], *, applied_only: bool
                ) -> tuple[list[int], bool] | None:
    """Events each worker has consumed per /health, and whether every worker ranks
    with a snapshot of a complete refresh round (None if one did not answer)."""
    counts = []
    ranking = True
    for worker in workers:
        if worker.proc is not None and worker.proc.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.proc.returncode}:\n{worker.tail()}")
        try:
            health = worker.health()
        except (OSError, ValueError):
            return None  # busy or between requests: the next poll will tell
        c = health["counters"]
        counts.append(c["applied"] + (0 if applied_only else c["deduplicated"]))
        ranking = ranking and health["model_version"] > 0
    return counts, ranking


@dataclass
class Window:
    """What :func:`measure_workers` saw: events counted, seconds, and how it ended."""

    events: int
    seconds: float
    capped: bool = False
    note: str = ""
    # per process role (see cpu_seconds_by_process), from the poll that started
    # the clock to the last one: cores used, and CPU-microseconds per event
    cpu_cores: dict[str, float] = field(default_factory=dict)
    cpu_us_per_event: dict[str, float] = field(default_factory=dict)


def cpu_between(before: dict[str, float], after: dict[str, float], seconds: float,
                events: int) -> tuple[dict[str, float], dict[str, float]]:
    """Cores used per role between two :func:`cpu_seconds_by_process` readings
    ``seconds`` apart, and CPU-microseconds per event of the ``events`` between."""
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    cores = {role: round(cpu / seconds, 2) for role, cpu in used.items()} if seconds > 0 else {}
    per_event = ({role: round(cpu / events * 1e6, 1) for role, cpu in used.items()}
                 if events > 0 else {})
    return cores, per_event


def measure_workers(workers: Sequence[WorkerProcess], expect: int, cap_s: float,
                    label: str, broker_pid: int | None = None) -> Window:
    """Events and seconds in steady state: from the first poll where every worker
    applies events and ranks with a snapshot, to the last event.

    One worker: applied + deduplicated (the brief's definition; a fresh group
    deduplicates nothing). Several: applied only, because a rebalance redelivers
    what another worker processed but did not commit yet, and those come back as
    deduplicated, counted twice otherwise. The clock starts at the first poll where
    every worker has applied something (the group has settled: a worker that
    joins later triggers a rebalance, a pause that is start-up, not throughput)
    and ranks with the snapshot of a complete refresh round: until then a list is
    trending items only, and its ranking costs next to nothing (the first round
    ends ~20 s after the start; until session 12 the clock started without it,
    and much of a run of 200k events was timed before any snapshot). The end is
    interpolated between the two polls around the expected count.

    The CPU the workers' processes and the broker used is read at the poll that
    starts the clock and at the last one (:attr:`Window.cpu_cores`).
    """
    several = len(workers) > 1
    cpu_start: dict[str, float] = {}

    def with_cpu(window: Window, now: float, total: int) -> Window:
        if cpu_start and now > start_t:
            window.cpu_cores, window.cpu_us_per_event = cpu_between(
                cpu_start, cpu_seconds_by_process(workers, broker_pid), now - start_t,
                total - start_n)
        return window

    any_t, any_n = 0.0, 0  # first poll with any event applied
    start_t, start_n = 0.0, 0  # first poll with every worker applying
    prev_t, prev_n = 0.0, 0
    last_move_t, last_move_n = time.perf_counter(), 0
    last_report = time.monotonic()
    deadline = time.monotonic() + 120 + cap_s  # includes waiting for the first event
    while True:
        progress = progress_of(workers, applied_only=several)
        now = time.perf_counter()
        if progress is not None:
            counts, ranking = progress
            total = sum(counts)
            if not any_t and total:
                any_t, any_n = now, total
            if not start_t and all(counts) and ranking:
                start_t, start_n = now, total
                cpu_start = cpu_seconds_by_process(workers, broker_pid)
                say(f"{label}: every worker applying, with a snapshot ({total:,} events in)")
            if total != last_move_n:
                last_move_t, last_move_n = now, total
            if total >= expect:
                note = ""
                if not start_t:
                    # everything was taken before every worker ranked with a snapshot
                    # (or before the other joined): say so, and give that rate
                    # rather than nothing
                    start_t, start_n = any_t, any_n
                    note = ("all consumed before every worker applied events with a "
                            "snapshot: --events too few")
                if prev_t and total > prev_n and prev_n >= start_n:
                    end = prev_t + (expect - prev_n) / (total - prev_n) * (now - prev_t)
                else:
                    end = now
                return with_cpu(Window(expect - start_n, end - start_t, note=note), now, total)
            if start_t and now - start_t > cap_s:
                return with_cpu(Window(total - start_n, now - start_t, capped=True,
                                       note=f"time cap {cap_s:g} s"), now, total)
            if any_t and now - last_move_t > STALL_S:
                # stuck (seen once: a second worker's join waited out the 60 s
                # rebalance timeout): report what came, and say so
                say(f"{label}: no progress for {STALL_S:g} s at {total:,}; measuring what came")
                begin_t, begin_n = (start_t, start_n) if start_t else (any_t, any_n)
                return Window(last_move_n - begin_n, last_move_t - begin_t, capped=True,
                              note=f"stalled at {total:,}"
                              + ("" if start_t else ", never all workers applying"))
            prev_t, prev_n = now, total
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                rate = (total - start_n) / (now - start_t) if now > start_t else 0.0
                say(f"{label}: {total:,}/{expect:,} events, {rate:,.0f}/s")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{label}: events not applied in time:\n{workers[0].tail()}")
        time.sleep(HEALTH_POLL_S)


def start_profiler(bench: Bench, worker: WorkerProcess,
                   name: str) -> subprocess.Popen[bytes] | None:
    """With ``--profile DIR``: py-spy samples the worker into DIR/<name>.folded.

    Collapsed stacks (py-spy's raw format) rather than an SVG, so that the share of
    each function can be summed with a text tool; ``--nonblocking`` so the worker is
    never paused (at the price of the odd torn stack); ``--idle`` so that waiting
    threads are sampled too (the loop in ``select``): each thread's samples then
    cover the whole run, and a share of them is a share of its wall time.
    """
    if not bench.args.profile or worker.proc is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(bench.args.profile) / f"{name}.folded"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = (bench.tmp / f"{name}-py-spy.log").open("wb")
    proc = subprocess.Popen([spy, "record", "--format", "raw", "--nonblocking", "--rate", "100",
                             "--idle", "--threads",
                             "--output", str(out), "--pid", str(worker.proc.pid)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    bench.cleanups.append(lambda: stop_child(proc))
    say(f"profiling pid {worker.proc.pid} into {out}")
    return proc


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT: py-spy writes its file and exits."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stop_child(proc)


def run_worker(bench: Bench, name: str, label: str, store: str, count: int, expect: int) -> Run:
    app_id = f"bench-{bench.tag}-{name}"
    settings = [bench.settings(name, bench.prefix, store, app_id) for _ in range(count)]
    say(f"{label}: starting {count} worker(s), store {store}")
    workers = start_workers(bench, settings, name)
    spies = [start_profiler(bench, w, f"{name}-{i}") for i, w in enumerate(workers)]
    try:
        window = measure_workers(workers, expect, bench.args.max_seconds, label,
                                 bench.broker_pid)
        rows_lag = rows_settled_after(workers, ROWS_SETTLE_TIMEOUT_S)
        counters = [w.health()["counters"] for w in workers]
        batches = batch_summary(workers)
        rss = [worker_peak_rss_mb(w.proc.pid) for w in workers if w.proc is not None]
    finally:
        for spy in spies:
            if spy is not None:
                stop_profiler(spy)
        for worker in workers:
            worker.stop()
    # the full pipeline: the events' co-occurrence updates (the repartition topic's
    # agent shares the loop, and runs behind the events at full speed) count too
    seconds = window.seconds + (ROWS_SETTLE_TIMEOUT_S if rows_lag is None else rows_lag)
    run = Run(label, eps=window.events / seconds if seconds > 0 else 0.0,
              consumed=window.events, seconds=seconds,
              capped=window.capped or rows_lag is None)
    known = [r for r in rss if r is not None]
    run.rss_mb = max(known) if known else None
    run.extra = {
        "applied": [c["applied"] for c in counters],
        "deduplicated": [c["deduplicated"] for c in counters],
        "recommendations_out": sum(c["recommendations_out"] for c in counters),
        "row_updates_sent": sum(c["row_updates_sent"] for c in counters),
        "dead_lettered": sum(sum(c["dead_lettered"].values()) for c in counters),
        "events_applied_eps": round(window.events / window.seconds, 1)
        if window.seconds > 0 else None,
        "rows_lag_s": None if rows_lag is None else round(rows_lag, 2),
        **batches,
        "cpu_cores": window.cpu_cores,
        "cpu_us_per_event": window.cpu_us_per_event,
    }
    notes = [window.note] if window.note else []
    notes.append(f"events applied at {run.extra['events_applied_eps'] or 0:,.0f}/s, row "
                 + (f"updates {rows_lag:.1f} s later" if rows_lag is not None
                    else f"updates not all applied {ROWS_SETTLE_TIMEOUT_S:g} s later"))
    notes.append(f"{batches['batches']:,.0f} batches of {batches['events_per_batch']:,.0f} "
                 f"events on average, {batches['batch_seconds']:.1f} s in them")
    if count > 1:
        notes.append("applied per worker: " + " + ".join(f"{a:,}" for a in run.extra["applied"]))
    if window.cpu_cores:
        notes.append("cores used: " + ", ".join(
            f"{role} {cores:.2f}" for role, cores in window.cpu_cores.items()))
    run.note = "; ".join(notes)
    say(f"{label}: {run.consumed:,} events in {run.seconds:.1f} s = {run.eps:,.0f}/s"
        + f" ({run.note})"
        + (f", peak RSS {run.rss_mb:.0f} MB" if known else ""))
    return run


# --- latency --------------------------------------------------------------------------------


@dataclass
class LatencyPoint:
    fraction: float
    target_rate: float
    offered_rate: float
    probes: int
    answered: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    loop_p99_ms: float | None = None
    loop_max_ms: float | None = None
    worker_p50_ms: float | None = None  # sent -> recommendation record created
    worker_p99_ms: float | None = None
    delivery_p50_ms: float | None = None  # record created -> consumed by the bench
    delivery_p99_ms: float | None = None
    batch_mean_ms: float | None = None  # the worker's own histograms, this load only
    ranking_mean_ms: float | None = None


class LoopProbe:
    """Times /health answers in a thread while the load runs.

    The worker serves HTTP on the event loop that runs its agents, so a /health
    answer that takes 800 ms means the loop was blocked (a long synchronous batch,
    a refresh) for that long: the latency of every event waiting behind it.
    """

    def __init__(self, worker: WorkerProcess, interval_s: float = 0.1) -> None:
        self.worker = worker
        self.interval_s = interval_s
        self.times_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            with contextlib.suppress(OSError, ValueError):
                self.worker.health()
                self.times_ms.append((time.perf_counter() - started) * 1000.0)
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


@dataclass
class ProbeTimes:
    """Wall-clock seconds per measured probe user (one clock: the broker's record
    timestamps are wall-clock too, set by the worker's producer when it takes the
    recommendation)."""

    sent: dict[str, float] = field(default_factory=dict)  # handed to our producer
    created: dict[str, float] = field(default_factory=dict)  # recommendation record made
    seen: dict[str, float] = field(default_factory=dict)  # recommendation consumed here
    offered_rate: float = 0.0


async def paced_load(bootstrap: str, prefix: str, partitions: int, load: list[OutMessage],
                     probe_users: dict[int, str], rate: float, lead_in: int) -> ProbeTimes:
    """Send ``load`` at ``rate`` and time the probes after the first ``lead_in`` messages."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    times = ProbeTimes()
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
                        times.seen[key] = now
                        times.created[key] = record.timestamp / 1000.0

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
                message = load[position]
                user = probe_users.get(position)
                if user is not None:
                    sent_at[user] = time.time()
                await producer.send(message.topic, message.value, message.key)
            sent = min(sent + step, len(load))
        await producer.flush()
        times.offered_rate = (len(load) - lead_in) / (time.perf_counter() - measure_from)
        deadline = time.perf_counter() + LATENCY_DRAIN_S
        while time.perf_counter() < deadline and not measured <= times.seen.keys():
            await asyncio.sleep(0.1)
        stop.set()
        await watcher
    finally:
        await producer.stop()
        await consumer.stop()
    times.sent = {u: sent_at[u] for u in measured}
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


def batch_summary(workers: Sequence[WorkerProcess]) -> dict[str, float]:
    """The workers' batches of events so far, from their /metrics: how many, their
    mean size, and the seconds spent in them (summed over workers).

    The seconds are wall time inside our batch processing, its waits included
    (for the ranking child's backpressure, the locks): an upper bound on the event
    loop's time there; set against the measured window, a lower bound on what the
    rest took (Faust taking messages in, the rows agent, refreshes, commits).
    Larger batches spread each batch's fixed cost (the hand-overs to the children,
    the sends) thinner.
    """
    count = events = seconds = 0.0
    for samples in (worker.metrics() for worker in workers):
        count += samples[("recostream_batch_size_count", ())]
        events += samples[("recostream_batch_size_sum", ())]
        seconds += samples[("recostream_batch_seconds_sum", ())]
    return {"batches": count, "events_per_batch": round(events / count, 1) if count else 0.0,
            "batch_seconds": round(seconds, 2)}


def stage_means_ms(before: Samples, after: Samples) -> dict[str, float | None]:
    """Mean milliseconds of a batch (processing, from the window's end) and of a
    submission's ranking (hand-over to the ranking child until its lists are queued: a
    batch's, unless the lists of several batches waited to go together)
    between two scrapes of a worker's /metrics: two stages of 'in worker'.

    >>> stage_means_ms({("recostream_ranking_seconds_sum", ()): 1.0,
    ...                 ("recostream_ranking_seconds_count", ()): 10.0},
    ...                {("recostream_ranking_seconds_sum", ()): 3.0,
    ...                 ("recostream_ranking_seconds_count", ()): 60.0})
    {'batch': None, 'ranking': 40.0}
    """
    means: dict[str, float | None] = {}
    for stage, name in (("batch", "recostream_batch_seconds"),
                        ("ranking", "recostream_ranking_seconds")):
        count = after.get((f"{name}_count", ()), 0.0) - before.get((f"{name}_count", ()), 0.0)
        spent = after.get((f"{name}_sum", ()), 0.0) - before.get((f"{name}_sum", ()), 0.0)
        means[stage] = round(spent / count * 1000.0, 2) if count else None
    return means


def rows_settled_after(workers: Sequence[WorkerProcess], timeout: float) -> float | None:
    """Seconds from now until every row update the workers sent is applied (None
    if not within ``timeout``)."""
    started = time.perf_counter()
    while True:
        try:
            counters = [w.health()["counters"] for w in workers]
        except (OSError, ValueError):
            counters = []  # busy or between requests: the next poll will tell
        if counters and row_updates_caught_up(counters):
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(HEALTH_POLL_S / 4)


def settled(health: dict[str, Any], events: int) -> bool:
    """Every event in and every row update it caused applied."""
    c = health["counters"]
    return bool(c["applied"] + c["deduplicated"] >= events and row_updates_caught_up([c]))


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


def run_latency(bench: Bench, base_eps: float) -> tuple[list[LatencyPoint], Run]:
    args = bench.args
    prefix = f"lat{bench.tag}."
    create_topics(bench.bootstrap, prefix, args.partitions)
    workload = Workload(users=args.users, items=args.items, seed=args.seed + 1)
    fractions = args.latency_fractions
    per_rate = [int(base_eps * f * (LATENCY_LEAD_IN_S + args.latency_seconds)) for f in fractions]
    pool = synthetic_messages(LATENCY_WARMUP + sum(per_rate), prefix, workload,
                              seed=args.seed + 1, tag="l")
    settings = bench.settings("latency", prefix, "memory://")
    worker = start_workers(bench, [settings], "latency")[0]
    rng = np.random.default_rng(args.seed + 2)
    item_p = zipf_probabilities(args.items, workload.item_exponent)
    points: list[LatencyPoint] = []
    run = Run("latency worker (memory)")
    spy: subprocess.Popen[bytes] | None = None
    try:
        say(f"latency: warming up with {LATENCY_WARMUP:,} events")
        asyncio.run(produce_events(pool[:LATENCY_WARMUP], bench.bootstrap))
        # Warm means settled: every event applied, every row update of theirs applied
        # (the repartition agent shares the loop; a backlog there would be measured
        # as latency) and a neighbour refresh since, so recommendations do their
        # full ranking work.
        worker.wait_until_settled(LATENCY_WARMUP, timeout=180)
        spy = start_profiler(bench, worker, "latency-0")
        produced = LATENCY_WARMUP
        offset = LATENCY_WARMUP
        for index, (fraction, n) in enumerate(zip(fractions, per_rate, strict=True)):
            rate = base_eps * fraction
            load = pool[offset:offset + n]
            offset += n
            lead_in = int(rate * LATENCY_LEAD_IN_S)
            # probes replace one message in PROBE_EVERY: a click by a user never seen
            # before, so the first recommendation keyed by that user answers that event
            probe_users: dict[int, str] = {}
            items = rng.choice(args.items, size=len(load) // PROBE_EVERY + 1, p=item_p)
            for j, position in enumerate(range(PROBE_EVERY - 1, len(load), PROBE_EVERY)):
                user = f"p{fraction:g}-{j}"
                probe_users[position] = user
                ts = orjson.loads(load[position].value)["ts"]
                load[position] = probe_message(prefix, user, int(items[j]), ts)
            say(f"latency: {rate:,.0f}/s ({fraction:g} of {base_eps:,.0f}) for "
                f"{LATENCY_LEAD_IN_S:g} + {args.latency_seconds:g} s, "
                f"{len(probe_users):,} probes")
            before = worker.metrics()
            with LoopProbe(worker) as loop_probe:
                times = asyncio.run(paced_load(bench.bootstrap, prefix, args.partitions, load,
                                               probe_users, rate, lead_in))
            stages = stage_means_ms(before, worker.metrics())
            loop_ms = sorted(loop_probe.times_ms)
            produced += len(load)
            # a probe never answered (within LATENCY_DRAIN_S after the load) is slower
            # than every answered one: it stays in the ranks as infinity
            missing = [math.inf] * (len(times.sent) - len(times.seen))
            latencies = sorted([(times.seen[u] - times.sent[u]) * 1000.0 for u in times.seen]
                               + missing)
            # the same split at the moment the worker's producer took the recommendation:
            # before it, the worker (queue, batch window, processing); after it, delivery
            in_worker = sorted([(times.created[u] - times.sent[u]) * 1000.0
                                for u in times.created] + missing)
            delivery = sorted((times.seen[u] - times.created[u]) * 1000.0 for u in times.seen)
            if args.probe_log:
                write_probe_log(Path(args.probe_log), fraction, times)
            point = LatencyPoint(
                fraction=fraction, target_rate=rate, offered_rate=times.offered_rate,
                probes=len(times.sent),
                answered=len(times.seen), p50_ms=nearest_rank(latencies, 50),
                p99_ms=nearest_rank(latencies, 99), max_ms=nearest_rank(latencies, 100),
                loop_p99_ms=nearest_rank(loop_ms, 99), loop_max_ms=nearest_rank(loop_ms, 100),
                worker_p50_ms=nearest_rank(in_worker, 50),
                worker_p99_ms=nearest_rank(in_worker, 99),
                delivery_p50_ms=nearest_rank(delivery, 50),
                delivery_p99_ms=nearest_rank(delivery, 99),
                batch_mean_ms=stages["batch"], ranking_mean_ms=stages["ranking"],
            )
            points.append(point)
            say(f"latency: offered {point.offered_rate:,.0f}/s, {point.answered}/{point.probes} "
                f"probes answered, p50 {fmt(point.p50_ms, '.1f')} ms, "
                f"p99 {fmt(point.p99_ms, '.1f')} ms; "
                f"in worker p50/p99 {fmt(point.worker_p50_ms)}/{fmt(point.worker_p99_ms)} ms, "
                f"delivery {fmt(point.delivery_p50_ms)}/{fmt(point.delivery_p99_ms)} ms; "
                f"/health p99 {fmt(point.loop_p99_ms)} ms, max {fmt(point.loop_max_ms)} ms; "
                f"mean batch {fmt(point.batch_mean_ms, '.1f')} ms, "
                f"ranking {fmt(point.ranking_mean_ms, '.1f')} ms")
            if index == len(fractions) - 1:
                break
            # the next rate starts from an empty backlog, row updates included
            settle_started = time.monotonic()
            try:
                worker.wait_for(functools.partial(settled, events=produced),
                                "the backlog to clear", timeout=120)
            except AssertionError:
                say("latency: the worker did not catch up within 120 s; higher rates skipped")
                break
            say(f"latency: worker settled {time.monotonic() - settle_started:.1f} s after")
        if worker.proc is not None:
            run.rss_mb = worker_peak_rss_mb(worker.proc.pid)
    finally:
        if spy is not None:
            stop_profiler(spy)
        worker.stop()
    return points, run


# --- report ---------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_result(args: argparse.Namespace, events: int, runs: dict[str, Run],
                 points: list[LatencyPoint], latency_run: Run | None) -> dict[str, Any]:
    def eps(key: str) -> float | None:
        run = runs.get(key)
        return round(run.eps, 1) if run is not None and run.eps is not None else None

    half = next((p for p in points if p.fraction == 0.5), None)
    worker = runs.get("worker")
    result: dict[str, Any] = {
        "events": events,
        "bare_eps": eps("bare"),
        "faust_noop_eps": eps("noop"),
        "faust_noop_our_consumer_eps": eps("noop-ours"),
        "naive_eps": eps("naive"),
        "worker_eps": eps("worker"),
        "worker_rocksdb_eps": eps("rocksdb"),
        "two_workers_eps": eps("two"),
        "offered_rate": round(half.offered_rate, 1) if half else None,
        "p50_ms": round(half.p50_ms, 2) if half and half.p50_ms is not None else None,
        "p99_ms": round(half.p99_ms, 2) if half and half.p99_ms is not None else None,
        "latency_curve": [
            {"fraction": p.fraction, "target_rate": round(p.target_rate, 1),
             "offered_rate": round(p.offered_rate, 1),
             "p50_ms": None if p.p50_ms is None else round(p.p50_ms, 2),
             "p99_ms": None if p.p99_ms is None else round(p.p99_ms, 2),
             "max_ms": None if p.max_ms is None else round(p.max_ms, 2),
             "health_p99_ms": None if p.loop_p99_ms is None else round(p.loop_p99_ms, 1),
             "health_max_ms": None if p.loop_max_ms is None else round(p.loop_max_ms, 1),
             "in_worker_p50_ms": rounded(p.worker_p50_ms),
             "in_worker_p99_ms": rounded(p.worker_p99_ms),
             "delivery_p50_ms": rounded(p.delivery_p50_ms),
             "delivery_p99_ms": rounded(p.delivery_p99_ms),
             "batch_mean_ms": rounded(p.batch_mean_ms),
             "ranking_mean_ms": rounded(p.ranking_mean_ms),
             "probes": p.probes, "answered": p.answered}
            for p in points
        ],
        "peak_rss_mb": round(worker.rss_mb, 1) if worker and worker.rss_mb else None,
    }
    result["ratios"] = {
        "worker_over_noop": ratio(result["worker_eps"], result["faust_noop_eps"]),
        "worker_over_noop_our_consumer": ratio(result["worker_eps"],
                                               result["faust_noop_our_consumer_eps"]),
        "worker_over_naive": ratio(result["worker_eps"], result["naive_eps"]),
        "two_over_one": ratio(result["two_workers_eps"], result["worker_eps"]),
        "rocksdb_over_noop": ratio(result["worker_rocksdb_eps"], result["faust_noop_eps"]),
        "worker_over_bare": ratio(result["worker_eps"], result["bare_eps"]),
    }
    result["ratios"] = {k: None if v is None else round(v, 3) for k, v in result["ratios"].items()}
    checks: dict[str, bool | None] = {}
    for _, key, op, bound in TARGETS:
        value = result["p99_ms"] if key == "p99_ms" else result["ratios"][key]
        checks[key] = None if value is None else (value >= bound if op == ">=" else value <= bound)
    result["targets_met"] = checks
    result["consumed"] = {k: r.consumed for k, r in runs.items()}
    result["seconds"] = {k: round(r.seconds, 2) for k, r in runs.items()}
    result["capped"] = sorted(k for k, r in runs.items() if r.capped)
    result["peak_rss_mb_by_config"] = {
        k: round(r.rss_mb, 1) for k, r in runs.items() if r.rss_mb is not None}
    if latency_run is not None and latency_run.rss_mb is not None:
        result["peak_rss_mb_by_config"]["latency"] = round(latency_run.rss_mb, 1)
    result["worker_counters"] = {k: r.extra for k, r in runs.items() if r.extra}
    result["setup"] = {
        "revision": revision(), "partitions": args.partitions, "users": args.users,
        "items": args.items, "batch_seconds": args.batch_seconds or Settings().batch_seconds,
        "batch_size": Settings().batch_size,
        "refresh_seconds": args.refresh_seconds or Settings().refresh_seconds,
        "cpus": os.cpu_count(), "max_seconds": args.max_seconds,
        "naive_seconds": args.naive_seconds, "latency_seconds": args.latency_seconds,
    }
    return result


def render_table(result: dict[str, Any], runs: dict[str, Run]) -> str:
    labels = {"bare": "bare aiokafka getmany + orjson", "noop": "Faust no-op agent",
              "noop-ours": "no-op, recostream's consumer",
              "naive": "Faust naive (per-event send)", "worker": "recostream worker, memory",
              "rocksdb": "recostream worker, rocksdb", "two": "two workers, memory"}
    lines = [f"stream throughput  (rev {result['setup']['revision']}, "
             f"{result['setup']['partitions']} partitions, {os.cpu_count()} CPUs, "
             f"{result['events']:,} events produced)", ""]
    lines.append(f"{'configuration':<32} {'events/s':>10} {'events':>9} {'seconds':>8} "
                 f"{'RSS MB':>7}  note")
    for key in (part for part in PARTS if part != "latency"):
        run = runs.get(key)
        if run is None:
            lines.append(f"{labels[key]:<32} {'skipped':>10}")
            continue
        note = run.note
        lines.append(f"{labels[key]:<32} {fmt(run.eps):>10} {run.consumed:>9,} "
                     f"{run.seconds:>8.1f} {fmt(run.rss_mb):>7}  {note}")
    lines += ["", "latency, produce -> recommendation consumed (ms); 'in worker' ends when the",
              "worker's producer takes the record, 'health' is how long /health took (the loop",
              "was blocked that long); 'batch/ranking' are the worker's mean batch and batch",
              "ranking times over the load, from its /metrics", "",
              f"{'load':<22} {'offered/s':>9} {'p50':>8} {'p99':>8} {'max':>8} "
              f"{'in worker p50/p99':>18} {'delivery p50/p99':>17} {'health p99/max':>15} "
              f"{'batch/ranking':>14} {'answered':>10}"]
    for point in result["latency_curve"]:
        behind = "  behind" if point["answered"] < point["probes"] else ""
        stages = f"{fmt(point['batch_mean_ms'], '.1f')}/{fmt(point['ranking_mean_ms'], '.1f')}"
        lines.append(
            f"{format(point['fraction'], 'g') + ' of worker_eps':<22} "
            f"{fmt(point['offered_rate']):>9} {fmt(point['p50_ms'], '.1f'):>8} "
            f"{fmt(point['p99_ms'], '.1f'):>8} {fmt(point['max_ms'], '.1f'):>8} "
            f"{fmt(point['in_worker_p50_ms']) + '/' + fmt(point['in_worker_p99_ms']):>18} "
            f"{fmt(point['delivery_p50_ms']) + '/' + fmt(point['delivery_p99_ms']):>17} "
            f"{fmt(point['health_p99_ms']) + '/' + fmt(point['health_max_ms']):>15} "
            f"{stages:>14} "
            f"{str(point['answered']) + '/' + str(point['probes']):>10}{behind}")
    if not result["latency_curve"]:
        lines.append("skipped")
    lines += ["", f"{'target':<24} {'value':>8} {'goal':>8}  met"]
    for name, key, op, bound in TARGETS:
        value = result["p99_ms"] if key == "p99_ms" else result["ratios"][key]
        met = result["targets_met"][key]
        lines.append(f"{name:<24} {fmt(value, '.2f'):>8} {op + format(bound, 'g'):>8}  "
                     f"{'-' if met is None else 'yes' if met else 'NO'}")
    lines.append(f"{'worker / bare':<24} {fmt(result['ratios']['worker_over_bare'], '.3f'):>8}")
    lines.append(f"{'worker / no-op, ours':<24} "
                 f"{fmt(result['ratios']['worker_over_noop_our_consumer'], '.2f'):>8}"
                 "  (the no-op agent on recostream's consumer)")
    setup = result["setup"]
    lines.append(f"\nwall {setup['wall_seconds']:.0f} s; other processes on this machine used "
                 f"{setup['other_cpu_seconds']:.0f} CPU-s meanwhile "
                 f"({setup['other_cpu_share']:.0%} of its capacity)")
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def fractions_list(text: str) -> tuple[float, ...]:
    """``0.25,0.5`` -> (0.25, 0.5): loads in increasing order, each in (0, 1]."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not values or any(not 0.0 < v <= 1.0 for v in values) or list(values) != sorted(values):
        raise argparse.ArgumentTypeError(f"fractions in (0, 1], increasing: {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600_000,
                        help="events produced (600,000: the workers' rates are timed from "
                        "their first snapshot, ~20 s in, so most of them count)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--skip", default="", metavar="PARTS",
                        help=f"comma-separated parts to skip: {','.join(PARTS)}")
    parser.add_argument("--max-seconds", type=float, default=150.0,
                        help="cap on each configuration's measured time (150)")
    parser.add_argument("--naive-seconds", type=float, default=60.0,
                        help="cap on the naive agent (60: at ~700/s it would take minutes)")
    parser.add_argument("--bare-repeats", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=20.0,
                        help="measured seconds per latency rate (20)")
    parser.add_argument("--latency-base-eps", type=float, default=None,
                        help="rate the latency fractions apply to when the worker part is skipped")
    parser.add_argument("--latency-fractions", type=fractions_list, default=(0.25, 0.5, 0.75),
                        metavar="F,F,...",
                        help="loads to measure, as fractions of worker_eps (0.25,0.5,0.75); "
                             "the JSON's p50_ms and p99_ms are those at 0.5")
    parser.add_argument("--probe-log", metavar="CSV", default=None,
                        help="append each latency probe (time sent, latencies) to CSV")
    parser.add_argument("--refresh-seconds", type=float, default=None,
                        help="the workers' RECOSTREAM_REFRESH_SECONDS (default: the worker's)")
    parser.add_argument("--batch-seconds", type=float, default=None,
                        help="the workers' RECOSTREAM_BATCH_SECONDS (default: the worker's)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="sample every worker with py-spy into DIR/<name>.folded")
    # internal: the Faust child processes
    parser.add_argument("--role", choices=("noop", "noop-ours", "naive"),
                        help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--prefix", "--app-id", "--result", "--data-dir"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if skip - set(PARTS):
        parser.error(f"--skip takes {','.join(PARTS)}; got {','.join(sorted(skip - set(PARTS)))}")
    args.skip = skip
    if "latency" not in skip and "worker" in skip and not args.latency_base_eps:
        parser.error("the latency part needs worker_eps: skip it too or give --latency-base-eps")
    return args


def run_all(bench: Bench) -> dict[str, Any]:
    args = bench.args
    say(f"temp dir {bench.tmp}")
    broker = LocalBroker(bench.tmp / "broker", port=0, partitions=args.partitions, report=say)

    def stop_broker() -> None:
        broker.stop()

    bench.cleanups.append(stop_broker)
    bench.bootstrap = broker.start()
    with contextlib.suppress(OSError, ValueError):
        bench.broker_pid = int(broker.pid_file.read_text().strip())
    bench.prefix = f"bench{bench.tag}."
    create_topics(bench.bootstrap, bench.prefix, args.partitions)
    workload = Workload(users=args.users, items=args.items, seed=args.seed)
    started = time.perf_counter()
    messages = synthetic_messages(args.events, bench.prefix, workload, seed=args.seed, tag="e")
    say(f"generated {len(messages):,} events in {time.perf_counter() - started:.1f} s "
        f"({sum(m.topic.endswith('purchases') for m in messages):,} purchases)")
    started = time.perf_counter()
    events = asyncio.run(produce_events(messages, bench.bootstrap))
    say(f"produced {events:,} events in {time.perf_counter() - started:.1f} s")
    del messages

    runs: dict[str, Run] = {}
    if "bare" not in args.skip:
        runs["bare"] = run_bare(bench, events)
    if "noop" not in args.skip:
        runs["noop"] = run_faust_child(bench, "noop", events, args.max_seconds)
    if "noop-ours" not in args.skip:
        runs["noop-ours"] = run_faust_child(bench, "noop-ours", events, args.max_seconds)
    if "naive" not in args.skip:
        runs["naive"] = run_faust_child(bench, "naive", events, args.naive_seconds)
    if "worker" not in args.skip:
        runs["worker"] = run_worker(bench, "worker", "worker memory", "memory://", 1, events)
    if "rocksdb" not in args.skip:
        runs["rocksdb"] = run_worker(bench, "rocksdb", "worker rocksdb", "rocksdb://", 1,
                                     events)
    if "two" not in args.skip:
        runs["two"] = run_worker(bench, "two", "two workers", "memory://", 2, events)
    points: list[LatencyPoint] = []
    latency_run: Run | None = None
    if "latency" not in args.skip:
        base = args.latency_base_eps or runs["worker"].eps or 0.0
        points, latency_run = run_latency(bench, base)
    return build_result(args, events, runs, points, latency_run) | {"_runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_faust_role(args)

    # SIGTERM ends the run like Ctrl-C: the finally below stops workers and broker.
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    bench = Bench(args, Path(tempfile.mkdtemp(prefix="recostream-bench-")))
    started = time.monotonic()
    # Everything we start is our child and is waited for, so at the end the machine's
    # busy time minus ours is what other processes took from the same 2 cores.
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    keep = args.keep_dir
    try:
        result = run_all(bench)
    except KeyboardInterrupt:
        say("interrupted; stopping everything this run started")
        return 130
    except Exception:
        keep = True  # the workers' and children's logs say what went wrong
        raise
    finally:
        for cleanup in reversed(bench.cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep stopping the rest (the broker last)
                say(f"cleanup failed: {exc!r}")
        if keep:
            say(f"kept {bench.tmp} (logs of every process)")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    runs = result.pop("_runs")
    wall = time.monotonic() - started
    other = (machine_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    result["setup"]["wall_seconds"] = round(wall, 1)
    result["setup"]["other_cpu_seconds"] = round(max(0.0, other), 1)
    result["setup"]["other_cpu_share"] = round(max(0.0, other) / (wall * (os.cpu_count() or 1)),
                                               3)
    table = render_table(result, runs)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
