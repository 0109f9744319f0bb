"""The stream's agents in ``agent.test_context()`` with the memory store: no broker.

Each test builds a fresh :class:`streams.runtime.app.RecoStream` (see ``tests/stream/harness.py``
for how messages go in and how sends are recorded) and checks what the agents did to
the tables and what they sent. The real-broker path is covered by
``tests/integration/test_stream.py``.
"""

from __future__ import annotations

import asyncio
import base64
import pickle
import random
import time
import zlib
from dataclasses import replace
from typing import Any

import orjson
import pytest

from core.events import Event
from core.learned import LearnedRanking
from core.recommender import Recommender
from core.similarity import SimilarityParams, neighbors_for_rows
from streams.runtime.children.due_lists import ROTATION_MIN_ROWS
from streams.runtime.children.model_jobs import neighbors_of_rows
from streams.runtime.children.model_replica import ReplicaNotHeld
from streams.runtime.partitions import KeyPartitions, item_partition
from streams.runtime.state import CooccurrenceRow, RowGain, UserState
from tests.stream.harness import (
    MESSAGE_TS,
    PARTITIONS,
    TS,
    Harness,
    MakeHarness,
    Sent,
    click,
    run_async,
    user_partition,
    user_state,
    written_user,
)


async def row(h: Harness, item: str) -> CooccurrenceRow:
    """An item's row as the table holds it after a commit's writes."""
    await h.stream.rows.write_changed()
    value = h.stream.topology.rows.get(item)
    assert value is not None, f"no row for {item}"
    return CooccurrenceRow.from_json(orjson.loads(value))


def updates_of(sends: list[Sent]) -> list[list[Any]]:
    """The row updates of row messages, each as the JSON array of its fields."""
    updates = [u for m in sends for g in m.json()["gains"] for u in RowGain._make(g).updates()]
    return list(orjson.loads(orjson.dumps(updates, default=tuple)))


# -- 1. a click updates the user ------------------------------------------------------------


@run_async
async def test_valid_click_updates_the_user_table(make_harness: MakeHarness) -> None:
    h = make_harness()
    async with h.stream.agents.process_events.test_context() as agent:
        await h.process(agent, click("u2", "i1", kind="click", event_id="e1"),
                        partition=2, offset=7)
        state = user_state(h, "u2")
        assert state.profile.ratings == {"i1": 2.0}  # the click weight
        assert state.profile.recent == ["i1"]
        assert state.profile.last_ts == TS
        assert state.applied.offsets == {"clicks/2": 7}
        assert state.event_ids == ["e1"]

        # (u2 lives in partition 2: its events arrive there)
        # a purchase of another item, from the other input topic
        await h.process(agent, {"user_id": "u2", "item_id": "i2", "ts": TS + 5},
                        partition=2, offset=3)
        state = user_state(h, "u2")
        assert state.profile.ratings == {"i1": 2.0, "i2": 5.0}
        assert state.profile.recent == ["i1", "i2"]
        assert state.profile.purchased == {"i2": TS + 5}
        assert state.applied.offsets == {"clicks/2": 7, "purchases/2": 3}

    assert h.stream.counters.applied == 2
    assert h.stream.counters.events_in == {"clicks": 1, "purchases": 1}
    recs = h.sent_to("recommendations")
    assert [(m.key, m.json()["trigger"], m.json()["ts"]) for m in recs] == [
        (b"u2", "click", TS), (b"u2", "purchase", TS + 5)]
    assert all(m.json()["user_id"] == "u2" for m in recs)
    assert h.sent_to("dead-letters") == []


@run_async
async def test_user_state_is_written_to_its_events_partition(make_harness: MakeHarness) -> None:
    """A batch of several users from several partitions: each key is read and
    written under its own event, once per commit, and every event applied once."""
    h = make_harness(batch_size=6, batch_seconds=5.0)  # exactly one batch of six
    h.changelog("users")  # drop anything written while starting
    where = {"u1": 0, "u2": 2, "u5": 3}  # each user's partition
    events = [("u1", "a"), ("u2", "a"), ("u1", "b"), ("u5", "c"), ("u2", "b"), ("u1", "c")]
    async with h.stream.agents.process_events.test_context() as agent:
        messages = [await h.put_event(agent, click(u, i), partition=where[u]) for u, i in events]
        await h.settle(agent, messages)
        assert h.changelog("users") == []  # the commit writes them
        await h.stream.commits.before_commit()

    writes = h.changelog("users")
    assert sorted((w.key, w.partition) for w in writes) == [("u1", 0), ("u2", 2), ("u5", 3)]
    assert h.stream.counters.applied == 6
    for user, partition in where.items():
        state = user_state(h, user)
        assert state.profile.recent == [i for u, i in events if u == user]
        assert state.applied.offsets == {f"clicks/{partition}": len(state.profile.recent) - 1}
    # one list per changed user per batch
    assert sorted(m.key or b"" for m in h.sent_to("recommendations")) == [b"u1", b"u2", b"u5"]


