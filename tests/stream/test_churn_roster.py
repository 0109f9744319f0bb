"""The churn scan looks at a partition's customers, not at every user.

Listing every key of the users table, hashing each to its partition and decoding
every user of the partition was an O(all users) pass on the event loop at every
partition's scan. These count what a scan reads: the table's keys once per
partition after a rebalance, then only users with purchases or a cart.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.roster import Roster
from tests.stream.harness import (
    PARTITIONS,
    TS,
    MakeHarness,
    click,
    run_async,
    user_partition,
)

#: Users of the partition scanned: most only look, a few buy or fill a cart.
LOOKERS, BUYERS, CARTS = 300, 5, 3
USERS = ["u1", "u2", "u3", "u4"]


@run_async
async def test_a_scan_reads_the_customers_and_lists_the_table_once_per_rebalance(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness(churn_seconds=0.0, cart_window_seconds=10 * 86_400.0)
    stream = h.stream
    partition = 1
    ours = [f"u{n}" for n in range(5000) if user_partition(f"u{n}", PARTITIONS) == partition]
    lookers, buyers = ours[:LOOKERS], ours[LOOKERS:LOOKERS + BUYERS]
    carts = ours[LOOKERS + BUYERS:LOOKERS + BUYERS + CARTS]
    others = [f"u{n}" for n in range(200) if user_partition(f"u{n}", PARTITIONS) != partition]
    listed = Counter[str]()
    read = Counter[str]()
    keys, stored = stream.users.table.keys, stream.users.stored

    def counted_keys() -> Any:
        listed["keys"] += 1
        return keys()

    def counted_stored(user_id: str) -> Any:
        read[user_id] += 1
        return stored(user_id)

    monkeypatch.setattr(stream.users.table, "keys", counted_keys)
    monkeypatch.setattr(stream.users, "stored", counted_stored)
    async with stream.agents.process_events.test_context() as events_agent:
        for user in [*lookers, *others]:
            await h.process(events_agent, click(user, "a", TS))
        for user in buyers:
            await h.process(events_agent, {"user_id": user, "item_id": "b", "ts": TS})
        for user in carts:
            await h.process(events_agent, click(user, "c", TS, kind="add_to_cart"))
        await stream.commits.before_commit()  # the table holds them all
        stream.users.forget()  # as a rebalance leaves them: recovered, never batched here

        await stream.churn.scan(partition)  # lists the partition once, reads each user once
        assert listed["keys"] == 1
        assert set(read) == {*lookers, *buyers, *carts}
        read.clear()
        await stream.churn.scan(partition)  # the customers only, no listing
        assert listed["keys"] == 1
        assert set(read) == {*buyers, *carts}
        # a looker who buys is scanned from the next scan on
        read.clear()
        await h.process(events_agent, {"user_id": lookers[0], "item_id": "b", "ts": TS + 1})
        await stream.churn.scan(partition)
        assert set(read) == {*buyers, *carts, lookers[0]}
        assert listed["keys"] == 1

        stream.users.forget()  # a rebalance: the partition is listed again
        read.clear()
        await stream.churn.scan(partition)
        assert listed["keys"] == 2
        assert set(read) >= {*lookers[1:], *buyers, *carts}


@given(st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 2), st.sampled_from(USERS)),
    st.tuples(st.just("drop"), st.integers(0, 2), st.sampled_from(USERS)),
    st.tuples(st.just("list"), st.integers(0, 2), st.sampled_from(USERS)),
    st.tuples(st.just("forget"), st.just(0), st.just("")),
), max_size=80))
def test_the_roster_holds_each_user_once_in_order_of_first_mention(
    operations: list[tuple[str, int, str]],
) -> None:
    """Against a plain model: one entry per user, however often a user changes
    (an active user is added in batch after batch: it must not grow with them)."""
    roster = Roster()
    model: dict[int, list[str]] = {}
    listed: set[int] = set()
    for operation, partition, user in operations:
        users = model.setdefault(partition, [])
        if operation == "add":
            roster.add(partition, user)
            users.extend([] if user in users else [user])
        elif operation == "drop":
            roster.drop(partition, [user])
            users[:] = [u for u in users if u != user]
        elif operation == "list":
            roster.list_partition(partition, [user])
            users.extend([] if user in users else [user])
            listed.add(partition)
        else:
            roster.forget()
            model.clear()
            listed.clear()
        for p in range(3):
            assert roster.users(p) == model.get(p, [])
            assert roster.listed(p) == (p in listed)


def test_a_listing_begun_before_a_rebalance_is_dropped() -> None:
    roster = Roster()
    epoch = roster.epoch
    roster.forget()
    roster.list_partition(0, ["u1"], epoch)
    assert not roster.listed(0) and roster.users(0) == []
