"""The outbox: records grouped per topic partition, handed over in order, delivery
followed up (offsets reported, failures raised before a commit)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.app import RecoStream
from streams.runtime.outbox import DeliveryFailed, KafkaSink, Outbox, Record, key_partition
from streams.runtime.settings import Settings
from streams.runtime.state import table_json
from tests.stream.harness import run_async


class Sink:
    """Records batches; deliveries finish when told to (or at once)."""

    def __init__(self, partitions: int = 3, *, hold: bool = False,
                 delays: Sequence[float] = ()) -> None:
        self.partitions = partitions
        self.hold = hold
        self.delays = list(delays)  # seconds the first sends take
        self.batches: list[tuple[str, int, list[Record]]] = []
        self.pending: list[tuple[asyncio.Future[int], int]] = []  # (delivery, offset)
        self.offsets: dict[tuple[str, int], int] = {}

    async def partition_count(self, topic: str) -> int:
        return self.partitions

    async def send(self, topic: str, partition: int,
                   records: Sequence[Record]) -> list[Awaitable[int]]:
        # a send may wait for the producer: others run meanwhile
        await asyncio.sleep(self.delays.pop(0) if self.delays else 0)
        self.batches.append((topic, partition, list(records)))
        last = self.offsets.get((topic, partition), -1) + len(records)
        self.offsets[(topic, partition)] = last
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.pending.append((done, last))
        else:
            done.set_result(last)
        return [done]

    def values(self, topic: str, partition: int) -> list[bytes | None]:
        return [value for t, p, records in self.batches if (t, p) == (topic, partition)
                for _, value, _ in records]


@given(st.binary(min_size=1, max_size=40), st.integers(min_value=1, max_value=64))
def test_keyed_records_go_where_kafkas_default_partitioner_puts_them(
    key: bytes, partitions: int
) -> None:
    everything = list(range(partitions))
    assert key_partition(key, partitions) == DefaultPartitioner()(key, everything, everything)


@run_async
async def test_records_keep_their_order_per_partition_across_concurrent_sends() -> None:
    # Two tasks write the same key (a batch and the churn scan, say): the first
    # batch is slow to go to the producer, the second must not overtake it; a
    # batch for another partition does not wait for it.
    sink = Sink(delays=[0.05])
    outbox = Outbox(sink)
    outbox.add("t", b"state 1", partition=0)
    await outbox.send()
    await asyncio.sleep(0.01)  # the first batch is in the (slow) producer
    outbox.add("t", b"state 2", partition=0)
    outbox.add("other", b"x", partition=0)
    await outbox.send()
    await outbox.delivered()
    assert sink.values("t", 0) == [b"state 1", b"state 2"]
    assert [topic for topic, _, _ in sink.batches] == ["other", "t", "t"]


@run_async
async def test_one_batch_per_partition_keyed_and_keyless_records_spread() -> None:
    sink = Sink(partitions=3)
    outbox = Outbox(sink)
    for n in range(6):
        outbox.add("keyed", str(n).encode(), key=f"k{n}".encode())
        outbox.add("keyless", str(n).encode())
    outbox.add("fixed", b"x", key=b"k0", partition=2)  # a partition wins over the key
    assert len(outbox) == 13
    await outbox.send()
    assert len(outbox) == 0
    await outbox.delivered()
    for topic, partition, records in sink.batches:
        if topic == "keyed":
            assert {key_partition(key or b"", 3) for key, _, _ in records} == {partition}
    keyed = sorted((p, len(r)) for t, p, r in sink.batches if t == "keyed")
    assert len(keyed) == len({p for p, _ in keyed})  # one batch per partition
    assert sorted(len(r) for t, _, r in sink.batches if t == "keyless") == [2, 2, 2]
    assert [(p, r) for t, p, r in sink.batches if t == "fixed"] == [(2, [Record(b"k0", b"x")])]
    assert await outbox.send() == []  # nothing left


@run_async
async def test_a_routed_topic_goes_to_its_own_sink_and_holds_no_other_back() -> None:
    main, bulk = Sink(), Sink(partitions=2, hold=True)
    outbox = Outbox(main)
    outbox.routes["changelog"] = bulk
    outbox.add("changelog", b"big", key=b"item")
    outbox.add("recs", b"r", partition=0)
    deliveries = await outbox.send()
    await asyncio.wait_for(asyncio.shield(deliveries[1]), 1)  # the bulk one is held
    assert [(t, p) for t, p, _ in main.batches] == [("recs", 0)]
    assert [(t, p) for t, p, _ in bulk.batches] == [("changelog", key_partition(b"item", 2))]
    (future, offset), = bulk.pending
    future.set_result(offset)
    await outbox.delivered()


@run_async
async def test_delivered_batches_report_their_last_offset() -> None:
    sink = Sink(hold=True)
    outbox = Outbox(sink)
    seen: list[tuple[TopicPartition, int]] = []
    outbox.on_delivered["log"] = lambda tp, offset: seen.append((tp, offset))
    for value in (b"a", b"b", b"c"):
        outbox.add("log", value, partition=1)
    outbox.add("other", b"x", partition=0)
    deliveries = await outbox.send()
    while len(sink.pending) < 2:  # both batches with the producer
        await asyncio.sleep(0)
    assert seen == []  # not written yet
    for future, offset in sink.pending:
        future.set_result(offset)
    await asyncio.gather(*deliveries)
    assert seen == [(TopicPartition("log", 1), 2)]


@run_async
async def test_a_failed_batch_is_raised_before_the_commit() -> None:
    sink = Sink(hold=True)
    outbox = Outbox(sink)
    outbox.add("t", b"a", partition=0)
    await outbox.send()  # nobody awaits this delivery
    while not sink.pending:
        await asyncio.sleep(0)
    sink.pending[0][0].set_exception(RuntimeError("broker gone"))
    await outbox.delivered()
    with pytest.raises(DeliveryFailed, match="broker gone"):
        outbox.check()
    outbox.check()  # reported once


@pytest.mark.parametrize("value", ["u1", "ü-42", {"a": [1.0, 2], "b": {"c": None}}, [1, "x"]])
def test_table_records_are_what_fausts_json_codec_writes(value: object, tmp_path: object) -> None:
    stream = RecoStream(Settings(store="memory://", web_enabled=False, data_dir=tmp_path))
    faust_bytes = stream.app.serializers.dumps_value(None, value, serializer="json")
    assert table_json(value) == faust_bytes
    assert orjson.loads(table_json(value)) == value


class RefusingProducer:
    """An aiokafka producer's batch API, over a broker that refuses every batch
    holding a record larger than ``refuse_over`` bytes (its topic's
    max.message.bytes, below the worker's own limit)."""

    class Batch:
        def __init__(self) -> None:
            self.records: list[tuple[bytes | None, bytes | None]] = []
            self.closed = False

        def append(self, *, key: bytes | None, value: bytes | None, timestamp: None,
                   headers: list[tuple[str, bytes]]) -> object | None:
            if self.closed or len(self.records) == 2:  # two records a batch
                return None
            self.records.append((key, value))
            return object()

        def close(self) -> None:
            self.closed = True

    def __init__(self, refuse_over: int) -> None:
        self.refuse_over = refuse_over
        self.written: list[bytes | None] = []

    def create_batch(self) -> RefusingProducer.Batch:
        return RefusingProducer.Batch()

    async def send_batch(self, batch: RefusingProducer.Batch, topic: str, *,
                         partition: int) -> asyncio.Future[Any]:
        from aiokafka.errors import MessageSizeTooLargeError

        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if any(len(value or b"") > self.refuse_over for _, value in batch.records):
            done.set_exception(MessageSizeTooLargeError())
        else:
            offset = len(self.written)
            self.written.extend(value for _, value in batch.records)
            done.set_result(SimpleNamespace(offset=offset))
        return done


@run_async
async def test_records_the_broker_refuses_become_rejections_and_the_rest_are_written() -> None:
    producer = RefusingProducer(refuse_over=10)
    rejected: list[tuple[str, Record, str]] = []
    sink = KafkaSink(lambda: producer)
    outbox = Outbox(sink, max_record_bytes=1000,
                    on_rejected=lambda topic, record, why: rejected.append((topic, record, why)))
    sink.on_rejected = outbox.reject
    delivered: list[int] = []
    outbox.on_delivered["t"] = lambda tp, offset: delivered.append(offset)
    values = [b"a", b"b" * 50, b"c", b"d", b"e" * 2000]  # the last: over the outbox's limit
    for value in values:
        outbox.add("t", value, partition=0)
    await outbox.send()
    await outbox.delivered()
    outbox.check()  # nothing failed: the worker goes on
    # a's batch was refused for b, and a sent again after c and d had gone out
    assert producer.written == [b"c", b"d", b"a"]
    assert [(topic, record.value) for topic, record, _ in rejected] == [
        ("t", b"e" * 2000), ("t", b"b" * 50)]
    assert "over the record limit" in rejected[0][2]
    assert "MessageSizeTooLarge" in rejected[1][2]
    assert max(delivered) == 2


@run_async
async def test_other_delivery_failures_still_stop_the_worker() -> None:
    class Down(RefusingProducer):
        async def send_batch(self, batch: RefusingProducer.Batch, topic: str, *,
                             partition: int) -> asyncio.Future[Any]:
            from aiokafka.errors import KafkaTimeoutError

            done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            done.set_exception(KafkaTimeoutError())
            return done

    sink = KafkaSink(lambda: Down(refuse_over=10))
    outbox = Outbox(sink, max_record_bytes=1000, on_rejected=lambda *_: None)
    sink.on_rejected = outbox.reject
    outbox.add("t", b"a", partition=0)
    await outbox.send()
    await outbox.delivered()
    with pytest.raises(DeliveryFailed):
        outbox.check()
