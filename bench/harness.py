"""What every stream bench run shares: a broker of its own, topics, the workload
produced, the worker settings, the figures of one configuration, and the clean-up.

The broker is Apache Kafka 4.0.2 (:class:`streams.local_broker.LocalBroker`) in the
run's temp dir on free ports; everything the run starts is stopped at the end, on
failure and on Ctrl-C or SIGTERM too (:func:`cleaned_up`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from workload import Messages

from streams.cli.produce import produce_events
from streams.devtools.local_broker import LocalBroker
from streams.devtools.worker_process import free_port
from streams.runtime.settings import Settings
from streams.runtime.topic_admin import TOPICS, TopicSpec, ensure_topics_sync

NAIVE_TOPIC = "naive-recommendations"
PRODUCE_CHUNK = 200_000  # messages built and sent at a time: a shop's millions never all held


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


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
    # with per-minute series (--scale shop, soak): one dict per minute, and the
    # peak RSS of each of the worker's processes
    minutes: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb_by_process: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    """What the configurations share: broker, data, temp dir and the processes to stop.

    ``args`` holds the command line: ``partitions``, ``max_seconds``, ``profile``,
    ``refresh_seconds`` and ``batch_seconds`` are read from it.
    """

    args: argparse.Namespace
    tmp: Path
    bootstrap: str = ""
    prefix: str = ""
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    broker: LocalBroker | None = None
    broker_pid: int | None = None

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

    def start_broker(self) -> None:
        say(f"temp dir {self.tmp}")
        broker = LocalBroker(self.tmp / "broker", port=0, partitions=self.args.partitions,
                             report=say)

        def stop_broker() -> None:
            broker.stop()

        self.cleanups.append(stop_broker)
        self.bootstrap = broker.start()
        self.broker = broker
        with contextlib.suppress(OSError, ValueError):
            self.broker_pid = int(broker.pid_file.read_text().strip())
        self.prefix = f"bench{self.tag}."

    @property
    def log_dir(self) -> Path | None:
        """The broker's partitions on disk (the per-minute series read them)."""
        return None if self.broker is None else self.broker.log_dir


def create_topics(bootstrap: str, prefix: str, partitions: int) -> None:
    specs = [TopicSpec(prefix + spec.name, spec.config) for spec in TOPICS.values()]
    specs.append(TopicSpec(prefix + NAIVE_TOPIC))
    ensure_topics_sync(bootstrap, specs, partitions)


def produce(bootstrap: str, messages: Messages, start: int = 0, stop: int | None = None) -> int:
    """Send ``messages[start:stop]`` as fast as the broker takes them, in order; the
    number delivered."""
    stop = len(messages) if stop is None else stop
    sent = 0
    for begin in range(start, stop, PRODUCE_CHUNK):
        chunk = messages.chunk(begin, min(begin + PRODUCE_CHUNK, stop))
        sent += asyncio.run(produce_events(chunk, bootstrap))
    return sent


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


@contextlib.contextmanager
def cleaned_up(args: argparse.Namespace, prefix: str = "recostream-bench-") -> Iterator[Bench]:
    """A :class:`Bench` in a new temp dir; on the way out every clean-up runs (the
    broker's last), and the temp dir goes unless ``args.keep_dir`` or a failure
    (then the logs of every process say what went wrong). SIGTERM ends the run as
    Ctrl-C does."""
    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    bench = Bench(args, Path(tempfile.mkdtemp(prefix=prefix)))
    keep = args.keep_dir
    try:
        yield bench
    except KeyboardInterrupt:
        say("interrupted; stopping everything this run started")
        raise
    except Exception:
        keep = True
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
