"""Two writers of user states: ``process_events`` and the churn scan.

The churn scan (``RecoStream.engagement_partition``, run by ``refresh_neighbors`` on
a tick) reads user states, fires what is due and marks them changed;
``process_batch`` reads its users' states, applies events and marks them changed;
the commit writes what is marked. Both run on the same event loop and await in
between (the scan between slices, a batch on its sends), so either could change a
state the other read before: a lost update, unless they take turns
(``RecoStream.users_lock``). These tests hold one side inside its send (see
``Harness.gate``) while the other gets its input, then check that neither undid the
other's change, and that a state is written only after what it records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson
import pytest

import streams.runtime.churn_scan as churn_scan_module
from streams.runtime.state import UserState
from tests.stream.harness import (
    PARTITIONS,
    TS,
    Harness,
    MakeHarness,
    Sent,
    click,
    run_async,
    user_partition,
    user_state,
)

CART_WINDOW = 3600.0


def neighbour_of(user: str) -> str:
    """Another user whose events land in the same partition."""
    partition = user_partition(user, PARTITIONS)
    return next(f"v{n}" for n in range(1000)
                if user_partition(f"v{n}", PARTITIONS) == partition)


def tick(h: Harness, partition: int, round_: int) -> Sent:
    return Sent(h.stream.topology.ticks_topic.get_topic_name(), None,
                orjson.dumps({"round": round_}), partition)


def triggers(h: Harness, kind: str) -> list[dict[str, Any]]:
    records = [m.json() for m in h.sent_to("marketing-triggers")]
    return [r for r in records if r["kind"] == kind]


def lock_waiters(lock: asyncio.Lock) -> int:
    """Tasks waiting for ``lock`` (asyncio keeps them in a private deque)."""
    return len(getattr(lock, "_waiters", None) or ())


async def abandon_cart(h: Harness, events_agent: Any) -> None:
    """u1 adds item x to its cart, and another user of its partition moves the
    partition's event time past the cart window: the next scan fires the cart."""
    await h.process(events_agent, click("u1", "x", TS, kind="add_to_cart"))
    await h.process(events_agent, click(neighbour_of("u1"), "y", TS + 2 * CART_WINDOW))


def churn_harness(make_harness: MakeHarness) -> Harness:
    """An app that scans a partition for due triggers on every tick."""
    return make_harness(churn_seconds=0.0, cart_window_seconds=CART_WINDOW)


@run_async
async def test_churn_scan_does_not_undo_events_applied_while_it_sends(
    make_harness: MakeHarness,
) -> None:
    h = churn_harness(make_harness)
    stream = h.stream
    partition = user_partition("u1", PARTITIONS)
    triggers_topic = h.settings.topic("marketing-triggers")
    async with (
        stream.agents.process_events.test_context() as events_agent,
        stream.agents.refresh_neighbors.test_context() as ticks_agent,
    ):
        await abandon_cart(h, events_agent)
        gate = h.gate(triggers_topic)
        first_tick = tick(h, partition, 1)
        scan = await h.put(ticks_agent, first_tick.topic, first_tick.value, partition=partition)
        await h.wait_until(lambda: h.calls[triggers_topic] == 1, "the scan's trigger send")
        # while the scan sends, the user does something; it may be applied now (or
        # wait for the scan: the outcome must be the same)
        late = await h.put_event(events_agent, click("u1", "z", TS + 2 * CART_WINDOW + 1))
        await h.give_time(lambda: late.acked)
        gate.set()
        await h.settle(ticks_agent, [scan])
        await h.settle(events_agent, [late])
    assert len(triggers(h, "cart_abandoned")) == 1
    state = user_state(h, "u1")
    assert state.profile.recent == ["x", "z"], "the event applied during the scan was lost"
    assert state.applied.offsets[f"clicks/{partition}"] == late.offset
    assert state.engagement.cart == {}


@run_async
async def test_a_batch_does_not_undo_what_the_churn_scan_fired(make_harness: MakeHarness) -> None:
    h = churn_harness(make_harness)
    stream = h.stream
    partition = user_partition("u1", PARTITIONS)
    rows_topic = stream.topology.rows_topic.get_topic_name()
    async with (
        stream.agents.process_events.test_context() as events_agent,
        stream.agents.refresh_neighbors.test_context() as ticks_agent,
    ):
        await abandon_cart(h, events_agent)
        # the user's next event: its batch reads the state, then waits on its row send
        gate = h.gate(rows_topic)
        sends_before = h.calls[rows_topic]
        late = await h.put_event(events_agent, click("u1", "z", TS + 2 * CART_WINDOW + 1))
        await h.wait_until(lambda: h.calls[rows_topic] == sends_before + 1, "the row send")
        # meanwhile a tick: its scan may run now (or wait for the batch)
        first_tick = tick(h, partition, 1)
        scan = await h.put(ticks_agent, first_tick.topic, first_tick.value, partition=partition)
        await h.give_time(lambda: scan.acked)
        gate.set()
        await h.settle(events_agent, [late])
        await h.settle(ticks_agent, [scan])
        assert len(triggers(h, "cart_abandoned")) == 1
        # the next scan must not fire the same cart again
        await h.relay(ticks_agent, [tick(h, partition, 2)])
    state = user_state(h, "u1")
    assert state.engagement.cart == {}
    assert state.profile.recent == ["x", "z"]
    assert len(triggers(h, "cart_abandoned")) == 1, "the cart was abandoned twice"


