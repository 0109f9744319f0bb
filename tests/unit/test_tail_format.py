"""`recostream tail` line formatting: pure functions of a record and the current time."""

from __future__ import annotations

import base64

import orjson
import pytest

from streams.cli.tail import (
    FORMATTERS,
    LIVE_WINDOW_S,
    TailRecord,
    format_age,
    format_duration,
    format_items,
    format_record,
    raw_json,
)

NOW = 1_750_000_000.0  # the wall clock the tests pretend it is


def record(topic: str, value: object, *, key: bytes | None = b"u12",
           published: float = NOW - 0.5) -> TailRecord:
    raw = value if isinstance(value, bytes) or value is None else orjson.dumps(value)
    return TailRecord(topic=topic, partition=2, offset=1234, key=key, value=raw,
                      timestamp_ms=int(published * 1000))


def recommendation(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "user_id": "u12",
        "items": [{"item_id": f"i{n}", "score": 0.9 - n / 10} for n in range(5)],
        "ts": NOW - 1.2,
        "model_version": 4,
        "trigger": "purchase",
    }
    return body | overrides


def test_every_output_topic_has_a_formatter() -> None:
    assert {"recommendations", "dead-letters", "item-neighbors", "churn-alerts",
            "marketing-triggers"} <= set(FORMATTERS)


def test_recommendation_line_shows_user_items_trigger_model_and_age() -> None:
    line = format_record(record("recommendations", recommendation()), NOW)
    assert line == ("user u12  ← 5 items: i0 (0.90), i1 (0.80), i2 (0.70), … | "
                    "trigger purchase | model v4 | age 1.2 s")


def test_recommendation_of_historic_event_time_shows_age_since_published() -> None:
    # A replay of ML-100k: ts is in 1997, so "now - ts" would say 28 years; the useful
    # figure is how long ago the worker published the list.
    line = format_record(
        record("recommendations", recommendation(ts=874_729_682.0), published=NOW - 0.3), NOW)
    assert line.endswith("| age 0.30 s (published), event 1997-09-20 04:28:02Z")


def test_recommendation_edge_shapes() -> None:
    empty = format_record(record("recommendations", recommendation(items=[])), NOW)
    assert "user u12  ← no items |" in empty
    one = format_record(record("recommendations", recommendation(
        items=[{"item_id": "i3", "score": 1}], model_version="ease-7", trigger=None)), NOW)
    assert one.startswith("user u12  ← 1 item: i3 (1.00) | model ease-7 | age")
    assert "trigger" not in one


def test_age_switches_between_event_time_and_publication_time() -> None:
    rec = record("recommendations", None, published=NOW - 2.0)
    assert format_age(rec, NOW - 5.0, NOW) == "age 5.0 s"
    assert format_age(rec, NOW - LIVE_WINDOW_S - 10, NOW).startswith("age 2.0 s (published)")
    assert format_age(rec, None, NOW) == "age 2.0 s (published)"
    assert format_age(rec, "yesterday", NOW) == "age 2.0 s (published)"


def test_durations_and_item_lists() -> None:
    assert format_duration(0.004) == "0.00 s"
    assert format_duration(90 * 60) == "1.5 h"
    assert format_duration(-0.25) == "-0.25 s"  # a producer clock ahead of ours shows
    assert format_items(["a", "b", "c"]) == "a, b, c"
    assert format_items(["a", "b", "c", "d"]) == "a, b, c, …"
    assert format_items([]) == ""


def test_dead_letter_line_has_reason_source_position_and_payload_preview() -> None:
    payload = b'{"user_id": "u1", "item_id": 12, "ts": "soon"}'
    letter = {"reason": "bad_timestamp", "detail": "ts 'soon' is not ISO-8601",
              "topic": "clicks", "partition": 3, "offset": 41,
              "payload_b64": base64.b64encode(payload).decode()}
    line = format_record(record("dead-letters", letter, published=NOW - 4), NOW)
    assert line.startswith("bad_timestamp  clicks[3]@41: ts 'soon' is not ISO-8601 | ")
    assert f"| {len(payload)} B " + '{"user_id": "u1", "item_id": 12, "ts": "soon"}' in line
    assert line.endswith("| age 4.0 s (published)")