@run_async
async def test_rocksdb_store_reads_each_key_under_its_own_partition(
    make_harness: MakeHarness,
) -> None:
    """The rocksdb store reads a key from its event's partition's database only (the
    memory store cannot show this): state must survive batches mixing partitions."""
    # batches of two (the pairs are put back to back; only an odd last one waits)
    h = make_harness(store="rocksdb://", batch_size=2, batch_seconds=0.2)
    stream = h.stream
    async with (
        stream.agents.process_events.test_context() as agent,
        stream.agents.apply_cooccurrence.test_context() as rows_agent,
    ):
        for n in range(3):
            batch = [await h.put_event(agent, click("u1", f"a{n}", TS + n), partition=0),
                     await h.put_event(agent, click("u2", f"b{n}", TS + n), partition=2)]
            await h.settle(agent, batch)
        assert user_state(h, "u1").profile.recent == ["a0", "a1", "a2"]
        assert user_state(h, "u2").profile.recent == ["b0", "b1", "b2"]
        await h.relay(rows_agent, h.sent_to(stream.topology.rows_topic.get_topic_name()))
    assert (await row(h, "a1")).pairs == {"a0": 1.0, "a2": 1.0}
    assert (await row(h, "b0")).pairs == {"b1": 1.0, "b2": 1.0}
    assert stream.counters.row_updates_skipped == 0


@run_async
async def test_user_state_is_written_only_once_its_row_updates_are_delivered(
    make_harness: MakeHarness,
) -> None:
    """A crash between the two must replay the row updates, never lose them. The
    batch waits for neither: its list goes out at once, and the commit writes the
    state after the row updates are in."""
    h = make_harness()
    rows_topic = h.stream.topology.rows_topic.get_topic_name()
    h.defer(rows_topic)
    async with h.stream.agents.process_events.test_context() as agent:
        message = await h.put_event(agent, click("u1", "i1"))
        await h.settle(agent, [message])
        assert h.sent_to(rows_topic) and len(h.sent_to("recommendations")) == 1
        commit = asyncio.ensure_future(h.stream.commits.before_commit())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not commit.done() and h.stream.topology.users.get("u1") is None
        assert h.deliver_deferred(rows_topic) == 1
        await commit
    assert (await written_user(h, "u1")).profile.recent == ["i1"]


@run_async
async def test_message_arriving_during_a_batch_is_applied_once(make_harness: MakeHarness) -> None:
    """``take_events`` buffers a message that arrives while the previous batch is being
    processed only after that batch, reading the stream's current event then: the
    batch must give the event it borrowed for table access back (``acting_as``)."""
    h = make_harness(batch_size=1000, batch_seconds=0.01)
    rows_topic = h.stream.topology.rows_topic.get_topic_name()
    gate = h.gate(rows_topic)
    async with h.stream.agents.process_events.test_context() as agent:
        first = await h.put_event(agent, click("u1", "i1"), partition=0)
        await h.wait_until(lambda: h.calls[rows_topic] == 1, "the first batch's row send")
        second = await h.put_event(agent, click("u2", "i2"), partition=2)
        # the wrapper's recorder runs just before the take buffer, in the same step
        await h.wait_until(lambda: agent.processed_offset == 2, "the second message")
        gate.set()
        await h.settle(agent, [first, second])
    assert h.stream.counters.applied == 2
    assert h.stream.counters.deduplicated == 0
    assert user_state(h, "u1").profile.recent == ["i1"]
    assert user_state(h, "u2").profile.recent == ["i2"]


# -- 2. redelivery and retries change nothing ------------------------------------------------


