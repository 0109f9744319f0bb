"""The worker's Kafka consumer: what it asks of aiokafka."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
from faust.types.tuples import Message

from streams.runtime.app import RecoStream
from streams.runtime.settings import Settings
from streams.runtime.transport import (
    FETCH_MAX_WAIT_MS,
    App,
    EventPathMonitor,
    RawSchema,
    RewindingConsumer,
    finish_suspended,
)
from tests.stream.harness import TS, MakeHarness, click, run_async, user_state


@run_async
async def test_the_broker_holds_a_fetch_for_a_short_wait_not_fausts_1500_ms(
    make_harness: MakeHarness,
) -> None:
    # aiokafka fetches from a broker one request at a time, leaving out partitions
    # whose records are not taken yet: a fetch of only quiet partitions that the
    # broker holds for long delays every busy partition by as much.
    app = cast(App, make_harness().stream.app)
    consumer = cast(RewindingConsumer, app.consumer)
    thread = consumer._thread
    aiokafka_consumer = thread._create_worker_consumer(app.transport)
    try:
        assert aiokafka_consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
        assert FETCH_MAX_WAIT_MS <= 100
    finally:
        await aiokafka_consumer.stop()


def test_bulk_records_go_through_the_second_producer(tmp_path: Path) -> None:
    # changelogs and neighbour lists are megabytes per commit or refresh round:
    # recommendations must not queue behind them on one connection
    stream = RecoStream(Settings(store="memory://", web_enabled=False, data_dir=tmp_path))
    try:
        bulk = {topic for topic, sink in stream.outbox.routes.items()
                if sink is not stream.outbox.sink}
        assert bulk == {stream.topology.rows.changelog_topic.get_topic_name(),
                        stream.topology.users.changelog_topic.get_topic_name(),
                        stream.topology.names["item-neighbors"],
                        f"{stream.settings.app_id}-neighbors"}
        assert stream.outbox.sink_for(stream.topology.names["recommendations"]) is (
            stream.outbox.sink)
    finally:
        stream.model_process.close()
        stream.ranker.close()


def test_other_workers_reach_this_one_at_its_advertised_host(tmp_path: Path) -> None:
    """Lookups are forwarded to the canonical URL each worker announces to the group:
    the advertised host, not the bind address (0.0.0.0 reaches no one)."""
    for advertised, expected in (("worker1.shop.internal", "worker1.shop.internal"),
                                 ("", "0.0.0.0")):
        stream = RecoStream(Settings(store="memory://", data_dir=tmp_path, web_host="0.0.0.0",
                                     web_port=8123, advertised_host=advertised))
        try:
            conf = stream.app.conf
            assert str(conf.canonical_url) == f"http://{expected}:8123"
            assert (conf.web_bind, conf.web_port) == ("0.0.0.0", 8123)
            assert not conf.web_tables_enabled and not conf.web_router_enabled
        finally:
            stream.model_process.close()
            stream.ranker.close()


@run_async
async def test_a_delivery_that_need_not_wait_runs_in_place(make_harness: MakeHarness) -> None:
    # Faust runs each delivery as a task raced against the flow being suspended:
    # four tasks and a turn of the loop per message
    consumer = cast(RewindingConsumer, make_harness().stream.app.consumer)
    ran_in: list[asyncio.Task[Any] | None] = []

    async def deliver_now(message: Any) -> None:
        ran_in.append(asyncio.current_task())

    consumer.callback = deliver_now
    await consumer.deliver("message")
    assert ran_in == [asyncio.current_task()]


@run_async
async def test_a_delivery_that_waits_finishes_once_it_may(make_harness: MakeHarness) -> None:
    consumer = cast(RewindingConsumer, make_harness().stream.app.consumer)
    room = asyncio.get_running_loop().create_future()
    delivered: list[Any] = []

    async def deliver_when_room(message: Any) -> None:
        delivered.append((message, await room))

    consumer.callback = deliver_when_room
    delivery = asyncio.ensure_future(consumer.deliver("message"))
    await asyncio.sleep(0.01)
    assert not delivery.done()
    room.set_result("room")
    await delivery
    assert delivered == [("message", "room")]


@run_async
async def test_a_waiting_delivery_is_abandoned_when_the_flow_is_suspended(
    make_harness: MakeHarness,
) -> None:
    # a rebalance: Faust clears the queues and seeks, so the message must not go in
    consumer = cast(RewindingConsumer, make_harness().stream.app.consumer)
    room = asyncio.get_running_loop().create_future()
    outcome: list[str] = []

    async def deliver_when_room(message: Any) -> None:
        try:
            await room
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("delivered")

    consumer.callback = deliver_when_room
    delivery = asyncio.ensure_future(consumer.deliver("message"))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    await asyncio.wait_for(delivery, 1.0)
    assert outcome == ["cancelled"] and room.cancelled()


@run_async
async def test_while_the_flow_is_suspended_deliveries_race_it_as_in_faust(
    make_harness: MakeHarness,
) -> None:
    consumer = cast(RewindingConsumer, make_harness().stream.app.consumer)
    ran_in: list[asyncio.Task[Any] | None] = []

    async def deliver_now(message: Any) -> None:
        ran_in.append(asyncio.current_task())

    consumer.callback = deliver_now
    consumer.suspend_flow.set()
    await consumer.deliver("message")
    assert asyncio.current_task() not in ran_in


async def steps(awaited: list[asyncio.Future[str]]) -> list[str]:
    results = []
    for future in awaited:
        try:
            results.append(await future)
        except ValueError as exc:
            results.append(f"raised {exc}")
    return results


@run_async
async def test_finish_suspended_resumes_with_each_result_or_exception() -> None:
    loop = asyncio.get_running_loop()
    awaited = [loop.create_future() for _ in range(3)]
    coroutine = steps(awaited)
    finishing = asyncio.ensure_future(finish_suspended(coroutine, coroutine.send(None)))
    awaited[0].set_result("a")
    await asyncio.sleep(0)
    loop.call_later(0.01, awaited[1].set_exception, ValueError("b"))
    loop.call_later(0.02, awaited[2].set_result, "c")
    assert await finishing == ["a", "raised b", "c"]


@run_async
async def test_finish_suspended_cancels_the_coroutine_where_it_waits() -> None:
    awaited: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    coroutine = steps([awaited])
    finishing = asyncio.ensure_future(finish_suspended(coroutine, coroutine.send(None)))
    await asyncio.sleep(0.01)
    finishing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finishing
    assert awaited.cancelled()
    assert coroutine.cr_frame is None  # finished, not left suspended


@run_async
async def test_each_partition_records_when_its_stream_last_took_an_event(
    make_harness: MakeHarness,
) -> None:
    # Faust's check that a fetched partition is being processed reads this, and
    # logs an error for a partition it never saw an event of
    h = make_harness()
    monitor = h.stream.app.monitor
    assert isinstance(monitor, EventPathMonitor)
    h.stream.app.sensors.add(monitor)  # as the app's start does (outside test_context)
    async with h.stream.agents.process_events.test_context() as agent:
        [message] = await h.process(agent, click("u1", "i1"), partition=2, offset=7)
    assert set(monitor.stream_inbound_time) == {message.tp}
    assert monitor.events_total == 0  # the statistics nothing reads are not kept


@run_async
async def test_events_reach_the_agent_as_the_bytes_sent(make_harness: MakeHarness) -> None:
    h = make_harness()
    raw = orjson.dumps({"user_id": "u1", "item_id": "i1", "ts": TS, "type": "view"}) + b"  "
    schema = h.stream.topology.events_topic.schema
    assert isinstance(schema, RawSchema)
    decoded = await schema.compile(h.stream.app)(Message(
        "clicks", 0, 1, 0.0, 0, [], b"u1", raw, None))
    assert (decoded.key, decoded.value) == (b"u1", raw)
    async with h.stream.agents.process_events.test_context() as agent:
        await h.process(agent, click("u1", "i1"))
    assert user_state(h, "u1").profile.recent == ["i1"]
