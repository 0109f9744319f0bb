"""Minute-by-minute figures of a worker over a long run (``--scale shop``, the soak).

A thread samples, while the worker runs, every quarter second: the bytes of its
group's table changelogs (users, rows of C) and of its group's partition of
``__consumer_offsets`` on the broker's disk, and every second the resident memory
of each of its processes. The run's own poll loops add the events applied.
:meth:`Series.minutes` then gives per minute: events/s, RSS per process, the
changelog bytes written and the commits.

A commit is read from the broker's disk: the worker writes its changelogs only
before an offset commit (and at a rebalance), and the offset commit itself is a
record in ``__consumer_offsets``. So a commit ends where that partition grows, and
starts at the first changelog growth after the previous one: its duration covers
the writes (paced among the batches) and the offset commit, to a quarter second.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from procfs import peak_rss_mb, status_mb, worker_processes

from streams.devtools.worker_process import WorkerProcess

MB = 1024.0 * 1024.0
SAMPLE_S = 0.25
RSS_EVERY = 4  # samples: RSS once a second
DIRS_EVERY = 20  # samples: the directories looked up again every 5 s (topics appear late)
SHORTEST_MINUTE_S = 5.0  # a run's last, partial minute shorter than this is left out


def log_bytes(directory: Path) -> int:
    """Bytes of a partition's log segments (the indexes are preallocated: left out)."""
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(".log"):
                    total += entry.stat().st_size
    except OSError:
        pass
    return total


