"""The input contract: one shop event, and the validation every caller shares.

The stream decodes bytes (with orjson) and the dataset loaders parse files; both
hand the resulting mapping to :func:`parse_event`, so a message is accepted or
rejected for the same reason everywhere.

>>> ev = parse_event({"user_id": "u1", "item_id": "i9", "ts": 10, "type": "view"}, "clicks")
>>> (ev.user_id, ev.item_id, ev.ts, ev.type)
('u1', 'i9', 10.0, 'view')
>>> parse_event({"user_id": "u1", "ts": 10, "type": "view"}, "clicks")
Traceback (most recent call last):
...
core.events.InvalidEvent: missing_field: item_id is required
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

CLICK_TYPES = frozenset({"view", "click", "add_to_cart", "remove_from_cart"})
PURCHASE = "purchase"
TOPICS = ("clicks", "purchases")

# Bounds on values we accept; anything outside is an "absurd value".
MIN_TS = 1.0  # 1970-01-01T00:00:01Z
MAX_TS = 4_102_444_800.0  # 2100-01-01T00:00:00Z
#: Ids are bounded in UTF-8 bytes, not characters: what the records and the state
#: that carry them weigh is bytes (256 emoji would be 1 KiB).
MAX_ID_BYTES = 256
MAX_QUANTITY = 10_000
MAX_PRICE = 1e9
MIN_VALUE, MAX_VALUE = 1.0, 5.0
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f]")
MAX_MESSAGE_BYTES = 64 * 1024

#: Every reason an input can be rejected for, with what it means. Dead-letter
#: records carry the key; the metrics count by it.
REJECTION_REASONS: dict[str, str] = {
    "oversized": f"message larger than the limit ({MAX_MESSAGE_BYTES} bytes by default)",
    "key_too_long": "message key longer than the limit",
    "invalid_json": "payload is not valid UTF-8 JSON",
    "not_an_object": "payload is JSON but not an object",
    "unknown_topic": "event arrived on a topic that carries no events",
    "missing_field": "a required field is absent or null",
    "wrong_type": "a field has the wrong JSON type",
    "empty_id": "an id is empty",
    "id_too_long": f"an id is longer than {MAX_ID_BYTES} bytes in UTF-8",
    "unknown_event_type": "type is not one the topic allows",
    "bad_timestamp": "ts is not epoch seconds or ISO-8601 within 1970-2100",
    "future_timestamp": "ts is later than the clock allows (the wall clock plus an allowance)",
    "value_out_of_range": f"value is outside [{MIN_VALUE:g}, {MAX_VALUE:g}]",
    "bad_quantity": f"quantity is not an integer in [1, {MAX_QUANTITY}]",
    "bad_price": f"price is not a number in [0, {MAX_PRICE:g}]",
    "output_rejected": "a record the worker wrote was refused by the broker for its content "
                       "(too large, invalid); the dead letter names the output topic and key",
}


class InvalidEvent(ValueError):
    """An input that cannot be used; ``reason`` is a key of REJECTION_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REJECTION_REASONS:
            raise KeyError(f"unregistered rejection reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Event:
    """One validated click or purchase. ``type`` is ``purchase`` for purchases."""

    user_id: str
    item_id: str
    ts: float
    type: str
    event_id: str | None = None
    session_id: str | None = None
    order_id: str | None = None
    value: float | None = None
    quantity: int = 1
    price: float | None = None

    @property
    def is_purchase(self) -> bool:
        return self.type == PURCHASE

    def to_dict(self) -> dict[str, object]:
        """The event in contract form (omitting absent optional fields)."""
        out: dict[str, object] = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "ts": self.ts,
        }
        if not self.is_purchase:
            out["type"] = self.type
        for name in ("event_id", "session_id", "order_id", "value", "price"):
            field_value = getattr(self, name)
            if field_value is not None:
                out[name] = field_value
        if self.is_purchase and self.quantity != 1:
            out["quantity"] = self.quantity
        return out

    def topic(self) -> str:
        return "purchases" if self.is_purchase else "clicks"


