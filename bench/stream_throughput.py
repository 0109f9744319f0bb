"""Stream throughput and latency on a local Kafka broker, every configuration in one run.

    .venv/bin/python bench/stream_throughput.py                    # table (~12 minutes)
    .venv/bin/python bench/stream_throughput.py --json             # plus one JSON object
    .venv/bin/python bench/stream_throughput.py --events 50000 --skip naive,two,latency
    .venv/bin/python bench/stream_throughput.py --skip bare,noop,naive,rocksdb,two \\
        --profile /tmp/prof                                        # py-spy the workers
    .venv/bin/python bench/stream_throughput.py --scale shop --json   # a shop (~1 hour)

Starts its own Apache Kafka (:mod:`harness`), produces a synthetic Zipf stream once
(:mod:`workload`; by default 600,000 events: 20k users, 5k items, 95% clicks of mixed
types, 5% purchases; keyed by user, 4 partitions) and runs, on that same data and
each with its own consumer group:

- ``bare``, ``noop``, ``noop-ours``, ``naive``: the reference consumers
  (:mod:`reference_agents`); the naive agent is capped at ``--naive-seconds``;
- ``worker``: ``recostream worker`` (memory store), rate from its /health counters,
  timed from its first snapshot (:mod:`worker_runs`);
- ``neighbours``: the same ranking by the neighbour snapshot alone
  (``RECOSTREAM_RANKING=neighbours``): what the mix of every source costs;
- ``blend``: the mix by the fixed blend, nothing learned
  (``RECOSTREAM_RANKER_CUSTOMERS=0``): what learning the ranking costs;
- ``rocksdb``: the same with the rocksdb store;
- ``two``: two workers in one group, counters summed;
- ``latency``: a fresh worker on fresh topics, warmed up, fed by a paced load
  generator at 1/4, 1/2 and 3/4 of the worker's rate (:mod:`latency`, :mod:`probes`).

``--scale shop`` runs the same parts on a shop's scale (2,000,000 events over
500,000 users and 200,000 items; one 10-minute load at half the worker's rate) and,
beside them, ``default``: a worker on the default workload, produced to topics of
its own; it adds minute-by-minute series (:mod:`series`): the worker's rate, the
RSS of each of its processes, its commits, and the probes' p50/p99.

Every configuration is bounded by ``--max-seconds``; a capped one reports its rate
over what it consumed. Progress goes to stderr; the table to stdout, or with
``--json`` to stderr and exactly one JSON object to stdout (:mod:`report`). Figures
move with the machine: the ratios, measured in one run on the same broker, are the
point.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from harness import Bench, Run, cleaned_up, create_topics, produce, say
from latency import LatencyPoint, run_latency
from procfs import machine_busy_seconds, own_cpu_seconds
from reference_agents import FAUST_ROLES, run_bare, run_faust_child, run_faust_role
from report import PARTS, build_result, render_table
from worker_runs import run_worker
from workload import Messages, Workload, draw


@dataclass(frozen=True)
class Scale:
    """The defaults a ``--scale`` gives the flags left out."""

    events: int
    users: int
    items: int
    max_seconds: float
    latency_seconds: float
    latency_fractions: tuple[float, ...]


SCALES = {
    # 600,000 events: the workers' rates are timed from their first snapshot, ~20 s
    # in, so most of them count
    "default": Scale(600_000, 20_000, 5_000, 150.0, 20.0, (0.25, 0.5, 0.75)),
    # a shop: state past every cache's capacity; ten minutes of half load show
    # whether the latency grows with the state
    "shop": Scale(2_000_000, 500_000, 200_000, 900.0, 600.0, (0.5,)),
}


def fractions_list(text: str) -> tuple[float, ...]:
    """``0.25,0.5`` -> (0.25, 0.5): loads in increasing order, each in (0, 1]."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not values or any(not 0.0 < v <= 1.0 for v in values) or list(values) != sorted(values):
        raise argparse.ArgumentTypeError(f"fractions in (0, 1], increasing: {text!r}")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=tuple(SCALES), default="default",
                        help="default: 600,000 events, 20k users, 5k items; shop: "
                             "2,000,000 events, 500k users, 200k items, plus the default "
                             "workload's worker and per-minute series (flags given override)")
    parser.add_argument("--events", type=int, default=None,
                        help="events produced (600,000; shop 2,000,000)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--users", type=int, default=None, help="(20,000; shop 500,000)")
    parser.add_argument("--items", type=int, default=None, help="(5,000; shop 200,000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--default-events", type=int, default=None,
                        help="with --scale shop: events of the default workload run beside "
                             "it (600,000)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--skip", default="", metavar="PARTS",
                        help=f"comma-separated parts to skip: {','.join(PARTS)}")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="cap on each configuration's measured time (150; shop 900)")
    parser.add_argument("--naive-seconds", type=float, default=60.0,
                        help="cap on the naive agent (60: at ~700/s it would take minutes)")
    parser.add_argument("--bare-repeats", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=None,
                        help="measured seconds per latency rate (20; shop 600)")
    parser.add_argument("--latency-base-eps", type=float, default=None,
                        help="rate the latency fractions apply to when the worker part is skipped")
    parser.add_argument("--latency-fractions", type=fractions_list, default=None,
                        metavar="F,F,...",
                        help="loads to measure, as fractions of worker_eps (0.25,0.5,0.75; "
                             "shop 0.5); the JSON's p50_ms and p99_ms are those at 0.5")
    parser.add_argument("--probe-log", metavar="CSV", default=None,
                        help="append each latency probe (time sent, latencies) to CSV")
    parser.add_argument("--refresh-seconds", type=float, default=None,
                        help="the workers' RECOSTREAM_REFRESH_SECONDS (default: the worker's)")
    parser.add_argument("--batch-seconds", type=float, default=None,
                        help="the workers' RECOSTREAM_BATCH_SECONDS (default: the worker's)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="sample every worker with py-spy into DIR/<name>.folded")
    # internal: the Faust child processes
    parser.add_argument("--role", choices=FAUST_ROLES, help=argparse.SUPPRESS)
    for name in ("--bootstrap", "--prefix", "--app-id", "--result", "--data-dir"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    for name in ("events", "users", "items", "max_seconds", "latency_seconds",
                 "latency_fractions"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(scale, name))
    default = SCALES["default"]
    args.default_workload = {"events": args.default_events or default.events,
                             "users": default.users, "items": default.items}
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    if skip - set(PARTS):
        parser.error(f"--skip takes {','.join(PARTS)}; got {','.join(sorted(skip - set(PARTS)))}")
    if args.scale != "shop":
        skip.add("default")  # the default workload is the run's own
    args.skip = skip
    if "latency" not in skip and "worker" in skip and not args.latency_base_eps:
        parser.error("the latency part needs worker_eps: skip it too or give --latency-base-eps")
    return args


def produce_workload(bench: Bench, workload: Workload, count: int, prefix: str,
                     what: str = "") -> int:
    """Draw ``count`` events of ``workload`` (the run's seed) and produce them to
    ``prefix``; the number delivered."""
    args = bench.args
    create_topics(bench.bootstrap, prefix, args.partitions)
    started = time.perf_counter()
    draws = draw(workload, count, args.seed)
    purchases = int((draws.kinds == workload.kinds.index("purchase")).sum())
    say(f"generated {len(draws):,} events{what} in {time.perf_counter() - started:.1f} s "
        f"({purchases:,} purchases)")
    started = time.perf_counter()
    events = produce(bench.bootstrap, Messages(draws, prefix, "e"))
    say(f"produced {events:,} events{what} in {time.perf_counter() - started:.1f} s")
    return events


def run_all(bench: Bench) -> dict[str, Any]:
    args = bench.args
    shop = args.scale == "shop"
    bench.start_broker()
    workload = Workload(users=args.users, items=args.items)
    events = produce_workload(bench, workload, args.events, bench.prefix)
    default_events, default_prefix = 0, f"bench{bench.tag}d."
    if "default" not in args.skip:
        default = args.default_workload
        default_events = produce_workload(
            bench, Workload(users=default["users"], items=default["items"]), default["events"],
            default_prefix, " of the default workload")

    runs: dict[str, Run] = {}
    if "bare" not in args.skip:
        runs["bare"] = run_bare(bench, events)
    if "noop" not in args.skip:
        runs["noop"] = run_faust_child(bench, "noop", events, args.max_seconds)
    if "noop-ours" not in args.skip:
        runs["noop-ours"] = run_faust_child(bench, "noop-ours", events, args.max_seconds)
    if "naive" not in args.skip:
        runs["naive"] = run_faust_child(bench, "naive", events, args.naive_seconds)
    if "worker" not in args.skip:
        runs["worker"] = run_worker(bench, "worker", "worker memory", "memory://", 1, events,
                                    per_minute=shop)
    if "neighbours" not in args.skip:
        runs["neighbours"] = run_worker(bench, "neighbours", "worker, neighbour ranking",
                                        "memory://", 1, events,
                                        overrides={"ranking": "neighbours"})
    if "blend" not in args.skip:
        runs["blend"] = run_worker(bench, "blend", "worker, fixed blend", "memory://", 1, events,
                                   overrides={"ranker_customers": 0})
    if "default" not in args.skip:
        runs["default"] = run_worker(bench, "default", "worker, default workload", "memory://",
                                     1, default_events, prefix=default_prefix,
                                     cap_s=SCALES["default"].max_seconds)
    if "rocksdb" not in args.skip:
        runs["rocksdb"] = run_worker(bench, "rocksdb", "worker rocksdb", "rocksdb://", 1,
                                     events)
    if "two" not in args.skip:
        runs["two"] = run_worker(bench, "two", "two workers", "memory://", 2, events)
    points: list[LatencyPoint] = []
    latency_run: Run | None = None
    if "latency" not in args.skip:
        base = args.latency_base_eps or runs["worker"].eps or 0.0
        points, latency_run = run_latency(bench, base, workload, seed=args.seed,
                                          per_minute=shop)
    return build_result(args, events, runs, points, latency_run) | {"_runs": runs}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_faust_role(args)
    started = time.monotonic()
    # Everything we start is our child and is waited for, so at the end the machine's
    # busy time minus ours is what other processes took from the same cores.
    busy_before, own_before = machine_busy_seconds(), own_cpu_seconds()
    try:
        with cleaned_up(args) as bench:
            result = run_all(bench)
    except KeyboardInterrupt:
        return 130
    runs = result.pop("_runs")
    wall = time.monotonic() - started
    other = (machine_busy_seconds() - busy_before) - (own_cpu_seconds() - own_before)
    result["setup"]["wall_seconds"] = round(wall, 1)
    result["setup"]["other_cpu_seconds"] = round(max(0.0, other), 1)
    result["setup"]["other_cpu_share"] = round(max(0.0, other) / (wall * (os.cpu_count() or 1)),
                                               3)
    table = render_table(result, runs)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
