"""The worker's Kafka consumer: what it asks of aiokafka."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from streams.app import RecoStream
from streams.settings import Settings
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


def test_bulk_records_go_through_the_second_producer(tmp_path: Path) -> None:
    # changelogs and neighbour lists are megabytes per commit or refresh round:
    # recommendations must not queue behind them on one connection
    stream = RecoStream(Settings(store="memory://", web_enabled=False, data_dir=tmp_path))
    try:
        bulk = {topic for topic, sink in stream.outbox.routes.items()
                if sink is not stream.outbox.sink}
        assert bulk == {stream.rows.changelog_topic.get_topic_name(),
                        stream.users.changelog_topic.get_topic_name(),
                        stream.item_neighbors_topic.get_topic_name(),
                        f"{stream.settings.app_id}-neighbors"}
        assert stream.outbox.sink_for(stream.recommendations_topic.get_topic_name()) is (
            stream.outbox.sink)
    finally:
        stream.model_process.close()
        stream.ranker.close()
