"""`recostream produce` and `recostream tail` against the session's real Kafka broker.

Tests that need topics to themselves (tail --from-beginning, Ctrl-C) create fresh ones
under a unique prefix and pass it as --topic-prefix, as a worker with
RECOSTREAM_TOPIC_PREFIX would; the test of the default topics reads only the offsets
its own run added.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from core.events import Event
from streams.cli import main
from streams.cli.produce import ProduceProgress, produce_events, stable_event_id
from streams.devtools.datasets import load_events
from streams.runtime.topic_admin import TopicSpec, ensure_topics_sync

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^sent (\d+) events in ([\d.]+) s \((\d+)/s\)( \(interrupted\))?$")


def write_events(path: Path, count: int = 200, seed: int = 11) -> list[Event]:
    """A JSON-lines file of a small shop's clicks and (about one in five) purchases;
    the events as the loader reads them back."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    ts = 1_700_000_000
    for n in range(count):
        ts += rng.choice((0, 1, 7))  # equal timestamps too: time order must be stable
        user, item = f"u{rng.randrange(25)}", f"i{rng.randrange(60)}"
        if rng.random() < 0.2:
            rows.append({"user_id": user, "item_id": item, "ts": ts, "type": "purchase",
                         "order_id": f"o{n}", "quantity": rng.randint(1, 3),
                         "price": round(rng.uniform(1, 50), 2)})
        else:
            rows.append({"user_id": user, "item_id": item, "ts": ts,
                         "type": rng.choice(("view", "click", "add_to_cart")),
                         "session_id": f"s{user}"})
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    events = load_events(events_file=str(path))
    assert len(events) == count and any(e.is_purchase for e in events)
    return events


def fresh_prefix(bootstrap: str) -> str:
    """A unique topic prefix P, with topics Pclicks and Ppurchases (4 partitions each)."""
    prefix = f"t{uuid.uuid4().hex[:8]}."
    ensure_topics_sync(bootstrap, [TopicSpec(prefix + name) for name in ("clicks", "purchases")],
                       partitions=4)
    return prefix


