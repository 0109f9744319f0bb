"""The largest record of each kind the worker writes, worked out from its settings.

Whatever comes in, nothing the worker writes may exceed what the broker takes
(``message.max.bytes``, 1 MiB by default): a record the broker refuses for its
size stopped the worker, which read the same input again after its restart and
stopped again, for good. So every structure behind a record is capped, and the
settings are refused at start-up when the caps would allow a record larger than
``RECOSTREAM_MAX_RECORD_BYTES``. The figures are worst cases: ids at their longest
(:data:`core.events.MAX_ID_BYTES`), every byte of them a quote or a backslash
(written as two bytes in JSON; control characters are refused at the input).

>>> class Caps:
...     k, neighbors, history, paired_items, max_row_width = 10, 100, 200, 50, 1400
...     max_user_ratings, max_user_purchases, dedup_ids = 500, 200, 256
...     max_cart_items, max_purchase_days, partitions = 50, 500, 4
...     max_record_bytes, max_key_bytes = 1_000_000, 1024
>>> bounds = record_bounds(Caps())
>>> max(bounds.values()) <= Caps.max_record_bytes
True
>>> dead_letter_payload_bytes(Caps())
746670
"""

from __future__ import annotations

from typing import Protocol

from core.events import MAX_ID_BYTES

#: An id as JSON: quotes around it, each byte at most two (``\\"``).
ID_JSON = 2 * MAX_ID_BYTES + 2
#: A float as orjson writes it, at most (``-1.7976931348623157e+308``).
NUMBER_JSON = 25
#: ``"id":number,`` in an object.
ENTRY_JSON = ID_JSON + 1 + NUMBER_JSON + 1
#: ``"id",`` in a list.
ITEM_JSON = ID_JSON + 1
#: ``{"item_id":"id","score":number,"source":"...","reason":"..."},`` in a
#: published list: the reason names at most one other item.
LISTED_ITEM_JSON = 2 * ID_JSON + NUMBER_JSON + 128
#: An applied offset: ``"fwd:purchases/1023":9223372036854775807,``.
SOURCE_JSON = 48
#: Field names, versions and small fields of any record.
FIXED_JSON = 2048


class RecordCaps(Protocol):
    """The settings the bounds follow from (:class:`streams.runtime.settings.Settings`)."""

    @property
    def k(self) -> int: ...
    @property
    def neighbors(self) -> int: ...
    @property
    def history(self) -> int: ...
    @property
    def paired_items(self) -> int: ...
    @property
    def max_row_width(self) -> int: ...
    @property
    def max_user_ratings(self) -> int: ...
    @property
    def max_user_purchases(self) -> int: ...
    @property
    def dedup_ids(self) -> int: ...
    @property
    def max_cart_items(self) -> int: ...
    @property
    def max_purchase_days(self) -> int: ...
    @property
    def partitions(self) -> int: ...
    @property
    def max_record_bytes(self) -> int: ...
    @property
    def max_key_bytes(self) -> int: ...


def sources(caps: RecordCaps) -> int:
    """Source partitions a state can record offsets of: both input topics, read
    directly or forwarded from any partition."""
    return 4 * caps.partitions


def row_pairs(max_row_width: int) -> int:
    """Pairs a row of C holds at most (see :func:`streams.runtime.state.prune_above`)."""
    return max_row_width + max_row_width // 4


def record_bounds(caps: RecordCaps) -> dict[str, int]:
    """The largest record of each kind, in bytes, by a name that says which
    setting bounds it."""
    user = (caps.max_user_ratings * ENTRY_JSON  # ratings
            + caps.history * ITEM_JSON  # recent items
            + caps.max_user_purchases * ENTRY_JSON * 2  # purchases, and for the cart
            + caps.dedup_ids * ITEM_JSON  # event ids
            + caps.max_cart_items * ENTRY_JSON
            + caps.max_purchase_days * 12
            + sources(caps) * SOURCE_JSON + FIXED_JSON)
    listed = caps.k * LISTED_ITEM_JSON + ID_JSON + FIXED_JSON
    return {
        "user state (RECOSTREAM_MAX_USER_RATINGS, _MAX_USER_PURCHASES, _HISTORY, "
        "_DEDUP_IDS, _MAX_CART_ITEMS, _MAX_PURCHASE_DAYS)": user,
        "row of C (RECOSTREAM_MAX_ROW_WIDTH)":
            row_pairs(caps.max_row_width) * ENTRY_JSON + sources(caps) * SOURCE_JSON
            + FIXED_JSON,
        "one co-occurrence update (RECOSTREAM_PAIR_WINDOW)":
            2 * (caps.paired_items + 1) * ITEM_JSON + ID_JSON + SOURCE_JSON + FIXED_JSON,
        "neighbour list (RECOSTREAM_NEIGHBORS)":
            caps.neighbors * LISTED_ITEM_JSON + ID_JSON + FIXED_JSON,
        "recommendation list or trigger (RECOSTREAM_K)": listed,
        "dead letter (RECOSTREAM_MAX_KEY_BYTES)":
            dead_letter_bytes(caps.max_key_bytes, dead_letter_payload_bytes(caps)),
    }


def dead_letter_bytes(key_bytes: int, payload_bytes: int) -> int:
    """A dead letter's size with a key and a payload prefix of these sizes: the
    key as the record's key and in base64, the payload in base64."""
    return key_bytes + 4 * ((key_bytes + 2) // 3) + 4 * ((payload_bytes + 2) // 3) + FIXED_JSON


def dead_letter_payload_bytes(caps: RecordCaps) -> int:
    """How much of a payload a dead letter keeps: as much as fits in a record
    beside the longest key (in base64); a larger payload is cut, its size and
    SHA-256 kept."""
    room = caps.max_record_bytes - dead_letter_bytes(caps.max_key_bytes, 0)
    return max(0, 3 * (room // 4))
