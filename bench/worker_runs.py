"""``recostream worker`` processes on the produced topics: started, timed at full
speed from their /health counters, with the CPU and memory of each process.

A worker's rate is that of the full pipeline: from the first poll where every
worker applies events and ranks with a snapshot (see :func:`measure_workers`) to
the last event, plus the time until every row update those events caused is
applied (the rows agent shares the loop and runs behind the events at full speed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness import Bench, Run, say, stop_child
from procfs import cpu_between, cpu_seconds_by_process, worker_peak_rss_mb
from series import Series, describe_minute

from streams.devtools.worker_process import WorkerProcess, worker_env
from streams.runtime.settings import Settings

HEALTH_POLL_S = 0.2
ROWS_SETTLE_TIMEOUT_S = 120.0
STALL_S = 20.0  # no progress this long: the configuration is stuck, stop measuring it


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


def measure_workers(workers: Sequence[WorkerProcess], expect: int, cap_s: float,
                    label: str, broker_pid: int | None = None,
                    on_poll: Callable[[int], None] | None = None) -> Window:
    """Events and seconds in steady state: from the first poll where every worker
    applies events and ranks with a snapshot, to the last event.

    One worker: applied + deduplicated (a fresh group deduplicates nothing).
    Several: applied only, because a rebalance redelivers what another worker
    processed but did not commit yet, and those come back as deduplicated, counted
    twice otherwise. The clock starts once every worker has applied something (the
    group has settled: a worker that joins later triggers a rebalance, a pause
    that is start-up, not throughput) and ranks with the snapshot of a complete
    refresh round: until then a list is trending items only, and costs next to
    nothing to rank. The end is interpolated between the two polls around the
    expected count.

    The CPU the workers' processes and the broker used is read at the poll that
    starts the clock and at the last one (:attr:`Window.cpu_cores`). ``on_poll``
    gets the events counted at every poll that answered.
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
            if on_poll is not None:
                on_poll(total)
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
    cover the whole run, and a share of them is a share of its wall time;
    ``--subprocesses`` so that the ranking, model and rows children are sampled
    too (each stack then begins with its process).
    """
    if not bench.args.profile or worker.proc is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = Path(bench.args.profile) / f"{name}.folded"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = (bench.tmp / f"{name}-py-spy.log").open("wb")
    proc = subprocess.Popen([spy, "record", "--format", "raw", "--nonblocking", "--rate", "100",
                             "--idle", "--threads", "--subprocesses",
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


def batch_summary(workers: Sequence[WorkerProcess]) -> dict[str, float]:
    """The workers' batches of events so far, from their /metrics: how many, their
    mean size, and the seconds spent in them (summed over workers).

    The seconds are wall time inside our batch processing, its waits included
    (for the ranking child's backpressure, the locks): an upper bound on the event
    loop's time there; set against the measured window, a lower bound on what the
    rest took (Faust taking messages in, the rows agent, refreshes, commits).
    """
    count = events = seconds = 0.0
    for samples in (worker.metrics() for worker in workers):
        count += samples[("recostream_batch_size_count", ())]
        events += samples[("recostream_batch_size_sum", ())]
        seconds += samples[("recostream_batch_seconds_sum", ())]
    return {"batches": count, "events_per_batch": round(events / count, 1) if count else 0.0,
            "batch_seconds": round(seconds, 2)}


def rows_settled_after(workers: Sequence[WorkerProcess], timeout: float) -> float | None:
    """Seconds from now until every row update the workers had sent by now is
    applied (None if not within ``timeout``). Those sent later do not count: a
    worker stopped by the cap goes on reading the events left, and their updates
    would keep it from ever catching up within the timeout."""
    started = time.perf_counter()
    sent: int | None = None
    while True:
        try:
            counters = [w.health()["counters"] for w in workers]
        except (OSError, ValueError):
            counters = []  # busy or between requests: the next poll will tell
        if counters:
            if sent is None:
                sent = sum(c["row_updates_sent"] for c in counters)
            done = sum(c["row_updates_applied"] + c["row_updates_skipped"] for c in counters)
            if done >= sent:
                return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(HEALTH_POLL_S / 4)


def run_worker(bench: Bench, name: str, label: str, store: str, count: int, expect: int,
               *, prefix: str | None = None, cap_s: float | None = None,
               per_minute: bool = False, overrides: Mapping[str, Any] | None = None) -> Run:
    """``count`` workers in one group on ``prefix`` (default: the bench's topics),
    timed until ``expect`` events are applied or for ``cap_s`` (default
    ``--max-seconds``); ``per_minute``: with the minute series of :mod:`series` and
    the peak RSS of each process; ``overrides``: settings other than the default
    (``{"ranking": "neighbours"}``, say)."""
    app_id = f"bench-{bench.tag}-{name}"
    settings = [bench.settings(name, bench.prefix if prefix is None else prefix, store, app_id)
                for _ in range(count)]
    if overrides:
        settings = [replace(s, **overrides) for s in settings]
    say(f"{label}: starting {count} worker(s), store {store}")
    workers = start_workers(bench, settings, name)
    spies = [start_profiler(bench, w, f"{name}-{i}") for i, w in enumerate(workers)]
    series = Series(workers, bench.log_dir, app_id) if per_minute else None
    if series is not None:
        series.start()
    try:
        window = measure_workers(workers, expect,
                                 bench.args.max_seconds if cap_s is None else cap_s, label,
                                 bench.broker_pid, series.count if series else None)
        rows_lag = rows_settled_after(workers, ROWS_SETTLE_TIMEOUT_S)
        counters = [w.health()["counters"] for w in workers]
        batches = batch_summary(workers)
        rss = [worker_peak_rss_mb(w.proc.pid) for w in workers if w.proc is not None]
        by_process = series.peak_rss_mb_by_process() if series else {}
    finally:
        if series is not None:
            series.stop()
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
    run.peak_rss_mb_by_process = by_process
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
    if series is not None:
        run.minutes = series.minutes()
        for minute in run.minutes:
            say(f"{label}, {describe_minute(minute)}")
    return run
