"""No input stops the stream, and nothing it writes exceeds the record limit.

Each poison input that once put the worker in a crash loop (an oversized payload,
an oversized key, row updates of long ids over 1 MiB, a user with tens of thousands
of items), an event from the future, and forwards that a crash would repeat: in
``agent.test_context()``, with the sends recorded (see harness.py).
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson

from core.events import Event
from core.recommender import Recommender
from streams.runtime.bounds import record_bounds
from streams.runtime.row_records import RowLayout, row_record, rows_of_table
from streams.runtime.state import CooccurrenceRow, UserState, table_json
from tests.stream.harness import (
    TS,
    MakeHarness,
    click,
    run_async,
    user_partition,
    user_state,
    written_user,
)

#: Caps small enough for a record limit of 100 kB: one gain of the longest ids
#: (about 32 kB) is then more than a third of a row-update message.
SMALL_RECORDS: dict[str, Any] = {
    "max_record_bytes": 100_000, "history": 30, "pair_window": 30, "max_user_ratings": 30,
    "max_user_purchases": 20, "dedup_ids": 16, "max_cart_items": 10, "max_purchase_days": 50,
    "max_row_width": 100, "neighbors": 20,
}


def sent_within(h: Any, limit: int) -> None:
    """Every record the app handed over, changelogs included, fits ``limit``."""
    for sent in [*h.sent, *h.changelog_sent]:
        size = len(sent.key or b"") + len(sent.value)
        assert size <= limit, (sent.topic, size)


@run_async
async def test_a_key_over_the_limit_is_dead_lettered_with_the_key_cut(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(max_key_bytes=300)
    key = b"k" * 450_000
    async with h.stream.agents.process_events.test_context() as agent:
        bad = await h.put(agent, h.settings.topic("clicks"),
                          orjson.dumps(click("u1", "i1")), key=key, partition=0)
        good = await h.put_event(agent, click("u1", "i2"))
        await h.settle(agent, [bad, good])
    [letter] = h.sent_to("dead-letters")
    record = letter.json()
    assert record["reason"] == "key_too_long"
    assert letter.key == key[:300]
    assert base64.b64decode(record["key_b64"]) == key[:300]
    assert (record["key_bytes"], record["key_truncated"]) == (len(key), True)
    assert record["key_sha256"] == hashlib.sha256(key).hexdigest()
    assert user_state(h, "u1").profile.recent == ["i2"]
    sent_within(h, h.settings.max_record_bytes)


@run_async
async def test_a_payload_over_the_record_limit_keeps_a_prefix_its_size_and_hash(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    payload = orjson.dumps(click("u1", "i1", pad="x" * 786_000))
    huge = b"{" + b"y" * 2_500_000  # not even JSON, and over 2 MB
    async with h.stream.agents.process_events.test_context() as agent:
        messages = [await h.put(agent, h.settings.topic("clicks"), value, key=b"u1",
                                partition=0) for value in (payload, huge)]
        messages.append(await h.put_event(agent, click("u1", "i2")))
        await h.settle(agent, messages)
    letters = [m.json() for m in h.sent_to("dead-letters")]
    assert [r["reason"] for r in letters] == ["oversized", "oversized"]
    for record, value in zip(letters, (payload, huge), strict=True):
        kept = base64.b64decode(record["payload_b64"])
        assert (value.startswith(kept) and 0 < len(kept) < len(value)) or kept == value
        assert record["payload_bytes"] == len(value)
        assert record["payload_sha256"] == hashlib.sha256(value).hexdigest()
        assert record["payload_truncated"] is (len(kept) < len(value))
    assert letters[1]["payload_truncated"]  # the 2.5 MB one cannot be kept whole
    assert user_state(h, "u1").profile.recent == ["i2"]
    assert h.stream.counters.dead_lettered == {"oversized": 2}
    sent_within(h, h.settings.max_record_bytes)


@run_async
async def test_an_event_from_the_future_is_dead_lettered_and_old_events_are_not(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(max_future_seconds=600.0)
    now = time.time()
    async with h.stream.agents.process_events.test_context() as agent:
        await h.process(agent, click("u1", "far", now + 86_400 * 365 * 50),
                        click("u1", "soon", now + 3600),
                        click("u1", "1997", 875_577_600.0),  # a replay of old data
                        click("u1", "now", now + 60))  # within the allowance
    assert [m.json()["reason"] for m in h.sent_to("dead-letters")] == [
        "future_timestamp", "future_timestamp"]
    assert user_state(h, "u1").profile.recent == ["1997", "now"]
    # event time moved no further than the events that were applied
    assert max(h.stream.clock.source_clock.values()) == now + 60


@run_async
async def test_forwards_are_applied_once_however_often_a_crash_repeats_them(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    home = user_partition("u1", h.settings.partitions)
    elsewhere = (home + 1) % h.settings.partitions
    clicks = h.settings.topic("clicks")
    async with h.stream.agents.process_events.test_context() as agent:
        # a producer partitioning otherwise (CRC32), and one keying by session
        wrong_partition = click("u1", "a", TS)
        wrong_key = click("u1", "b", TS + 1)
        originals = [
            await h.put(agent, clicks, orjson.dumps(wrong_partition), key=b"u1",
                        partition=elsewhere, offset=10),
            await h.put(agent, clicks, orjson.dumps(wrong_key), key=b"session-9",
                        partition=home, offset=20),
        ]
        await h.settle(agent, originals)
        forwards = h.sent_to("clicks")
        assert [(m.key, m.partition, m.headers) for m in forwards] == [
            (b"u1", home, (("recostream-origin", f"clicks/{elsewhere}@10".encode()),)),
            (b"u1", home, (("recostream-origin", f"clicks/{home}@20".encode()),))]
        assert h.stream.users.stored("u1") is None  # nothing applied where it was read
        await h.relay(agent, forwards)
        state = user_state(h, "u1")
        assert state.profile.recent == ["a", "b"]
        assert state.applied.offsets[f"fwd:clicks/{elsewhere}"] == 10
        assert state.applied.offsets[f"fwd:clicks/{home}"] == 20
        lists = len(h.sent_to("recommendations"))

        # a crash before the commit: the originals are read and forwarded again
        await h.process(agent, wrong_partition, key=b"u1", partition=elsewhere, offset=10)
        await h.process(agent, wrong_key, key=b"session-9", partition=home, offset=20)
        again = h.sent_to("clicks")[len(forwards):]
        assert [m.headers for m in again] == [m.headers for m in forwards]
        await h.relay(agent, again)  # at new offsets of the user's partition
    assert h.stream.counters.deduplicated == 2
    assert h.stream.counters.applied == 2
    assert user_state(h, "u1").to_json() == state.to_json()
    assert len(h.sent_to("recommendations")) == lists  # nothing new to say


@run_async
async def test_row_updates_of_long_ids_are_split_to_fit_and_apply_alike(
    make_harness: MakeHarness,
) -> None:
    """A batch whose row updates would be one message over the record limit."""
    long_id = "\u00e9" * 100 + '"' * 40  # 240 bytes of UTF-8, escaped in JSON
    events = [Event("u1", f"{long_id}{n:03}", TS + n, "view") for n in range(40)]
    rows: dict[str, dict[str, CooccurrenceRow]] = {}
    for name, limit in (("split", SMALL_RECORDS["max_record_bytes"]), ("whole", 2_000_000)):
        # the row updates wait out the window (fewer than batch_size): kept short
        h = make_harness(**{**SMALL_RECORDS, "max_record_bytes": limit},
                         batch_size=len(events), batch_seconds=1.0)
        async with h.stream.agents.process_events.test_context() as agent:
            await h.process(agent, *events)
        batches = {sample.name: sample.value
                   for sample in h.stream.metrics.batch_size.collect()[0].samples}
        assert batches["recostream_batch_size_count"] == 1  # all events in one batch
        row_messages = h.sent_to(h.stream.topology.rows_topic.get_topic_name())
        if name == "split":
            assert len(row_messages) > 4
            sent_within(h, limit)
        async with h.stream.agents.apply_cooccurrence.test_context() as rows_agent:
            await h.relay(rows_agent, row_messages)
        await h.stream.rows.write_changed()
        rows[name] = rows_of_table(h.stream.topology.rows.items())
    assert rows["split"] == rows["whole"] and len(rows["split"]) == len(events)


@run_async
async def test_a_user_with_many_items_keeps_a_bounded_state_equal_to_the_replay(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(batch_size=1000, batch_seconds=0.05)
    events = [Event("u1", f"item-{n}" + "x" * 200, TS + n, "purchase" if n % 3 else "view",
                    price=1.0) for n in range(6000)]
    async with h.stream.agents.process_events.test_context() as agent:
        await h.process(agent, *events)
    state = await written_user(h, "u1")
    config = h.settings.recommender_config()
    assert len(state.profile.ratings) == config.max_ratings
    assert len(state.profile.purchased) == config.max_purchased
    assert len(state.engagement.bought) == h.settings.max_user_purchases
    assert state.engagement.customer.frequency == 0  # one day of purchases
    replay = Recommender(config)
    replay.observe_many(events)
    assert state.profile == replay.users["u1"]
    encoded = table_json(state.to_json())
    limit = record_bounds(h.settings)[next(k for k in record_bounds(h.settings)
                                            if k.startswith("user state"))]
    assert len(encoded) <= limit <= h.settings.max_record_bytes
    sent_within(h, h.settings.max_record_bytes)


@run_async
async def test_a_record_over_the_limit_becomes_a_dead_letter_naming_topic_and_key(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    topic = h.settings.topic("recommendations")
    h.stream.outbox.add(topic, b"v" * (h.settings.max_record_bytes + 1), key=b"u7")
    h.stream.outbox.add(topic, b"fine", key=b"u8")
    await h.stream.outbox.send()
    await h.stream.outbox.delivered()
    assert [m.key for m in h.sent_to("recommendations")] == [b"u8"]
    [letter] = h.sent_to("dead-letters")
    record = letter.json()
    assert (record["reason"], record["topic"], letter.key) == ("output_rejected", topic, b"u7")
    assert record["payload_bytes"] == h.settings.max_record_bytes + 1
    assert h.stream.counters.dead_lettered == {"output_rejected": 1}


@run_async
async def test_churn_summaries_go_in_pieces_that_each_fit_a_record(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(**SMALL_RECORDS)
    stream = h.stream
    rows = [[float(x), float(x), float(x + 10), 1.0, 1.0] for x in range(3000)]
    stream.churn.write_rows(2, rows)
    pieces = {key: value for key, value in stream.topology.churn.view().items() if value}
    assert len(pieces) > 1 and all(key.startswith("p2.") for key in pieces)
    assert sorted(row for piece in pieces.values() for row in piece) == sorted(rows)
    sent_within(h, h.settings.max_record_bytes)
    # a later, shorter scan empties the pieces it no longer needs
    stream.churn.write_rows(2, rows[:10])
    left = {key: value for key, value in stream.topology.churn.view().items() if value}
    assert left == {"p2.0": rows[:10]}


def test_the_bounds_hold_for_the_worst_records_they_claim_to_bound() -> None:
    """Each bound of streams.runtime.bounds against a record built at its worst: ids at
    their longest, every byte escaped in JSON."""
    from core.engagement import Engagement, EngagementConfig
    from streams.runtime.bounds import row_pairs
    from streams.runtime.settings import Settings

    settings = Settings()
    worst = '"' * 256
    ids = [f"{n:04}" + worst[4:] for n in range(3000)]
    config, engagement_config = settings.recommender_config(), settings.engagement_config()
    state = UserState()
    for n, item in enumerate(ids):
        event = Event(worst, item, TS + n * 86_400.0, "purchase", event_id=ids[-n - 1],
                      price=1e300)
        from core.recommender import learn_event

        learn_event(state.profile, event, config)
        state.engagement.observe(event, engagement_config)
        state.engagement.observe(Event(worst, item, TS + n * 86_400.0 + 1, "add_to_cart"),
                                 engagement_config)
        state.mark(f"fwd:purchases/{n % (4 * settings.partitions)}", 2**62, event.event_id,
                   settings.dedup_ids)
    assert isinstance(state.engagement, Engagement)
    assert len(state.engagement.cart) == EngagementConfig().max_cart_items
    bounds = record_bounds(settings)
    user_bound = next(v for k, v in bounds.items() if k.startswith("user state"))
    assert len(table_json(state.to_json())) <= user_bound
    row = CooccurrenceRow(pairs={item: 1e300 for item in ids[:row_pairs(settings.max_row_width)]})
    row.applied.offsets = {f"fwd:clicks/{n}": 2**62 for n in range(4 * settings.partitions)}
    row_bound = next(v for k, v in bounds.items() if k.startswith("row of C"))
    assert len(table_json(row.to_json())) <= row_bound
    # as the worker writes it: the base with its write number (a delta never
    # outweighs its base)
    (_, base), _ = row_record(ids[0], row, RowLayout(2**62, 0, 0, 0))
    assert len(base) <= row_bound
    assert max(bounds.values()) <= settings.max_record_bytes
