from __future__ import annotations

import pytest

from core.events import REJECTION_REASONS, Event, InvalidEvent, parse_event, parse_timestamp

VALID_CLICK = {"user_id": "u1", "item_id": "i1", "ts": 1_700_000_000, "type": "view"}
VALID_PURCHASE = {"user_id": "u1", "item_id": "i1", "ts": 1_700_000_000, "price": 9.5}


def test_valid_click_keeps_known_fields_and_ignores_extras() -> None:
    ev = parse_event({**VALID_CLICK, "event_id": "e1", "value": 4, "extra": [1, 2]}, "clicks")
    assert ev == Event("u1", "i1", 1_700_000_000.0, "view", event_id="e1", value=4.0)


def test_valid_purchase_defaults_quantity() -> None:
    ev = parse_event(VALID_PURCHASE, "purchases")
    assert ev.is_purchase and ev.quantity == 1 and ev.price == 9.5


def test_integer_ids_become_text() -> None:
    ev = parse_event({**VALID_CLICK, "user_id": 42, "item_id": 7}, "clicks")
    assert (ev.user_id, ev.item_id) == ("42", "7")


def test_iso_timestamps_with_and_without_zone_agree() -> None:
    assert parse_timestamp("2024-01-01T00:00:00Z") == parse_timestamp("2024-01-01T00:00:00")
    assert parse_timestamp("2024-01-01T01:00:00+01:00") == parse_timestamp("2024-01-01")


@pytest.mark.parametrize(
    ("payload", "topic", "reason"),
    [
        ([1, 2], "clicks", "not_an_object"),
        (VALID_CLICK, "orders", "unknown_topic"),
        ({**VALID_CLICK, "user_id": None}, "clicks", "missing_field"),
        ({k: v for k, v in VALID_CLICK.items() if k != "ts"}, "clicks", "missing_field"),
        ({k: v for k, v in VALID_CLICK.items() if k != "type"}, "clicks", "missing_field"),
        ({**VALID_CLICK, "item_id": 1.5}, "clicks", "wrong_type"),
        ({**VALID_CLICK, "type": 3}, "clicks", "wrong_type"),
        ({**VALID_CLICK, "user_id": ""}, "clicks", "empty_id"),
        ({**VALID_CLICK, "user_id": "x" * 300}, "clicks", "id_too_long"),
        ({**VALID_CLICK, "type": "purchase"}, "clicks", "unknown_event_type"),
        ({**VALID_CLICK, "ts": "yesterday"}, "clicks", "bad_timestamp"),
        ({**VALID_CLICK, "ts": -5}, "clicks", "bad_timestamp"),
        ({**VALID_CLICK, "ts": 1e12}, "clicks", "bad_timestamp"),
        ({**VALID_CLICK, "ts": True}, "clicks", "bad_timestamp"),
        ({**VALID_CLICK, "value": 9}, "clicks", "value_out_of_range"),
        ({**VALID_CLICK, "value": "5"}, "clicks", "wrong_type"),
        ({**VALID_PURCHASE, "quantity": 0}, "purchases", "bad_quantity"),
        ({**VALID_PURCHASE, "quantity": 2.5}, "purchases", "bad_quantity"),
        ({**VALID_PURCHASE, "price": -1}, "purchases", "bad_price"),
        ({**VALID_PURCHASE, "price": float("nan")}, "purchases", "bad_price"),
    ],
)
def test_rejections_carry_their_reason(payload: object, topic: str, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event(payload, topic)
    assert info.value.reason == reason
    assert reason in REJECTION_REASONS


def test_unregistered_reason_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        InvalidEvent("because", "no")


def test_to_dict_round_trips_through_parse() -> None:
    cases = ((VALID_CLICK, "clicks"), ({**VALID_PURCHASE, "quantity": 3}, "purchases"))
    for payload, topic in cases:
        ev = parse_event(payload, topic)
        assert parse_event(ev.to_dict(), ev.topic()) == ev
