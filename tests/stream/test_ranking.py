"""Recommendations ranked in the ranking child: the same lists as the worker's own
snapshot gives, published in batch order, and never committed past when lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import orjson
import pytest

from core.events import Event
from core.ratings import UserProfile
from streams.runtime.children.model_jobs import snapshot_from_json
from streams.runtime.children.ranking_jobs import Exposure, hold_snapshot, profile_fields
from streams.runtime.ranking import RecommendationsLost
from streams.runtime.records import recommendation_record
from tests.stream.harness import TS, Harness, MakeHarness, click, run_async, user_state

PAIRS = {
    "i1": [["i2", 0.9], ["i3", 0.5], ["i4", 0.2]],
    "i2": [["i1", 0.9], ["i4", 0.7]],
    "i3": [["i1", 0.5], ["i5", 0.4]],
}
STATS = {item: [float(n), 1.0 + n, TS] for n, item in enumerate(["i1", "i2", "i3", "i4", "i5"])}


@run_async
async def test_published_lists_equal_what_the_snapshot_ranks(make_harness: MakeHarness) -> None:
    h = make_harness(k=3)
    stream = h.stream
    stream.refresh.snapshot = snapshot_from_json(
        7, {i: orjson.dumps(v) for i, v in PAIRS.items()},
        {i: orjson.dumps(v) for i, v in STATS.items()}, 10, stream.config.tau)
    stream.ranker.hold("snapshot", hold_snapshot, stream.refresh.snapshot)
    events = [Event("u1", "i1", TS, "view"), Event("u2", "i2", TS + 1, "purchase"),
              Event("u3", "i3", TS + 2, "view"), Event("u1", "i2", TS + 3, "add_to_cart")]
    async with stream.agents.process_events.test_context() as agent:
        for event in events:
            await h.process(agent, event)
            published = h.sent_to("recommendations")[-1]
            assert published.key == event.user_id.encode()
            recs = await stream.ranking.recommend(event.user_id, user_state(h, event.user_id), 3)
            assert published.json() == orjson.loads(orjson.dumps(
                recommendation_record(recs, event.type, event.ts)))
    lists = [m.json() for m in h.sent_to("recommendations")]
    assert {m["model_version"] for m in lists} == {7}
    assert all(m["items"] for m in lists)  # not vacuous: every list ranked something
    reasons = [i["reason"] for m in lists for i in m["items"]]
    assert any(r.startswith("similar to i") for r in reasons) and "trending" in reasons
    # bought this instant: not due again, so not put forward to buy again
    assert ("i2", "buy_again") not in [(i["item_id"], i["source"]) for i in lists[1]["items"]]
    assert stream.counters.recommendations_out == len(events)


#: What the ranking child returns for a batch: its lists, its triggers' records, and
#: the exposure figures when taken.
Ranked = tuple[list[bytes], list[list[tuple[str, bytes]]], Exposure | None]


class HeldRanker:
    """Stands in for the ranking child: each batch's ranking waits for the test."""

    def __init__(self) -> None:
        self.rankings: list[asyncio.Future[Ranked]] = []
        self.lists: list[list[Any]] = []  # each submission's list requests

    @classmethod
    def instead_of(cls, h: Harness, monkeypatch: pytest.MonkeyPatch) -> HeldRanker:
        """A held ranker standing in for ``h``'s ranking child."""
        ranker = cls()
        monkeypatch.setattr(h.stream.ranker, "submit", ranker.submit)
        return ranker

    def submit(self, function: Any, *args: Any) -> Awaitable[Ranked]:
        future: asyncio.Future[Ranked] = asyncio.get_running_loop().create_future()
        self.rankings.append(future)
        self.lists.append(orjson.loads(args[0]))
        return future


async def put_and_wait(h: Harness, agent: Any, event: Any) -> None:
    message = await h.put_event(agent, event)
    await h.wait_until(lambda: message.acked, "the batch")


