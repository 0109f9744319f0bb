"""The reference consumers the worker is measured against, on the same topics:

- ``bare``: an aiokafka ``getmany`` + ``orjson.loads`` loop in the bench's own
  process (the physical limit);
- ``noop``: a Faust agent that only decodes and counts (the framework's ceiling);
- ``noop-ours``: the same agent on recostream's consumer (:mod:`streams.runtime.transport`),
  whose hand-over of each message to the agents is cheaper than Faust's;
- ``naive``: a Faust agent with a per-event dict model, top-10 and one send per
  event (the shape of the public flurs Faust example).

The Faust agents run in child processes: ``stream_throughput.py --role ROLE``
(:func:`run_faust_role`), started and read by :func:`run_faust_child`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any

import orjson
from harness import NAIVE_TOPIC, Bench, Run, log_tail, say, stop_child
from provenance import REPO

#: The script whose hidden ``--role`` runs a Faust child.
CHILD_SCRIPT = Path(__file__).resolve().with_name("stream_throughput.py")
FAUST_ROLES = ("noop", "noop-ours", "naive")

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


def run_faust_child(bench: Bench, role: str, expect: int, cap_s: float) -> Run:
    name = f"{role}-{uuid.uuid4().hex[:4]}"
    result = bench.tmp / f"{name}.json"
    progress = result.with_suffix(".progress")
    log = bench.tmp / f"{name}.log"
    cmd = [sys.executable, str(CHILD_SCRIPT), "--role", role,
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
