"""Run real `recostream worker` processes against the session's broker, and feed them.

Each test gets its own topic prefix and app id, so tests share one broker without
seeing each other's events, consumer groups or tables.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from core.events import Event
from streams.devtools.worker_process import WorkerProcess, free_port, worker_env
from streams.runtime.topic_admin import TOPICS, TopicSpec, ensure_topics_sync

__all__ = ["Outgoing", "WorkerProcess", "consume_all", "create_topics", "event_messages",
           "free_port", "produce", "produce_placed", "rewind_group", "worker_env"]

PARTITIONS = 4


def create_topics(bootstrap: str, prefix: str, partitions: int = PARTITIONS) -> None:
    specs = [TopicSpec(prefix + spec.name, spec.config) for spec in TOPICS.values()]
    ensure_topics_sync(bootstrap, specs, partitions)


#: A message to produce: (topic, key, value), or with the partition it must go to
#: (None: by its key, as Kafka's default partitioner would).
Outgoing = tuple[str, bytes | None, bytes] | tuple[str, bytes | None, bytes, int | None]


def produce(bootstrap: str, messages: Iterable[Outgoing]) -> int:
    """Send messages in order; returns how many."""
    return len(produce_placed(bootstrap, messages))


def produce_placed(bootstrap: str, messages: Iterable[Outgoing]) -> list[tuple[int, int]]:
    """Send messages in order; where each landed, (partition, offset)."""
    async def run() -> list[tuple[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all",
                                    max_request_size=4 * 1024 * 1024)
        await producer.start()
        try:
            deliveries = []
            for topic, key, value, *where in messages:
                partition = where[0] if where else None
                deliveries.append(await producer.send(topic, value=value, key=key,
                                                      partition=partition))
            # every record must be acknowledged, or the test's counts mean nothing
            placed = await asyncio.gather(*deliveries)
        finally:
            await producer.stop()
        return [(metadata.partition, metadata.offset) for metadata in placed]

    return asyncio.run(run())


def event_messages(prefix: str, events: Sequence[Event]) -> list[tuple[str, bytes, bytes]]:
    return [(prefix + e.topic(), e.user_id.encode(), orjson.dumps(e.to_dict())) for e in events]


def consume_all(bootstrap: str, topic: str, *, expect: int, timeout: float = 60.0
                ) -> list[tuple[bytes | None, bytes]]:
    """Read a topic from the beginning until ``expect`` records arrived (or time out)."""
    async def run() -> list[tuple[bytes | None, bytes]]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        records: list[tuple[bytes | None, bytes]] = []
        try:
            deadline = time.monotonic() + timeout
            while len(records) < expect and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for messages in batch.values():
                    records.extend((m.key, m.value or b"") for m in messages)
        finally:
            await consumer.stop()
        return records

    return asyncio.run(run())


def rewind_group(bootstrap: str, group: str, topics: Sequence[str]) -> None:
    """Commit offset 0 for every partition of ``topics`` in a consumer group."""
    async def run() -> None:
        from aiokafka import TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(t, p) for t in topics
                          for p in sorted(consumer.partitions_for_topic(t) or ())]
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = [TopicPartition(t, p) for t in topics
                              for p in sorted(consumer.partitions_for_topic(t) or ())]
            consumer.assign(partitions)
            await consumer.commit({tp: 0 for tp in partitions})
        finally:
            await consumer.stop()

    asyncio.run(run())