def parse_timestamp(raw: object) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive means UTC).

    >>> parse_timestamp("1997-09-30T00:00:00Z")
    875577600.0
    >>> parse_timestamp(875577600)
    875577600.0
    """
    if isinstance(raw, bool):
        raise InvalidEvent("bad_timestamp", "ts is a boolean")
    if isinstance(raw, int | float):
        ts = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidEvent("bad_timestamp", f"ts {raw[:40]!r} is not ISO-8601") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ts = moment.timestamp()
    else:
        raise InvalidEvent("bad_timestamp", f"ts has type {type(raw).__name__}")
    if not (math.isfinite(ts) and MIN_TS <= ts < MAX_TS):
        raise InvalidEvent("bad_timestamp", f"ts {ts!r} is outside 1970-2100")
    return ts


def _required_id(obj: Mapping[str, object], name: str) -> str:
    raw = obj.get(name)
    if raw is None:
        raise InvalidEvent("missing_field", f"{name} is required")
    return _checked_id(raw, name)


def _optional_id(obj: Mapping[str, object], name: str) -> str | None:
    raw = obj.get(name)
    return None if raw is None else _checked_id(raw, name)


def _checked_id(raw: object, name: str) -> str:
    # Integer ids are common in trackers; accept them as their decimal text.
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string, got {type(raw).__name__}")
    if not raw:
        raise InvalidEvent("empty_id", f"{name} is empty")
    if not raw.isprintable() and _CONTROL_CHARACTERS.search(raw):
        # JSON writes each as six bytes (\u0000): ids are bounded as written
        raise InvalidEvent("wrong_type", f"{name} contains control characters")
    # An ASCII id (the common case) is as many bytes as characters: no encoding.
    if raw.isascii():
        size = len(raw)
    else:
        try:
            size = len(raw.encode())
        except UnicodeEncodeError:  # a lone surrogate: no key or record could carry it
            raise InvalidEvent("wrong_type", f"{name} is not valid Unicode text") from None
    if size > MAX_ID_BYTES:
        raise InvalidEvent("id_too_long", f"{name} has {size} bytes in UTF-8")
    return raw


def _optional_number(obj: Mapping[str, object], name: str) -> float | None:
    raw = obj.get(name)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidEvent("wrong_type", f"{name} must be a number, got {type(raw).__name__}")
    return float(raw)


def parse_event(obj: object, topic: str, latest_ts: float = MAX_TS) -> Event:
    """Validate a decoded message from ``topic`` and return the event.

    ``latest_ts``: the latest timestamp accepted (the stream passes the wall
    clock plus an allowance: one event from the far future would move event
    time for good). Unknown extra fields are ignored. Raises
    :class:`InvalidEvent` with the reason otherwise.

    >>> parse_event({"user_id": "u", "item_id": "i", "ts": "2024-01-01", "quantity": 2},
    ...             "purchases").quantity
    2
    >>> parse_event({"user_id": "u", "item_id": "i", "ts": 2e9}, "purchases", latest_ts=1.8e9)
    Traceback (most recent call last):
    ...
    core.events.InvalidEvent: future_timestamp: ts 2000000000.0 is 200000000 s past the ...
    """
    if not isinstance(obj, Mapping):
        raise InvalidEvent("not_an_object", f"payload is a JSON {type(obj).__name__}")
    if topic not in TOPICS:
        raise InvalidEvent("unknown_topic", f"topic {topic!r} carries no events")
    user_id = _required_id(obj, "user_id")
    item_id = _required_id(obj, "item_id")
    if obj.get("ts") is None:
        raise InvalidEvent("missing_field", "ts is required")
    ts = parse_timestamp(obj["ts"])
    if ts > latest_ts:
        raise InvalidEvent("future_timestamp",
                           f"ts {ts!r} is {ts - latest_ts:.0f} s past the latest accepted")
    event_id = _optional_id(obj, "event_id")
    if topic == "clicks":
        kind = obj.get("type")
        if kind is None:
            raise InvalidEvent("missing_field", "type is required on clicks")
        if not isinstance(kind, str):
            raise InvalidEvent("wrong_type", f"type must be a string, got {type(kind).__name__}")
        if kind not in CLICK_TYPES:
            raise InvalidEvent("unknown_event_type", f"type {kind[:40]!r} is not a click type")
        value = _optional_number(obj, "value")
        if value is not None and not MIN_VALUE <= value <= MAX_VALUE:
            raise InvalidEvent("value_out_of_range", f"value {value!r}")
        return Event(
            user_id=user_id,
            item_id=item_id,
            ts=ts,
            type=kind,
            event_id=event_id,
            session_id=_optional_id(obj, "session_id"),
            value=value,
        )
    quantity_raw = obj.get("quantity", 1)
    if quantity_raw is None:
        quantity_raw = 1
    if isinstance(quantity_raw, float) and quantity_raw.is_integer():
        quantity_raw = int(quantity_raw)
    if (
        isinstance(quantity_raw, bool)
        or not isinstance(quantity_raw, int)
        or not 1 <= quantity_raw <= MAX_QUANTITY
    ):
        raise InvalidEvent("bad_quantity", f"quantity {quantity_raw!r}")
    price = _optional_number(obj, "price")
    if price is not None and not (math.isfinite(price) and 0.0 <= price <= MAX_PRICE):
        raise InvalidEvent("bad_price", f"price {price!r}")
    return Event(
        user_id=user_id,
        item_id=item_id,
        ts=ts,
        type=PURCHASE,
        event_id=event_id,
        order_id=_optional_id(obj, "order_id"),
        quantity=quantity_raw,
        price=price,
    )

