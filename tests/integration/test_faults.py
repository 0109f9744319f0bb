"""Faults on a real broker with real processes: kills, an outage, poison inputs, fuzz.

After each fault every user's state and list must equal the offline replay of the
events that landed, with no event applied twice or never, and the worker alive.
Kills are SIGKILLs: a graceful stop hides what a crash leaves behind. Part of the
events come from producers that key or partition otherwise (keyed by a device
id, or partitioned by CRC32 as librdkafka does): they are forwarded, which is
where a crash used to count them twice.
"""

from __future__ import annotations

import os
import random
import signal
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from core.events import Event
from streams.devtools.local_broker import LocalBroker, free_port
from streams.runtime.settings import Settings
from tests.integration.fuzz_corpus import corpus
from tests.integration.replay_check import assert_equals_replay
from tests.integration.stream_harness import (
    Outgoing,
    WorkerProcess,
    consume_all,
    create_topics,
    produce,
    produce_placed,
    worker_env,
)

pytestmark = pytest.mark.integration

Restart = Callable[[WorkerProcess], WorkerProcess]

#: Session timeout of the killed workers: a member killed outright holds its
#: partitions that long (the broker's minimum is 6 s).
SESSION_SECONDS = 6.0


def faulty_settings(settings: Settings) -> Settings:
    """A worker as a shop runs it (rocksdb), committing often so that kills land
    between commits, and leaving its group soon after a kill."""
    return replace(settings, store="rocksdb://", commit_seconds=1.0,
                   session_timeout=SESSION_SECONDS)


def misrouted_users(events: Sequence[Event]) -> set[str]:
    """Every third user's events come from a producer that keys or partitions
    them otherwise."""
    users = sorted({e.user_id for e in events})
    return set(users[::3])


def messages_of(settings: Settings, events: Sequence[Event], misrouted: set[str]
                ) -> list[Outgoing]:
    """Events as producers send them: most keyed by user; a misrouted user's all
    keyed by its device (one partition, so they stay in order), or all partitioned
    by CRC32 of the user id, alternately by user."""
    out: list[Outgoing] = []
    for event in events:
        topic, value = settings.topic(event.topic()), orjson.dumps(event.to_dict())
        user = event.user_id
        if user not in misrouted:
            out.append((topic, user.encode(), value))
        elif int(user) % 2:
            out.append((topic, f"device-{user}".encode(), value))
        else:
            out.append((topic, user.encode(), value,
                        zlib.crc32(user.encode()) % settings.partitions))
    return out


def wait_for_progress(worker: WorkerProcess, seconds: float = 30.0) -> None:
    """Until the worker has read input since it started (it is mid-stream)."""
    worker.wait_for(lambda h: sum(h["counters"]["events_in"].values()) > 0,
                    "input to be read", seconds)


def child_pid(worker: WorkerProcess, name: str, seconds: float = 30.0) -> int:
    """The pid of the worker's child process named ``name`` (see /proc/<pid>/comm)."""
    assert worker.proc is not None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (os.getpgid(int(entry.name)) == worker.proc.pid
                        and (entry / "comm").read_text().strip() == name):
                    return int(entry.name)
            except (OSError, ProcessLookupError):
                continue
        time.sleep(0.2)
    raise AssertionError(f"no child {name} of the worker\n{worker.tail()}")


def supervised(worker: WorkerProcess, restart: Restart, seconds: float) -> WorkerProcess:
    """What a supervisor does (systemd's Restart=): a worker that stopped itself
    (it does, when a child holding unwritten rows dies) is started again."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            return restart(worker)
        time.sleep(0.2)
    return worker


def test_worker_sigkilled_three_times_mid_stream_equals_the_replay(
    kafka_bootstrap: str, stream_settings: Settings,
    start_worker: Callable[[Settings], WorkerProcess], restart_worker: Restart,
    ml_slice: list[Event],
) -> None:
    settings = faulty_settings(stream_settings)
    misrouted = misrouted_users(ml_slice)
    messages = messages_of(settings, ml_slice, misrouted)
    worker = start_worker(settings)
    chunk = len(messages) // 4 + 1
    for kill in range(4):
        produce(kafka_bootstrap, messages[kill * chunk:(kill + 1) * chunk])
        if kill < 3:
            wait_for_progress(worker)
            time.sleep(random.Random(kill).uniform(0.2, 1.5))
            worker = restart_worker(worker)  # SIGKILL of the worker and its children
    assert_equals_replay(worker, settings, ml_slice)
    assert worker.proc is not None and worker.proc.poll() is None


@pytest.mark.parametrize("child", ["reco-rows-0", "reco-ranker", "reco-model"])
def test_a_child_sigkilled_mid_stream_changes_nothing(
    kafka_bootstrap: str, stream_settings: Settings,
    start_worker: Callable[[Settings], WorkerProcess], restart_worker: Restart,
    ml_slice: list[Event], child: str,
) -> None:
    settings = faulty_settings(stream_settings)
    events = ml_slice[:2000]
    messages = messages_of(settings, events, misrouted_users(events))
    worker = start_worker(settings)
    half = len(messages) // 2
    produce(kafka_bootstrap, messages[:half])
    wait_for_progress(worker)
    time.sleep(0.5)
    os.kill(child_pid(worker, child), signal.SIGKILL)
    produce(kafka_bootstrap, messages[half:])
    # a rows process holds rows not written yet: the worker stops without a commit,
    # and resumes from the last one once started again; the others are replaced
    worker = supervised(worker, restart_worker, seconds=15.0)
    assert_equals_replay(worker, settings, events)
    assert worker.proc is not None and worker.proc.poll() is None
    if child != "reco-rows-0":
        child_pid(worker, child)  # a new one runs


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own, on fixed ports, so it can be killed and started
    again on its data where clients look for it."""
    broker = LocalBroker(tmp_path / "kafka", port=free_port(), controller_port=free_port())
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