def test_dead_letter_preview_is_one_short_line_even_for_binary_payloads() -> None:
    payload = b"\x00\xff" + b"x" * 500 + b"\n"
    letter = {"reason": "invalid_json", "detail": "", "topic": "purchases", "partition": 0,
              "offset": 7, "payload_b64": base64.b64encode(payload).decode()}
    line = format_record(record("dead-letters", letter), NOW)
    assert "\n" not in line
    assert "503 B \\x00\\xff" in line and "…" in line
    assert len(line) < 160
    bad = format_record(record("dead-letters", letter | {"payload_b64": "%%%"}), NOW)
    assert "payload is not base64" in bad


def test_item_neighbors_and_tombstone() -> None:
    body = {"item_id": "i3", "neighbors": [{"item_id": "i7", "score": 0.912},
                                           {"item_id": "i9", "score": 0.5}],
            "model_version": 12}
    assert format_record(record("item-neighbors", body, key=b"i3"), NOW) == (
        "item i3  ~ 2 neighbours: i7 (0.91), i9 (0.50) | model v12")
    assert format_record(record("item-neighbors", None, key=b"i3"), NOW) == (
        "item i3  ~ removed (tombstone)")


def test_churn_alert_line() -> None:
    alert = {"user_id": "u12", "p_alive": 0.183, "expected_purchases_next_30d": 0.42,
             "frequency": 3, "recency": 12.0, "T": 40.0, "monetary_value": 123.456,
             "value_tier": "gold", "recommended_items": ["i3", "i7"], "action": "coupon",
             "ts": NOW - 60}
    assert format_record(record("churn-alerts", alert), NOW) == (
        "user u12  churn risk: p_alive 0.18 | 3 repeat purchases | 0.42 expected in 30 d | "
        "value 123.46 (gold) | action coupon | offer i3, i7 | age 1.0 min")


def test_marketing_trigger_line() -> None:
    trigger = {"user_id": "u12", "trigger": "cart_abandoned", "item_id": "i9",
               "reason": "add_to_cart without purchase within 3600 s",
               "recommended_items": [{"item_id": "i3", "score": 0.8}], "ts": NOW - 7200}
    assert format_record(record("marketing-triggers", trigger), NOW) == (
        "user u12  cart_abandoned i9 | reason add_to_cart without purchase within 3600 s | "
        "offer i3 (0.80) | age 2.0 h")


def test_input_events() -> None:
    click = {"user_id": "u1", "item_id": "i9", "ts": NOW - 3, "type": "view", "value": 4.0}
    assert format_record(record("clicks", click), NOW) == "user u1  view i9 (value 4) | age 3.0 s"
    buy = {"user_id": "u1", "item_id": "i9", "ts": NOW - 3, "quantity": 2, "price": 9.5}
    assert format_record(record("purchases", buy), NOW) == (
        "user u1  bought 2 of i9 at 9.50 | age 3.0 s")


def test_a_renamed_topic_is_formatted_as_the_kind_given() -> None:
    rec = record("shop.recommendations", recommendation())
    assert format_record(rec, NOW).startswith("key u12 | {")
    assert format_record(rec, NOW, "recommendations").startswith("user u12  ← 5 items")


@pytest.mark.parametrize(
    "value",
    [b"not json", b"[1, 2]", orjson.dumps({"user_id": "u12"}),
     orjson.dumps(recommendation(items="i1,i2")), None],
)
def test_unexpected_values_fall_back_to_the_generic_line(value: bytes | None) -> None:
    line = format_record(record("recommendations", value), NOW)
    assert line.startswith("(unexpected value) key u12 | ")


def test_other_topics_show_key_and_truncated_value() -> None:
    line = format_record(record("audit", {"blob": "x" * 500}, key=None), NOW)
    assert line.startswith('key null | {"blob":"xxx')
    assert line.endswith("…") and len(line) < 140


def test_raw_json_keeps_the_bytes_of_one_line_values() -> None:
    body = b'{"user_id": "u1",  "ts": 1e3}'
    assert raw_json(record("clicks", body)) == body.decode()
    assert raw_json(record("clicks", b'{\n"a": 1\n}')) == '{"a":1}'
    assert raw_json(record("clicks", b"two\nlines")) == '"two\\nlines"'
    assert raw_json(record("item-neighbors", None)) == "null"