@run_async
async def test_lists_leave_in_batch_order_whichever_ranking_ends_first(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    ranker = HeldRanker.instead_of(h, monkeypatch)
    async with h.stream.agents.process_events.test_context() as agent:
        await put_and_wait(h, agent, click("u1", "i1"))
        await put_and_wait(h, agent, click("u1", "i2", TS + 1))
        assert len(ranker.rankings) == 2
        ranker.rankings[1].set_result(([b'"second"'], [], None))
        for _ in range(20):
            await asyncio.sleep(0.002)  # a batch every 2 ms
        assert h.sent_to("recommendations") == []  # waits for the first batch's
        ranker.rankings[0].set_result(([b'"first"'], [], None))
        await h.wait_until(lambda: len(h.sent_to("recommendations")) == 2, "both lists")
    assert [m.json() for m in h.sent_to("recommendations")] == ["first", "second"]


@run_async
async def test_a_commit_waits_for_the_lists_of_the_batches_before_it(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    ranker = HeldRanker.instead_of(h, monkeypatch)
    async with h.stream.agents.process_events.test_context() as agent:
        await put_and_wait(h, agent, click("u1", "i1"))
        # the users writer itself waits (it runs before commits and rebalances)
        commit = asyncio.ensure_future(h.stream.users.write_changed())
        for _ in range(50):
            await asyncio.sleep(0.002)  # a batch every 2 ms
        # the state that records the event waits for the event's list
        assert not commit.done() and h.stream.topology.users.get("u1") is None
        ranker.rankings[0].set_result(([b'"list"'], [], None))
        await commit
    assert [m.json() for m in h.sent_to("recommendations")] == ["list"]
    assert h.stream.topology.users.get("u1") is not None


@run_async
async def test_a_failed_ranking_stops_the_worker_before_any_commit(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    ranker = HeldRanker.instead_of(h, monkeypatch)
    async with h.stream.agents.process_events.test_context() as agent:
        await put_and_wait(h, agent, click("u1", "i1"))
        ranker.rankings[0].set_exception(RuntimeError("the child raised"))
        await h.wait_until(lambda: h.stream.app.crash_reason is not None, "the crash")
    assert isinstance(h.stream.app.crash_reason, RecommendationsLost)
    with pytest.raises(RecommendationsLost, match="the child raised"):
        await h.stream.commits.before_commit()
    # the state was not written: a replay of the event ranks it again
    assert h.stream.topology.users.get("u1") is None
    assert h.sent_to("recommendations") == []


@run_async
async def test_lists_behind_two_rankings_wait_and_a_users_later_list_replaces_its_own(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    ranker = HeldRanker.instead_of(h, monkeypatch)
    async with h.stream.agents.process_events.test_context() as agent:
        await put_and_wait(h, agent, click("u1", "i1"))
        await put_and_wait(h, agent, click("u2", "i1", TS + 1))
        # two rankings under way: the next batches' lists wait, one per user
        await put_and_wait(h, agent, click("u1", "i2", TS + 2))
        await put_and_wait(h, agent, click("u3", "i1", TS + 3))
        await put_and_wait(h, agent, click("u1", "i3", TS + 4))
        assert [[request[0] for request in lists] for lists in ranker.lists] == [["u1"], ["u2"]]
        commit = asyncio.ensure_future(h.stream.users.write_changed())
        ranker.rankings[0].set_result(([b'"u1 first"'], [], None))
        await h.wait_until(lambda: len(ranker.rankings) == 3, "the waiting lists submitted")
        waited = ranker.lists[2]
        # u1's list of its third event replaced that of its second: it was ranked
        # with every event (and published once, after u3's)
        assert [request[0] for request in waited] == ["u3", "u1"]
        assert waited[1][1][0] == list(user_state(h, "u1").profile.recent)
        assert {"i1", "i2", "i3"} <= set(waited[1][1][0])
        assert not commit.done()  # the states wait for every list queued before
        ranker.rankings[2].set_result(([b'"u3"', b'"u1 last"'], [], None))
        ranker.rankings[1].set_result(([b'"u2"'], [], None))
        await commit
    assert [m.json() for m in h.sent_to("recommendations")] == [
        "u1 first", "u2", "u3", "u1 last"]
    assert [m.key for m in h.sent_to("recommendations")] == [b"u1", b"u2", b"u3", b"u1"]
    assert h.stream.counters.recommendations_out == 4


@run_async
async def test_a_batch_waits_while_too_many_lists_wait_for_the_ranking_child(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Unbounded, at 500,000 customers whose lists rarely replace one another,
    # the lists waiting grew for as long as input came faster than the child
    # ranked (p99 of 25 s at half load, commits waiting for all of them).
    h = make_harness()
    ranker = HeldRanker.instead_of(h, monkeypatch)
    monkeypatch.setattr("streams.runtime.ranking.MOST_LISTS_WAITING", 3)
    async with h.stream.agents.process_events.test_context() as agent:
        for n in (1, 2, 3, 4, 5):  # two under way, three waiting
            await put_and_wait(h, agent, click(f"u{n}", "i1", TS + n))
        assert len(ranker.rankings) == 2 and len(h.stream.ranking.waiting_lists) == 3
        sixth = await h.put_event(agent, click("u6", "i1", TS + 6))
        for _ in range(50):
            await asyncio.sleep(0.002)
        assert not sixth.acked and h.stream.users.stored("u6") is None  # not taken on yet
        ranker.rankings[0].set_result(([b'"u1"'], [], None))
        await h.wait_until(lambda: sixth.acked, "the sixth batch")
        # the waiting lists went as one submission before the batch was taken on
        assert [[request[0] for request in lists] for lists in ranker.lists] == [
            ["u1"], ["u2"], ["u3", "u4", "u5"]]
        assert list(h.stream.ranking.waiting_lists) == ["u6"]
        for ranking, names in zip(ranker.rankings[1:], (["u2"], ["u3", "u4", "u5"]),
                                  strict=True):
            ranking.set_result(([orjson.dumps(name) for name in names], [], None))
        await h.wait_until(lambda: len(ranker.rankings) == 4, "the sixth list submitted")
        ranker.rankings[3].set_result(([b'"u6"'], [], None))
        await h.stream.ranking.published()
    assert [m.json() for m in h.sent_to("recommendations")] == [
        "u1", "u2", "u3", "u4", "u5", "u6"]


@run_async
async def test_a_commit_waits_for_the_ranking_child_once_however_many_users_changed(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One wait per slice of users made a commit wait for the ranking child once
    # per thousand users: at a shop's scale, commits stopped coming.
    h = make_harness()
    monkeypatch.setattr("streams.runtime.users.USERS_PER_SLICE", 2)
    waits = 0
    published = h.stream.users.published

    async def counted() -> None:
        nonlocal waits
        waits += 1
        await published()

    monkeypatch.setattr(h.stream.users, "published", counted)
    async with h.stream.agents.process_events.test_context() as agent:
        for n in range(7):
            await h.process(agent, click(f"u{n}", "i1", TS + n))
        await h.stream.users.write_changed()
    assert waits == 1
    assert all(h.stream.topology.users.get(f"u{n}") is not None for n in range(7))
    assert h.stream.users.cache.dirty_count() == 0


@run_async
async def test_a_worker_behind_sends_its_lists_to_the_ranking_child_at_most_every_hold(
    make_harness: MakeHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = make_harness()
    stream = h.stream
    ranker = HeldRanker.instead_of(h, monkeypatch)
    monkeypatch.setattr("streams.runtime.ranking.BEHIND_HOLD_SECONDS", 0.3)
    unread = {("clicks", 0): 0}
    monkeypatch.setattr(stream.clock, "refresh_lag", lambda: dict(unread))
    async with stream.agents.process_events.test_context() as agent:
        await put_and_wait(h, agent, click("u1", "i1"))
        ranker.rankings[0].set_result(([b'"u1"'], [], None))
        unread[("clicks", 0)] = 50_000  # a backlog from here on
        await put_and_wait(h, agent, click("u1", "i2", TS + 1))
        await put_and_wait(h, agent, click("u2", "i1", TS + 2))
        await put_and_wait(h, agent, click("u1", "i3", TS + 3))
        # nothing is being ranked, yet the lists wait for the hold to pass
        assert len(ranker.rankings) == 1 and not stream.ranking.under_way
        await h.wait_until(lambda: len(ranker.rankings) == 2, "the held lists")
        assert [request[0] for request in ranker.lists[1]] == ["u2", "u1"]
        ranker.rankings[1].set_result(([b'"u2"', b'"u1 again"'], [], None))
        unread[("clicks", 0)] = 0  # caught up: lists go at once again
        await put_and_wait(h, agent, click("u3", "i1", TS + 4))
        assert len(ranker.rankings) == 3
        ranker.rankings[2].set_result(([b'"u3"'], [], None))
        await h.stream.ranking.published()
    assert [m.json() for m in h.sent_to("recommendations")] == ["u1", "u2", "u1 again", "u3"]


@run_async
async def test_published_waits_for_what_was_queued_not_for_what_keeps_coming(
    make_harness: MakeHarness,
) -> None:
    # At full speed a batch's lists are queued while the last ones are ranked:
    # a commit that waited for those too never came (a shop-scale run wrote no
    # state for 16 minutes).
    h = make_harness()
    ranking = h.stream.ranking
    fields = profile_fields(UserProfile(recent=["i1"], events=1, last_ts=TS))
    queued = 0
    stop = asyncio.Event()

    async def batches_at_full_speed() -> None:
        nonlocal queued
        while not stop.is_set():  # a batch at every turn of the loop, 20 customers
            ranking.publish([(f"u{queued % 20}", fields, "view", TS)], [])
            queued += 1
            await asyncio.sleep(0)

    feeding = asyncio.ensure_future(batches_at_full_speed())
    try:
        await h.wait_until(lambda: h.sent_to("recommendations"), "a first list published")
        before = queued
        await asyncio.wait_for(ranking.published(), 10.0)
        assert queued > before  # batches went on meanwhile
        await h.stream.outbox.delivered()
        assert {m.key for m in h.sent_to("recommendations")} == {
            f"u{n}".encode() for n in range(20)}
    finally:
        stop.set()
        await feeding
    await ranking.published()
    assert ranking.idle()