def offsets_partition(group: str, partitions: int) -> int:
    """The partition of ``__consumer_offsets`` a group's commits go to (Kafka's
    ``abs(groupId.hashCode()) % partitions``).

    >>> offsets_partition("recostream", 50), offsets_partition("", 50)
    (39, 0)
    """
    h = 0
    for char in group:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    signed = h - (1 << 32) if h & 0x80000000 else h
    return (0 if signed == -(1 << 31) else abs(signed)) % partitions


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of unsorted ``values``; None when empty or when it
    falls on an unanswered probe (infinity)."""
    if not values:
        return None
    ordered = sorted(values)
    value = ordered[max(0, math.ceil(q / 100.0 * len(ordered)) - 1)]
    return None if math.isinf(value) else value


class Series:
    """Samples of one or more workers of consumer group ``group``, taken in a thread
    between :meth:`start` and :meth:`stop` (or as a context manager); ``log_dir`` is
    the broker's (None: no changelogs nor commits)."""

    def __init__(self, workers: Sequence[WorkerProcess], log_dir: Path | None,
                 group: str) -> None:
        self.workers = workers
        self.log_dir = log_dir
        self.group = group
        self.started = 0.0
        self.stopped = 0.0
        self.counts: list[tuple[float, int]] = []  # (wall time, events applied)
        self.rss: list[tuple[float, dict[int, float]]] = []  # (wall time, MB by pid)
        self.names: dict[int, str] = {}  # pid -> its latest name (children rename early)
        # (wall time, changelog bytes written, bytes of the group's offset commits)
        self.disk: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="bench-series")

    def count(self, events: int) -> None:
        """Events applied so far (from a poll of the workers' /health)."""
        self.counts.append((time.time(), events))

    def processes(self) -> dict[str, int]:
        """Every process of the workers by name (``worker``, ``ranker``, ``rows-0``...,
        prefixed ``w<n>.`` when there are several workers)."""
        named: dict[str, int] = {}
        for n, worker in enumerate(self.workers):
            if worker.proc is None:
                continue
            prefix = f"w{n}." if len(self.workers) > 1 else ""
            named.update({prefix + name: pid
                          for name, pid in worker_processes(worker.proc.pid).items()})
        return named

    def peak_rss_mb_by_process(self) -> dict[str, float]:
        """VmHWM of each process, read now (while the workers run)."""
        peaks = {name: peak_rss_mb(pid) for name, pid in self.processes().items()}
        return {name: round(mb, 1) for name, mb in peaks.items() if mb is not None}

    def start(self) -> Series:
        self.started = time.time()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
        self.stopped = time.time()

    def __enter__(self) -> Series:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _dirs(self) -> tuple[list[Path], Path | None]:
        if self.log_dir is None:
            return [], None
        changelogs = sorted(self.log_dir.glob(f"{self.group}-*-changelog-*"))
        offsets = list(self.log_dir.glob("__consumer_offsets-*"))
        if not offsets:
            return changelogs, None
        return changelogs, self.log_dir / (
            f"__consumer_offsets-{offsets_partition(self.group, len(offsets))}")

    def _run(self) -> None:
        changelogs: list[Path] = []
        offsets: Path | None = None
        sizes: dict[Path, int] = {}
        written = committed = 0
        tick = 0
        while not self._stop.is_set():
            now = time.time()
            if tick % DIRS_EVERY == 0:
                changelogs, offsets = self._dirs()
            for directory in [*changelogs, *([offsets] if offsets else [])]:
                size = log_bytes(directory)
                if directory not in sizes:  # what it held before: not this run's writes
                    sizes[directory] = size if tick == 0 else 0
                # only growth counts: compaction may shrink a partition's log
                grown = max(0, size - sizes[directory])
                sizes[directory] = max(size, sizes[directory])
                if directory == offsets:
                    committed += grown
                else:
                    written += grown
            self.disk.append((now, written, committed))
            if tick % RSS_EVERY == 0:
                sample: dict[int, float] = {}
                for name, pid in self.processes().items():
                    mb = status_mb(pid, "VmRSS")
                    if mb is not None:
                        sample[pid] = mb
                        self.names[pid] = name
                self.rss.append((now, sample))
            tick += 1
            self._stop.wait(SAMPLE_S)

    def commits(self) -> list[tuple[float, float, int]]:
        """(start, end, changelog bytes) of each commit seen. The offsets partition
        also grows when the group forms, and at a commit with nothing to write: those
        are left out."""
        found: list[tuple[float, float, int]] = []
        first_write: float | None = None
        since = self.disk[0][1] if self.disk else 0
        for (t0, w0, c0), (t1, w1, c1) in zip(self.disk, self.disk[1:], strict=False):
            if w1 > w0 and first_write is None:
                first_write = t0
            if c1 > c0 and first_write is not None:
                found.append((first_write, t1, w1 - since))
                first_write, since = None, w1
        return found

    def minutes(self, origin: float | None = None, until: float | None = None,
                latencies: Sequence[tuple[float, float]] = ()) -> list[dict[str, Any]]:
        """Per minute from ``origin`` (default: the start) to ``until`` (the stop):
        events/s applied, max RSS per process, changelog MB written and the commits
        that ended in it, and with ``latencies`` ((wall time sent, ms; infinity if
        unanswered) per probe) the probes' p50 and p99."""
        origin = self.started if origin is None else origin
        until = (self.stopped or time.time()) if until is None else until
        count = max(0, math.ceil((until - origin) / 60.0))
        if count > 1 and until - (origin + 60.0 * (count - 1)) < SHORTEST_MINUTE_S:
            count -= 1
        commits = self.commits()
        names = self._unique_names()
        out = []
        for n in range(count):
            lo, hi = origin + 60.0 * n, min(origin + 60.0 * (n + 1), until)
            minute: dict[str, Any] = {"minute": n + 1, "seconds": round(hi - lo, 1),
                                      "events_per_s": self._rate(lo, hi)}
            peaks: dict[str, float] = {}
            for t, rss in self.rss:
                if lo <= t < hi:
                    for pid, mb in rss.items():
                        peaks[names[pid]] = max(peaks.get(names[pid], 0.0), mb)
            minute["rss_mb"] = {name: round(mb, 1) for name, mb in sorted(peaks.items())}
            minute["rss_mb_total"] = round(sum(peaks.values()), 1) if peaks else None
            minute["changelog_mb"] = round(self._written(lo, hi) / MB, 2)
            ended = [c for c in commits if lo <= c[1] < hi]
            minute["commits"] = len(ended)
            minute["commit_mb_mean"] = (round(sum(c[2] for c in ended) / len(ended) / MB, 2)
                                        if ended else None)
            minute["commit_s_mean"] = (round(sum(c[1] - c[0] for c in ended) / len(ended), 2)
                                       if ended else None)
            minute["commit_s_max"] = (round(max(c[1] - c[0] for c in ended), 2)
                                      if ended else None)
            if latencies:
                ms = [lat for sent, lat in latencies if lo <= sent < hi]
                p50, p99 = percentile(ms, 50), percentile(ms, 99)
                minute.update(probes=len(ms), answered=sum(not math.isinf(v) for v in ms),
                              p50_ms=None if p50 is None else round(p50, 1),
                              p99_ms=None if p99 is None else round(p99, 1))
            out.append(minute)
        return out

    def _unique_names(self) -> dict[int, str]:
        """Each pid's latest name, made unique (a restarted child gets ``-2``)."""
        taken: set[str] = set()
        unique: dict[int, str] = {}
        for pid, name in self.names.items():
            key, n = name, 1
            while key in taken:
                n += 1
                key = f"{name}-{n}"
            taken.add(key)
            unique[pid] = key
        return unique

    def _rate(self, lo: float, hi: float) -> float | None:
        """Events/s applied between ``lo`` and ``hi``, from the first and last count inside."""
        inside = [(t, n) for t, n in self.counts if lo <= t <= hi]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        (t0, n0), (t1, n1) = inside[0], inside[-1]
        return round((n1 - n0) / (t1 - t0), 1)

    def _written(self, lo: float, hi: float) -> float:
        before = [w for t, w, _ in self.disk if t < lo]
        upto = [w for t, w, _ in self.disk if t < hi]
        return float((upto[-1] if upto else 0) - (before[-1] if before else 0))


def describe_minute(minute: dict[str, Any]) -> str:
    """One line of a minute's figures, for the progress log and the soak."""
    def num(value: float | None, spec: str = ",.0f") -> str:
        return "-" if value is None else format(value, spec)

    parts = [f"minute {minute['minute']}: {num(minute['events_per_s'])} events/s"]
    if "p99_ms" in minute:
        parts.append(f"p50/p99 {num(minute['p50_ms'])}/{num(minute['p99_ms'])} ms "
                     f"({minute['answered']}/{minute['probes']} answered)")
    rss = ", ".join(f"{name} {mb:,.0f}" for name, mb in minute["rss_mb"].items())
    parts.append(f"RSS MB {rss or '-'} (total {num(minute['rss_mb_total'])})")
    parts.append(f"changelogs {minute['changelog_mb']:.1f} MB; {minute['commits']} commits"
                 + (f" of {minute['commit_mb_mean']:.1f} MB, {minute['commit_s_mean']:.1f} s "
                    f"on average, longest {minute['commit_s_max']:.1f} s"
                    if minute["commits"] else ""))
    return "; ".join(parts)