@run_async
async def test_redelivered_message_and_retried_event_id_change_nothing(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    first = click("u1", "i1", event_id="e1")
    async with h.stream.agents.process_events.test_context() as agent:
        await h.process(agent, first, partition=0, offset=10)
        before = user_state(h, "u1").to_json()
        sends_before = list(h.sent)

        # the same message again (a replay after a crash before the commit)
        await h.process(agent, first, partition=0, offset=10)
        assert h.stream.counters.deduplicated == 1
        assert user_state(h, "u1").to_json() == before

        # a producer retry: same event_id, new offset, even a different item
        await h.process(agent, {**first, "item_id": "i9"}, partition=0, offset=11)
        assert h.stream.counters.deduplicated == 2
        assert user_state(h, "u1").to_json() == before

        # an older offset of the same source is a replay too
        await h.process(agent, click("u1", "i8"), partition=0, offset=4)
        assert h.stream.counters.deduplicated == 3
        assert user_state(h, "u1").to_json() == before

        # and a fresh event still goes through
        await h.process(agent, click("u1", "i2", event_id="e2"), partition=0, offset=12)

    assert h.stream.counters.applied == 2
    assert h.sent[: len(sends_before)] == sends_before
    later = h.sent[len(sends_before):]
    # nothing sent for the duplicates: only the fresh event's row updates and list
    assert [m.json()["trigger"] for m in later if m.topic == "recommendations"] == ["view"]
    assert {u[0] for u in updates_of([m for m in later if m.topic.endswith("-cooccurrence")])
            } == {"i1", "i2"}
    assert user_state(h, "u1").profile.recent == ["i1", "i2"]


# -- 3. invalid messages go to the dead-letter topic -------------------------------------


OVERSIZED_LIMIT = 300


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"user_id": "u1", "item_id": ', "invalid_json"),
        (b"", "invalid_json"),
        (b"\xff\xfe not utf-8", "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (orjson.dumps(click("u1", "i1", kind="hover")), "unknown_event_type"),
        (orjson.dumps({"user_id": "u1", "ts": TS, "type": "view"}), "missing_field"),
        (orjson.dumps(click("u1", "i1", pad="x" * OVERSIZED_LIMIT)), "oversized"),
    ],
    ids=["truncated-json", "empty", "not-utf8", "array", "unknown-type", "missing-item",
         "oversized"],
)
@run_async
async def test_invalid_message_is_dead_lettered_and_the_stream_goes_on(
    make_harness: MakeHarness, raw: bytes, reason: str
) -> None:
    h = make_harness(max_message_bytes=OVERSIZED_LIMIT)
    async with h.stream.agents.process_events.test_context() as agent:
        bad = await h.put(agent, h.settings.topic("clicks"), raw, key=b"u1", partition=3,
                          offset=41)
        good = await h.put_event(agent, click("u5", "i1"), partition=3, offset=42)  # u5's
        await h.settle(agent, [bad, good])

    [letter] = h.sent_to("dead-letters")
    record = letter.json()
    assert record["reason"] == reason
    assert record["detail"]
    assert (record["topic"], record["partition"], record["offset"]) == ("clicks", 3, 41)
    assert base64.b64decode(record["payload_b64"]) == raw
    assert base64.b64decode(record["key_b64"]) == b"u1"
    assert record["ts"] == MESSAGE_TS
    assert letter.key == b"u1"
    assert h.stream.counters.dead_lettered == {reason: 1}
    # the valid message after it was applied, the invalid one left no trace
    assert h.stream.users.stored("u1") is None
    state = user_state(h, "u5")
    assert state.profile.recent == ["i1"]
    assert state.applied.offsets == {"clicks/3": 42}
    assert h.stream.counters.applied == 1


@run_async
async def test_dead_letters_keep_topic_key_and_count_by_reason(make_harness: MakeHarness) -> None:
    """Several bad messages in one batch, from both topics, one of them unkeyed."""
    h = make_harness(batch_size=4, batch_seconds=5.0)
    purchases = h.settings.topic("purchases")
    async with h.stream.agents.process_events.test_context() as agent:
        messages = [
            await h.put(agent, purchases, orjson.dumps({"user_id": "u1", "item_id": "i1",
                                                        "ts": TS, "quantity": 0}),
                        key=b"u1", partition=0, offset=5),
            await h.put(agent, purchases, b"nope", key=None, partition=1, offset=6),
            await h.put(agent, h.settings.topic("clicks"), b"{}", key=b"k", partition=2,
                        offset=0),
            await h.put_event(agent, click("u2", "i2"), partition=2, offset=1),
        ]
        await h.settle(agent, messages)
    records = [m.json() for m in h.sent_to("dead-letters")]
    assert [(r["reason"], r["topic"], r["partition"], r["offset"], r["key_b64"])
            for r in records] == [
        ("bad_quantity", "purchases", 0, 5, base64.b64encode(b"u1").decode()),
        ("invalid_json", "purchases", 1, 6, None),
        ("missing_field", "clicks", 2, 0, base64.b64encode(b"k").decode()),
    ]
    assert h.stream.counters.dead_lettered == {"bad_quantity": 1, "invalid_json": 1,
                                               "missing_field": 1}
    assert user_state(h, "u2").profile.recent == ["i2"]


