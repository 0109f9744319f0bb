"""Fixtures for tests that talk to a real Kafka broker.

One broker serves the whole session: it is started through :class:`LocalBroker` in a
pytest temp dir on free ports (the jars come from the shared cache and are downloaded
with Maven on first use) and stopped at the end of the session, failures included.
These tests never skip: a machine without Java or Maven fails them, loudly.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.events import Event
from streams.devtools.datasets import load_events
from streams.devtools.local_broker import LocalBroker
from streams.runtime.settings import Settings
from tests.integration.stream_harness import (
    PARTITIONS,
    WorkerProcess,
    create_topics,
    free_port,
    worker_env,
)

SLICE = 3000  # ML-100k events in time order: ~60 users, ~900 items


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The session's broker, running, with every topic of ``TOPICS`` created."""
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), port=0)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalBroker) -> str:
    """Bootstrap servers (``127.0.0.1:PORT``) of the session's broker."""
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def ml_slice() -> list[Event]:
    events = sorted(load_events(dataset="ml-100k"), key=lambda e: e.ts)
    return events[:SLICE]


@pytest.fixture
def stream_settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings of a fresh worker: its own topics, group and tables."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"t{tag}."
    create_topics(kafka_bootstrap, prefix)
    return Settings(
        broker=f"kafka://{kafka_bootstrap}",
        app_id=f"rs-{tag}",
        topic_prefix=prefix,
        partitions=PARTITIONS,
        store="memory://",
        data_dir=tmp_path / "worker",
        web_port=free_port(),
        refresh_seconds=1.0,
        session_timeout=10.0,
        batch_seconds=0.1,
    )


class Workers:
    """The test's worker processes: started, restarted, all stopped at teardown."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[WorkerProcess] = []

    def start(self, settings: Settings) -> WorkerProcess:
        """Start a worker with these settings (its log: workerN.log)."""
        worker = WorkerProcess(worker_env(settings), self.logs / f"worker{len(self.started)}.log",
                               settings.web_port)
        self.started.append(worker)
        return worker.start()

    def restart(self, worker: WorkerProcess) -> WorkerProcess:
        """SIGKILL a worker and its children (unless it is gone already) and start
        another in its place: same settings, same log."""
        worker.stop(kill=True)
        again = WorkerProcess(worker.env, worker.log_path, worker.port)
        self.started.append(again)
        return again.start()

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    fleet = Workers(tmp_path)
    yield fleet
    fleet.stop_all()


@pytest.fixture
def start_worker(workers: Workers) -> Callable[[Settings], WorkerProcess]:
    """Factory: start a worker with given settings; all are stopped at teardown."""
    return workers.start


@pytest.fixture
def restart_worker(workers: Workers) -> Callable[[WorkerProcess], WorkerProcess]:
    """SIGKILL a worker with its children and start another in its place."""
    return workers.restart


