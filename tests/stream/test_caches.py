"""The decoded users a worker keeps, and the rows the rows process holds: what the
tables hold, or (changed since the last commit) what they will hold once the
commit writes them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson
import pytest
from faust.types import TP, Message

from streams.runtime import pacing, rows, users
from streams.runtime.children.held_rows import apply_row_messages, held_rows_summary
from streams.runtime.metrics import COMMIT_PHASES
from streams.runtime.rows import ROWS_PER_SLICE, RowsLost
from streams.runtime.state import CooccurrenceRow, UserState
from streams.runtime.transport import App, RewindingConsumer
from streams.runtime.users import UsersLeftHalfUpdated
from tests.stream.harness import (
    TS,
    Harness,
    MakeHarness,
    RecordedSleeps,
    Sent,
    click,
    run_async,
    user_state,
)


@run_async
async def test_cached_users_match_the_table_and_a_rebalance_forgets_them(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents.process_events.test_context() as agent:
        await h.process(agent, click("u1", "i1"), partition=0, offset=0)
        await h.process(agent, click("u1", "i2"), partition=0, offset=1)
        cached = stream.users.cache.get("u1")
        assert cached is not None
        assert cached.to_json() == user_state(h, "u1").to_json()
        assert cached.profile.recent == ["i1", "i2"]
        # Another worker may own the partition next: what is cached is forgotten,
        # and the table (recovered from the changelog) is read again.
        await stream.app.on_partitions_revoked.send(set())
        assert len(stream.users.cache) == 0
        # as recovered: another worker reset it
        stream.topology.users.data["u1"] = UserState().to_json()
        await h.process(agent, click("u1", "i3"), partition=0, offset=2)
        assert user_state(h, "u1").profile.recent == ["i3"]


@run_async
async def test_a_failed_batch_forgets_the_users_it_changed(make_harness: MakeHarness) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents.process_events.test_context() as agent:
        await h.process(agent, click("u1", "i1"), partition=0, offset=0)
        assert stream.users.cache.get("u1") is not None

        def broken(*_: object, **__: object) -> None:
            raise RuntimeError("splitting a gain failed")

        with pytest.MonkeyPatch.context() as mp:
            # after u1's profile changed
            mp.setattr("streams.runtime.ingest.event_row_gains", broken)
            # the batch changes u1, then fails before anything is sent for it; u1's
            # first change (i1) was never written either: no commit may follow
            with pytest.raises(AssertionError, match="agent crashed"):
                await h.process(agent, click("u1", "i2"), partition=0, offset=1)
        assert stream.users.cache.get("u1") is None
        assert stream.topology.users.get("u1") is None
        assert isinstance(stream.app.crash_reason, UsersLeftHalfUpdated)
    # Faust's consumer commits when it stops: that commit must not happen
    consumer = cast(RewindingConsumer, stream.app.consumer)
    tp = TP(h.settings.topic("clicks"), 0)
    committed: list[Mapping[TP, int]] = []

    async def commit(offsets: Mapping[TP, int]) -> bool:
        committed.append(offsets)
        return True

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(consumer, "_commit", commit)
        mp.setattr(consumer, "assignment", lambda: {tp})
        assert not await consumer._commit_offsets({tp: 2})
    assert committed == []


def row_update(h: Harness, item: str, pairs: list[str], offset: int, partition: int) -> Sent:
    """A message of the rows topic: one gain of ``item`` after ``pairs``."""
    return Sent(h.stream.topology.rows_topic.get_topic_name(), None,
                orjson.dumps({"gains": [[item, pairs, "clicks/0", offset, TS, []]]}), partition)


async def held_rows(h: Harness) -> dict[int, Any]:
    """What the rows processes hold, per partition."""
    held: dict[int, Any] = {}
    for process in h.stream.rows_processes:
        held.update(await process.run(held_rows_summary))
    return held


async def unwritten_rows(h: Harness) -> int:
    """How many rows the rows processes hold changed and not written yet."""
    return sum(part["unwritten"] for part in (await held_rows(h)).values())


@run_async
async def test_changed_rows_are_written_once_per_commit(make_harness: MakeHarness) -> None:
    h = make_harness()
    stream = h.stream
    h.changelog("rows")
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        for offset, pairs in enumerate([["b"], ["c"], ["b"]]):
            await h.relay(rows_agent, [row_update(h, "a", pairs, offset, 1)])
        assert h.changelog("rows") == []  # three batches changed "a": not written yet
        assert stream.topology.rows.get("a") is None
        for write_pending in cast(App, stream.app).before_commit:  # as a commit does
            await write_pending()
        (write,) = h.changelog("rows")
        assert (write.key, write.partition) == ("a", 1)
        assert write.value["pairs"] == {"b": 2.0, "c": 1.0}
        assert CooccurrenceRow.from_json(orjson.loads(stream.topology.rows["a"])).pairs == {
            "b": 2.0, "c": 1.0}
        await stream.commits.before_commit()
        assert h.changelog("rows") == []  # nothing changed since


@pytest.mark.parametrize("processes", [1, 3])
@run_async
async def test_each_rows_process_holds_its_share_of_the_partitions(
    make_harness: MakeHarness, processes: int,
) -> None:
    h = make_harness(rows_processes=processes, batch_size=10)
    stream = h.stream
    h.changelog("rows")
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        # one batch of row updates of four partitions
        await h.relay(rows_agent, [row_update(h, f"a{p}", ["b"], p, p) for p in range(4)])
        assert stream.counters.row_updates_applied == 4
        held = [sorted(await process.run(held_rows_summary))
                for process in stream.rows_processes]
        assert held == [[p for p in range(4) if p % processes == index]
                        for index in range(processes)]
        await stream.commits.before_commit()
    assert sorted((w.key, w.partition) for w in h.changelog("rows") if w.key.startswith("a")) == [
        (f"a{p}", p) for p in range(4)]


@run_async
async def test_a_commit_writes_many_rows_in_slices_with_the_loop_let_in_between(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    items = [f"i{n}" for n in range(2 * ROWS_PER_SLICE + 10)]
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, [row_update(h, item, ["z"], n, 1)
                                   for n, item in enumerate(items)])
        h.changelog("rows")
        seen: list[int] = []  # rows written, as other tasks saw it

        async def watch() -> None:
            while True:
                seen.append(len(stream.topology.rows))
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0)
        await stream.commits.before_commit()
        watcher.cancel()
        written = h.changelog("rows")
        assert sorted(w.key for w in written) == sorted(items)  # each once
        assert await unwritten_rows(h) == 0
        # other tasks ran between the three slices
        assert {ROWS_PER_SLICE, 2 * ROWS_PER_SLICE} <= set(seen)


@run_async
async def test_a_rebalance_writes_the_changed_rows_before_forgetting_them(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, [row_update(h, "a", ["b"], 0, 2)])
        h.changelog("rows")
        await stream.app.on_partitions_revoked.send(set())
        assert [(w.key, w.partition) for w in h.changelog("rows")] == [("a", 2)]
        # and the rows process lets go of them: read again from the table if needed
        assert stream.rows.held == {}
        assert await held_rows(h) == {}


@run_async
async def test_a_commit_sends_the_stats_a_stopped_batch_left_behind(
    make_harness: MakeHarness,
) -> None:
    """An agent cancelled (the worker stopping) between the rows process's update
    and the stats it returned: the commit still sends them, since a replay of
    the update is skipped and would not."""
    h = make_harness()
    stream = h.stream
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, [row_update(h, "a", ["b"], 0, 1)])
    assert stream.topology.item_stats.get("a")[0] == 1.0
    # what a cancelled batch leaves: the update applied, its stats never sent
    update = row_update(h, "a", ["c"], 1, 1).value
    await stream.rows.process_of(1).run(apply_row_messages,
                                        [(1, stream.rows.held[1], update)],
                                        stream.config.tau, h.settings.max_row_width)
    assert stream.topology.item_stats.get("a")[0] == 1.0
    sent = len(h.sent_to(stream.topology.replica_topics["item-stats"].get_topic_name()))
    await stream.commits.before_commit()
    assert stream.topology.item_stats.get("a")[0] == 2.0
    stats_sent = h.sent_to(stream.topology.replica_topics["item-stats"].get_topic_name())
    assert [(m.key, m.json()[0]) for m in stats_sent[sent:]] == [(b"a", 2.0)]
    await stream.commits.before_commit()  # sent once
    assert len(h.sent_to(stream.topology.replica_topics["item-stats"].get_topic_name())) == (
        len(stats_sent))


@run_async
async def test_a_rebalance_waits_for_the_batch_of_row_updates_under_way(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    stream = h.stream
    gains = [["a", [], "clicks/0", 0, TS, ["b"]], ["c", [], "clicks/0", 1, TS, ["d"]]]
    message = Sent(stream.topology.rows_topic.get_topic_name(), None,
                   orjson.dumps({"gains": gains}), 1)
    # the rows process's answer to the batch is held back
    gate, run, applying = asyncio.Event(), stream.rows.process_of(1).run, []

    async def answer_after_the_gate(function: Any, *args: Any) -> Any:
        result = await run(function, *args)
        if function.__name__ == "apply_row_messages":
            applying.append(True)
            await gate.wait()
        return result

    monkeypatch.setattr(stream.rows.process_of(1), "run", answer_after_the_gate)
    h.changelog("rows")
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        relay = asyncio.ensure_future(h.relay(rows_agent, [message]))
        await h.wait_until(lambda: applying, "the batch in the rows process")
        revoked = asyncio.ensure_future(stream.app.on_partitions_revoked.send(set()))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not revoked.done()  # the rebalance waits for the batch under way
        gate.set()
        await relay
        await revoked
    assert stream.counters.row_updates_applied == 4
    assert sorted(w.key for w in h.changelog("rows")) == ["a", "b", "c", "d"]


@run_async
async def test_a_batch_failing_in_the_rows_process_stops_the_worker(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    rows_topic = stream.topology.rows_topic.get_topic_name()
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, [row_update(h, "a", ["b"], 0, 0)])
        broken = Sent(rows_topic, None, orjson.dumps({"gains": [["a", ["c"], "clicks/0"]]}), 0)
        with pytest.raises(AssertionError, match="agent crashed"):
            await h.relay(rows_agent, [broken])
        # the unwritten change of the first batch may be gone with the half-done
        # one: no commit may follow, or it would count both as done
        assert isinstance(stream.app.crash_reason, RowsLost)
        assert "ValueError" in str(stream.app.crash_reason)


@run_async
async def test_a_rows_process_that_died_stops_the_worker_and_no_other_is_started(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, [row_update(h, "a", ["b"], 0, 0)])
        child = stream.rows.process_of(0).process
        assert child is not None
        child.kill()  # killed (the OOM killer, say)
        child.join()
        with pytest.raises(AssertionError, match="agent crashed"):
            await h.relay(rows_agent, [row_update(h, "a", ["c"], 1, 0)])
        assert isinstance(stream.app.crash_reason, RowsLost)
        assert "died" in str(stream.app.crash_reason)
        assert stream.rows.process_of(0).process is child  # no new child holding nothing
        # and the commit's writers fail too: nothing is committed
        with pytest.raises(RowsLost):
            await stream.rows.write_changed()


@run_async
async def test_a_commit_writes_what_is_held_back_before_flushing(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    app = cast(App, h.stream.app)
    consumer = cast(RewindingConsumer, app.consumer)
    calls: list[str] = []
    tp = TP(h.stream.topology.rows_topic.get_topic_name(), 0)

    async def flush() -> None:
        calls.append("flush")

    async def commit(offsets: Mapping[TP, int]) -> bool:
        calls.append(f"commit {offsets[tp]}")
        return True

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app.producer, "flush", flush)
        mp.setattr(consumer, "_commit", commit)
        mp.setattr(consumer, "assignment", lambda: {tp})
        async def write_held_back() -> None:
            calls.append("write held-back values")

        app.before_commit.append(write_held_back)
        assert await consumer._commit_offsets({tp: 7})
    assert calls == ["write held-back values", "flush", "commit 7"]


@run_async
async def test_events_taken_before_a_rebalance_are_left_to_the_partitions_owner(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch that began before a rebalance ends after it: the events read in the
    old generation may belong to another worker now, which reads them again."""
    h = make_harness(batch_size=2, batch_seconds=5.0)
    stream = h.stream
    app = stream.app
    acked: list[TP] = []  # messages whose final ack reached the consumer
    final_ack = Message.on_final_ack

    def on_final_ack(message: Message, consumer: Any) -> bool:
        acked.append(message.tp)
        return final_ack(message, consumer)

    monkeypatch.setattr(Message, "on_final_ack", on_final_ack)
    async with stream.agents.process_events.test_context() as agent:
        before = await h.put_event(agent, click("u1", "i1"), partition=0, offset=0)
        await asyncio.sleep(0.1)  # the stream takes it into the batch
        app.consumer_generation_id += 1  # a rebalance while the batch fills
        after = await h.put_event(agent, click("u2", "i2"), partition=2, offset=0)
        await h.settle(agent, [before, after])
    assert stream.topology.users.get("u1") is None  # left to whoever owns partition 0 now
    assert user_state(h, "u2").profile.recent == ["i2"]
    assert stream.counters.applied == 1
    # and not acknowledged to the consumer, which would commit past it
    assert acked == [after.tp]


