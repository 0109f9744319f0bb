"""Soak: minutes of steady load on a shop's scale, then the worker's state against a replay.

    .venv/bin/python bench/soak.py                        # 30 minutes at half capacity (~40 min)
    .venv/bin/python bench/soak.py --base-eps 4000 --json # capacity known: no capacity run
    .venv/bin/python bench/soak.py --minutes 2 --users 20000 --items 5000 \\
        --capacity-events 100000                          # a quick look

On a broker of its own (:mod:`harness`), over a shop's users and items (500,000 and
200,000 by default):

1. capacity: unless ``--base-eps`` is given, a worker consumes ``--capacity-events``
   produced events as fast as it can (timed as ``stream_throughput.py`` times it);
2. soak: a fresh worker on fresh topics, warmed up, is fed ``--fraction`` of that
   rate for ``--minutes``, probes timed as in the latency part (:mod:`probes`);
   per minute it prints the events applied, p50/p99, the RSS of each of the
   worker's processes and its commits (:mod:`series`);
3. check: once every event is applied, the profiles of ``--sample-users`` users
   (``GET /users/{id}``) against :class:`core.recommender.Recommender` fed the same
   events in the same per-user order; and the growth of the worker's RSS (all its
   processes) over the second half of the soak, against a bound of 10%.

The table goes to stdout, or with ``--json`` to stderr and one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
from harness import Bench, Run, cleaned_up, create_topics, fmt, produce, say
from latency import (
    LATENCY_LEAD_IN_S,
    LATENCY_WARMUP,
    describe_point,
    measure_load,
    settled,
    warm_worker,
)
from probes import ProbedLoad, ProbeTimes
from provenance import revision
from report import minute_table, ratio
from series import Series, describe_minute
from worker_runs import run_worker
from workload import Messages, Workload, draw

from core.events import parse_event
from core.recommender import Recommender
from streams.devtools.worker_process import WorkerProcess
from streams.runtime.settings import Settings

RSS_GROWTH_BOUND = 0.10
REPORT_GRACE_S = 10.0  # a minute is printed this long after its end: its probes' answers
SETTLE_TIMEOUT_S = 600.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="soak length (30)")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="load as a fraction of the worker's capacity (0.5)")
    parser.add_argument("--base-eps", type=float, default=None,
                        help="the worker's capacity in events/s (default: measured first)")
    parser.add_argument("--capacity-events", type=int, default=1_000_000,
                        help="events the capacity run consumes (1,000,000)")
    parser.add_argument("--capacity-seconds", type=float, default=300.0,
                        help="cap on the capacity run's measured time (300)")
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample-users", type=int, default=500,
                        help="users whose profiles are compared with the replay (500)")
    parser.add_argument("--refresh-seconds", type=float, default=None,
                        help="the workers' RECOSTREAM_REFRESH_SECONDS (default: the worker's)")
    parser.add_argument("--batch-seconds", type=float, default=None,
                        help="the workers' RECOSTREAM_BATCH_SECONDS (default: the worker's)")
    parser.add_argument("--probe-log", metavar="CSV", default=None,
                        help="append each probe (time sent, latencies) to CSV")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="sample the workers with py-spy into DIR/<name>.folded")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if not 0.0 < args.fraction <= 1.0:
        parser.error("--fraction is in (0, 1]")
    args.max_seconds = args.capacity_seconds  # what the worker runs read as their cap
    return args


def measure_capacity(bench: Bench, workload: Workload) -> Run:
    args = bench.args
    create_topics(bench.bootstrap, bench.prefix, args.partitions)
    events = produce(bench.bootstrap, Messages(draw(workload, args.capacity_events, args.seed),
                                               bench.prefix, "e"))
    say(f"capacity: produced {events:,} events")
    run = run_worker(bench, "capacity", "capacity", "memory://", 1, events, per_minute=True)
    if run.consumed < events / 4:
        say("capacity: most events went before the first snapshot, the rate is not the "
            "worker's steady one: give more --capacity-events or --base-eps")
    return run


class MinuteReporter(threading.Thread):
    """Prints each minute of the soak once it is over (and its probes had time to
    come back), while the load goes on."""

    def __init__(self, series: Series, times: ProbeTimes) -> None:
        super().__init__(daemon=True, name="soak-minutes")
        self.series = series
        self.times = times
        self.done = threading.Event()
        self.printed = 0

    def run(self) -> None:
        while not self.done.is_set():
            minute = self.printed
            if not self.times.started:
                self.done.wait(0.5)
                continue
            end = self.times.started + 60.0 * (minute + 1)
            if time.time() < end + REPORT_GRACE_S:
                self.done.wait(min(1.0, end + REPORT_GRACE_S - time.time()))
                continue
            rows = self.series.minutes(end - 60.0, end, self.times.latencies())
            if rows:
                say(f"soak, {describe_minute(rows[0] | {'minute': minute + 1})}")
            self.printed += 1


def same_but_topic_order(got: list[str], want: list[str], purchased: set[str]) -> bool:
    """Whether two ``recent_items`` lists differ only where a purchase was read
    before or after a click of the same user: the items never purchased keep their
    order, and one list's is a tail of the other's (the lists are the last 20).

    >>> same_but_topic_order(["a", "p", "b"], ["p", "a", "b"], {"p"})
    True
    >>> same_but_topic_order(["b", "a"], ["a", "b"], {"p"})
    False
    """
    a = [item for item in got if item not in purchased]
    b = [item for item in want if item not in purchased]
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return sorted(got) == sorted(want) and long[len(long) - len(short):] == short


def compare_with_replay(bench: Bench, worker: WorkerProcess, messages: Messages, sent: int,
                        replaced: set[int]) -> dict[str, Any]:
    """The profiles of a sample of users, as the worker serves them and as core
    computes them from the same events in the order they were sent.

    Each user's clicks are on one partition of ``clicks`` and its purchases on one of
    ``purchases``: the worker applies each topic's in the order sent, but reads the
    two topics independently, so a purchase may be applied before a click sent
    earlier. The rest of a profile does not depend on that order (ratings only
    strengthen, ``last_ts`` is the latest); the recent items' order does: a profile
    that differs only there is counted apart (``topic_order_only``).
    """
    args = bench.args
    draws = messages.draws
    rng = np.random.default_rng(args.seed + 3)
    seen_users = np.unique(draws.users[:sent])
    sample = rng.choice(seen_users, size=min(args.sample_users, len(seen_users)), replace=False)
    positions = np.nonzero(np.isin(draws.users[:sent], sample))[0].tolist()
    model = Recommender(Settings().recommender_config())  # the bench's workers run its defaults
    bought: dict[str, set[str]] = {}
    for position in positions:
        if position in replaced:
            continue  # a probe went in its place
        message = messages[position]
        topic = "purchases" if message.topic == messages.purchases else "clicks"
        event = parse_event(orjson.loads(message.value), topic)
        if topic == "purchases":
            bought.setdefault(event.user_id, set()).add(event.item_id)
        model.observe(event)
    mismatched: list[dict[str, Any]] = []
    order_only = 0
    for rank in sample.tolist():
        user = f"u{rank}"
        profile = model.users.get(user)
        want = ({} if profile is None else
                {"events": profile.events, "ratings": len(profile.ratings),
                 "mean_rating": round(profile.mean, 9), "recent_items": profile.recent[-20:],
                 "purchased": sorted(profile.purchased), "last_ts": profile.last_ts})
        status, got = worker.get_status(f"/users/{quote(user, safe='')}")
        seen = ({} if status != 200 else
                {**{key: got[key] for key in want}, "mean_rating": round(got["mean_rating"], 9)})
        if seen == want:
            continue
        if (seen and {**seen, "recent_items": None} == {**want, "recent_items": None}
                and same_but_topic_order(seen["recent_items"], want["recent_items"],
                                         bought.get(user, set()))):
            order_only += 1
        else:
            mismatched.append({"user": user, "worker": seen, "replay": want})
    return {"users": len(sample), "events": len(positions), "mismatched": len(mismatched),
            "topic_order_only": order_only, "first_mismatches": mismatched[:3]}


def rss_growth(minutes: list[dict[str, Any]]) -> tuple[float | None, dict[str, float | None]]:
    """Growth of the RSS from the middle minute to the last: of all the worker's
    processes together, and of each."""
    if len(minutes) < 2:
        return None, {}
    mid, last = minutes[(len(minutes) - 1) // 2], minutes[-1]
    total = ratio(last["rss_mb_total"], mid["rss_mb_total"])
    each = {name: ratio(last["rss_mb"].get(name), mb) for name, mb in mid["rss_mb"].items()}
    return (None if total is None else round(total - 1.0, 3),
            {name: None if r is None else round(r - 1.0, 3) for name, r in each.items()})


def soak(bench: Bench) -> dict[str, Any]:
    args = bench.args
    bench.start_broker()
    workload = Workload(users=args.users, items=args.items)
    capacity = None if args.base_eps else measure_capacity(bench, workload)
    base = args.base_eps or (capacity.eps if capacity else 0.0) or 0.0
    rate = base * args.fraction
    prefix = f"soak{bench.tag}."
    count = int(rate * (LATENCY_LEAD_IN_S + args.minutes * 60.0))
    messages = Messages(draw(workload, LATENCY_WARMUP + count, args.seed + 1), prefix, "s")
    worker = warm_worker(bench, "soak", prefix, messages)
    load = ProbedLoad(messages, LATENCY_WARMUP, count, prefix, "soak",
                      np.random.default_rng(args.seed + 2))
    say(f"soak: {rate:,.0f}/s ({args.fraction:g} of {base:,.0f}) for {args.minutes:g} min, "
        f"{len(load.probe_users):,} probes")
    series = Series([worker], bench.log_dir, f"bench-{bench.tag}-soak")
    times = ProbeTimes()
    reporter = MinuteReporter(series, times)
    reporter.start()
    try:
        point = measure_load(bench, worker, prefix, load, rate, args.fraction, series, times)
    finally:
        reporter.done.set()
        reporter.join()
    for minute in point.minutes[reporter.printed:]:
        say(f"soak, {describe_minute(minute)}")
    say(f"soak: {describe_point(point)}")
    sent = LATENCY_WARMUP + len(load)
    say("soak: waiting for every event and row update to be applied")
    worker.wait_for(lambda h: settled(h, sent), "every event applied", timeout=SETTLE_TIMEOUT_S)
    peaks = series.peak_rss_mb_by_process()
    replay = compare_with_replay(bench, worker, messages, sent, load.replaced())
    say(f"soak: {replay['mismatched']} of {replay['users']} sampled profiles differ from the "
        f"replay ({replay['events']:,} events; {replay['topic_order_only']} more only in the "
        "order of a click and a purchase)")
    growth, growth_by_process = rss_growth(point.minutes)
    return {
        "base_eps": round(base, 1),
        "capacity": None if capacity is None else {
            "worker_eps": round(capacity.eps or 0.0, 1), "consumed": capacity.consumed,
            "seconds": round(capacity.seconds, 2), "capped": capacity.capped,
            "by_minute": capacity.minutes,
            "peak_rss_mb_by_process": capacity.peak_rss_mb_by_process},
        "fraction": args.fraction, "target_rate": round(rate, 1),
        "offered_rate": round(point.offered_rate, 1),
        "p50_ms": point.p50_ms, "p99_ms": point.p99_ms, "probes": point.probes,
        "answered": point.answered,
        "p99_by_minute_ms": [m.get("p99_ms") for m in point.minutes],
        "by_minute": point.minutes,
        "peak_rss_mb_by_process": peaks,
        "rss_growth_second_half": growth,
        "rss_growth_second_half_by_process": growth_by_process,
        "rss_growth_met": None if growth is None else growth < RSS_GROWTH_BOUND,
        "replay": replay,
        "setup": {"revision": revision(), "minutes": args.minutes, "users": args.users,
                  "items": args.items, "partitions": args.partitions, "seed": args.seed},
    }


def render(result: dict[str, Any]) -> str:
    setup = result["setup"]
    lines = [f"soak  (rev {setup['revision']}, {setup['minutes']:g} minutes at "
             f"{result['fraction']:g} of {fmt(result['base_eps'])}/s, {setup['users']:,} users, "
             f"{setup['items']:,} items)"]
    if result["capacity"] is not None:
        lines += minute_table("capacity run, per minute", result["capacity"]["by_minute"])
    lines += minute_table("soak, per minute", result["by_minute"])
    growth = result["rss_growth_second_half"]
    replay = result["replay"]
    lines += ["",
              f"offered {fmt(result['offered_rate'])}/s; p50/p99 {fmt(result['p50_ms'], '.1f')}/"
              f"{fmt(result['p99_ms'], '.1f')} ms; {result['answered']}/{result['probes']} "
              "probes answered",
              f"RSS growth over the second half: {fmt(growth, '+.1%')} (bound "
              f"{RSS_GROWTH_BOUND:.0%}: "
              + ("-" if result["rss_growth_met"] is None
                 else "met" if result["rss_growth_met"] else "NOT met") + "); by process: "
              + ", ".join(f"{name} {fmt(g, '+.1%')}"
                          for name, g in result["rss_growth_second_half_by_process"].items()),
              f"replay: {replay['mismatched']} of {replay['users']} sampled users' profiles "
              f"differ ({replay['events']:,} events replayed); {replay['topic_order_only']} "
              "more differ only in the order of a click and a purchase (two topics)"]
    for mismatch in replay["first_mismatches"]:
        lines.append(f"  {mismatch['user']}: worker {mismatch['worker']} / replay "
                     f"{mismatch['replay']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with cleaned_up(args, prefix="recostream-soak-") as bench:
            result = soak(bench)
    except KeyboardInterrupt:
        return 130
    table = render(result)
    if args.json:
        print(table, file=sys.stderr)
        print(json.dumps(result))
    else:
        print(table)
    return 0 if result["replay"]["mismatched"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
