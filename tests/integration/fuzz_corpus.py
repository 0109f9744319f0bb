"""A corpus of input messages, each labelled with what the worker must make of it.

Every message is a valid event with at most one defect on top, so the label is
known without asking the code under test: None (applied; some from producers that
key or partition otherwise, forwarded first), or the dead-letter reason. Seeded,
so a failure reproduces.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from core.events import Event, parse_event

#: Event time of the corpus's valid events (and the base of its defects).
T0 = 1_700_000_000.0


@dataclass(frozen=True)
class Labelled:
    """One message of the corpus: where it goes, what it is, what must become of it."""

    topic: str  # contract topic
    key: bytes | None
    value: bytes
    partition: int | None  # None: by the key
    reason: str | None  # the dead letter's reason; None: applied
    event: Event | None  # the event applied (reason None)


class Corpus:
    """Builds labelled messages; ``max_message_bytes``/``max_key_bytes`` as the
    worker is configured."""

    def __init__(self, seed: int, partitions: int, max_message_bytes: int,
                 max_key_bytes: int, users: int = 40, items: int = 300) -> None:
        self.rng = random.Random(seed)
        self.partitions = partitions
        self.max_message_bytes = max_message_bytes
        self.max_key_bytes = max_key_bytes
        self.users = [f"f{n}" for n in range(users)] + ["ünï-cödé", "用户7"]
        self.items = [f"sku-{n}" for n in range(items)] + ["🍕pizza", "a/b?c=d&e", "x\"y\\z"]
        self.clock = T0
        self.sequence = 0

    # -- valid events -------------------------------------------------------------

    def _body(self, topic: str, user: str) -> dict[str, Any]:
        self.clock += self.rng.uniform(0.0, 30.0)
        self.sequence += 1
        body: dict[str, Any] = {"user_id": user, "item_id": self.rng.choice(self.items),
                                "ts": self.clock}
        if self.rng.random() < 0.2:
            body["ts"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock))
            self.clock = float(int(self.clock))  # what the string says
        if topic == "clicks":
            body["type"] = self.rng.choice(["view", "view", "click", "add_to_cart",
                                            "remove_from_cart"])
            if self.rng.random() < 0.1:
                body["value"] = self.rng.choice([1, 2.5, 5])
        else:
            if self.rng.random() < 0.5:
                body["quantity"] = self.rng.randint(1, 5)
            if self.rng.random() < 0.7:
                body["price"] = round(self.rng.uniform(0, 200), 2)
        if self.rng.random() < 0.3:
            body["event_id"] = f"ev-{self.sequence}"
        if self.rng.random() < 0.2:
            body["extra"] = {"nested": [1, {"x": None}], "ignored": True}
        return body

    def valid(self, user: str, routed: str = "keyed") -> Labelled:
        """A valid event of ``user``: ``keyed`` by the user, or from a producer that
        keys it by a device id (``device``) or partitions it by CRC32 (``crc32``).

        A user's events all go to one topic: the two topics are read apart, so the
        order of one user's clicks and purchases is not the order they were sent
        in, and the replay could not know the order they were applied in."""
        topic = ("clicks", "purchases")[zlib.crc32(user.encode()) % 3 == 0]
        body = self._body(topic, user)
        event = parse_event(body, topic)
        key: bytes | None = user.encode()
        partition = None
        if routed == "device":
            key = f"device-{user}".encode()
        elif routed == "crc32":
            partition = zlib.crc32(user.encode()) % self.partitions
        return Labelled(topic, key, orjson.dumps(body), partition, None, event)

    # -- one defect each -----------------------------------------------------------

    def broken(self) -> Labelled:
        """A message with one defect, and its reason."""
        reason, make = self.rng.choice(self._defects)
        topic, key, value = make(self)
        return Labelled(topic, key, value, None, reason, None)

    def _click(self) -> dict[str, Any]:
        return self._body("clicks", self.rng.choice(self.users))

    def _with(self, **changes: Any) -> tuple[str, bytes, bytes]:
        body = self._click()
        body.update(changes)
        for name, value in changes.items():
            if value is _ABSENT:
                del body[name]
        return "clicks", str(body.get("user_id", "k")).encode()[:64], orjson.dumps(body)

    def _junk(self) -> tuple[str, bytes, bytes]:
        value = orjson.dumps(self._click())
        choices: list[bytes] = [
            value[: self.rng.randint(1, len(value) - 1)],  # truncated
            bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(1, 64))) + b"\xff",
            b"",
            value + b"}",
            b'{"user_id": "u", "ts": NaN}',
            b"\xef\xbb\xbf" + value,  # a byte-order mark
            b'{"user_id": "\\ud800"}',  # a lone surrogate
        ]
        return "clicks", b"u", self.rng.choice(choices)

    def _not_an_object(self) -> tuple[str, bytes, bytes]:
        value = self.rng.choice([[1, 2], 3, "text", None, True, [self._click()]])
        return "purchases", b"u", orjson.dumps(value)

    def _oversized(self) -> tuple[str, bytes, bytes]:
        pad = "p" * (self.max_message_bytes + self.rng.randint(1, 5000))
        return "clicks", b"u", orjson.dumps({**self._click(), "pad": pad})

    def _long_key(self) -> tuple[str, bytes, bytes]:
        return ("clicks", b"K" * (self.max_key_bytes + self.rng.randint(1, 3000)),
                orjson.dumps(self._click()))

    def _purchase_with(self, **changes: Any) -> tuple[str, bytes, bytes]:
        body = self._body("purchases", self.rng.choice(self.users))
        body.update(changes)
        return "purchases", str(body["user_id"]).encode(), orjson.dumps(body)

    _defects: ClassVar[list[tuple[str, Callable[[Corpus], tuple[str, bytes, bytes]]]]] = [
        ("invalid_json", _junk),
        ("not_an_object", _not_an_object),
        ("oversized", _oversized),
        ("key_too_long", _long_key),
        ("missing_field", lambda c: c._with(user_id=_ABSENT)),
        ("missing_field", lambda c: c._with(item_id=None)),
        ("missing_field", lambda c: c._with(ts=_ABSENT)),
        ("missing_field", lambda c: c._with(type=_ABSENT)),
        ("wrong_type", lambda c: c._with(user_id=c.rng.choice([1.5, [1], {"a": 1}, True]))),
        ("wrong_type", lambda c: c._with(type=7)),
        ("wrong_type", lambda c: c._with(value="five")),
        ("wrong_type", lambda c: c._with(item_id="tab\there")),
        ("wrong_type", lambda c: c._purchase_with(price="9.99")),
        ("empty_id", lambda c: c._with(item_id="")),
        ("id_too_long", lambda c: c._with(item_id="é" * c.rng.randint(129, 400))),
        ("id_too_long", lambda c: c._with(user_id="u" * c.rng.randint(257, 2000))),
        ("unknown_event_type", lambda c: c._with(type=c.rng.choice(["hover", "", "VIEW"]))),
        ("bad_timestamp", lambda c: c._with(ts=c.rng.choice([-5, 0, 5e12, "yesterday",
                                                            "2024-13-45", False]))),
        ("future_timestamp",
         lambda c: c._with(ts=time.time() + c.rng.uniform(2, 300) * 86_400)),
        ("value_out_of_range", lambda c: c._with(value=c.rng.choice([0, 6, -1, 5.5]))),
        ("bad_quantity", lambda c: c._purchase_with(quantity=c.rng.choice([0, -1, 1.5, 10_001,
                                                                           "2"]))),
        ("bad_price", lambda c: c._purchase_with(price=c.rng.choice([-0.01, 1e10]))),
    ]


class _Absent:
    """A field to leave out."""


_ABSENT = _Absent()


def corpus(seed: int, size: int, partitions: int, max_message_bytes: int,
           max_key_bytes: int) -> list[Labelled]:
    """``size`` messages: about a third broken; of the valid ones, every fourth
    user's from a producer that keys or partitions otherwise (all of that user's,
    so that they stay in order)."""
    build = Corpus(seed, partitions, max_message_bytes, max_key_bytes)
    routes = {user: ("keyed", "keyed", "device", "crc32")[n % 4]
              for n, user in enumerate(build.users)}
    out: list[Labelled] = []
    while len(out) < size:
        if build.rng.random() < 0.35:
            out.append(build.broken())
        else:
            user = build.rng.choice(build.users)
            out.append(build.valid(user, routes[user]))
    return out
