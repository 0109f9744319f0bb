"""``streams.runtime.state``: table values, their JSON form and the idempotency bookkeeping."""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.engagement import EngagementConfig
from core.events import Event
from core.ratings import UserProfile
from core.repurchase import ItemRepurchases, Purchase, log_gap_units
from core.trending import trend_bump
from streams.runtime.cache import DecodedCache
from streams.runtime.state import (
    STATE_VERSION,
    AppliedOffsets,
    CooccurrenceRow,
    RowBatch,
    RowGain,
    RowUpdate,
    UserState,
    prune_above,
    source_key,
    split_gain,
)

TAU = 7 * 86_400.0 / math.log(2.0)
TS = 1_700_000_000.0


def through_json(value: object) -> object:
    """What a table value looks like after the changelog (JSON bytes and back)."""
    return orjson.loads(orjson.dumps(value))


def test_source_key() -> None:
    assert source_key("clicks", 3) == "clicks/3"


def test_applied_offsets_remember_the_highest_offset_per_source() -> None:
    applied = AppliedOffsets()
    assert not applied.seen("clicks/0", 0)
    applied.mark("clicks/0", 5)
    assert applied.seen("clicks/0", 5) and applied.seen("clicks/0", 0)
    assert not applied.seen("clicks/0", 6)
    assert not applied.seen("clicks/1", 0)
    applied.mark("clicks/0", 2)  # never moves back
    assert applied.offsets == {"clicks/0": 5}
    applied.mark("purchases/0", 0)
    assert applied.offsets == {"clicks/0": 5, "purchases/0": 0}


def make_user_state() -> UserState:
    profile = UserProfile()
    profile.observe("i1", 1.0, TS, history=10)
    profile.observe("i2", 5.0, TS + 1, history=10)
    profile.buy("i2", TS + 1)
    state = UserState(profile, AppliedOffsets({"clicks/1": 7, "purchases/1": 2}), ["e1", "e2"])
    config = EngagementConfig()
    state.engagement.observe(Event("u1", "i1", TS, "add_to_cart"), config)
    state.engagement.observe(Event("u1", "i2", TS + 1, "purchase", price=9.5), config)
    return state


def test_user_state_json_round_trip() -> None:
    state = make_user_state()
    value = state.to_json()
    assert value["v"] == STATE_VERSION
    back = UserState.from_json(through_json(value))  # type: ignore[arg-type]
    assert back == state
    assert back.engagement.to_state() == state.engagement.to_state() != UserState(
        ).engagement.to_state()
    assert back.to_json() == value
    # the JSON form is plain JSON (no sets, no tuples): it survives unchanged
    assert through_json(value) == value


def test_user_state_from_nothing_is_empty() -> None:
    state = UserState.from_json(None)
    assert state == UserState()
    assert state.profile.recent == [] and state.applied.offsets == {} and state.event_ids == []


def test_user_state_duplicates_by_offset_or_event_id() -> None:
    state = UserState()
    assert not state.is_duplicate("clicks/0", 0, "e0")
    state.mark("clicks/0", 4, "e4", keep_ids=3)
    assert state.is_duplicate("clicks/0", 4, None)  # replayed offset
    assert state.is_duplicate("clicks/0", 3, "other")  # older offset
    assert state.is_duplicate("clicks/0", 9, "e4")  # retried event id
    assert not state.is_duplicate("clicks/0", 5, None)
    assert not state.is_duplicate("clicks/1", 0, "e5")  # another source partition


def test_user_state_keeps_only_the_latest_event_ids() -> None:
    state = UserState()
    for offset in range(5):
        state.mark("clicks/0", offset, f"e{offset}", keep_ids=3)
    state.mark("clicks/0", 5, None, keep_ids=3)
    assert state.event_ids == ["e2", "e3", "e4"]
    assert state.applied.offsets == {"clicks/0": 5}
    assert not state.is_duplicate("clicks/0", 6, "e1")  # forgotten


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f"]), max_size=40),
       st.integers(1, 6), st.booleans())
