"""Churn alerts and marketing triggers on a real broker, with event time advanced by events."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from core.events import Event
from streams.runtime.partitions import user_partition
from streams.runtime.settings import Settings
from tests.integration.stream_harness import (
    PARTITIONS,
    WorkerProcess,
    consume_all,
    create_topics,
    event_messages,
    free_port,
    produce,
    worker_env,
)

pytestmark = pytest.mark.integration

DAY = 86_400.0
T0 = 1_700_000_000.0  # a Tuesday, 22:13 UTC
WINDOW = 3_600.0


@pytest.fixture
def churn_worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[Settings,
                                                                          WorkerProcess]]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings(
        broker=f"kafka://{kafka_bootstrap}", app_id=f"rc-{tag}", topic_prefix=f"c{tag}.",
        partitions=PARTITIONS, store="memory://", data_dir=tmp_path / "worker",
        web_port=free_port(), refresh_seconds=1.0, churn_seconds=1.0, session_timeout=10.0,
        batch_seconds=0.1, cart_window_seconds=WINDOW,
    )
    create_topics(kafka_bootstrap, settings.topic_prefix)
    worker = WorkerProcess(worker_env(settings), tmp_path / "worker.log", settings.web_port)
    worker.start()
    yield settings, worker
    worker.stop()


def purchase(user: str, item: str, ts: float, price: float = 10.0) -> Event:
    return Event(user, item, ts, "purchase", price=price)


def triggers_by_kind(kafka_bootstrap: str, settings: Settings, expect: int
                     ) -> dict[str, list[dict[str, object]]]:
    records = consume_all(kafka_bootstrap, settings.topic("marketing-triggers"),
                          expect=expect, timeout=20)
    out: dict[str, list[dict[str, object]]] = {}
    for key, value in records:
        record = orjson.loads(value)
        assert key == record["user_id"].encode()
        out.setdefault(record["kind"], []).append(record)
    return out


def test_lapsed_customer_alerted_once_active_one_never_and_carts(
    kafka_bootstrap: str, churn_worker: tuple[Settings, WorkerProcess]
) -> None:
    settings, worker = churn_worker
    events: list[Event] = [
        # lapsed: three purchase days in the first two weeks, then silence
        purchase("lapsed", "a", T0), purchase("lapsed", "b", T0 + 7 * DAY),
        purchase("lapsed", "c", T0 + 14 * DAY),
        # abandons a cart on day 0
        Event("cart-left", "x", T0 + 60, "add_to_cart"),
        # buys what was put in the cart within the window: nothing fires
        Event("cart-bought", "y", T0 + 120, "add_to_cart"),
        purchase("cart-bought", "y", T0 + 120 + WINDOW / 2),
        # takes it out of the cart again: nothing fires either
        Event("cart-removed", "z", T0 + 180, "add_to_cart"),
        Event("cart-removed", "z", T0 + 240, "remove_from_cart"),
    ]
    # active: buys every week for a year
    events += [purchase("active", f"w{week}", T0 + week * 7 * DAY) for week in range(53)]
    # Event time is kept per partition: later views on every partition advance it.
    fillers = [f"visitor-{n}" for n in range(24)]
    assert {user_partition(u, PARTITIONS) for u in fillers} == set(range(PARTITIONS))
    events += [Event(u, "front-page", T0 + 364 * DAY, "view") for u in fillers]
    events.sort(key=lambda e: e.ts)
    produce(kafka_bootstrap, event_messages(settings.topic_prefix, events))
    health = worker.wait_for(
        lambda h: h["counters"]["applied"] == len(events)
        and h["counters"]["triggers_out"].get("churn_risk", 0) >= 1
        and h["counters"]["triggers_out"].get("cart_abandoned", 0) >= 1,
        "the churn alert and the abandoned cart", timeout=60)
    time.sleep(3)  # several more scans: nothing fires twice
    health = worker.health()
    by_kind = triggers_by_kind(kafka_bootstrap, settings,
                               expect=sum(health["counters"]["triggers_out"].values()))
    assert health["counters"]["triggers_out"] == {"churn_risk": 1, "cart_abandoned": 1}, [
        (t["user_id"], t["kind"], t["ts"]) for ts in by_kind.values() for t in ts]

    assert [t["user_id"] for t in by_kind["churn_risk"]] == ["lapsed"]
    assert [t["user_id"] for t in by_kind["cart_abandoned"]] == ["cart-left"]
    assert by_kind["cart_abandoned"][0]["details"]["item_id"] == "x"  # type: ignore[index]

    alerts = [orjson.loads(v) for _, v in consume_all(
        kafka_bootstrap, settings.topic("churn-alerts"), expect=1, timeout=10)]
    assert [a["user_id"] for a in alerts] == ["lapsed"]
    alert = alerts[0]
    assert set(alert) >= {"user_id", "p_alive", "expected_purchases_next_30d", "frequency",
                          "recency", "T", "monetary_value", "value_tier", "recommended_items",
                          "action", "ts"}
    assert alert["p_alive"] < settings.churn_threshold
    assert alert["frequency"] == 2 and alert["ts"] == T0 + 364 * DAY
    assert alert["monetary_value"] == pytest.approx(10.0)

    churn = worker.get("/users/lapsed/churn")
    assert churn["alerted"] is True and churn["p_alive"] < settings.churn_threshold
    active = worker.get("/users/active/churn")
    assert active["alerted"] is False and active["p_alive"] > 0.9

    # the lapsed customer comes back: one win_back, and the alert is re-armed
    comeback = [purchase("lapsed", "d", T0 + 365 * DAY)]
    produce(kafka_bootstrap, event_messages(settings.topic_prefix, comeback))
    worker.wait_for(lambda h: h["counters"]["triggers_out"].get("win_back", 0) == 1,
                    "the win-back trigger", timeout=30)
    by_kind = triggers_by_kind(kafka_bootstrap, settings, expect=3)
    assert [t["user_id"] for t in by_kind["win_back"]] == ["lapsed"]
    assert worker.get("/users/lapsed/churn")["alerted"] is False
    counts = Counter(t["trigger_id"] for kind in by_kind.values() for t in kind)
    assert all(n == 1 for n in counts.values())
