"""GET /metrics on a running worker: Prometheus text that moves when events flow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from core.events import Event
from streams.runtime.settings import Settings
from tests.integration.stream_harness import WorkerProcess, event_messages, produce

pytestmark = pytest.mark.integration


def test_metrics_move_when_events_flow(kafka_bootstrap: str, stream_settings: Settings,
                                       start_worker: Callable[[Settings], WorkerProcess],
                                       ml_slice: list[Event]) -> None:
    worker = start_worker(replace(stream_settings, exposure_lists=20))
    before = worker.metrics()
    assert before[("recostream_events_applied_total", ())] == 0
    first, second = ml_slice[:400], ml_slice[400:1000]
    clicks = stream_settings.topic("clicks")
    produce(kafka_bootstrap, [*event_messages(stream_settings.topic_prefix, first),
                              (clicks, b"u", b"{broken")])
    worker.wait_until_settled(len(first))
    middle = worker.metrics()
    assert middle[("recostream_events_in_total", (("topic", "clicks"),))] == len(first) + 1
    assert middle[("recostream_events_applied_total", ())] == len(first)
    assert middle[("recostream_dead_letters_total", (("reason", "invalid_json"),))] == 1
    assert middle[("recostream_recommendations_out_total", ())] > 0
    assert middle[("recostream_batch_size_count", ())] > 0
    assert middle[("recostream_batch_size_sum", ())] == len(first) + 1
    assert middle[("recostream_refresh_seconds_count", ())] > 0
    assert middle[("recostream_ranking_seconds_count", ())] > 0
    # the exposure of the last published lists (a window of 20: figures every 2)
    published = middle[("recostream_recommendations_out_total", ())]
    assert min(20, published - 1) <= middle[("recostream_exposure_lists", ())] <= min(20, published)
    lags = {k: v for k, v in middle.items() if k[0] == "recostream_consumer_lag"}
    assert lags and all(v == 0 for v in lags.values())

    produce(kafka_bootstrap, event_messages(stream_settings.topic_prefix, second))
    worker.wait_until_settled(len(first) + len(second))
    after = worker.metrics()
    assert after[("recostream_events_applied_total", ())] == len(first) + len(second)
    assert (after[("recostream_recommendations_out_total", ())]
            > middle[("recostream_recommendations_out_total", ())])
    # the second part's lists are ranked with a snapshot: they show items
    assert 0.0 < after[("recostream_catalogue_coverage", ())] <= 1.0
    assert 0.0 < after[("recostream_exposure_gini", ())] < 1.0
    assert after[("recostream_row_updates_applied_total", ())] == after[
        ("recostream_row_updates_sent_total", ())] > 0