def test_broker_killed_and_restarted_mid_stream_equals_the_replay(
    own_broker: LocalBroker, stream_settings: Settings, tmp_path: Path,
    ml_slice: list[Event],
) -> None:
    bootstrap = own_broker.bootstrap
    create_topics(bootstrap, stream_settings.topic_prefix)
    settings = replace(faulty_settings(stream_settings), broker=f"kafka://{bootstrap}")
    events = ml_slice[:2000]
    messages = messages_of(settings, events, misrouted_users(events))
    worker = WorkerProcess(worker_env(settings), tmp_path / "worker.log", settings.web_port)
    worker.start()
    try:
        half = len(messages) // 2
        produce(bootstrap, messages[:half])
        wait_for_progress(worker)
        time.sleep(0.5)
        pid = own_broker.status().pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(8.0)  # down long enough for requests to time out and retry
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        assert own_broker.start() == bootstrap
        produce(bootstrap, messages[half:])
        assert_equals_replay(worker, settings, events, timeout=180.0)
        assert worker.proc.poll() is None
    finally:
        worker.stop()


def poison_messages(settings: Settings) -> tuple[list[Outgoing], list[Event], list[str]]:
    """The four inputs that once stopped a worker for good, and valid events around
    them: (messages, the valid events among them, the dead letters' reasons)."""
    clicks = settings.topic("clicks")
    # 8,000 distinct items of 150 bytes: 1.2 MB of ratings alone, were they uncapped
    heavy = [Event("heavy", f"sku-{n:06}-" + "x" * 139, 1_700_000_000.0 + n, "view")
             for n in range(8_000)]
    long_ids = [Event("long", "\u00e9" * 100 + f"{n:050}", 1_700_000_000.0 + n, "view")
                for n in range(400)]
    valid = [*heavy, *long_ids]
    messages: list[Outgoing] = [
        (clicks, b"u1", orjson.dumps({"user_id": "u1", "item_id": "i", "ts": 1.7e9,
                                      "type": "view", "pad": "x" * 786_000})),
        (clicks, b"k" * 450_000, orjson.dumps({"user_id": "u1", "item_id": "i", "ts": 1.7e9,
                                               "type": "view"})),
    ]
    messages += [(settings.topic(e.topic()), e.user_id.encode(), orjson.dumps(e.to_dict()))
                 for e in valid]
    return messages, valid, ["key_too_long", "oversized"]


def test_poison_inputs_are_dead_lettered_and_the_worker_stays_up(
    kafka_bootstrap: str, stream_settings: Settings,
    start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = replace(stream_settings, batch_size=1000)
    messages, valid, reasons = poison_messages(settings)
    worker = start_worker(settings)
    produce(kafka_bootstrap, messages)
    letters = consume_all(kafka_bootstrap, settings.topic("dead-letters"),
                          expect=len(reasons), timeout=60)
    assert sorted(orjson.loads(value)["reason"] for _, value in letters) == reasons
    assert all(len(value) + len(key or b"") < settings.max_record_bytes
               for key, value in letters)
    assert_equals_replay(worker, settings, valid, timeout=180.0)
    assert worker.proc is not None and worker.proc.poll() is None


def test_a_fuzz_corpus_is_applied_or_dead_lettered_each_as_labelled(
    kafka_bootstrap: str, stream_settings: Settings,
    start_worker: Callable[[Settings], WorkerProcess],
) -> None:
    settings = replace(stream_settings, max_message_bytes=4096, max_key_bytes=300,
                       batch_size=500)
    labelled = corpus(seed=20261207, size=2400, partitions=settings.partitions,
                      max_message_bytes=settings.max_message_bytes,
                      max_key_bytes=settings.max_key_bytes)
    worker = start_worker(settings)
    placed = produce_placed(kafka_bootstrap, [
        (settings.topic(m.topic), m.key, m.value, m.partition) for m in labelled])
    broken = [(m, where) for m, where in zip(labelled, placed, strict=True) if m.reason]
    assert len(broken) > 600 and len({m.reason for m, _ in broken}) >= 14
    letters = [orjson.loads(value) for _, value in consume_all(
        kafka_bootstrap, settings.topic("dead-letters"), expect=len(broken) + 1, timeout=60)]
    reasons = {(letter["topic"], letter["partition"], letter["offset"]): letter["reason"]
               for letter in letters}
    assert len(letters) == len(reasons) == len(broken)  # each once, and nothing else
    wrong = [(m.reason, reasons.get((settings.topic(m.topic), *where)), m.value[:80])
             for m, where in broken
             if reasons.get((settings.topic(m.topic), *where)) != m.reason]
    assert not wrong, f"{len(wrong)} dead-lettered otherwise, first: {wrong[:3]}"
    valid = [m.event for m in labelled if m.event is not None]
    assert_equals_replay(worker, settings, valid)
    assert worker.proc is not None and worker.proc.poll() is None
