"""Throughput of the core recommender on a synthetic Zipf stream.

    .venv/bin/python bench/core_throughput.py [--events 1000000] [--json]

Prints, on one core:
- ``observe`` events/s over the whole stream (profiles, co-occurrence, trending);
- p50/p99 ``recommend(k=10)`` latency for users with 200-item histories;
- users/s ranked one call each (``recommend``) and in batches of 500 distinct
  users (``NeighborModel.recommend_many``), for those users and for users
  drawn from the stream (their histories as the stream left them), measured in
  the same run on the same snapshot, and checked to give the same lists;
- neighbour refresh seconds (cosine) beside one bare ``scipy.sparse`` X^T X of the
  same user-item data, measured in the same run, and their ratio;
- peak RSS of the process.
Targets (issue 2): >= 100k events/s, p99 <= 2 ms, refresh <= 3x X^T X.

    .venv/bin/python bench/core_throughput.py --events 200000 --items 20000   # quick look
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import replace

import numpy as np
import orjson
import scipy.sparse as sp
from workload import CORE_WORKLOAD, core_events

from core.config import RecommenderConfig
from core.events import Event
from core.recommender import Recommender


def users_per_second(
    model: Recommender, users: list[str], batch: int, repeats: int
) -> tuple[float, float]:
    """Users ranked per second (k=10): one ``recommend`` call each, then
    ``recommend_many`` over batches of ``batch``; best of ``repeats``. The two
    must give the very same lists."""
    snapshot, config = model.model, model.config
    requests = [(user, model.users.get(user)) for user in users]
    batches = [requests[i : i + batch] for i in range(0, len(requests), batch)]
    single_s, many_s = float("inf"), float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        singles = [snapshot.recommend(user, profile, 10, config) for user, profile in requests]
        single_s = min(single_s, time.perf_counter() - started)
        started = time.perf_counter()
        many = [recs for chunk in batches for recs in snapshot.recommend_many(chunk, 10, config)]
        many_s = min(many_s, time.perf_counter() - started)
        assert many == singles, "recommend_many and recommend disagree"
    return len(users) / single_s, len(users) / many_s


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--history", type=int, default=200,
                        help="recent items kept per user (the latency target is for 200)")
    parser.add_argument("--probe-users", type=int, default=500,
                        help="users given 200-item histories for the latency probe")
    parser.add_argument("--batch", type=int, default=500,
                        help="distinct users per recommend_many call")
    parser.add_argument("--repeats", type=int, default=3,
                        help="refresh/X^T X and ranking repetitions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    say(f"generating {args.events:,} Zipf events over {args.users:,} users / "
        f"{args.items:,} items ...")
    stream = core_events(replace(CORE_WORKLOAD, users=args.users, items=args.items),
                         args.events, args.seed)
    config = replace(RecommenderConfig(), history=args.history, refresh_every=0)
    model = Recommender(config)

    say("observe ...")
    started = time.perf_counter()
    for event in stream:
        model.observe(event)
    model.cooccurrence.matrix()  # fold the buffered pairs: part of the cost of observing
    observe_seconds = time.perf_counter() - started
    observe_eps = len(stream) / observe_seconds

    say("refresh (cosine) and bare X^T X ...")
    refresh_times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.refresh()
        refresh_times.append(time.perf_counter() - started)
    positions = model.cooccurrence.items.positions
    user_pos: dict[str, int] = {}
    rows, cols = [], []
    for event in stream:
        rows.append(user_pos.setdefault(event.user_id, len(user_pos)))
        cols.append(positions[event.item_id])
    X = sp.csr_matrix((np.ones(len(rows)), (rows, cols)),
                      shape=(len(user_pos), len(positions)))
    X.data[:] = 1.0  # binary, as the co-occurrence counts are
    xtx_times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        gram = (X.T @ X).tocsr()
        xtx_times.append(time.perf_counter() - started)
    del gram

    say(f"recommend latency for {args.probe_users} users with {args.history}-item histories ...")
    rng = np.random.default_rng(args.seed + 1)
    item_ids = model.cooccurrence.items.ids
    probe_users = [f"probe{n}" for n in range(args.probe_users)]
    for user in probe_users:
        for position in rng.choice(len(item_ids), size=args.history, replace=False).tolist():
            model.observe(Event(user, item_ids[position], model.now, "view"))
    latencies = []
    for user in probe_users:
        started = time.perf_counter()
        recs = model.recommend(user, 10)
        latencies.append((time.perf_counter() - started) * 1000.0)
        assert len(recs.item_ids) == 10 and not recs.cold_start
    latencies.sort()

    say(f"users/s, one call each and in batches of {args.batch} ...")
    stream_users = sorted({event.user_id for event in stream})
    picked = rng.choice(len(stream_users), size=min(len(probe_users), len(stream_users)),
                        replace=False)
    mixed_users = [stream_users[u] for u in picked.tolist()]
    ranking_rates = {
        "probe": users_per_second(model, probe_users, args.batch, args.repeats),
        "stream": users_per_second(model, mixed_users, args.batch, args.repeats),
    }

    refresh_s = statistics.median(refresh_times)
    xtx_s = statistics.median(xtx_times)
    result = {
        "events": len(stream),
        "users": len(model.users),
        "items": len(item_ids),
        "history": args.history,
        "cooccurrence_nnz": int(model.cooccurrence.matrix().nnz),
        "observe_eps": round(observe_eps),
        "recommend_p50_ms": round(latencies[len(latencies) // 2], 3),
        "recommend_p99_ms": round(latencies[min(len(latencies) - 1,
                                                int(0.99 * len(latencies)))], 3),
        "recommend_users_per_s": round(ranking_rates["probe"][0]),
        "recommend_many_users_per_s": round(ranking_rates["probe"][1]),
        "recommend_many_speedup": round(ranking_rates["probe"][1] / ranking_rates["probe"][0], 2),
        "stream_users_history_mean": round(statistics.fmean(
            len(model.users[u].recent) for u in mixed_users), 1),
        "stream_recommend_users_per_s": round(ranking_rates["stream"][0]),
        "stream_recommend_many_users_per_s": round(ranking_rates["stream"][1]),
        "stream_recommend_many_speedup": round(
            ranking_rates["stream"][1] / ranking_rates["stream"][0], 2),
        "recommend_many_batch": args.batch,
        "refresh_cosine_s": round(refresh_s, 3),
        "xtx_s": round(xtx_s, 3),
        "refresh_over_xtx": round(refresh_s / xtx_s, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    else:
        targets = {"observe_eps": ">= 100000", "recommend_p99_ms": "<= 2",
                   "refresh_over_xtx": "<= 3"}
        for key, value in result.items():
            print(f"{key:34} {value:>14}   {targets.get(key, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
