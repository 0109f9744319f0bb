"""The replicated-table reader against the real broker: every partition, in full."""

from __future__ import annotations

import asyncio
import uuid
from types import MappingProxyType

from aiokafka import AIOKafkaProducer

from streams.runtime.replicated import ReplicaReader, ReplicatedTable
from streams.runtime.topic_admin import TopicSpec, ensure_topics

PARTITIONS = 3


def test_reader_loads_every_partition_then_follows_new_records(kafka_bootstrap: str) -> None:
    topic = f"replica-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        await ensure_topics(kafka_bootstrap, [TopicSpec(topic, MappingProxyType(
            {"cleanup.policy": "compact"}))], PARTITIONS)
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
        await producer.start()
        try:
            for n in range(30):  # the default partitioner spreads them over all partitions
                await producer.send_and_wait(topic, key=f"k{n}".encode(), value=b"[%d]" % n)
            await producer.send_and_wait(topic, key=b"k0", value=None)  # deleted
            await producer.send_and_wait(topic, key=b"k1", value=b"[100]")  # rewritten
            table = ReplicatedTable("t", lambda k, v: None, partition_of=lambda key: 0,
                                    owned=set)
            reader = ReplicaReader({topic: table}, PARTITIONS,
                                   {"bootstrap_servers": kafka_bootstrap})
            task = asyncio.create_task(reader.run())
            try:
                await asyncio.wait_for(reader.caught_up.wait(), 30)
                expected = {f"k{n}": [n] for n in range(2, 30)} | {"k1": [100]}
                assert table.view() == expected
                assert reader.records == 32
                await producer.send_and_wait(topic, key=b"late", value=b'{"a": 1}')
                for _ in range(100):
                    if table.get("late") is not None:
                        break
                    await asyncio.sleep(0.1)
                assert table.get("late") == {"a": 1}
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            await producer.stop()

    asyncio.run(scenario())
