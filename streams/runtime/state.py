"""Table values of the stream, with the bookkeeping that makes effects idempotent.

Faust's exactly-once mode is broken, so the worker runs at-least-once and every
table value carries what was already applied to it, in the same changelog record
as the change itself: the last source offset per source partition (a replay of
the same offsets changes nothing) and, for users, the recent ``event_id`` values
(a producer's retry with a new offset changes nothing either).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from core.engagement import Engagement
from core.ratings import UserProfile
from core.repurchase import ItemRepurchases, Purchase
from core.snapshot_builder import FIGURES
from core.trending import trend_bump

if TYPE_CHECKING:
    from core.events import Event
    from core.recommender import Gain

STATE_VERSION = 1



def table_json(value: Any) -> bytes:
    """A table key or value as Faust's ``json`` codec writes it (orjson, non-str
    keys allowed), so that Faust's recovery reads the changelog records back.

    >>> table_json("u1"), table_json({"a": [1.0, 2]})
    (b'"u1"', b'{"a":[1.0,2]}')
    """
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def source_key(topic: str, partition: int) -> str:
    """The name under which offsets of one source partition are remembered."""
    return f"{topic}/{partition}"


@dataclass
class AppliedOffsets:
    """The last applied offset per source partition."""

    offsets: dict[str, int] = field(default_factory=dict)

    def seen(self, source: str, offset: int) -> bool:
        return offset <= self.offsets.get(source, -1)

    def mark(self, source: str, offset: int) -> None:
        if offset > self.offsets.get(source, -1):
            self.offsets[source] = offset


@dataclass
class UserState:
    """A user's profile plus what has been applied to it (the ``users`` table value)."""

    profile: UserProfile = field(default_factory=UserProfile)
    applied: AppliedOffsets = field(default_factory=AppliedOffsets)
    event_ids: list[str] = field(default_factory=list)
    engagement: Engagement = field(default_factory=Engagement)
    # how often each id occurs in event_ids, made when first needed: a lookup
    # instead of a scan of up to dedup_ids ids (the scan was a tenth of a batch's
    # time, py-spy); kept in step by mark, the only writer of event_ids
    _id_counts: dict[str, int] | None = field(default=None, init=False, repr=False,
                                              compare=False)

    def is_duplicate(self, source: str, offset: int, event_id: str | None) -> bool:
        return self.applied.seen(source, offset) or (
            event_id is not None and event_id in self._known_ids()
        )

    def mark(self, source: str, offset: int, event_id: str | None, keep_ids: int) -> None:
        self.applied.mark(source, offset)
        if event_id is not None:
            counts = self._known_ids()
            self.event_ids.append(event_id)
            counts[event_id] = counts.get(event_id, 0) + 1
            excess = len(self.event_ids) - keep_ids
            if excess > 0:
                for old in self.event_ids[:excess]:
                    left = counts[old] - 1
                    if left:
                        counts[old] = left
                    else:
                        del counts[old]
                del self.event_ids[:excess]

    def _known_ids(self) -> dict[str, int]:
        if self._id_counts is None:
            counts: dict[str, int] = {}
            for event_id in self.event_ids:
                counts[event_id] = counts.get(event_id, 0) + 1
            self._id_counts = counts
        return self._id_counts

    def to_json(self) -> dict[str, Any]:
        return {
            "v": STATE_VERSION,
            "profile": self.profile.to_state(),
            "applied": dict(self.applied.offsets),
            "event_ids": list(self.event_ids),
            "engagement": self.engagement.to_state(),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> UserState:
        if value is None:
            return cls()
        return cls(
            profile=UserProfile.from_state(value["profile"]),
            applied=AppliedOffsets({str(k): int(v) for k, v in value["applied"].items()}),
            event_ids=[str(e) for e in value["event_ids"]],
            engagement=Engagement.from_state(value.get("engagement")),
        )


class RowUpdate(NamedTuple):
    """One event's effect on one item's co-occurrence row.

    ``gained`` marks the row of the item the user gained (its user count and
    trending move); the other rows only gain the pair. What
    :meth:`CooccurrenceRow.apply_all` applies; on the wire a gain travels as
    :class:`RowGain`, one per partition of rows.
    """

    item_id: str
    pairs: Sequence[str]
    source: str
    offset: int
    ts: float
    gained: bool


#: :class:`RowUpdate`'s fields in a plain tuple.
RowUpdateFields = tuple[str, Sequence[str], str, int, float, bool]


class RowGain(NamedTuple):
    """One gain's row updates that fall in one partition of rows, as sent.

    A gain of item ``i`` after history ``h`` updates ``i``'s row (pairs ``h``)
    and each row in ``h`` (pair ``i``): ``pair_window + 1`` rows. Sent as one
    update per row, that was 51 JSON arrays per gain and a quarter of what the
    broker wrote; this form names the gain once per partition. ``history`` is
    the gained row's pairs when that row is in the partition, else None;
    ``rows`` the history items of the partition. A purchase of the item goes
    with the gained row's partition (``bought``; ``log_gap`` None for the
    customer's first purchase of it, see :class:`core.repurchase.Purchase`),
    with ``history`` None when it gained nothing. Sent as the JSON array of its
    fields (``orjson.dumps(..., default=tuple)``); arrays of the first six
    fields, as workers sent them before purchases, still apply.

    >>> gain = RowGain("c", None, "clicks/0", 9, 0.0, ["a"])
    >>> gain.updates()
    [('a', ('c',), 'clicks/0', 9, 0.0, False)]
    """

    item_id: str
    history: Sequence[str] | None
    source: str
    offset: int
    ts: float
    rows: Sequence[str]
    bought: bool = False
    log_gap: int | None = None

    def updates(self) -> list[RowUpdateFields]:
        """The updates of the rows this gain names, the gained row first, as plain
        tuples of :class:`RowUpdate`'s fields (a named tuple costs twice as much to
        make, and the rows agent makes 50 per gain)."""
        item_id, history, source, offset, ts, rows, *_ = self
        gained = (item_id,)
        updates: list[RowUpdateFields] = [] if history is None else [
            (item_id, history, source, offset, ts, True)]
        updates.extend([(j, gained, source, offset, ts, False) for j in rows])
        return updates

    def update_count(self) -> int:
        """How many rows this gain updates (:meth:`updates` without making them)."""
        return len(self.rows) + (self.history is not None or self.bought)


def split_gain(
    item_id: str, history: Sequence[str] | None, source: str, offset: int, ts: float,
    partition_of: Callable[[str], int], purchase: Purchase | None = None,
) -> dict[int, RowGain]:
    """An event's row updates by the partition of their rows: a gain's (``history``
    not None) and a purchase's.

    >>> split_gain("c", ["a", "b"], "clicks/0", 9, 0.0, {"a": 0, "b": 1, "c": 1}.get)
    ... # doctest: +NORMALIZE_WHITESPACE
    {1: RowGain(item_id='c', history=['a', 'b'], source='clicks/0', offset=9, ts=0.0,
                rows=['b'], bought=False, log_gap=None),
     0: RowGain(item_id='c', history=None, source='clicks/0', offset=9, ts=0.0, rows=['a'],
                bought=False, log_gap=None)}
    >>> split_gain("c", None, "purchases/0", 4, 0.0, {"c": 1}.get, Purchase(7))
    {1: RowGain(item_id='c', history=None, source='purchases/0', offset=4, ts=0.0, rows=[], \
bought=True, log_gap=7)}
    """
    own = partition_of(item_id)
    rows_by_partition: dict[int, list[str]] = {own: []}
    for j in history or ():
        if j != item_id:  # a row never pairs with itself
            rows_by_partition.setdefault(partition_of(j), []).append(j)
    bought, log_gap = purchase is not None, None if purchase is None else purchase.log_gap
    return {partition: RowGain(item_id, history if partition == own else None,
                               source, offset, ts, rows, partition == own and bought,
                               log_gap if partition == own else None)
            for partition, rows in rows_by_partition.items()}


def event_row_gains(
    event: Event, gain: Gain | None, purchase: Purchase | None, source: str, offset: int,
    partition_of: Callable[[str], int],
) -> dict[int, RowGain]:
    """What :func:`core.recommender.learn_event` made of ``event`` (a gain, a
    purchase, both or neither) as row updates by the partition of their rows
    (:func:`split_gain`); none when it made neither. Rows skip the event by
    ``source`` and ``offset``.

    >>> from core.events import Event
    >>> from core.recommender import Gain
    >>> click = Event("u1", "c", 0.0, "click")
    >>> event_row_gains(click, Gain("c", ["a"], 0.0), None, "clicks/0", 9, {"a": 0, "c": 0}.get)
    {0: RowGain(item_id='c', history=['a'], source='clicks/0', offset=9, ts=0.0, rows=['a'], \
bought=False, log_gap=None)}
    >>> event_row_gains(click, None, None, "clicks/0", 10, {"c": 0}.get)
    {}
    """
    if gain is None and purchase is None:
        return {}
    return split_gain(event.item_id, None if gain is None else gain.history, source, offset,
                      event.ts, partition_of, purchase)


def encode_gains(gains: Sequence[RowGain], max_bytes: int) -> list[bytes]:
    """Gains as row-update messages (``{"gains": [...]}``) of at most ``max_bytes``
    each, in order: one message, unless a batch's gains for one partition of rows
    are more than the broker takes in one record (long ids, a large batch).

    >>> gains = [RowGain(str(n) * 40, None, "clicks/0", n, 0.0, ["a"]) for n in range(4)]
    >>> [len(m) for m in encode_gains(gains, 10_000)], [len(m) for m in encode_gains(gains, 150)]
    ([347], [95, 95, 95, 95])
    """
    message = orjson.dumps({"gains": gains}, default=tuple)
    if len(message) <= max_bytes or len(gains) == 1:  # one gain always fits: see bounds
        return [message]
    half = len(gains) // 2
    return encode_gains(gains[:half], max_bytes) + encode_gains(gains[half:], max_bytes)


def prune_above(max_width: int) -> int:
    """Width beyond which a row is pruned back to ``max_width`` pairs.

    A quarter of slack: pruning sorts the row, and a full row pruned on every new
    pair cost the worker a sort of the row per update (40% of the rows agent's
    time, growing as rows filled up). Below 4 there is none.

    >>> prune_above(2000), prune_above(3)
    (2500, 3)
    """
    return max_width + max_width // 4


#: An item's stats as every worker keeps them (``item-stats`` values, JSON arrays
#: in this order, the snapshot's figures; values written before purchases were
#: kept hold the first three).
ITEM_STATS = FIGURES


@dataclass
class CooccurrenceRow:
    """An item's row of C, its user count, trending counter, purchase figures and
    when it was first gained or bought (``cooccurrence`` value)."""

    pairs: dict[str, float] = field(default_factory=dict)
    count: float = 0.0
    trend_value: float = 0.0
    trend_time: float = 0.0
    applied: AppliedOffsets = field(default_factory=AppliedOffsets)
    repurchases: ItemRepurchases = field(default_factory=ItemRepurchases)
    first_seen: float | None = None

    def seen_at(self, ts: float) -> None:
        if self.first_seen is None or ts < self.first_seen:
            self.first_seen = ts
    #: pairs changed (added, counted up or pruned away) since the row was last
    #: written: what a commit's delta of the row holds (see
    #: :mod:`streams.runtime.row_records`); None while there are none (an empty
    #: set per held row would cost 216 bytes each)
    changed: set[str] | None = field(default=None, compare=False, repr=False)

    def changed_pairs(self) -> set[str]:
        """:attr:`changed`, made when first needed."""
        changed = self.changed
        if changed is None:
            changed = self.changed = set()
        return changed

    def apply(self, update: RowUpdate, tau: float, max_width: int) -> bool:
        """Apply an update once; False when its offset was applied already."""
        return self.apply_all((update,), tau, max_width) == 1

    def apply_all(self, updates: Iterable[RowUpdateFields | list[Any]], tau: float,
                  max_width: int) -> int:
        """Apply updates in order, each once (as :meth:`apply` one by one); how
        many were new. One loop with nothing called per pair: a gain makes
        ``pair_window + 1`` updates, and the rows agent applies every one. An
        update may be the JSON array it was sent as (the fields in order)."""
        applied = self.applied.offsets
        pairs = self.pairs
        limit = prune_above(max_width)
        new = 0
        for item_id, others, source, offset, ts, gained in updates:
            if offset <= applied.get(source, -1):
                continue
            applied[source] = offset
            new += 1
            changed = self.changed_pairs()
            for other in others:
                if other != item_id:
                    pairs[other] = pairs.get(other, 0.0) + 1.0
                    changed.add(other)
            if gained:
                self.count += 1.0
                self.trend_value, self.trend_time = trend_bump(
                    self.trend_value, self.trend_time, ts, tau
                )
                self.seen_at(ts)
            if len(pairs) > limit:
                pairs = self.prune(max_width)
        return new

    def prune(self, max_width: int) -> dict[str, float]:
        """Keep the ``max_width`` strongest pairs (ties by id, so that every replay
        prunes alike); the new pairs, in their old order.

        The weakest count kept is found by sorting the counts alone: sorting the
        pairs by (-count, id) took four times as long (1.2 ms for a 2,500-pair
        row), and the rows agent prunes a full row every 500 new pairs.

        >>> row = CooccurrenceRow(pairs={"d": 1.0, "a": 3.0, "c": 1.0, "b": 1.0})
        >>> row.prune(3)
        {'a': 3.0, 'b': 1.0, 'c': 1.0}
        """
        pairs = self.pairs
        if len(pairs) <= max_width:
            return pairs
        weakest = sorted(pairs.values(), reverse=True)[max_width - 1] if max_width else math.inf
        kept = {k: v for k, v in pairs.items() if v > weakest}
        for k in sorted(k for k, v in pairs.items() if v == weakest)[:max_width - len(kept)]:
            kept[k] = weakest
        self.changed_pairs().update(k for k in pairs if k not in kept)
        self.pairs = kept
        return kept

    def bought(self, log_gap: int | None, ts: float) -> None:
        """A purchase of the item (see :class:`core.repurchase.Purchase`)."""
        self.repurchases.bought(log_gap)
        self.seen_at(ts)

    def stats(self) -> list[float]:
        """What every worker needs of this item: :data:`ITEM_STATS` in order."""
        bought = self.repurchases
        return [self.count, self.trend_value, self.trend_time, bought.buyers, bought.repeats,
                bought.log_gaps, self.first_seen or 0.0]

    def head_json(self) -> dict[str, Any]:
        """Everything of the row but its pairs (what a delta record carries whole,
        see :mod:`streams.runtime.row_records`)."""
        bought = self.repurchases
        return {
            "v": STATE_VERSION,
            "count": self.count,
            "trend": [self.trend_value, self.trend_time],
            "applied": dict(self.applied.offsets),
            "bought": [bought.buyers, bought.repeats, bought.log_gaps],
            "first_seen": self.first_seen,
        }

    def take_head(self, value: Mapping[str, Any]) -> None:
        """The fields of :meth:`head_json` from ``value``."""
        trend_value, trend_time = value["trend"]
        buyers, repeats, log_gaps = value.get("bought", (0, 0, 0))  # rows before purchases
        first_seen = value.get("first_seen")
        self.count = float(value["count"])
        self.trend_value, self.trend_time = float(trend_value), float(trend_time)
        self.applied = AppliedOffsets({str(k): int(v) for k, v in value["applied"].items()})
        self.repurchases = ItemRepurchases(int(buyers), int(repeats), int(log_gaps))
        self.first_seen = None if first_seen is None else float(first_seen)

    def to_json(self) -> dict[str, Any]:
        return {**self.head_json(), "pairs": dict(self.pairs)}

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | None) -> CooccurrenceRow:
        row = cls()
        if value is not None:
            row.pairs = {str(k): float(v) for k, v in value["pairs"].items()}
            row.take_head(value)
        return row


