"""``recostream demo``: the live demo behind ``make demo``.

Starts the local Kafka broker (unless one of ours is running already) and a
worker, replays MovieLens-100k into ``clicks`` at a steady rate, and shows
recommendations arriving with a progress line (events in, recommendations out,
lag). It stops by itself after ``--seconds`` (or on Ctrl-C) and shuts down the
worker and the broker it started. Each run uses topics of its own, deleted at
the end, so runs never see each other's events.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from streams.cli.tail import TailRecord, format_record
from streams.devtools.datasets import load_events
from streams.devtools.local_broker import LocalBroker
from streams.devtools.worker_process import WorkerProcess, free_port, worker_env
from streams.errors import CliError
from streams.paths import cache_dir
from streams.runtime.settings import Settings
from streams.runtime.topic_admin import TOPICS, TopicSpec, ensure_topics


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo", help="live demo: local broker + worker, ML-100k replayed, recommendations shown"
    )
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="events per second replayed (default 1000)")
    parser.add_argument("--seconds", type=float, default=40.0,
                        help="how long to replay before stopping (default 40)")
    parser.add_argument("--show", type=float, default=1.0,
                        help="recommendation lines shown per second (default 1)")
    parser.add_argument("--keep-broker", action="store_true",
                        help="leave the local broker running afterwards")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.rate <= 0 or args.seconds <= 0:
        raise CliError("--rate and --seconds must be positive")
    broker = LocalBroker(cache_dir() / "broker", report=lambda m: print(m, flush=True))
    started_broker = not broker.status().running
    bootstrap = broker.start()  # returns at once when ours is already running
    print(f"Kafka at {bootstrap} ({'started' if started_broker else 'already running'})",
          flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="recostream-demo-"))
    tag = time.strftime("%Y%m%d%H%M%S")
    settings = Settings(
        broker=f"kafka://{bootstrap}",
        app_id=f"recostream-demo-{tag}",
        topic_prefix=f"demo-{tag}.",
        data_dir=workdir / "worker",
        web_port=free_port(),
        refresh_seconds=5.0,
        session_timeout=10.0,
    )
    worker = WorkerProcess(worker_env(settings), workdir / "worker.log", settings.web_port)
    try:
        asyncio.run(ensure_topics(bootstrap, _demo_topics(settings), settings.partitions))
        print("starting a worker ...", flush=True)
        worker.start()
        print(f"worker ready: {worker.url}/health (store {settings.store}, log {worker.log_path})",
              flush=True)
        events = sorted(load_events(dataset="ml-100k"), key=lambda e: e.ts)
        limit = min(len(events), int(args.rate * args.seconds))
        print(f"replaying {limit:,} MovieLens-100k events at {args.rate:g}/s ...", flush=True)
        asyncio.run(_run(settings, worker, events[:limit], args))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; shutting down", flush=True)
        return 130
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            asyncio.run(_delete_topics(bootstrap, [t.name for t in _demo_topics(settings)]))
        shutil.rmtree(workdir, ignore_errors=True)
        if started_broker and not args.keep_broker:
            broker.stop()
            print("stopped the broker", flush=True)


def _demo_topics(settings: Settings) -> list[TopicSpec]:
    return [TopicSpec(settings.topic(t.name), t.config) for t in TOPICS.values()]


async def _run(settings: Settings, worker: WorkerProcess, events: list[Any],
               args: argparse.Namespace) -> None:
    from streams.cli.produce import produce_events

    topics = {name: settings.topic(name) for name in ("clicks", "purchases")}
    producer = asyncio.create_task(produce_events(events, settings.bootstrap_servers, args.rate,
                                                  time_order=True, topics=topics))
    shower = asyncio.create_task(_show_recommendations(settings, args.show))
    started = time.monotonic()
    try:
        while True:
            await asyncio.sleep(1.0)
            health = await asyncio.to_thread(worker.health)
            counters = health["counters"]
            produced = min(len(events), int(args.rate * (time.monotonic() - started)))
            if producer.done():
                produced = producer.result()
            done = counters["applied"] + counters["deduplicated"]
            print(f"[{time.monotonic() - started:5.1f}s] events in {done:>7,} | "
                  f"recommendations out {counters['recommendations_out']:>6,} | "
                  f"lag {max(0, produced - done):>5,} | model v{health['model_version']} "
                  f"({health['model_items']} items)", flush=True)
            if producer.done() and done >= produced:
                break
    finally:
        for task in (producer, shower):
            task.cancel()
        for task in (producer, shower):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    print(f"done: {done:,} events in, {counters['recommendations_out']:,} recommendation "
          f"lists out, {sum(counters['dead_lettered'].values())} dead-lettered", flush=True)


async def _show_recommendations(settings: Settings, per_second: float) -> None:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(settings.topic("recommendations"),
                                bootstrap_servers=settings.bootstrap_servers,
                                auto_offset_reset="latest", enable_auto_commit=False)
    await consumer.start()
    last_shown = 0.0
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    now = time.time()
                    if now - last_shown < 1.0 / per_second:
                        continue
                    last_shown = now
                    record = TailRecord(m.topic, m.partition, m.offset, m.key, m.value,
                                        m.timestamp)
                    print("  " + format_record(record, now, "recommendations"),
                          file=sys.stdout, flush=True)
    finally:
        await consumer.stop()


async def _delete_topics(bootstrap: str, names: list[str]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(names)
    finally:
        await admin.close()
