"""What a commit writes of the rows of C: a delta or a base per changed row
against whole rows, for the same changes, measured in one run.

    .venv/bin/python bench/row_commit_bytes.py [--events 600000] [--users 20000] \\
        [--items 5000] [--commit-every 10000] [--json]

Streams the default workload of ``bench/stream_throughput.py`` (:mod:`workload`)
through core's ``learn_event`` into the row updates the worker sends (4
partitions), applies them to the rows as a rows process holds them
(:class:`streams.runtime.children.held_rows.HeldRows`), ``--batch`` events at a
time, and every ``--commit-every`` events takes what a commit writes (the
worker commits every ``RECOSTREAM_COMMIT_SECONDS``, 10 s: 10,000 events is
about that at half the default workload's capacity). For each commit it reports the bytes (keys
and values, as the table's changelog gets them; one record per changed row
either way) of:

- ``whole``: every changed row written whole, as before deltas;
- ``deltas``: the records the worker writes now, a delta or a base per row
  (:mod:`streams.runtime.row_records`),

and the time the rows process takes to encode them. No broker: the bytes are
those of the records, the same on the wire.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from dataclasses import replace

import orjson
from workload import Workload, core_events

from core.ratings import UserProfile
from core.recommender import learn_event
from streams.runtime.children.held_rows import HeldRows
from streams.runtime.partitions import item_partition
from streams.runtime.row_records import split_key
from streams.runtime.settings import Settings
from streams.runtime.state import RowGain, encode_gains, event_row_gains, table_json


def whole_row_bytes(holder: HeldRows) -> int:
    """Bytes of the rows changed since the last commit written whole: what the
    rows process handed over before deltas (each row whole, and the stats of
    those whose count moved), without counting them as written."""
    taken = [(partition, item_id, table_json(part.rows[item_id].to_json()))
             for partition, part in holder.partitions.items() for item_id in part.unwritten]
    stats = [(item_id, orjson.dumps(part.rows[item_id].stats()))
             for part in holder.partitions.values() for item_id in part.counted]
    assert len(stats) <= len(taken)
    return sum(len(table_json(item_id)) + len(value) for _, item_id, value in taken)


def taken_bytes(taken: list[tuple[int, str, bytes]]) -> tuple[int, int]:
    """Bytes a commit writes now, and how many of its records are bases."""
    size = sum(len(table_json(key)) + len(value) for _, key, value in taken)
    return size, sum(1 for _, key, _ in taken if split_key(key)[1] is None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=600_000)
    parser.add_argument("--users", type=int, default=Workload.users)
    parser.add_argument("--items", type=int, default=Workload.items)
    parser.add_argument("--commit-every", type=int, default=10_000,
                        help="events between two commits")
    parser.add_argument("--batch", type=int, default=1_000, help="events per batch of rows")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()

    settings = Settings()
    config = settings.recommender_config()
    partitions = settings.partitions
    workload = replace(Workload(), users=args.users, items=args.items)
    events = core_events(workload, args.events, args.seed)
    holder = HeldRows()
    for partition in range(partitions):
        holder.hold(partition, token=1, encoded={})
    profiles: dict[str, UserProfile] = defaultdict(UserProfile)
    pending: dict[int, list[RowGain]] = defaultdict(list)
    commits: list[dict[str, float]] = []

    def partition_of(item_id: str) -> int:
        return item_partition(item_id, partitions)

    def apply_batch() -> None:
        messages = [(partition, 1, message) for partition, gains in pending.items()
                    for message in encode_gains(gains, settings.max_record_bytes)]
        pending.clear()
        holder.apply(messages, config.tau, settings.max_row_width)

    def commit() -> None:
        rows = sum(len(part.unwritten) for part in holder.partitions.values())
        if not rows:
            return
        started = time.perf_counter()
        whole = whole_row_bytes(holder)
        whole_s = time.perf_counter() - started
        started = time.perf_counter()
        taken, _ = holder.take_unwritten()  # the rows count as written from now on
        delta_s = time.perf_counter() - started
        deltas, bases = taken_bytes(taken)
        commits.append({"rows": rows, "whole_bytes": whole, "whole_s": whole_s,
                        "delta_bytes": deltas, "delta_s": delta_s, "bases": bases})

    for offset, event in enumerate(events, start=1):
        _, gain, purchase = learn_event(profiles[event.user_id], event, config)
        for partition, row_gain in event_row_gains(event, gain, purchase, "clicks/0", offset,
                                                   partition_of).items():
            pending[partition].append(row_gain)
        if offset % args.batch == 0:
            apply_batch()
        if offset % args.commit_every == 0:
            commit()
    apply_batch()
    commit()

    def figures(key: str) -> dict[str, float]:
        values = [c[key] for c in commits]
        return {"median": statistics.median(values), "max": max(values),
                "total": sum(values)}

    result: dict[str, object] = {
        "events": args.events, "users": args.users, "items": args.items,
        "commit_every": args.commit_every, "commits": len(commits),
        "rows": figures("rows"), "bases": figures("bases"),
        "whole_bytes": figures("whole_bytes"), "delta_bytes": figures("delta_bytes"),
        "whole_s": figures("whole_s"), "delta_s": figures("delta_s"),
        "whole_mb_by_commit": [round(c["whole_bytes"] / 1e6, 2) for c in commits],
        "delta_mb_by_commit": [round(c["delta_bytes"] / 1e6, 2) for c in commits],
    }
    mb = 1e6
    print(f"{args.events:,} events ({args.users:,} users, {args.items:,} items), a commit "
          f"every {args.commit_every:,} events: {len(commits)} commits")
    print(f"{'per commit':<26} {'whole rows':>12} {'deltas':>12} {'ratio':>7}")
    for label, key, scale in (("MB", "bytes", mb), ("encode ms", "s", 1e-3)):
        for name in ("median", "max", "total"):
            w, d = figures(f"whole_{key}")[name], figures(f"delta_{key}")[name]
            result[f"{key}_ratio_{name}"] = round(w / max(d, 1e-9), 2)
            print(f"{label + ', ' + name:<26} {w / scale:>12.3f} {d / scale:>12.3f} "
                  f"{w / max(d, 1e-9):>6.1f}x")
    print(f"rows written per commit: median {figures('rows')['median']:,.0f}, of them "
          f"bases (whole) {figures('bases')['median']:,.0f}")
    every = max(1, len(commits) // 10)
    print("MB by commit (whole / deltas): " + ", ".join(
        f"#{n + 1} {c['whole_bytes'] / mb:.1f} / {c['delta_bytes'] / mb:.1f}"
        for n, c in enumerate(commits) if n % every == 0 or n == len(commits) - 1))
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