# -- 4. row updates through the repartition topic ------------------------------------------


def test_item_partition_is_stable_across_processes() -> None:
    """Every worker must send an item's updates to the same partition: crc32, not hash()."""
    assert [item_partition(i, 4) for i in ("a", "b", "c", "item42")] == [
        zlib.crc32(i.encode()) % 4 for i in ("a", "b", "c", "item42")]
    assert [item_partition("item42", n) for n in (1, 3, 8)] == [0, 1, 3]


def test_item_partitions_are_remembered_up_to_a_limit() -> None:
    partitions = KeyPartitions(item_partition, 4, limit=3)
    items = [f"item{n}" for n in range(7)]
    assert [partitions[i] for i in items] == [item_partition(i, 4) for i in items]
    assert 0 < len(partitions) <= 3


@run_async
async def test_gains_become_row_updates_that_rows_apply_once(make_harness: MakeHarness) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents.process_events.test_context() as agent:
        await h.process(agent, click("u1", "a", TS), click("u1", "b", TS + 1),
                        partition=0)
        await h.process(agent, click("u1", "c", TS + 2), partition=0)
        # no gain (already rated, weaker signal), no row update
        await h.process(agent, click("u1", "a", TS + 3), partition=0)
        await h.process(agent, click("u2", "a", TS + 4), click("u2", "c", TS + 5),
                        partition=2)

    row_sends = h.sent_to(stream.topology.rows_topic.get_topic_name())
    for message in row_sends:
        # every row a message updates belongs to the partition it was sent to
        assert message.json()["gains"]
        assert message.key is None
        assert {item_partition(u[0], PARTITIONS) for u in updates_of([message])} == {
            message.partition}
    expected = [
        ["a", [], "clicks/0", 0, TS, True],
        ["b", ["a"], "clicks/0", 1, TS + 1, True],
        ["a", ["b"], "clicks/0", 1, TS + 1, False],
        ["c", ["a", "b"], "clicks/0", 2, TS + 2, True],
        ["a", ["c"], "clicks/0", 2, TS + 2, False],
        ["b", ["c"], "clicks/0", 2, TS + 2, False],
        ["a", [], "clicks/2", 0, TS + 4, True],
        ["c", ["a"], "clicks/2", 1, TS + 5, True],
        ["a", ["c"], "clicks/2", 1, TS + 5, False],
    ]
    sent_updates = updates_of(row_sends)
    assert sorted(sent_updates, key=orjson.dumps) == sorted(expected, key=orjson.dumps)
    assert stream.counters.row_updates_sent == len(expected)

    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, row_sends)
        assert stream.counters.row_updates_applied == len(expected)
        assert (await row(h, "a")).pairs == {"b": 1.0, "c": 2.0}
        assert (await row(h, "b")).pairs == {"a": 1.0, "c": 1.0}
        assert (await row(h, "c")).pairs == {"a": 2.0, "b": 1.0}
        counts = {i: (await row(h, i)).count for i in "abc"}
        assert counts == {"a": 2.0, "b": 1.0, "c": 2.0}
        assert {i: stream.topology.item_stats.get(i)[0] for i in "abc"} == counts
        assert {i: stream.topology.item_stats.get(i) for i in "abc"} == {
            i: (await row(h, i)).stats() for i in "abc"}
        assert (await row(h, "a")).applied.offsets == {"clicks/0": 2, "clicks/2": 1}
        rows_before = {i: stream.topology.rows[i] for i in "abc"}
        stats_before = {i: stream.topology.item_stats.get(i) for i in "abc"}

        # the same update messages again (redelivered): nothing changes
        await h.relay(rows_agent, row_sends)
        assert stream.counters.row_updates_skipped == len(expected)
        assert stream.counters.row_updates_applied == len(expected)
        assert {i: stream.topology.rows[i] for i in "abc"} == rows_before
        assert {i: stream.topology.item_stats.get(i) for i in "abc"} == stats_before


