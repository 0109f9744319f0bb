"""Lists ranked per second by each way of ranking, on one snapshot of a shop's log.

    .venv/bin/python bench/ranking_throughput.py [--dataset instacart-sample]
        [--events 60000] [--users 500] [--repeats 5] [--json]

Learns the first ``--events`` events of the dataset offline (the learned ranker
too), refreshes once, then ranks the same ``--users`` customers' lists (k=10,
as a stream publishes them) with every ranking, in turn, ``--repeats`` times:

- ``neighbours``: the neighbour snapshot alone, all users in one batch;
- ``mix, blend``: every source, ordered by the fixed blend (what the stream
  publishes by default);
- ``mix, perceptron``: the same candidates ordered by the learned perceptron
  (the brief's MLP) whatever was judged best;
- ``mix, judged best``: by the scorer judged best for each list's kind;
- ``stream, blend`` and ``stream, learning``: the ranking child as the worker
  runs it (a child process, the lists and profiles as JSON through its pipe),
  without learning, and learning from one rated event per customer per list
  (each a day after the last: every list ends a visit, a learning step each,
  the most the child can be asked to learn), ranked by the perceptron.

Prints users/s per ranking (the median of the repeats, the better of two rounds
that take the rankings in turn) and the ratios measured in the same run:
perceptron/blend and stream learning/blend (the aim is at least 0.8 for both),
blend/neighbours.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import orjson

from core.config import RecommenderConfig
from core.learned import LearnedRanking
from core.mix import published_lists
from core.ratings import UserProfile
from core.recommender import Recommender
from core.snapshot import Snapshot
from streams.devtools.datasets import load_events
from streams.runtime.children.process import ChildProcess
from streams.runtime.children.ranking_jobs import (
    RANKER_NICENESS,
    adopt_ranking,
    hold_snapshot,
    profile_fields,
    ranked_records,
)

DAY = 86_400.0


def users_per_second(snapshot: Snapshot, requests: Sequence[tuple[str, UserProfile | None]],
                     config: RecommenderConfig, repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        published_lists(snapshot, requests, 10, config)
        rates.append(len(requests) / (time.perf_counter() - started))
    return statistics.median(rates)


def stream_users_per_second(snapshot: Snapshot, requests: Sequence[tuple[str, UserProfile]],
                            config: RecommenderConfig, repeats: int, learn: bool) -> float:
    """Lists per second of a ranking child holding ``snapshot``, as the worker submits
    them; ``learn``: with a rated event of each customer before each list."""

    async def rank() -> float:
        child = ChildProcess(RANKER_NICENESS, "reco-ranker")
        try:
            child.hold("snapshot", hold_snapshot, snapshot)
            if learn and snapshot.ranker is not None:
                child.hold("learned", adopt_ranking, snapshot.ranker.to_state())
            lists = orjson.dumps([(user, profile_fields(profile), "view", profile.last_ts)
                                  for user, profile in requests])
            rates = []
            for repeat in range(repeats + 1):  # the first shows the lists learned against
                outcomes = orjson.dumps([
                    (user, profile.recent[-1], profile.last_ts + repeat * DAY,
                     profile.last_ts + (repeat - 1) * DAY)
                    for user, profile in requests] if learn and repeat else [])
                started = time.perf_counter()
                await child.run(ranked_records, lists, [], 10, config, 10_000, outcomes,
                                len(requests) if learn else 0)
                if repeat:
                    rates.append(len(requests) / (time.perf_counter() - started))
            return statistics.median(rates)
        finally:
            child.close()

    return asyncio.run(rank())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="instacart-sample")
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    events = load_events(dataset=args.dataset)[: args.events]
    config = RecommenderConfig()  # refreshed as it learns: the ranker learns from lists
    model = Recommender(config)
    started = time.perf_counter()
    model.observe_many(events)
    model.refresh()
    learned_s = time.perf_counter() - started
    users = sorted(model.users, key=lambda u: -model.users[u].events)[: args.users]
    requests: list[tuple[str, UserProfile]] = [(user, model.users[user]) for user in users]
    learned = model.snapshot
    assert learned.ranker is not None
    blend = Snapshot(learned.model, learned.facts)  # no ranker: the fixed blend
    # the perceptron for every list, as if it had been judged best everywhere
    mlp_only = Snapshot(learned.model, learned.facts, LearnedRanking(
        learned.ranker.mlp, {f"{part}:ranker": 1.0 for part in ("all", "new")}))
    if learned.ranker.mlp.positives < config.ranker_warmup:
        raise SystemExit(f"the perceptron learned from {learned.ranker.mlp.positives} items, "
                         f"fewer than its warm-up ({config.ranker_warmup}): more --events")
    rates: dict[str, float] = {}
    for _ in range(2):  # interleaved: a slow spell of the machine hits every ranking
        for name, snapshot, ranking in (("neighbours", blend, "neighbours"),
                                        ("mix, blend", blend, "mix"),
                                        ("mix, perceptron", mlp_only, "mix"),
                                        ("mix, judged best", learned, "mix")):
            rate = users_per_second(snapshot, requests, replace(config, ranking=ranking),
                                    args.repeats)
            rates[name] = max(rates.get(name, 0.0), rate)
        for name, snapshot, learn in (("stream, blend", blend, False),
                                      ("stream, learning", mlp_only, True)):
            rate = stream_users_per_second(snapshot, requests, config, args.repeats, learn)
            rates[name] = max(rates.get(name, 0.0), rate)
    figures = {
        "dataset": args.dataset, "events": len(events), "users": len(requests),
        "learn_seconds": round(learned_s, 1),
        "users_per_second": {name: round(rate) for name, rate in rates.items()},
        "perceptron_over_blend": round(rates["mix, perceptron"] / rates["mix, blend"], 3),
        "stream_learning_over_blend": round(rates["stream, learning"]
                                            / rates["stream, blend"], 3),
        "judged": {part: learned.ranker.chosen(config, part) for part in ("all", "new")},
        "blend_over_neighbours": round(rates["mix, blend"] / rates["neighbours"], 3),
    }
    if args.json:
        sys.stdout.write(orjson.dumps(figures).decode() + "\n")
        return 0
    print(f"{args.dataset}: {len(events):,} events learned in {learned_s:.1f} s; "
          f"{len(requests)} customers (the most active), k=10")
    for name, rate in rates.items():
        print(f"  {name:<18} {rate:>9,.0f} lists/s")
    print(f"  judged best: {figures['judged']}")
    print(f"  perceptron / blend   {figures['perceptron_over_blend']:.2f}  (aim >= 0.8)")
    print(f"  stream learning / blend {figures['stream_learning_over_blend']:.2f}  (aim >= 0.8)")
    print(f"  blend / neighbours   {figures['blend_over_neighbours']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
