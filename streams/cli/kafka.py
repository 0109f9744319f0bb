"""``recostream kafka start|stop|status``: the local development broker."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streams.devtools.broker_setup import HOST, KAFKA_VERSION
from streams.devtools.local_broker import (
    DEFAULT_PORT,
    READY_TIMEOUT_S,
    STOP_TIMEOUT_S,
    LocalBroker,
)
from streams.errors import CliError
from streams.runtime.topic_admin import DEFAULT_PARTITIONS


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "kafka", help=f"run a local Apache Kafka {KAFKA_VERSION} broker (no docker needed)"
    )
    kafka_sub = parser.add_subparsers(dest="kafka_command", required=True)

    def data_dir_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--data-dir", type=Path, default=None,
            help="broker data, logs and pid file (default: $RECOSTREAM_CACHE/broker)",
        )

    start = kafka_sub.add_parser("start", help="start the broker and create the topics")
    data_dir_option(start)
    start.add_argument(
        "--port", type=int, default=None,
        help=f"client port on {HOST} (default: {DEFAULT_PORT} if free, else any free one; "
        "0: any free one)",
    )
    start.add_argument("--controller-port", type=int, default=None,
                       help="KRaft controller port (default: any free one)")
    start.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS,
                       help=f"partitions per topic (default: {DEFAULT_PARTITIONS})")
    start.add_argument("--timeout", type=float, default=READY_TIMEOUT_S,
                       help=f"seconds to wait for the broker to answer (default: "
                       f"{READY_TIMEOUT_S:g})")
    start.set_defaults(func=_cmd_start)

    stop = kafka_sub.add_parser("stop", help="stop the broker started by `kafka start`")
    data_dir_option(stop)
    stop.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S,
                      help=f"seconds to wait after SIGTERM before SIGKILL (default: "
                      f"{STOP_TIMEOUT_S:g})")
    stop.set_defaults(func=_cmd_stop)

    status = kafka_sub.add_parser("status", help="is the broker running? (exit 3 if not)")
    data_dir_option(status)
    status.set_defaults(func=_cmd_status)


def _say(message: str) -> None:
    print(message, flush=True)


def _cmd_start(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise CliError(f"--partitions must be at least 1, got {args.partitions}")
    broker = LocalBroker(
        args.data_dir,
        port=args.port,
        controller_port=args.controller_port,
        partitions=args.partitions,
        ready_timeout_s=args.timeout,
        report=_say,
    )
    bootstrap = broker.start()
    print(f"bootstrap servers: {bootstrap}")
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    broker = LocalBroker(args.data_dir, report=_say)
    pid = broker.status().pid
    if broker.stop(timeout_s=args.timeout):
        print(f"stopped broker pid {pid} ({broker.data_dir})")
    else:
        print(f"no broker running for {broker.data_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    current = LocalBroker(args.data_dir).status()
    if not current.running:
        print(f"not running (data dir {current.data_dir})")
        return 3
    print("running")
    print(f"  pid:        {current.pid}")
    print(f"  bootstrap:  {current.bootstrap}")
    print(f"  controller: {current.controller}")
    print(f"  data dir:   {current.data_dir}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from streams.cli import main

    sys.exit(main(["kafka", *sys.argv[1:]]))