def test_event_id_lookup_agrees_with_the_ids_kept(ids: list[str], keep_ids: int,
                                                  reloaded: bool) -> None:
    state = UserState()
    for offset, event_id in enumerate(ids):
        state.mark("clicks/0", offset, event_id, keep_ids)
        if reloaded:  # as read back from the table: the lookup made afresh
            state = UserState.from_json(orjson.loads(orjson.dumps(state.to_json())))
        assert state.event_ids == ids[max(0, offset + 1 - keep_ids):offset + 1]
        for other in "abcdefg":
            assert state.is_duplicate("clicks/0", 10_000, other) == (other in state.event_ids)


def test_row_gain_json_round_trip() -> None:
    gain = RowGain("a", ("b", "c"), "clicks/2", 17, TS, ("d",))
    value = ["a", ["b", "c"], "clicks/2", 17, TS, ["d"], False, None]
    assert orjson.loads(orjson.dumps({"gains": [gain]}, default=tuple)) == {
        "gains": [value]}  # as the worker sends it
    decoded = RowGain._make(through_json(value))  # type: ignore[arg-type]
    assert list(decoded) == value
    assert decoded.updates() == [RowUpdate("a", ["b", "c"], "clicks/2", 17, TS, True),
                                 RowUpdate("d", ("a",), "clicks/2", 17, TS, False)]
    assert RowGain._make(through_json(["a", None, "clicks/2", 17, TS, [], False, None])
                         ).updates() == []


def test_purchases_reach_the_items_row_once_with_its_first_sight() -> None:
    """A purchase travels with the gained row's partition (alone when it gained
    nothing), moves the row's purchase figures and first sight, not its count,
    and a replay of it is skipped; gains as workers sent them before purchases
    (six fields) still apply."""
    gains = split_gain("a", None, "purchases/0", 4, TS + 9, {"a": 0}.get, Purchase(None))
    assert list(gains) == [0] and gains[0].update_count() == 1
    batch = RowBatch(lambda item_id: CooccurrenceRow(), TAU, max_width=10)
    old_form = ["a", ["b"], "clicks/0", 3, TS + 5, []]
    repeat = ["a", None, "purchases/0", 5, TS + 99, [], True, log_gap_units(3.0)]
    batch.apply(through_json([old_form, list(gains[0]), repeat, repeat]))  # type: ignore[arg-type]
    row = batch.changed["a"]
    assert (batch.applied, batch.skipped) == (3, 1)
    assert row.count == 1.0 and row.pairs == {"b": 1.0}
    assert row.repurchases == ItemRepurchases(buyers=1, repeats=1, log_gaps=log_gap_units(3.0))
    assert row.first_seen == TS + 5
    assert row.stats()[3:] == [1, 1, log_gap_units(3.0), TS + 5]


def test_rows_written_before_purchases_were_kept_still_read() -> None:
    value = {"v": STATE_VERSION, "pairs": {"b": 1.0}, "count": 2.0, "trend": [1.0, TS],
             "applied": {"clicks/0": 3}}
    row = CooccurrenceRow.from_json(value)
    assert (row.repurchases, row.first_seen) == (ItemRepurchases(), None)
    assert row.stats() == [2.0, 1.0, TS, 0, 0, 0, 0.0]


def test_a_gain_splits_into_the_updates_of_its_rows() -> None:
    partition_of = {"a": 0, "b": 1, "c": 1}.__getitem__
    split = split_gain("c", ["a", "b"], "clicks/0", 9, TS, partition_of)
    assert split == {1: RowGain("c", ["a", "b"], "clicks/0", 9, TS, ["b"]),
                     0: RowGain("c", None, "clicks/0", 9, TS, ["a"])}
    assert [u for gain in split.values() for u in gain.updates()] == [
        RowUpdate("c", ["a", "b"], "clicks/0", 9, TS, gained=True),
        RowUpdate("b", ("c",), "clicks/0", 9, TS, gained=False),
        RowUpdate("a", ("c",), "clicks/0", 9, TS, gained=False),
    ]
    # a first item: only its own row, which counts the user
    assert split_gain("a", [], "clicks/0", 0, TS, partition_of) == {
        0: RowGain("a", [], "clicks/0", 0, TS, [])}