async def change_users_and_rows(h: Harness, users: Sequence[str], items: Sequence[str], *,
                                first_offset: int) -> None:
    """Users and rows changed and not written yet: a click of each user (on the
    user's partition), an update of each row, from offset ``first_offset`` on."""
    stream = h.stream
    async with stream.agents.process_events.test_context() as agent:
        for n, user in enumerate(users):
            await h.process(agent, click(user, "i1"), offset=first_offset + n)
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        for n, item in enumerate(items):
            await h.relay(rows_agent, [row_update(h, item, ["x"], first_offset + n, 0)])
    assert stream.users.cache.dirty_count() == len(users)
    assert await unwritten_rows(h) == len(items)


@run_async
async def test_the_writers_take_a_share_of_the_loop_before_a_commit_and_all_at_a_rebalance(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch, app_sleeps: RecordedSleeps,
) -> None:
    h = make_harness()
    stream = h.stream
    sleeps = app_sleeps
    monkeypatch.setattr(pacing, "COMMIT_WRITER_SHARE", 0.25)
    await stream.pacing.between_slices(0.01, paced=True)
    await stream.pacing.between_slices(0.01, paced=False)
    assert sleeps.seconds == [pytest.approx(0.03), 0]

    monkeypatch.setattr(rows, "ROWS_PER_SLICE", 1)
    monkeypatch.setattr(users, "USERS_PER_SLICE", 1)
    await change_users_and_rows(h, ("u1", "u2", "u3"), ("a", "b", "c"), first_offset=0)
    sleeps.seconds.clear()
    await stream.commits.before_commit()
    paused = [s for s in sleeps.seconds if s > 0]
    # between the three slices of rows, the three of users read, and the three written
    assert len(paused) == 6
    assert stream.users.cache.dirty_count() == 0 and await unwritten_rows(h) == 0

    await change_users_and_rows(h, ("u1", "u2", "u3"), ("a", "b", "c"), first_offset=10)
    sleeps.seconds.clear()
    await stream.app.on_partitions_revoked.send(set())
    assert sleeps.seconds and not any(sleeps.seconds)  # the flow waits: no pauses
    assert len(stream.users.cache) == 0 and stream.rows.held == {}


