"""CPU and memory of the bench's processes, read from /proc (Linux).

A worker is several processes: its own (the event loop and the Kafka clients'
threads) and the children it starts, which name themselves in
``/proc/<pid>/comm`` (streams.model_work.start_child): ``reco-ranker``,
``reco-rows-N`` and ``reco-model``.
"""

from __future__ import annotations

import contextlib
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from streams.devtools.worker_process import WorkerProcess

#: The role of a worker's child by the name it gives itself; ``reco-rows-N`` is "rows".
CHILD_ROLES = {"reco-ranker": "ranker", "reco-model": "model"}


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def status_mb(pid: int, key: str) -> float | None:
    """A memory line of /proc/<pid>/status in MB (``VmRSS``, ``VmHWM``); None if gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM (the kernel's high-water mark of resident memory) of a live process."""
    return status_mb(pid, "VmHWM")


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


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def worker_processes(pid: int) -> dict[str, int]:
    """A worker's processes by name: ``worker``, ``ranker``, ``rows-N``, ``model``,
    and ``other`` (``other-2``, ...) for the rest (the resource tracker)."""
    named = {"worker": pid}
    for child in child_pids(pid):
        name = comm(child)
        if name is None:
            continue
        if name.startswith("reco-rows"):
            role = "rows" + name.removeprefix("reco-rows")
        else:
            role = CHILD_ROLES.get(name, "other")
        key, n = role, 1
        while key in named:
            n += 1
            key = f"{role}-{n}"
        named[key] = child
    return named


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
            name = comm(child)
            if name is None:
                continue
            role = "rows" if name.startswith("reco-rows") else CHILD_ROLES.get(name, "other")
            used[role] += process_cpu_seconds(child)
    if broker_pid is not None:
        used["broker"] += process_cpu_seconds(broker_pid)
    used["machine"] = machine_busy_seconds()
    return dict(used)


def cpu_between(before: dict[str, float], after: dict[str, float], seconds: float,
                events: int) -> tuple[dict[str, float], dict[str, float]]:
    """Cores used per role between two :func:`cpu_seconds_by_process` readings
    ``seconds`` apart, and CPU-microseconds per event of the ``events`` between."""
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    cores = {role: round(cpu / seconds, 2) for role, cpu in used.items()} if seconds > 0 else {}
    per_event = ({role: round(cpu / events * 1e6, 1) for role, cpu in used.items()}
                 if events > 0 else {})
    return cores, per_event