@given(
    st.sampled_from("abcdefgh"),
    st.lists(st.sampled_from("abcdefgh"), max_size=8, unique=True),
    st.integers(1, 4),
)
def test_split_gain_updates_each_row_once_in_its_partition(
    item: str, history: list[str], partitions: int,
) -> None:
    def partition_of(i: str) -> int:
        return ord(i) % partitions

    split = split_gain(item, history, "clicks/0", 3, TS, partition_of)
    updates = [(partition, RowUpdate._make(u))
               for partition, gain in split.items() for u in gain.updates()]
    assert all(partition_of(u.item_id) == partition for partition, u in updates)
    assert sorted(u.item_id for _, u in updates) == sorted(
        [item, *(j for j in history if j != item)])
    assert [u.pairs for _, u in updates if u.gained] == [history]
    assert all(u.pairs == (item,) for _, u in updates if not u.gained)
    assert sum(gain.update_count() for gain in split.values()) == len(updates)


def test_row_applies_an_update_once() -> None:
    row = CooccurrenceRow()
    gain = RowUpdate("a", ("b", "c"), "clicks/0", 3, TS, gained=True)
    assert row.apply(gain, TAU, max_width=10)
    assert row.pairs == {"b": 1.0, "c": 1.0}
    assert (row.count, row.trend_value, row.trend_time) == (1.0, 1.0, TS)
    before = CooccurrenceRow.from_json(row.to_json())
    assert not row.apply(gain, TAU, max_width=10)  # redelivered
    assert not row.apply(RowUpdate("a", ("d",), "clicks/0", 2, TS, False), TAU, 10)  # older
    assert row == before
    # another history's pair: no count, no trending
    assert row.apply(RowUpdate("a", ("b",), "clicks/1", 0, TS + 60, gained=False), TAU, 10)
    assert row.pairs == {"b": 2.0, "c": 1.0}
    assert (row.count, row.trend_value, row.trend_time) == (1.0, 1.0, TS)
    # a second gain moves count and trending like core's trend_bump
    assert row.apply(RowUpdate("a", (), "clicks/1", 1, TS + 3600, gained=True), TAU, 10)
    assert row.count == 2.0
    assert (row.trend_value, row.trend_time) == trend_bump(1.0, TS, TS + 3600, TAU)
    assert row.stats() == [2.0, row.trend_value, TS + 3600, 0, 0, 0, TS]  # no purchases
    assert row.applied.offsets == {"clicks/0": 3, "clicks/1": 1}


def test_row_ignores_its_own_item_as_a_pair() -> None:
    row = CooccurrenceRow()
    row.apply(RowUpdate("a", ("a", "b"), "clicks/0", 0, TS, gained=True), TAU, 10)
    assert row.pairs == {"b": 1.0}


def test_row_json_round_trip() -> None:
    row = CooccurrenceRow()
    row.apply(RowUpdate("a", ("b", "c"), "clicks/0", 3, TS, True), TAU, 10)
    row.apply(RowUpdate("a", ("b",), "purchases/1", 8, TS - 50, True), TAU, 10)
    row.bought(log_gap_units(2.5), TS)
    value = row.to_json()
    assert value["v"] == STATE_VERSION
    back = CooccurrenceRow.from_json(through_json(value))  # type: ignore[arg-type]
    assert back == row
    assert back.to_json() == value
    assert CooccurrenceRow.from_json(None) == CooccurrenceRow()


def test_pruning_keeps_the_strongest_pairs_ties_by_id() -> None:
    # ids whose order reverses when read backwards, so only the id itself orders ties
    a, b, c, d, m, z = "az", "by", "cv", "dx", "mm", "zw"
    row = CooccurrenceRow()
    offset = 0

    def add(*pairs: str) -> None:
        nonlocal offset
        assert row.apply(RowUpdate("x", pairs, "clicks/0", offset, TS, False), TAU, 3)
        offset += 1

    add(m, z)
    add(m, d)
    add(b)
    # four pairs, width three: m (2) stays, then the ties at 1 by id: b, d (z pruned,
    # though it came before them)
    assert row.pairs == {m: 2.0, b: 1.0, d: 1.0}
    add(z, a)  # z comes back at 1, a at 1: m, then a, b
    assert row.pairs == {m: 2.0, a: 1.0, b: 1.0}
    add(d)  # a newcomer at 1 loses the tie to smaller ids
    assert row.pairs == {m: 2.0, a: 1.0, b: 1.0}
    add(b, c)  # b rises to 2; c at 1 loses to a
    assert row.pairs == {a: 1.0, b: 2.0, m: 2.0}


