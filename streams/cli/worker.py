"""``recostream worker``: run one stream worker (settings from RECOSTREAM_* variables)."""

from __future__ import annotations

import argparse
import gc
import logging
from types import MappingProxyType
from typing import Any

from streams.errors import CliError
from streams.runtime.settings import EVENT_LOOPS, Settings, SettingsError

LOG_LEVELS = ("crit", "error", "warn", "info", "debug")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "worker", help="run a stream worker (settings: RECOSTREAM_* environment variables)"
    )
    parser.add_argument("--broker", help="bootstrap servers (overrides RECOSTREAM_BROKER)")
    parser.add_argument("--web-port", type=int, help="HTTP port (overrides RECOSTREAM_WEB_PORT)")
    parser.add_argument("--data-dir", help="table store directory (overrides RECOSTREAM_DATA_DIR)")
    parser.add_argument("--store", help="rocksdb:// or memory:// (overrides RECOSTREAM_STORE)")
    parser.add_argument("-l", "--loglevel", choices=LOG_LEVELS, default="warn")
    parser.set_defaults(func=_run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    try:
        settings = Settings.from_env()
        overrides: dict[str, Any] = {}
        if args.broker:
            overrides["broker"] = args.broker if "://" in args.broker else "kafka://" + args.broker
        if args.web_port is not None:
            overrides["web_port"] = args.web_port
        if args.data_dir:
            from pathlib import Path

            overrides["data_dir"] = Path(args.data_dir)
        if args.store:
            overrides["store"] = args.store
        return settings.with_overrides(**overrides) if overrides else settings
    except SettingsError as exc:
        raise CliError(str(exc)) from None


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    # Imported here: Faust is heavy and only the worker needs it. The loop is chosen
    # before anything makes one: uvloop's turns are cheaper, and the worker takes a
    # turn per message (bench/README.md).
    import mode.loop

    try:
        mode.loop.use(EVENT_LOOPS[settings.event_loop])
    except ImportError as exc:
        raise CliError(f"RECOSTREAM_EVENT_LOOP={settings.event_loop}: {exc} "
                       "(pip install uvloop, or set RECOSTREAM_EVENT_LOOP=asyncio)") from None
    import faust

    from streams.runtime.app import RecoStream

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    stream = RecoStream(settings)
    if settings.security_protocol == "PLAINTEXT":
        # Faust declares its internal topics while the consumer subscribes; when
        # the broker's metadata lags, the subscription misses them until the next
        # metadata refresh (minutes), and a missing changelog topic at the first
        # assignment leaves the worker out of the group. Made here first, they are
        # there from the start.
        from streams.runtime.topic_admin import TopicSpec, ensure_topics_sync

        compacted = MappingProxyType({"cleanup.policy": "compact"})
        topology = stream.topology
        ensure_topics_sync(settings.bootstrap_servers,
                           [TopicSpec(name) for name in topology.internal_topic_names()]
                           + [TopicSpec(name, compacted)
                              for name in topology.compacted_topic_names()],
                           settings.partitions)
    logging.getLogger("recostream").setLevel(args.loglevel.upper().replace("CRIT", "CRITICAL")
                                             .replace("WARN", "WARNING"))
    # Worker state is many small long-lived objects: with default thresholds a
    # full collection ran about once a second and took 23% of the time (py-spy,
    # bench/stream_throughput.py); rarer young collections cut that to ~2%.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 1000)
    worker = faust.Worker(stream.app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
