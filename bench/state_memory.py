"""Memory of a worker's state, per user and per item, measured on a synthetic stream.

    .venv/bin/python bench/state_memory.py [--events 400000] [--users 40000] [--items 20000]

Replays a Zipf stream through core (the same objects the worker keeps), then
measures with tracemalloc, one structure at a time, what each costs decoded in
memory and encoded (the JSON the tables and changelogs hold):

- a user's state (profile, engagement, applied offsets, event ids), as the
  worker's cache holds up to RECOSTREAM_CACHE_KEYS of them;
- a row of C, per pair, as a rows process holds its partitions' rows (the
  worker's one copy: the model process is sent the rows due each round);
- the ranking snapshot per item with its neighbour lists (the ranking child
  holds one, the model process one it keeps up to date);
- the replicated tables per item (item stats, neighbour lists as JSON).

Prints the figures and the memory of a worker for N users and M items from them,
beside the caps that bound each structure (the worst case, every cap reached).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from workload import CORE_WORKLOAD, core_events

from core.engagement import Engagement
from core.ranking import NeighborModel
from core.recommender import Recommender
from streams.runtime.bounds import row_pairs
from streams.runtime.settings import Settings
from streams.runtime.state import CooccurrenceRow, UserState, table_json


def allocated(build: Callable[[], Any]) -> tuple[Any, int]:
    """What ``build()`` returns, and the bytes it holds (tracemalloc, after a
    collection)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    value = build()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return value, after - before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--users", type=int, default=40_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    settings = Settings()
    config = settings.recommender_config()
    engagement = settings.engagement_config()

    events = core_events(replace(CORE_WORKLOAD, users=args.users, items=args.items),
                         args.events, args.seed)
    model = Recommender(config)
    states: dict[str, UserState] = {}
    for n, event in enumerate(events):
        model.observe(event)
        state = states.setdefault(event.user_id, UserState())
        state.engagement.observe(event, engagement)
        state.mark(f"clicks/{n % settings.partitions}", n, f"ev-{n}" if n % 2 else None,
                   settings.dedup_ids)
    model.refresh()
    for user_id, state in states.items():
        state.profile = model.users[user_id]
    encoded_users = [table_json(state.to_json()) for state in states.values()]
    users, user_bytes = allocated(lambda: [UserState.from_json(orjson.loads(value))
                                           for value in encoded_users])
    per_user = user_bytes / len(users)
    per_user_json = sum(map(len, encoded_users)) / len(users)

    matrix = model.cooccurrence.matrix().tocsr()
    ids = model.cooccurrence.items.ids
    encoded_rows = []
    for i in range(matrix.shape[0]):
        start, end = matrix.indptr[i], matrix.indptr[i + 1]
        pairs = {ids[j]: float(v) for j, v in zip(matrix.indices[start:end].tolist(),
                                                  matrix.data[start:end].tolist(), strict=True)}
        encoded_rows.append(table_json(CooccurrenceRow(pairs=pairs).to_json()))
    rows, row_bytes = allocated(lambda: [CooccurrenceRow.from_json(orjson.loads(value))
                                         for value in encoded_rows])
    pairs = sum(len(row.pairs) for row in rows)
    per_pair = row_bytes / pairs
    per_pair_json = sum(map(len, encoded_rows)) / pairs

    lists = {ids[i]: model.neighbors_of(ids[i]) for i in range(len(ids))}
    trending = dict.fromkeys(ids, 0.5)
    _snapshot, snapshot_bytes = allocated(
        lambda: NeighborModel.from_neighbor_lists(1, lists, trending, config.neighbors))
    per_item_snapshot = snapshot_bytes / len(ids)
    encoded_lists = [orjson.dumps(pairs) for pairs in lists.values()]
    per_item_replicated = (sum(map(len, encoded_lists)) / len(ids)
                           + len(orjson.dumps([1.0, 0.5, 1.7e9])) + 2 * 10)

    print(f"stream: {len(events):,} events, {len(users):,} users, {len(ids):,} items, "
          f"{pairs:,} pairs of C ({pairs / len(ids):.0f} per item), "
          f"{sum(len(p) for p in lists.values()) / len(ids):.0f} neighbours per item")
    print(f"user state: {per_user:,.0f} B decoded, {per_user_json:,.0f} B as JSON "
          f"(mean {sum(len(u.profile.ratings) for u in users) / len(users):.1f} ratings)")
    print(f"row of C: {per_pair:,.0f} B decoded per pair, {per_pair_json:,.0f} B as JSON")
    print(f"ranking snapshot: {per_item_snapshot:,.0f} B per item "
          f"(held by the ranking child and the model process)")
    print(f"replicated tables: {per_item_replicated:,.0f} B per item (neighbour lists and "
          "item stats as JSON, in every worker)")
    full_row = row_pairs(config.max_row_width)
    print(f"caps: a user's state at most {settings.max_user_ratings} ratings, "
          f"{settings.history} recent items, {settings.max_user_purchases} purchases, "
          f"{settings.dedup_ids} event ids, {settings.max_cart_items} cart items, "
          f"{settings.max_purchase_days} purchase days; a row at most {full_row} pairs")
    print("\nworker memory (one worker holding every partition; decoded users cached: "
          f"RECOSTREAM_CACHE_KEYS={settings.cache_keys:,}):")
    print(f"{'users':>10} {'items':>9} {'pairs/item':>10} {'users MB':>9} {'rows MB':>9} "
          f"{'snapshots MB':>12} {'replicas MB':>11} {'total MB':>9}")
    for n_users, n_items, per_row in ((100_000, 10_000, 200), (1_000_000, 100_000, 200),
                                      (1_000_000, 200_000, 500), (5_000_000, 500_000, 500)):
        cached = min(n_users, settings.cache_keys) * per_user
        rows_mb = n_items * per_row * per_pair  # in the rows processes only
        snapshots = 2 * n_items * per_item_snapshot
        replicas = n_items * per_item_replicated
        total = cached + rows_mb + snapshots + replicas
        print(f"{n_users:>10,} {n_items:>9,} {per_row:>10} {cached / 1e6:>9.0f} "
              f"{rows_mb / 1e6:>9.0f} {snapshots / 1e6:>12.0f} {replicas / 1e6:>11.0f} "
              f"{total / 1e6:>9.0f}")
    print(f"\n(an empty Engagement is {len(orjson.dumps(Engagement().to_state()))} B as JSON)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