async def _end_offsets(bootstrap: str, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        # Without a group, a subscription is assigned all partitions once metadata is in.
        consumer.subscribe(topics)
        async with asyncio.timeout(20):
            while {tp.topic for tp in consumer.assignment()} != set(topics):
                await asyncio.sleep(0.05)
        return dict(await consumer.end_offsets(list(consumer.assignment())))
    finally:
        await consumer.stop()


def end_offsets(bootstrap: str, *topics: str) -> dict[TopicPartition, int]:
    return asyncio.run(_end_offsets(bootstrap, list(topics)))


async def _read_range(
    bootstrap: str, start: dict[TopicPartition, int], end: dict[TopicPartition, int]
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record between two offset snapshots, in offset order per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(end))
        for tp in end:
            consumer.seek(tp, start.get(tp, 0))
        out: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(30):
            behind = set(end)
            while behind:
                batch = await consumer.getmany(timeout_ms=500)
                for tp, records in batch.items():
                    out.extend(r for r in records if r.offset < end[tp])
                behind = {tp for tp in behind if await consumer.position(tp) < end[tp]}
        return out
    finally:
        await consumer.stop()


def read_range(
    bootstrap: str, start: dict[TopicPartition, int], end: dict[TopicPartition, int]
) -> list[ConsumerRecord[bytes, bytes]]:
    return asyncio.run(_read_range(bootstrap, start, end))


def summary(stdout: str, stderr: str = "") -> re.Match[str]:
    lines = stdout.strip().splitlines()
    assert lines, f"no summary line on stdout; stderr:\n{stderr[-2000:]}"
    match = SUMMARY.match(lines[-1])
    assert match, f"unexpected summary line {lines[-1]!r}"
    return match


def test_produce_replays_a_file_at_the_requested_rate(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path / "events.jsonl", count=200)
    rate = 2000
    before = end_offsets(kafka_bootstrap, "clicks", "purchases")

    status = main(["produce", "--events", str(tmp_path / "events.jsonl"), "--rate", str(rate),
                   "--bootstrap", kafka_bootstrap])

    out, err = capsys.readouterr()
    assert status == 0, err
    found = summary(out)
    assert int(found.group(1)) == len(events)
    elapsed = float(found.group(2))
    assert elapsed >= 0.8 * len(events) / rate
    assert elapsed < len(events) / rate + 5.0  # paced, not stuck

    after = end_offsets(kafka_bootstrap, "clicks", "purchases")
    records = read_range(kafka_bootstrap, before, after)
    assert len(records) == len(events)
    by_topic = {t: [r for r in records if r.topic == t] for t in ("clicks", "purchases")}
    assert len(by_topic["purchases"]) == sum(e.is_purchase for e in events)
    assert len(by_topic["clicks"]) == sum(not e.is_purchase for e in events)
    for r in records:
        body = orjson.loads(r.value)
        assert r.key == body["user_id"].encode()
    # Keyed by user, so each user's events sit in one partition in file order.
    for topic, mine in by_topic.items():
        for user in {e.user_id for e in events}:
            expected = [e.to_dict() for e in events if e.topic() == topic and e.user_id == user]
            got = sorted((r for r in mine if r.key == user.encode()), key=lambda r: r.offset)
            assert len({r.partition for r in got}) <= 1
            assert [orjson.loads(r.value) for r in got] == expected
    # The pacing is visible in the records' create times, not only in the summary.
    stamps = sorted(r.timestamp for r in records)
    assert (stamps[-1] - stamps[0]) / 1000 >= 0.8 * (len(events) - 1) / rate


def test_tail_from_beginning_prints_exactly_the_produced_records(
    kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = write_events(tmp_path / "events.jsonl", count=120, seed=5)
    prefix = fresh_prefix(kafka_bootstrap)
    assert main(["produce", "--events", str(tmp_path / "events.jsonl"), "--event-ids",
                 "--bootstrap", kafka_bootstrap, "--topic-prefix", prefix]) == 0
    capsys.readouterr()

    for kind in ("clicks", "purchases"):
        expected = []
        for position, ev in enumerate(events):
            if ev.topic() == kind:
                body = ev.to_dict() | {"event_id": stable_event_id(position, ev)}
                expected.append(orjson.dumps(body).decode())
        started = time.monotonic()
        status = main(["tail", kind, "--topic-prefix", prefix, "--from-beginning",
                       "--limit", str(len(expected)), "--json", "--bootstrap", kafka_bootstrap])
        out, err = capsys.readouterr()
        assert status == 0, err
        assert sorted(out.splitlines()) == sorted(expected)
        assert time.monotonic() - started < 15  # --limit ends it; no timeout needed

    # Readable lines: one per record, and --limit stops early.
    assert main(["tail", "purchases", "--topic-prefix", prefix, "--from-beginning",
                 "--limit", "3", "--bootstrap", kafka_bootstrap]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(re.match(r"^user u\d+  bought ", line) for line in lines), lines

    # From the end (the default) nothing old shows; --timeout ends a silent tail with 0.
    started = time.monotonic()
    assert main(["tail", "clicks", "--topic-prefix", prefix, "--timeout", "1",
                 "--bootstrap", kafka_bootstrap]) == 0
    assert capsys.readouterr().out == ""
    assert time.monotonic() - started < 10


def test_produce_events_api_orders_by_time_and_limits(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = write_events(tmp_path / "events.jsonl", count=300, seed=9)
    shuffled = random.Random(1).sample(events, len(events))
    prefix = fresh_prefix(kafka_bootstrap)
    topics = {"clicks": prefix + "clicks", "purchases": prefix + "purchases"}

    sent = asyncio.run(produce_events(shuffled, kafka_bootstrap, rate=None, time_order=True,
                                      limit=50, topics=topics))

    assert sent == 50
    end = end_offsets(kafka_bootstrap, *topics.values())
    records = read_range(kafka_bootstrap, {}, end)
    earliest = sorted(shuffled, key=lambda e: e.ts)[:50]  # stable, as the producer's sort
    assert sorted(orjson.loads(r.value)["ts"] for r in records) == [e.ts for e in earliest]
    assert sorted(r.value for r in records) == sorted(orjson.dumps(e.to_dict()) for e in earliest)


def test_ctrl_c_flushes_what_was_sent_and_exits_130(kafka_bootstrap: str, tmp_path: Path) -> None:
    write_events(tmp_path / "events.jsonl", count=2000, seed=3)
    prefix = fresh_prefix(kafka_bootstrap)
    topics = (prefix + "clicks", prefix + "purchases")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "produce", "--events",
         str(tmp_path / "events.jsonl"), "--rate", "200", "--bootstrap", kafka_bootstrap,
         "--topic-prefix", prefix],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a test run started in the background inherits SIGINT ignored, and so
        # would the CLI (it then ran to the end and exited 0)
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + 30
        while sum(end_offsets(kafka_bootstrap, *topics).values()) == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "produce sent nothing within 30 s"
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    found = summary(out, err)
    assert found.group(4), "summary does not say it was interrupted"
    sent = int(found.group(1))
    assert 0 < sent < 2000
    # Everything the summary counts is in Kafka: in-flight messages were flushed.
    assert sum(end_offsets(kafka_bootstrap, *topics).values()) == sent
    assert err.strip().splitlines()[-1] == "recostream: interrupted"


def test_a_cancel_that_lands_while_the_replay_runs_still_flushes_and_reports(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # A Ctrl-C whose signal handler runs while the replay's task is running (not
    # waiting) is only a pending cancel; the replay must not carry it into the
    # producer's shutdown, which then stopped half-way and never reported the count
    # (seen in CI: exit 130 without the summary line).
    events = write_events(tmp_path / "events.jsonl", count=2000, seed=5)
    prefix = fresh_prefix(kafka_bootstrap)
    topics = {name: prefix + name for name in ("clicks", "purchases")}
    reports: list[ProduceProgress] = []

    async def replay_cancelled_from_within() -> None:
        task = asyncio.current_task()
        assert task is not None

        def progress(p: ProduceProgress) -> None:
            reports.append(p)
            if not p.done and p.sent >= 300 and not task.cancelling():
                task.cancel()  # the task is running: the cancel waits for its next await

        await produce_events(events, kafka_bootstrap, rate=None, topics=topics,
                             progress=progress, progress_interval_s=0.0)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(replay_cancelled_from_within())
    assert reports and reports[-1].done, "no final report after the cancel"
    sent = reports[-1].sent
    assert 300 <= sent < 2000
    assert sum(end_offsets(kafka_bootstrap, *topics.values()).values()) == sent


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["produce", "tail"])
def test_unreachable_broker_is_one_line_and_exit_2(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_events(tmp_path / "events.jsonl", count=10)
    bootstrap = f"127.0.0.1:{_closed_port()}"
    args = (["produce", "--events", str(tmp_path / "events.jsonl")] if command == "produce"
            else ["tail", "recommendations"])
    started = time.monotonic()

    status = main([*args, "--bootstrap", bootstrap])

    assert status == 2
    assert time.monotonic() - started < 15
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"recostream: error: cannot reach Kafka at {bootstrap}: ")