@run_async
async def test_rows_apply_updates_in_the_form_sent_before_gains(
    make_harness: MakeHarness,
) -> None:
    """Workers of an earlier version sent one update per row: those still in the
    rows topic after an upgrade are applied, once."""
    h = make_harness()
    stream = h.stream
    p = item_partition("a", PARTITIONS)
    sends = [Sent(stream.topology.rows_topic.get_topic_name(), None, orjson.dumps({"updates": [
        ["a", ["b", "c"], "clicks/0", 4, TS, True], ["a", ["d"], "clicks/1", 0, TS, False]]}), p)]
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, sends)
        await h.relay(rows_agent, sends)
    assert (await row(h, "a")).pairs == {"b": 1.0, "c": 1.0, "d": 1.0}
    assert (await row(h, "a")).count == 1.0
    assert (stream.counters.row_updates_applied, stream.counters.row_updates_skipped) == (2, 2)


@run_async
async def test_row_writes_go_to_the_items_partition(make_harness: MakeHarness) -> None:
    """One batch of row updates for items of every partition: each row and its stats
    are written once, to the changelog partition the item belongs to."""
    h = make_harness(batch_size=PARTITIONS, batch_seconds=5.0)
    items: dict[int, str] = {}
    for n in range(1000):  # one item per partition
        items.setdefault(item_partition(f"item{n}", PARTITIONS), f"item{n}")
        if len(items) == PARTITIONS:
            break
    stream = h.stream
    h.changelog("rows")
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        sends = [Sent(stream.topology.rows_topic.get_topic_name(), None,
                      orjson.dumps({"gains": [[item, [], "clicks/0", p, TS, []]]}), p)
                 for p, item in sorted(items.items())]
        await h.relay(rows_agent, sends)
    stats = [m.key for m in h.sent_to(f"{stream.settings.app_id}-item-stats")]
    assert sorted(stats) == sorted(item.encode() for item in items.values())  # at once
    assert h.changelog("rows") == []  # rows wait for the commit
    await stream.commits.before_commit()  # what the next commit does first
    rows_log = h.changelog("rows")
    assert sorted((w.key, w.partition) for w in rows_log) == sorted(
        (item, p) for p, item in items.items())


# -- 5. neighbour refresh and ranking equal the offline model ------------------------------


def synthetic_events(seed: int = 7, users: int = 24, items: int = 30, n: int = 400
                     ) -> list[Event]:
    """Clicks and purchases with popular items, repeats and unrated removals."""
    rng = random.Random(seed)
    weights = [1.0 / (1 + i) for i in range(items)]
    kinds = ["view"] * 6 + ["click"] * 3 + ["add_to_cart", "remove_from_cart", "purchase"]
    events = []
    for k in range(n):
        user = f"u{rng.randrange(users)}"
        item = f"i{rng.choices(range(items), weights)[0]}"
        kind = rng.choice(kinds)
        events.append(Event(user, item, TS + 60.0 * k + rng.random(), kind,
                            event_id=f"e{k}"))
    return events