class RowBatch:
    """Gains applied to their rows as they come, each row read once per batch.

    The same as expanding every gain into its updates and applying each row's in
    order (:meth:`CooccurrenceRow.apply_all`), without making the updates: a gain
    of ``i`` names ``i`` once for up to ``pair_window`` rows, and the rows agent
    spent more on the tuples and their grouping than on the rows (py-spy: 7 us
    per update, apply_all a third of it). A row's updates stay in the order of
    the gains, which is all that order matters for (rows are independent).

    ``load`` reads a row not met yet in this batch. After :meth:`apply`:
    ``changed`` holds the rows any update was applied to, ``counted`` the ids of
    those whose count and trend moved, ``applied`` and ``skipped`` count updates.

    >>> batch = RowBatch(lambda item_id: CooccurrenceRow(), tau=86400.0, max_width=10)
    >>> gain = RowGain("c", ["a", "b"], "clicks/0", 9, 0.0, ["a", "b"])
    >>> batch.apply([gain, gain])  # the second is a replay: skipped
    >>> batch.applied, batch.skipped, sorted(batch.changed), batch.counted
    (3, 3, ['a', 'b', 'c'], {'c'})
    >>> batch.changed["a"].pairs, batch.changed["c"].pairs
    ({'c': 1.0}, {'a': 1.0, 'b': 1.0})
    """

    def __init__(self, load: Callable[[str], CooccurrenceRow], tau: float,
                 max_width: int) -> None:
        self.load = load
        self.tau = tau
        self.max_width = max_width
        self.rows: dict[str, CooccurrenceRow] = {}
        self.changed: dict[str, CooccurrenceRow] = {}
        self.counted: set[str] = set()
        self.applied = 0
        self.skipped = 0

    def row(self, item_id: str) -> CooccurrenceRow:
        row = self.rows.get(item_id)
        if row is None:
            row = self.rows[item_id] = self.load(item_id)
        return row

    def apply(self, gains: Iterable[Sequence[Any]]) -> None:
        """Apply gains (:class:`RowGain` or its JSON array) in order, each update once."""
        rows, changed, max_width = self.rows, self.changed, self.max_width
        limit = prune_above(max_width)
        applied = skipped = 0
        for item_id, history, source, offset, ts, partners, *purchase in gains:
            bought = bool(purchase) and purchase[0]
            if history is not None or bought:
                own = self.row(item_id)
                if own.applied.seen(source, offset):
                    skipped += 1
                else:
                    if history is not None:
                        own.apply_all(((item_id, history, source, offset, ts, True),),
                                      self.tau, max_width)
                    if bought:
                        own.applied.mark(source, offset)
                        own.bought(purchase[1], ts)
                    changed[item_id] = own
                    self.counted.add(item_id)
                    applied += 1
            # what apply_all does for an update of one pair, inline: this loop
            # runs pair_window times per gain
            for j in partners:
                row = rows.get(j)
                if row is None:
                    row = self.row(j)
                seen = row.applied.offsets
                if offset <= seen.get(source, -1):
                    skipped += 1
                    continue
                seen[source] = offset
                pairs = row.pairs
                pairs[item_id] = pairs.get(item_id, 0.0) + 1.0
                marks = row.changed
                if marks is None:
                    marks = row.changed = set()
                marks.add(item_id)
                if len(pairs) > limit:
                    row.prune(max_width)
                changed[j] = row
                applied += 1
        self.applied += applied
        self.skipped += skipped

    def apply_updates(self, updates: Iterable[Sequence[Any]]) -> None:
        """Apply updates one row each (:class:`RowUpdate` or its JSON array), the
        form workers sent before :class:`RowGain`."""
        for update in updates:
            item_id, gained = update[0], update[5]
            row = self.row(item_id)
            if row.apply_all((update,), self.tau, self.max_width):  # type: ignore[arg-type]
                self.changed[item_id] = row
                if gained:
                    self.counted.add(item_id)
                self.applied += 1
            else:
                self.skipped += 1