@pytest.mark.parametrize("width", [1, 2, 5])
def test_pruning_never_exceeds_the_width(width: int) -> None:
    row = CooccurrenceRow()
    for offset in range(20):
        row.apply(RowUpdate("x", (f"i{offset % 7}", f"i{offset % 3}"), "clicks/0", offset, TS,
                            False), TAU, width)
        assert len(row.pairs) <= prune_above(width)


def test_a_full_row_is_pruned_back_to_its_width_only_past_a_quarter_of_slack() -> None:
    row = CooccurrenceRow()
    strong = [f"s{n}" for n in range(8)]
    row.apply(RowUpdate("x", tuple(strong), "clicks/0", 0, TS, False), TAU, 8)
    row.apply(RowUpdate("x", tuple(strong), "clicks/0", 1, TS, False), TAU, 8)
    for offset, weak in enumerate(("w0", "w1"), start=2):  # 10 pairs: within the slack
        row.apply(RowUpdate("x", (weak,), "clicks/0", offset, TS, False), TAU, 8)
    assert len(row.pairs) == 10 == prune_above(8)
    row.apply(RowUpdate("x", ("w2",), "clicks/0", 4, TS, False), TAU, 8)  # 11: pruned
    assert row.pairs == dict.fromkeys(strong, 2.0)


@given(
    st.lists(st.tuples(st.sampled_from("xab"), st.lists(st.sampled_from("abcdefg"), max_size=4),
                       st.sampled_from(["clicks/0", "clicks/1"]), st.integers(0, 12),
                       st.floats(-3600.0, 3600.0), st.booleans()),
             max_size=30),
    st.lists(st.integers(0, 30), max_size=4),
    st.integers(1, 5),
)
def test_updates_applied_in_one_call_or_split_anywhere_make_the_same_row(
    fields: list[tuple[str, list[str], str, int, float, bool]], cuts: list[int], width: int,
) -> None:
    # a batch boundary falls anywhere in a replay: pruning, duplicates and older
    # offsets must come out alike
    updates = [RowUpdate(item, tuple(pairs), source, offset, TS + dt, gained)
               for item, pairs, source, offset, dt, gained in fields]
    whole, split = CooccurrenceRow(), CooccurrenceRow()
    applied_whole = whole.apply_all(updates, TAU, width)
    bounds = [0, *sorted(c for c in cuts if c <= len(updates)), len(updates)]
    applied_split = sum(split.apply_all([list(u) for u in updates[start:stop]], TAU, width)
                        for start, stop in itertools.pairwise(bounds))
    assert applied_split == applied_whole
    assert split.to_json() == whole.to_json()
    one_by_one = CooccurrenceRow()
    assert sum(one_by_one.apply(u, TAU, width) for u in updates) == applied_whole
    assert one_by_one.to_json() == whole.to_json()


@given(
    st.lists(st.tuples(st.sampled_from("abcdefg"),
                       st.lists(st.sampled_from("abcdefg"), max_size=5, unique=True),
                       st.sampled_from(["clicks/0", "clicks/1"]), st.integers(0, 12),
                       st.floats(-3600.0, 3600.0), st.booleans()),
             max_size=30),
    st.lists(st.integers(0, 30), max_size=4),
    st.integers(1, 5),
)
def test_a_row_batch_makes_the_rows_of_the_gains_updates_applied_one_by_one(
    fields: list[tuple[str, list[str], str, int, float, bool]], cuts: list[int], width: int,
) -> None:
    # gains as split for one partition (own row or not), replays and older offsets
    # included, applied in calls cut anywhere, through JSON as the rows agent gets them
    gains = [RowGain(item, history if own else None, source, offset, TS + dt,
                     [j for j in history if j != item])
             for item, history, source, offset, dt, own in fields]
    expected: dict[str, CooccurrenceRow] = {}
    applied = 0
    for gain in gains:
        for update in gain.updates():
            applied += expected.setdefault(update[0], CooccurrenceRow()).apply(
                RowUpdate._make(update), TAU, width)
    loaded: list[str] = []

    def load(item_id: str) -> CooccurrenceRow:
        loaded.append(item_id)
        return CooccurrenceRow()

    batch = RowBatch(load, TAU, width)
    bounds = [0, *sorted(c for c in cuts if c <= len(gains)), len(gains)]
    for start, stop in itertools.pairwise(bounds):
        batch.apply(through_json([list(g) for g in gains[start:stop]]))  # type: ignore[arg-type]
    assert batch.applied == applied
    assert batch.applied + batch.skipped == sum(gain.update_count() for gain in gains)
    assert sorted(loaded) == sorted(expected)  # each row read once
    changed = {k: r for k, r in expected.items() if r.applied.offsets}
    assert {k: r.to_json() for k, r in batch.changed.items()} == {
        k: r.to_json() for k, r in changed.items()}
    assert batch.counted == {gain.item_id for gain in gains if gain.history is not None
                             and expected[gain.item_id].count > 0}


