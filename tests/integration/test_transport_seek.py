"""The worker's consumer re-seeks the partitions it held during a rebalance, on a
real broker (see streams.runtime.transport)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from aiokafka import TopicPartition
from faust.types import TP

from streams.runtime.app import RecoStream
from streams.runtime.settings import Settings
from streams.runtime.transport import App, RewindingConsumer


def test_released_partitions_go_back_to_where_recovery_sought_them(
    stream_settings: Settings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a partition was held the fetcher moved on: at its release it goes back
    to its read offset, or (none: no commit, recovery sent it to its beginning) to
    offset 0. Left where the fetcher was, the messages read before the rebalance
    (cleared from the queues) were never processed: seen in the join/leave test."""
    topic = stream_settings.topic("clicks")
    stream = RecoStream(stream_settings)
    app = cast(App, stream.app)
    consumer = cast(RewindingConsumer, app.consumer)

    async def positions() -> list[int]:
        kafka = consumer._thread._create_worker_consumer(app.transport)
        await kafka.start()
        try:
            parts = [TopicPartition(topic, p) for p in range(2)]
            kafka.assign(parts)
            for part in parts:  # where the fetcher got to while they were held
                kafka.seek(part, 23)
            monkeypatch.setattr(consumer._thread, "_ensure_consumer", lambda: kafka)
            monkeypatch.setattr(consumer, "_read_offset", {TP(topic, 0): 17})
            consumer._seek_to_read_offsets([TP(topic, 0), TP(topic, 1)])
            return [await kafka.position(part) for part in parts]
        finally:
            await kafka.stop()

    try:
        assert asyncio.run(positions()) == [17, 0]
    finally:
        stream.model_process.close()
        stream.ranker.close()
        for process in stream.rows_processes:
            process.close()