@run_async
async def test_refresh_and_recommendations_equal_the_offline_replay(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(batch_size=50, batch_seconds=0.01, k=8, neighbors=10, history=20,
                     pair_window=5)
    stream = h.stream
    events = synthetic_events()
    ticks_topic = stream.topology.ticks_topic.get_topic_name()
    async with (
        stream.agents.process_events.test_context() as events_agent,
        stream.agents.apply_cooccurrence.test_context() as rows_agent,
        stream.agents.refresh_neighbors.test_context() as ticks_agent,
    ):
        messages = [await h.put_event(events_agent, e) for e in events]
        await h.settle(events_agent, messages)
        assert stream.counters.applied == len(events)
        await h.relay(rows_agent, h.sent_to(stream.topology.rows_topic.get_topic_name()))
        assert stream.counters.row_updates_skipped == 0

        # one partition's tick: its items get lists equal to the core function's,
        # from rows changed since the last commit too (not in the table yet)
        assert not stream.topology.rows
        tick = Sent(ticks_topic, None, orjson.dumps({"round": 5}), 2)
        await h.relay(ticks_agent, [tick])
        await stream.rows.write_changed()
        rows = {i: CooccurrenceRow.from_json(orjson.loads(v))
                for i, v in stream.topology.rows.items()}
        counts = {i: float(v[0]) for i, v in stream.topology.item_stats.view().items()}
        assert set(rows) == set(counts) == {e.item_id for e in events if e.type !=
                                            "remove_from_cart"}
        mine = {i: r.pairs for i, r in rows.items() if item_partition(i, PARTITIONS) == 2}
        assert mine and len(mine) < len(rows)
        expected = neighbors_for_rows(mine, counts, 10, "cosine", SimilarityParams())
        assert {i: stream.topology.neighbors.get(i) for i in mine} == {
            i: [[j, s] for j, s in pairs] for i, pairs in expected.items()}
        assert set(stream.topology.neighbors.view()) == set(mine)
        published = [m.json() for m in h.sent_to("item-neighbors")]
        assert {p["item_id"]: [(n["item_id"], n["score"]) for n in p["neighbors"]]
                for p in published} == {i: list(pairs) for i, pairs in expected.items()}
        assert {p["model_version"] for p in published} == {5}
        assert stream.refresh.model_round == 5

        # the same tick again: the lists are unchanged, nothing is republished
        await h.relay(ticks_agent, [tick])
        assert len(h.sent_to("item-neighbors")) == len(published)

        # every partition: the whole model
        await h.relay(ticks_agent, [Sent(ticks_topic, None, orjson.dumps({"round": 6}), p)
                                    for p in range(PARTITIONS)])
        assert stream.counters.refreshes == PARTITIONS + 2
        assert stream.refresh.model_round == 6

    replay = Recommender(h.settings.recommender_config())
    replay.observe_many(events)
    replay.refresh()
    for item in rows:
        stored = stream.topology.neighbors.get(item)
        assert [(j, s) for j, s in stored] == replay.neighbors_of(item), item
    users = sorted({e.user_id for e in events})
    full_lists = bought_again = 0
    await stream.commits.before_commit()  # the states the table holds from here on
    # the replay ranks with the ranking the stream learned (the same weights rank
    # alike; here the events came before any snapshot, so nothing was shown to learn
    # from: tests/stream/test_ranking_learning.py learns)
    learned = await stream.ranking.learned()
    assert learned is not None
    replay.snapshot = replace(replay.snapshot, ranker=LearnedRanking.from_state(learned))
    for user in [*users, "nobody"]:
        value = stream.topology.users.get(user)
        state = UserState.from_json(value) if value is not None else None
        got = await stream.ranking.recommend(user, state, 8)
        want = replay.recommend(user, 8,
                                filter_purchased=not replay.config.lists_bought_items)
        assert got.item_ids == want.item_ids, user
        assert got.scores == pytest.approx(want.scores, rel=1e-9, abs=1e-12), user
        assert (got.sources, got.reasons) == (want.sources, want.reasons), user
        assert got.cold_start == want.cold_start
        assert got.model_version == 6
        if state is not None:
            assert state.profile == replay.users[user]
        full_lists += len(got.item_ids) == 8 and not got.cold_start
        bought_again += "buy_again" in got.sources
    assert full_lists >= len(users) - 2  # the comparison is not vacuous
    assert bought_again >= 3  # nor is it for buy-again
    # the item facts the stream gathered from its rows, partition by partition, are
    # the replay's to the bit (repeat rates and gaps summed as integers)
    facts, ids = stream.refresh.snapshot.facts, stream.refresh.snapshot.model.items.ids
    want_facts = replay.snapshot.facts
    want_at = replay.model.items.positions
    for name in ("counts", "first_seen", "repeat_rate", "gap_days"):
        got_values = dict(zip(ids, getattr(facts, name).tolist(), strict=True))
        want_values = getattr(want_facts, name)
        assert got_values == {i: float(want_values[want_at[i]]) for i in ids}, name


@run_async
async def test_refresh_sends_the_model_process_the_rows_due(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition's first refresh sends the model process every row; later ones
    the rows changed since, first, then the rotation of those computed before the
    counts moved (all of them, in a partition this small), and nothing when
    nothing moved; after a call that failed, every row. The model process keeps
    no rows (a new one needs none), and the lists stay those of every row."""
    h = make_harness(batch_size=50, batch_seconds=0.01, neighbors=10, history=20,
                     pair_window=5)
    stream = h.stream
    sends: list[list[str]] = []  # items sent per call, in order
    run = stream.model_process.run
    fail_next = False

    async def spy(function: Any, *args: Any) -> Any:
        nonlocal fail_next
        if function is neighbors_of_rows:
            sends.append(list(pickle.loads(args[0])))
            if fail_next:
                fail_next = False
                raise ReplicaNotHeld("lost")
        return await run(function, *args)

    monkeypatch.setattr(stream.model_process, "run", spy)
    events = synthetic_events()
    ticks_topic = stream.topology.ticks_topic.get_topic_name()
    rows_topic = stream.topology.rows_topic.get_topic_name()

    async def partition_rows(partition: int) -> dict[str, dict[str, float]]:
        """The rows of a partition as they are now (written as a commit does)."""
        await stream.rows.write_changed()
        return {i: CooccurrenceRow.from_json(orjson.loads(v)).pairs
                for i, v in stream.topology.rows.items()
                if item_partition(i, PARTITIONS) == partition}

    async def lists_are_those_of_every_row(partition: int) -> None:
        rows = await partition_rows(partition)
        counts = {i: float(v[0]) for i, v in stream.topology.item_stats.view().items()}
        expected = neighbors_for_rows(rows, counts, 10, "cosine", SimilarityParams())
        assert {i: stream.topology.neighbors.get(i) for i in rows} == {
            i: [[j, sc] for j, sc in pairs] for i, pairs in expected.items()}

    async with (
        stream.agents.process_events.test_context() as events_agent,
        stream.agents.apply_cooccurrence.test_context() as rows_agent,
        stream.agents.refresh_neighbors.test_context() as ticks_agent,
    ):
        async def feed(part: list[Event]) -> set[str]:
            """Apply events and their row updates; the rows of partition 2 changed."""
            before = await partition_rows(2)
            sent = len(h.sent_to(rows_topic))
            await h.settle(events_agent, [await h.put_event(events_agent, e) for e in part])
            await h.relay(rows_agent, h.sent_to(rows_topic)[sent:])
            now = await partition_rows(2)
            return {i for i in now if now[i] != before.get(i)}

        async def tick(round_: int) -> None:
            await h.relay(ticks_agent, [Sent(ticks_topic, None,
                                             orjson.dumps({"round": round_}), 2)])

        def changed_first_then_all(sent: list[str], changed: set[str], rows: set[str]) -> bool:
            return set(sent[:len(changed)]) == changed and set(sent) == rows

        await feed(events[:300])
        await tick(1)
        rows = set(await partition_rows(2))
        assert len(rows) <= ROTATION_MIN_ROWS
        assert len(sends) == 1 and set(sends[0]) == rows
        await tick(2)
        assert sends[-1] == []  # nothing moved
        assert stream.refresh.lists_lagging() == 0
        changed = await feed(events[300:340])
        assert changed and len(changed) < len(rows)
        # counts moved (handed over with a rebuild) since the partition's refresh:
        # every list it holds lags them until its next
        await stream.refresh.rebuild(stream.refresh.model_round)
        assert stream.refresh.lists_lagging() == len(rows)
        await tick(3)
        rows = set(await partition_rows(2))
        assert changed_first_then_all(sends[-1], changed, rows)
        assert stream.refresh.lists_lagging() == 0
        await lists_are_those_of_every_row(2)
        stream.model_process.close()  # a new child: it needs the item stats only
        changed = await feed(events[340:370])
        assert changed
        await tick(4)
        rows = set(await partition_rows(2))
        assert changed_first_then_all(sends[-1], changed, rows)
        await lists_are_those_of_every_row(2)
        fail_next = True
        changed = await feed(events[370:])
        assert changed
        await tick(5)
        rows = set(await partition_rows(2))
        assert changed_first_then_all(sends[-2], changed, rows)
        # the lists of the failed call were lost (and the replica handed over again)
        assert set(sends[-1]) == rows
        await lists_are_those_of_every_row(2)


@run_async
async def test_the_timer_rebuilds_the_snapshot_only_for_other_workers_lists(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    await stream.refresh.take_others_lists()  # a fresh worker takes what is there
    built = stream.refresh.snapshot
    await stream.refresh.take_others_lists()
    assert stream.refresh.snapshot is built  # nothing new: not rebuilt
    stream.topology.neighbors.apply(b"x", orjson.dumps([["y", 0.5]]))  # another worker's list
    await stream.refresh.take_others_lists()
    assert stream.refresh.snapshot is not built
    assert stream.refresh.snapshot.model.items.positions.keys() >= {"x", "y"}


@run_async
async def test_a_worker_whose_own_rounds_rebuild_leaves_others_lists_to_the_next_round(
    make_harness: MakeHarness,
) -> None:
    # In a group each worker's refresh rounds rebuild its snapshot once an
    # interval, and take the other workers' lists with them: the timer rebuilding
    # for those too made two rebuilds an interval.
    h = make_harness()
    stream = h.stream
    await stream.refresh.take_others_lists()
    built = stream.refresh.snapshot
    stream.topology.owned_tick_partitions = lambda: {0}  # type: ignore[method-assign]
    stream.refresh.own_round_rebuilt = time.monotonic()  # a round of its own just rebuilt
    stream.topology.neighbors.apply(b"x", orjson.dumps([["y", 0.5]]))
    await stream.refresh.take_others_lists()
    assert stream.refresh.snapshot is built
    # its rounds stalled (1.5 intervals without one): the timer takes them after all
    stream.refresh.own_round_rebuilt -= 1.5 * stream.settings.refresh_seconds
    await stream.refresh.take_others_lists()
    assert stream.refresh.snapshot is not built
    assert "x" in stream.refresh.snapshot.model.items.positions


# -- 6. events keyed by something else are forwarded ------------------------------------------


@pytest.mark.parametrize("key", [None, b"session-9", b"u2"], ids=["unkeyed", "session", "other"])
@run_async
async def test_event_keyed_otherwise_is_forwarded_keyed_by_user(
    make_harness: MakeHarness, key: bytes | None
) -> None:
    h = make_harness()
    raw_click = orjson.dumps(click("u1", "i1", event_id="e1"))
    raw_purchase = orjson.dumps({"user_id": "u1", "item_id": "i2", "ts": TS})
    async with h.stream.agents.process_events.test_context() as agent:
        messages = [
            await h.put(agent, h.settings.topic("clicks"), raw_click, key=key, partition=2),
            await h.put(agent, h.settings.topic("purchases"), raw_purchase, key=key,
                        partition=0),
        ]
        await h.settle(agent, messages)
    home = user_partition("u1", PARTITIONS)  # where a record keyed b"u1" goes
    assert [(m.topic, m.key, m.value, m.partition) for m in h.sent] == [
        ("clicks", b"u1", raw_click, home),
        ("purchases", b"u1", raw_purchase, home),
    ]
    assert h.stream.counters.rekeyed == 2
    assert h.stream.counters.applied == 0
    assert h.stream.topology.users.get("u1") is None


@run_async
async def test_forwarded_event_is_applied_where_its_user_lives(make_harness: MakeHarness) -> None:
    """The forwarded copy, delivered back keyed by user, is applied (and only once)."""
    h = make_harness(topic_prefix="shop1.")
    raw = orjson.dumps(click("u1", "i1", event_id="e1"))
    async with h.stream.agents.process_events.test_context() as agent:
        first = await h.put(agent, "shop1.clicks", raw, key=b"s", partition=3)
        await h.settle(agent, [first])
        [forwarded] = h.sent
        assert forwarded.topic == "shop1.clicks"
        again = await h.put(agent, forwarded.topic, forwarded.value, key=forwarded.key,
                            partition=user_partition("u1", PARTITIONS))
        await h.settle(agent, [again])
    state = user_state(h, "u1")
    assert state.profile.recent == ["i1"]
    assert state.applied.offsets == {f"clicks/{user_partition('u1', PARTITIONS)}": 0}
    assert h.stream.counters.rekeyed == 1
    assert h.stream.counters.applied == 1


@run_async
async def test_the_leader_ticks_each_partition_once_per_interval_in_turn(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    stream = h.stream
    partitions = stream.settings.partitions
    clock = iter([1000.2, 1000.9, 1001.1])  # read at each round's first tick
    monkeypatch.setattr(time, "time", lambda: next(clock))
    for _ in range(2 * partitions + 1):
        await stream.refresh.send_tick()
    await stream.outbox.delivered()
    ticks = h.sent_to(stream.topology.ticks_topic.get_topic_name())
    assert [t.partition for t in ticks] == list(range(partitions)) * 2
    rounds = [orjson.loads(t.value)["round"] for t in ticks]
    # the second round waited a tick for a second of its own: its number is the
    # second it started at, never ahead of the clock
    assert rounds == [1000] * partitions + [1001] * partitions
    assert stream.refresh.tick_seconds * partitions == stream.settings.refresh_seconds


@run_async
async def test_a_stale_refresh_tick_is_skipped_for_the_one_behind_it(
    make_harness: MakeHarness,
) -> None:
    """Refreshes slower than the ticks: a tick older than two intervals is passed
    over (the partition's next is queued), so the worker never falls further behind."""
    h = make_harness(refresh_seconds=1.0)
    stream = h.stream
    ticks_topic = stream.topology.ticks_topic.get_topic_name()
    now = time.time()
    async with stream.agents.refresh_neighbors.test_context() as ticks_agent:
        await h.relay(ticks_agent, [
            Sent(ticks_topic, None, orjson.dumps({"round": int(now) - 30, "sent": now - 30}), 1),
            Sent(ticks_topic, None, orjson.dumps({"round": int(now) - 3, "sent": now - 2.5}), 1),
            Sent(ticks_topic, None, orjson.dumps({"round": int(now), "sent": now}), 1)])
    assert (stream.counters.stale_ticks, stream.counters.refreshes) == (2, 1)
    assert stream.refresh.partition_rounds[1] == int(now)