@pytest.mark.parametrize("limit", [("SCAN_SLICE_USERS", 1), ("SCAN_SLICE_SECONDS", 0.0)],
                         ids=["by count", "by time"])
@run_async
async def test_batches_run_between_the_slices_of_a_churn_scan(
    make_harness: MakeHarness, limit: tuple[str, float],
) -> None:
    h = churn_harness(make_harness)
    stream = h.stream
    partition = user_partition("u1", PARTITIONS)
    others = [f"v{n}" for n in range(1000) if user_partition(f"v{n}", PARTITIONS) == partition]
    late_user = others[1]
    triggers_topic = h.settings.topic("marketing-triggers")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(churn_scan_module, *limit)
        async with (
            stream.agents.process_events.test_context() as events_agent,
            stream.agents.refresh_neighbors.test_context() as ticks_agent,
        ):
            # two carts, then a third user moves the partition's time past the window
            await h.process(events_agent, click("u1", "x", TS, kind="add_to_cart"))
            await h.process(events_agent, click(others[0], "x", TS, kind="add_to_cart"))
            await h.process(events_agent, click(late_user, "y", TS + 2 * CART_WINDOW))
            # The first slice (u1) is made slow: its hand-over to the outbox waits
            # for the gate, with the users lock held.
            gate, slow_sends = asyncio.Event(), []
            hand_over = stream.outbox.send

            async def slow_first_send() -> list[Awaitable[None]]:
                if stream.users.lock.locked() and not slow_sends:  # the scan's
                    slow_sends.append(True)
                    await gate.wait()
                return await hand_over()

            mp.setattr(stream.outbox, "send", slow_first_send)
            scan = await h.put(ticks_agent, tick(h, partition, 1).topic,
                               tick(h, partition, 1).value, partition=partition)
            await h.wait_until(lambda: slow_sends == [True], "the first slice's send")
            # this batch waits for the lock, then goes before the scan's next slice
            late = await h.put_event(events_agent, click(late_user, "z", TS + 2 * CART_WINDOW))
            await h.wait_until(lambda: lock_waiters(stream.users.lock), "the batch to queue")
            # the first slice's trigger goes out when the ranking child answers,
            # which under load could be after the late batch
            await h.wait_until(lambda: (triggers_topic, b"u1") in [
                (m.topic, m.key) for m in h.sent], "the first slice's trigger")
            gate.set()
            await h.settle(ticks_agent, [scan])
            await h.settle(events_agent, [late])
    # the late batch's row gains (sent in the batch; its list follows its ranking)
    # come between the two slices' triggers
    rows_topic = stream.topology.rows_topic.get_topic_name()
    order = [(m.topic, m.key) for m in h.sent if m.topic in (triggers_topic, rows_topic)]
    first, second = order.index((triggers_topic, b"u1")), order.index(
        (triggers_topic, others[0].encode()))
    assert second == len(order) - 1
    assert {topic for topic, _ in order[first + 1:second]} == {rows_topic}
    assert {t["user_id"] for t in triggers(h, "cart_abandoned")} == {"u1", others[0]}


@run_async
async def test_the_scan_writes_a_state_only_once_its_triggers_are_delivered(
    make_harness: MakeHarness,
) -> None:
    """A crash between the two must fire the trigger again, never lose it."""
    h = churn_harness(make_harness)
    stream = h.stream
    partition = user_partition("u1", PARTITIONS)
    triggers_topic = h.settings.topic("marketing-triggers")
    async with (
        stream.agents.process_events.test_context() as events_agent,
        stream.agents.refresh_neighbors.test_context() as ticks_agent,
    ):
        await abandon_cart(h, events_agent)
        await stream.commits.before_commit()
        h.defer(triggers_topic)
        await h.relay(ticks_agent, [tick(h, partition, 1)])
        assert len(triggers(h, "cart_abandoned")) == 1
        commit = asyncio.ensure_future(stream.commits.before_commit())
        for _ in range(50):
            await asyncio.sleep(0)
        assert not commit.done()
        assert UserState.from_json(stream.topology.users.get("u1")).engagement.cart != {}
        assert h.deliver_deferred(triggers_topic) == 1
        await commit
    assert UserState.from_json(stream.topology.users.get("u1")).engagement.cart == {}
