"""A stream worker as a child process: started, watched over HTTP, stopped.

The live demo, the integration tests and the stream benchmark all run real
``recostream worker`` processes through this one class.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from streams.runtime.settings import Settings

#: A sample of Prometheus text: (metric name, its labels sorted) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """A worker subprocess and its HTTP address."""

    env: dict[str, str]
    log_path: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = field(default=0.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "-l", "info"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.started = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                self.get("/health")
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"worker did not answer within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str, *, token: str | None = None) -> Any:
        """``GET path`` as JSON, with the worker's own bearer token (its
        RECOSTREAM_HTTP_TOKEN), or ``token`` ("" for none)."""
        token = self.env.get("RECOSTREAM_HTTP_TOKEN", "") if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url + path, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def get_status(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        """(HTTP status, the JSON answer or None if it is not JSON); see :meth:`get`."""
        try:
            return 200, self.get(path, token=token)
        except urllib.error.HTTPError as exc:
            body = exc.read()
            try:
                return exc.code, json.loads(body or b"null")
            except ValueError:
                return exc.code, None

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/health")
        return result

    def metrics(self) -> Samples:
        """Every sample of ``GET /metrics``; raises unless it answered with
        Prometheus text."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
                content_type = response.headers["Content-Type"]
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"/metrics answered {exc.code}:\n{self.tail(30)}") from None
        if not content_type.startswith("text/plain"):
            raise RuntimeError(f"/metrics answered {content_type!r}, not Prometheus text")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
        }

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = self.health()
            if condition(health):
                return health
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last health {health}\n"
                             f"{self.tail()}\n{self.task_stacks()}")

    def task_stacks(self) -> str:
        """Where the worker's threads and asyncio tasks are (mode's worker logs
        their stacks on SIGUSR1), frames only."""
        if self.proc is None or self.proc.poll() is not None:
            return ""
        before = len(self.log_path.read_text(errors="replace").splitlines())
        os.kill(self.proc.pid, signal.SIGUSR1)
        time.sleep(2.0)
        dump = self.log_path.read_text(errors="replace").splitlines()[before:]
        frames = [line for line in dump
                  if line.lstrip().startswith(("THREAD", "TASK", 'File "'))]
        return "threads and tasks (SIGUSR1):\n" + "\n".join(frames[:400])

    def wait_until_settled(self, applied: int, *, count_duplicates: bool = True,
                           timeout: float = 120.0) -> dict[str, Any]:
        """Until ``applied`` events are in (skipped duplicates count, unless told
        otherwise), every row update applied, and a full refresh round that started
        after that has been folded into the model with every neighbour list caught
        up with the counts (the rotation may take a few rounds more)."""
        def drained(h: dict[str, Any]) -> bool:
            c = h["counters"]
            done = c["applied"] + (c["deduplicated"] if count_duplicates else 0)
            return bool(done >= applied and row_updates_caught_up([c]))

        self.wait_for(drained, f"{applied} events and their row updates", timeout)
        quiet_since = int(time.time())
        return self.wait_for(lambda h: refreshed_after(h, quiet_since),
                             "a refresh round after the data settled, no list lagging", timeout)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def refreshed_after(health: Mapping[str, Any], since: float) -> bool:
    """Whether a worker (its /health) serves a snapshot of a refresh round that
    started after ``since``, with no neighbour list lagging the counts.

    >>> refreshed_after({"model_version": 12, "counters": {"lists_lagging": 0}}, 11.5)
    True
    >>> refreshed_after({"model_version": 12, "counters": {"lists_lagging": 3}}, 11.5)
    False
    """
    return bool(health["model_version"] > since and health["counters"]["lists_lagging"] == 0)


def row_updates_caught_up(counters: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the workers (their /health ``counters``) have applied, or skipped
    as applied before, every row update they sent. Summed: a worker applies the
    updates of its partitions of rows, whoever sent them.

    >>> row_updates_caught_up([{"row_updates_sent": 5, "row_updates_applied": 2,
    ...                         "row_updates_skipped": 0},
    ...                        {"row_updates_sent": 0, "row_updates_applied": 3,
    ...                         "row_updates_skipped": 0}])
    True
    """
    done = sent = 0
    for c in counters:
        done += c["row_updates_applied"] + c["row_updates_skipped"]
        sent += c["row_updates_sent"]
    return done >= sent


def worker_env(settings: Settings) -> dict[str, str]:
    """This process's environment, with ``settings`` as the only RECOSTREAM_* values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOSTREAM_")}
    env.update(settings.to_env())
    env["PYTHONUNBUFFERED"] = "1"
    return env
