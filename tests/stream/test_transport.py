"""The worker's Kafka consumer: what it asks of aiokafka."""

from __future__ import annotations

from typing import cast

from streams.transport import FETCH_MAX_WAIT_MS, App, RewindingConsumer
from tests.stream.harness import MakeHarness, run_async


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
