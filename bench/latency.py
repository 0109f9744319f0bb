"""The latency part: a fresh worker on fresh topics, warmed up, then fed a paced
load at fractions of a base rate (the worker's measured events/s), probes timed
(:mod:`probes`) while a thread times its /health (how long its loop is blocked).
"""

from __future__ import annotations

import asyncio
import functools
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from harness import Bench, Run, create_topics, fmt, produce, say
from probes import LoopProbe, ProbedLoad, ProbeTimes, nearest_rank, paced_load, write_probe_log
from procfs import worker_peak_rss_mb
from series import Series, describe_minute
from worker_runs import start_profiler, start_workers, stop_profiler
from workload import Messages, Workload, draw

from streams.devtools.worker_process import Samples, WorkerProcess, row_updates_caught_up

LATENCY_WARMUP = 20_000
LATENCY_LEAD_IN_S = 3.0  # paced but unmeasured: the worker settles at the new rate


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
    minutes: list[dict[str, Any]] = field(default_factory=list)  # with per-minute series


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


def settled(health: dict[str, Any], events: int) -> bool:
    """Every event in and every row update it caused applied."""
    c = health["counters"]
    return bool(c["applied"] + c["deduplicated"] >= events and row_updates_caught_up([c]))


def warm_worker(bench: Bench, name: str, prefix: str, messages: Messages) -> WorkerProcess:
    """A worker on fresh topics ``prefix``, fed the first :data:`LATENCY_WARMUP` messages.

    Warm means settled: every event applied, every row update of theirs applied
    (the repartition agent shares the loop; a backlog there would be measured as
    latency) and a neighbour refresh since, so recommendations do their full
    ranking work.
    """
    create_topics(bench.bootstrap, prefix, bench.args.partitions)
    settings = bench.settings(name, prefix, "memory://")
    worker = start_workers(bench, [settings], name)[0]
    say(f"{name}: warming up with {LATENCY_WARMUP:,} events")
    produce(bench.bootstrap, messages, 0, LATENCY_WARMUP)
    worker.wait_until_settled(LATENCY_WARMUP, timeout=180)
    return worker


def measure_load(bench: Bench, worker: WorkerProcess, prefix: str, load: ProbedLoad,
                 rate: float, fraction: float, series: Series | None = None,
                 times: ProbeTimes | None = None) -> LatencyPoint:
    """Send ``load`` at ``rate`` to a warm worker, the first :data:`LATENCY_LEAD_IN_S`
    unmeasured, and sum up its probes; with ``series`` (sampled during the load),
    the minutes of the measured part too. ``times`` is filled as probes come back."""
    lead_in = int(rate * LATENCY_LEAD_IN_S)
    before = worker.metrics()
    on_health = ((lambda h: series.count(h["counters"]["applied"]
                                         + h["counters"]["deduplicated"]))
                 if series is not None else None)
    if series is not None:
        series.start()
    try:
        with LoopProbe(worker, on_health=on_health) as loop_probe:
            times = asyncio.run(paced_load(bench.bootstrap, prefix, bench.args.partitions,
                                           load, load.probe_users, rate, lead_in, times))
    finally:
        if series is not None:
            series.stop()
    stages = stage_means_ms(before, worker.metrics())
    loop_ms = sorted(loop_probe.times_ms)
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
    if bench.args.probe_log:
        write_probe_log(Path(bench.args.probe_log), fraction, times)
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
    if series is not None:
        point.minutes = series.minutes(times.started, times.ended, times.latencies())
    return point


def describe_point(point: LatencyPoint) -> str:
    return (f"offered {point.offered_rate:,.0f}/s, {point.answered}/{point.probes} "
            f"probes answered, p50 {fmt(point.p50_ms, '.1f')} ms, "
            f"p99 {fmt(point.p99_ms, '.1f')} ms; "
            f"in worker p50/p99 {fmt(point.worker_p50_ms)}/{fmt(point.worker_p99_ms)} ms, "
            f"delivery {fmt(point.delivery_p50_ms)}/{fmt(point.delivery_p99_ms)} ms; "
            f"/health p99 {fmt(point.loop_p99_ms)} ms, max {fmt(point.loop_max_ms)} ms; "
            f"mean batch {fmt(point.batch_mean_ms, '.1f')} ms, "
            f"ranking {fmt(point.ranking_mean_ms, '.1f')} ms")


def run_latency(bench: Bench, base_eps: float, workload: Workload, *, seed: int,
                per_minute: bool = False) -> tuple[list[LatencyPoint], Run]:
    """The latency curve at ``bench.args.latency_fractions`` of ``base_eps``, each
    load ``latency_seconds`` long after its lead-in, on ``workload`` drawn with
    ``seed + 1`` (probe items with ``seed + 2``)."""
    args = bench.args
    prefix = f"lat{bench.tag}."
    fractions = args.latency_fractions
    per_rate = [int(base_eps * f * (LATENCY_LEAD_IN_S + args.latency_seconds)) for f in fractions]
    messages = Messages(draw(workload, LATENCY_WARMUP + sum(per_rate), seed + 1), prefix, "l")
    worker = warm_worker(bench, "latency", prefix, messages)
    rng = np.random.default_rng(seed + 2)
    points: list[LatencyPoint] = []
    run = Run("latency worker (memory)")
    spy: subprocess.Popen[bytes] | None = None
    app_id = f"bench-{bench.tag}-latency"
    try:
        spy = start_profiler(bench, worker, "latency-0")
        produced = offset = LATENCY_WARMUP
        for index, (fraction, n) in enumerate(zip(fractions, per_rate, strict=True)):
            rate = base_eps * fraction
            load = ProbedLoad(messages, offset, n, prefix, f"{fraction:g}", rng)
            offset += n
            say(f"latency: {rate:,.0f}/s ({fraction:g} of {base_eps:,.0f}) for "
                f"{LATENCY_LEAD_IN_S:g} + {args.latency_seconds:g} s, "
                f"{len(load.probe_users):,} probes")
            series = Series([worker], bench.log_dir, app_id) if per_minute else None
            point = measure_load(bench, worker, prefix, load, rate, fraction, series)
            produced += len(load)
            points.append(point)
            say(f"latency: {describe_point(point)}")
            for minute in point.minutes:
                say(f"latency {fraction:g}, {describe_minute(minute)}")
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
