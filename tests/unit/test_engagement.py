"""Churn alerts and marketing triggers in core: each fires once, in any read order."""

from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.engagement import (
    PRIOR_MODEL,
    Engagement,
    EngagementConfig,
    ValueTiers,
    fit_churn_model,
)
from core.events import Event

DAY = 86_400.0
CONFIG = EngagementConfig(cart_window_seconds=3600.0, churn_threshold=0.3)


def buy(item: str, ts: float, price: float = 10.0) -> Event:
    return Event("u", item, ts, "purchase", price=price)


def test_abandoned_cart_fires_once_after_the_window() -> None:
    e = Engagement()
    e.observe(Event("u", "x", 0.0, "add_to_cart"), CONFIG)
    assert e.due(3599.0, None, CONFIG) == []
    fired = e.due(3600.0, None, CONFIG)
    assert [(t.kind, t.details["item_id"]) for t in fired] == [("cart_abandoned", "x")]
    assert e.due(10_000.0, None, CONFIG) == []


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_cart_outcome_does_not_depend_on_read_order(order: tuple[int, ...]) -> None:
    events = [Event("u", "y", 0.0, "add_to_cart"), buy("y", 600.0),
              Event("u", "z", 700.0, "add_to_cart")]
    e = Engagement()
    for i in order:
        e.observe(events[i], CONFIG)
    assert [t.details["item_id"] for t in e.due(5000.0, None, CONFIG)] == ["z"]


def test_removal_cancels_the_cart_item_and_a_later_add_rearms_it() -> None:
    # adds and removals share the clicks topic, so they are read in order
    e = Engagement()
    e.observe(Event("u", "x", 50.0, "add_to_cart"), CONFIG)
    e.observe(Event("u", "x", 100.0, "remove_from_cart"), CONFIG)
    assert e.cart == {} and e.due(10_000.0, None, CONFIG) == []
    e.observe(Event("u", "x", 200.0, "add_to_cart"), CONFIG)
    assert e.cart == {"x": 200.0}


def test_lapsed_customer_is_alerted_once_and_again_only_after_buying() -> None:
    e = Engagement()
    for week in (0, 1, 2):
        e.observe(buy(f"i{week}", week * 7 * DAY), CONFIG)
    assert e.due(3 * 7 * DAY, PRIOR_MODEL, CONFIG) == []  # recent buyer: alive
    fired = e.due(52 * 7 * DAY, PRIOR_MODEL, CONFIG)
    assert [t.kind for t in fired] == ["churn_risk"]
    details = fired[0].details
    assert details["p_alive"] < 0.3 and details["frequency"] == 2
    assert details["action"] in {"personal_offer", "discount_coupon", "reminder_email"}
    assert e.due(60 * 7 * DAY, PRIOR_MODEL, CONFIG) == []  # not twice
    back = e.observe(buy("again", 61 * 7 * DAY), CONFIG)
    assert [t.kind for t in back] == ["win_back"] and not e.alerted
    assert e.observe(buy("same-day", 61 * 7 * DAY + 60), CONFIG) == []


def test_active_customer_is_never_alerted() -> None:
    e = Engagement()
    for week in range(53):
        e.observe(buy(f"w{week}", week * 7 * DAY), CONFIG)
    assert e.due(52 * 7 * DAY + DAY, PRIOR_MODEL, CONFIG) == []


def test_value_tiers_split_in_terciles() -> None:
    tiers = ValueTiers.from_values([float(v) for v in range(1, 10)])
    assert [tiers.tier(v) for v in (1.0, 5.0, 9.0)] == ["low", "medium", "high"]


def test_fit_needs_enough_customers_and_uses_counts() -> None:
    assert fit_churn_model([[1, 5, 30, 10, 1]], CONFIG) is PRIOR_MODEL
    rows = [[0, 0, 40, 0, 30], [1, 10, 40, 12, 20], [3, 35, 40, 20, 15], [2, 5, 40, 8, 10]]
    model = fit_churn_model(rows, CONFIG)
    assert model.fitted and model.params.customers == 75 and model.params.period_days == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add_to_cart", "remove_from_cart", "purchase"]),
                          st.sampled_from("abc"), st.integers(0, 20_000)), max_size=25))
def test_state_round_trips_through_json(rows: list[tuple[str, str, int]]) -> None:
    e = Engagement()
    for kind, item, ts in rows:
        e.observe(Event("u", item, float(ts + 1), kind, price=1.0), CONFIG)
    e.due(30_000.0, PRIOR_MODEL, CONFIG)
    copy = Engagement.from_state(orjson.loads(orjson.dumps(e.to_state())))
    assert copy.to_state() == e.to_state()