@given(st.dictionaries(st.sampled_from([f"i{n}" for n in range(30)]),
                       st.integers(1, 4).map(float), max_size=30),
       st.integers(0, 31))
def test_pruning_equals_sorting_the_pairs_by_count_then_id(pairs: dict[str, float],
                                                           width: int) -> None:
    row = CooccurrenceRow(pairs=dict(pairs))
    row.prune(width)
    strongest = sorted(pairs.items(), key=lambda p: (-p[1], p[0]))[:width]
    assert row.pairs == dict(strongest)


# -- the decoded cache --------------------------------------------------------------


class NoScans(OrderedDict[str, object]):
    """An ordered dict that refuses to be walked: eviction must take the oldest
    clean value directly (walking past dirty values from the old end made every
    new user cost a scan of every unwritten one: 82% of a worker's time)."""

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("the cache walked its values")


def test_eviction_never_walks_the_values_however_many_are_dirty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("streams.runtime.cache.OrderedDict", NoScans)
    cache: DecodedCache[object, int] = DecodedCache(capacity=1000)
    for n in range(20_000):
        if n % 2:
            cache.mark_dirty(f"k{n}", n, n)
        else:
            cache.put(f"k{n}", n)
    assert cache.dirty_count() == 10_000
    assert len(cache) == 10_000  # every dirty one kept, the clean ones evicted
    for key, _, _, change in cache.peek_dirty(5000):
        cache.mark_clean(key, change)
    # those written became clean, and went: the dirty ones alone fill the capacity
    assert cache.dirty_count() == 5000 and len(cache) == 5000


@given(st.lists(st.tuples(st.sampled_from(["put", "dirty", "get", "take"]),
                          st.integers(0, 12)), max_size=200),
       st.integers(0, 6))
def test_the_cache_keeps_the_dirty_and_the_most_recently_used(
    operations: list[tuple[str, int]], capacity: int,
) -> None:
    """Against a plain model: every dirty value kept until taken, then the least
    recently used clean values evicted first, never over capacity while clean
    values remain."""
    cache: DecodedCache[int, int] = DecodedCache(capacity)
    dirty: dict[str, int] = {}
    recent: list[str] = []  # clean keys, least recently used first
    values: dict[str, int] = {}

    def use(key: str) -> None:
        if key in recent:
            recent.remove(key)
        if key not in dirty:
            recent.append(key)

    def evict() -> None:
        while recent and len(recent) + len(dirty) > capacity:
            values.pop(recent.pop(0))

    for step, (operation, number) in enumerate(operations):
        key = f"k{number}"
        if operation == "put":
            cache.put(key, step)
            values[key] = step
            use(key)
            evict()
        elif operation == "dirty":
            cache.mark_dirty(key, step, number)
            values[key] = step
            if key in recent:
                recent.remove(key)
            dirty.setdefault(key, number)
            evict()
        elif operation == "get":
            assert cache.get(key) == values.get(key)
            if key in values:
                use(key)
        else:
            taken = cache.take_dirty(limit=1)
            if dirty:
                first = next(iter(dirty))
                assert [(k, t) for k, _, t in taken] == [(first, dirty.pop(first))]
                recent.append(first)
                evict()
            else:
                assert taken == []
        assert set(cache.dirty()) == set(dirty)
        assert len(cache) == len(values)