@run_async
async def test_a_rebalance_during_a_paced_commit_lets_its_writers_go_on_unpaced(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch, app_sleeps: RecordedSleeps,
) -> None:
    h = make_harness()
    stream = h.stream
    monkeypatch.setattr(rows, "ROWS_PER_SLICE", 1)
    monkeypatch.setattr(users, "USERS_PER_SLICE", 1)
    await change_users_and_rows(h, ("u1", "u2", "u3", "u4"), ("a", "b", "c", "d"),
                                first_offset=0)
    revoked: list[asyncio.Future[Any]] = []
    record = app_sleeps.sleep

    async def rebalance_at_the_first_pause(seconds: float) -> None:
        if seconds > 0 and not revoked:
            revoked.append(asyncio.ensure_future(stream.app.on_partitions_revoked.send(set())))
        await record(seconds)

    monkeypatch.setattr(app_sleeps, "sleep", rebalance_at_the_first_pause)
    app_sleeps.seconds.clear()
    await stream.commits.before_commit()
    await revoked[0]
    first, *rest = app_sleeps.seconds
    assert first > 0 and rest and not any(rest)  # one pause: none once the rebalance waits
    assert len(stream.users.cache) == 0 and stream.rows.held == {}
    written = {w.key for w in h.changelog("users")}
    assert {"u1", "u2", "u3", "u4"} <= written


@run_async
async def test_each_commit_times_its_phases_for_the_metrics(make_harness: MakeHarness) -> None:
    # a commit that stopped coming was seen by the bench alone, from the broker's disk
    h = make_harness()
    await change_users_and_rows(h, ("u1", "u2"), ("a",), first_offset=0)
    await h.stream.commits.before_commit()
    await h.stream.commits.before_commit()
    exposition = h.stream.metrics.exposition().decode()
    for phase in COMMIT_PHASES:
        assert f'recostream_commit_seconds_count{{phase="{phase}"}} 2.0' in exposition
    assert h.stream.users.cache.dirty_count() == 0 and await unwritten_rows(h) == 0
