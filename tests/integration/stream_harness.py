"""Run real `recostream worker` processes against the session's broker, and feed them.

Each test gets its own topic prefix and app id, so tests share one broker without
seeing each other's events, consumer groups or tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.events import Event
from streams.local_broker import TOPICS, TopicSpec, ensure_topics_sync
from streams.settings import Settings

PARTITIONS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def create_topics(bootstrap: str, prefix: str, partitions: int = PARTITIONS) -> None:
    specs = [TopicSpec(prefix + spec.name, spec.config) for spec in TOPICS.values()]
    ensure_topics_sync(bootstrap, specs, partitions)


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

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def get_status(self, path: str) -> tuple[int, Any]:
        try:
            return 200, self.get(path)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/health")
        return result

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], what: str,
                 timeout: float = 90.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = self.health()
            if condition(health):
                return health
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last health {health}\n{self.tail()}")

    def wait_until_settled(self, applied: int, *, count_duplicates: bool = True,
                           timeout: float = 120.0) -> dict[str, Any]:
        """Until ``applied`` events are in (skipped duplicates count, unless told
        otherwise), every row update applied, and a full refresh round that started
        after that has been folded into the model."""
        def drained(h: dict[str, Any]) -> bool:
            c = h["counters"]
            done = c["applied"] + (c["deduplicated"] if count_duplicates else 0)
            return bool(done >= applied
                        and c["row_updates_applied"] + c["row_updates_skipped"]
                        >= c["row_updates_sent"])

        self.wait_for(drained, f"{applied} events and their row updates", timeout)
        quiet_since = int(time.time())
        return self.wait_for(lambda h: h["model_version"] > quiet_since,
                             "a refresh round after the data settled", timeout)

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def worker_env(settings: Settings) -> dict[str, str]:
    """Environment that makes ``recostream worker`` run with ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOSTREAM_")}
    env.update({
        "RECOSTREAM_BROKER": settings.broker,
        "RECOSTREAM_APP_ID": settings.app_id,
        "RECOSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "RECOSTREAM_PARTITIONS": str(settings.partitions),
        "RECOSTREAM_STORE": settings.store,
        "RECOSTREAM_DATA_DIR": str(settings.data_dir),
        "RECOSTREAM_WEB_PORT": str(settings.web_port),
        "RECOSTREAM_REFRESH_SECONDS": str(settings.refresh_seconds),
        "RECOSTREAM_SESSION_TIMEOUT": str(settings.session_timeout),
        "RECOSTREAM_MAX_MESSAGE_BYTES": str(settings.max_message_bytes),
        "RECOSTREAM_BATCH_SECONDS": str(settings.batch_seconds),
        "RECOSTREAM_DEDUP_IDS": str(settings.dedup_ids),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def produce(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]]) -> int:
    """Send (topic, key, value) messages in order; returns how many."""
    async def run() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
        await producer.start()
        try:
            deliveries = [await producer.send(topic, value=value, key=key)
                          for topic, key, value in messages]
            # every record must be acknowledged, or the test's counts mean nothing
            await asyncio.gather(*deliveries)
        finally:
            await producer.stop()
        return len(deliveries)

    return asyncio.run(run())


def event_messages(prefix: str, events: Sequence[Event]) -> list[tuple[str, bytes, bytes]]:
    return [(prefix + e.topic(), e.user_id.encode(), orjson.dumps(e.to_dict())) for e in events]


def consume_all(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0
                ) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the beginning until ``expect`` records arrived (or time out)."""
    async def run() -> list[tuple[bytes | None, bytes]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        records: list[tuple[bytes | None, bytes]] = []
        try:
            deadline = time.monotonic() + timeout
            while len(records) < expect and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    records.extend((m.key, m.value or b"") for m in messages)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def rewind_group(bootstrap: str, group: str, topics: Sequence[str]) -> None:
    """Commit offset 0 for every partition of ``topics`` in a consumer group."""
    async def run() -> None:
        from aiokafka import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(t, p) for t in topics
                          for p in sorted(consumer.partitions_for_topic(t) or ())]
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = [TopicPartition(t, p) for t in topics
                              for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(partitions)
            await consumer.commit({tp: 0 for tp in partitions})
        finally:
            await consumer.stop()

    asyncio.run(run())
