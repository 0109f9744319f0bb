"""The model process's copy of the replicated neighbour lists and item stats: kept
up to date with the keys changed since the last hand-over, handed over whole to a
new model process, and the snapshot it builds left in one file for the ranking
child."""

from __future__ import annotations

import os
import signal
from typing import Any

import orjson
import pytest

from core.ratings import UserProfile
from streams.runtime.children.model_jobs import snapshot_from_json
from streams.runtime.children.model_replica import ModelReplica, update_replica
from streams.runtime.children.ranking_jobs import held_snapshot
from tests.property.test_snapshot_builder_properties import by_item
from tests.stream.harness import MakeHarness, run_async

#: Items another worker wrote lists and stats for before this worker started.
ITEMS = 3000


def other_workers_tables(items: int) -> tuple[dict[str, bytes], dict[str, bytes]]:
    lists = {f"i{n}": orjson.dumps([[f"i{(n + 1) % items}", 0.5]]) for n in range(items)}
    stats = {f"i{n}": orjson.dumps([float(n % 7 + 1), 1.0, 0.0]) for n in range(items)}
    return lists, stats


def test_the_copy_builds_the_snapshot_the_tables_build() -> None:
    lists, stats = other_workers_tables(50)
    replica = ModelReplica(token=1)
    replica.update(lists, stats)
    replica.update({"i3": None, "i4": b"[]"}, {"i5": None})
    lists.pop("i3")
    lists["i4"] = b"[]"
    stats.pop("i5")
    built_snapshot = replica.snapshot(2, 5, 86_400.0)
    expected_snapshot = snapshot_from_json(2, lists, stats, 5, 86_400.0)
    # positions follow the order items came in, which differs: compare by id
    assert by_item(built_snapshot) == by_item(expected_snapshot)
    said = by_item(built_snapshot)
    assert "i3" not in lists and said["i3"][0] == () and said["i4"][0] == ()
    assert said["i5"][2] == 0.0 and said["i5"][0] == (("i6", 0.5),)
    built, expected = built_snapshot.model, expected_snapshot.model
    profile = UserProfile(recent=["i1", "i2", "i4"])
    assert (built.rank(profile, 10, recency_decay=1.0, popularity_weight=0.1)
            == expected.rank(profile, 10, recency_decay=1.0, popularity_weight=0.1))
    assert replica.counts == {i: float(orjson.loads(v)[0]) for i, v in stats.items()}


@run_async
async def test_rebuilds_hand_over_what_changed_and_a_new_model_process_gets_all(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    stream = h.stream
    refresh, neighbors, item_stats = stream.refresh, stream.topology.neighbors, \
        stream.topology.item_stats
    handed: list[tuple[bool, int]] = []  # (full, keys) per hand-over
    submit = stream.model_process.submit

    def spy(function: Any, *args: Any) -> Any:
        if function is update_replica:
            _, full, lists, stats = args
            if full:
                handed.append((True, 0))
            handed[-1] = (handed[-1][0], handed[-1][1] + len(lists) + len(stats))
        return submit(function, *args)

    monkeypatch.setattr(stream.model_process, "submit", spy)
    lists, stats = other_workers_tables(ITEMS)
    neighbors.apply_many((k.encode(), v) for k, v in lists.items())
    item_stats.apply_many((k.encode(), v) for k, v in stats.items())
    await refresh.take_others_lists()
    assert handed == [(True, 2 * ITEMS)]
    assert refresh.model_items == ITEMS

    neighbors.apply(b"x", orjson.dumps([["i1", 0.9]]))
    item_stats.apply(b"x", orjson.dumps([2.0, 1.0, 0.0]))
    handed.append((False, 0))
    await refresh.take_others_lists()
    assert handed[-1] == (False, 2)  # the two keys changed, not the thousands held
    assert "x" in refresh.snapshot.model.items.positions

    stream.model_process.close()  # a new model process holds no copy
    neighbors.apply(b"y", orjson.dumps([["x", 0.7]]))
    handed.append((False, 0))
    await refresh.take_others_lists()
    assert handed[-2:] == [(False, 1), (True, 2 * ITEMS + 3)]  # refused, then all
    assert {"x", "y"} <= refresh.snapshot.model.items.positions.keys()


@run_async
async def test_one_snapshot_file_is_kept_and_a_new_ranking_child_loads_it(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    refresh, neighbors = stream.refresh, stream.topology.neighbors
    for n in range(4):
        neighbors.apply(f"x{n}".encode(), orjson.dumps([["y", 0.5]]))
        await refresh.take_others_lists()
    files = list(refresh.snapshots.folder.iterdir())
    assert len(files) == 1 and not files[0].name.endswith(".part")
    held = await stream.ranker.run(held_snapshot)
    assert held is not None and "x3" in held.model.items.positions

    process = stream.ranker.process
    assert process is not None and process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(5.0)
    held = await stream.ranker.run(held_snapshot)  # a new child, which loaded the last file
    assert stream.ranker.process is not process
    assert held is not None and "x3" in held.model.items.positions


def test_a_list_that_comes_back_through_the_table_is_the_one_ranked() -> None:
    """Lists computed here come back through the worker's table (not decoded
    again); one another worker wrote in between, then this one again, is set
    back."""
    replica = ModelReplica(token=1)
    mine, theirs = orjson.dumps([["b", 0.5]]), orjson.dumps([["c", 0.25]])
    replica.record_own({"a": mine}, {"a": [("b", 0.5)]})
    for value, expected in ((mine, (("b", 0.5),)), (theirs, (("c", 0.25),)),
                            (mine, (("b", 0.5),)), (None, ())):
        replica.update({"a": value}, {})
        said = by_item(replica.snapshot(1, 5, 86_400.0))
        assert said.get("a", ((),))[0] == expected
