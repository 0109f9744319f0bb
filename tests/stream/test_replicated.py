"""ReplicatedTable: local writes, records read back, and who owns which key."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from streams.runtime.replicated import ReplicatedTable

KEYS = ["a0", "a1", "b0", "b1"]


def make_table(owned: set[int]) -> tuple[ReplicatedTable, list[tuple[bytes, bytes | None]]]:
    sent: list[tuple[bytes, bytes | None]] = []
    table = ReplicatedTable("t", lambda k, v: sent.append((k, v)),
                            partition_of=lambda key: int(key[-1]) % 2, owned=lambda: owned)
    return table, sent


def test_a_write_is_visible_at_once_and_sent_as_json() -> None:
    table, sent = make_table(owned={0})
    table.set("k0", {"a": [1, 2]})
    assert table.get("k0") == {"a": [1, 2]}
    assert sent == [(b"k0", orjson.dumps({"a": [1, 2]}))]
    assert not table.set_if_changed("k0", {"a": [1, 2]})  # as last written: not sent
    assert table.set_if_changed("k0", {"a": [1]})
    assert sent[1:] == [(b"k0", b'{"a":[1]}')] and table.get("k0") == {"a": [1]}
    assert table.view_encoded() == {"k0": b'{"a":[1]}'}


def test_own_writes_win_over_late_reads_only_for_owned_keys() -> None:
    owned = {0}
    table, _ = make_table(owned)
    table.set("k0", 2)
    table.set("k1", 2)  # written while this worker owned partition 1 too
    table.apply(b"k0", b"1")  # our older write, read back late
    table.apply(b"k1", b"1")
    assert table.get("k0") == 2 and table.view()["k0"] == 2
    # partition 1 is not ours: what was read is the truth there
    assert table.get("k1") == 1 and table.view()["k1"] == 1
    owned.discard(0)  # ownership moved away: reads decide for k0 too
    assert table.get("k0") == 1


def test_records_of_other_workers_and_tombstones() -> None:
    table, sent = make_table(owned=set())
    table.apply(b"x3", b"[1.5]")
    table.apply(b"x4", b"{}")
    assert table.view() == {"x3": [1.5], "x4": {}}
    table.apply(b"x3", None)
    assert table.get("x3") is None and list(table) == ["x4"] and len(table) == 1
    assert sent == []


def test_records_read_back_are_told_from_other_workers_writes() -> None:
    # the snapshot is rebuilt on the timer only when others_writes moved
    table, _ = make_table(owned={0, 1})
    table.set("k0", [["a", 0.5]])
    table.apply(b"k0", orjson.dumps([["a", 0.5]]))  # our write, read back
    assert table.others_writes == 0
    table.apply(b"k1", b"[]")  # another worker's
    table.apply(b"k0", orjson.dumps([["b", 0.25]]))  # k0 written by another since
    table.apply(b"k1", None)
    assert table.others_writes == 3


# -- the keys changed since the model process's copy was brought up to date ----------


class CountedPartitions:
    """``partition_of`` that counts its calls: what a hand-over costs."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, key: str) -> int:
        self.calls += 1
        return int(key[-1]) % 2


def test_take_changed_costs_the_keys_changed_not_the_keys_held() -> None:
    # Handing the model process every key at every refresh and rebuild was an
    # O(all items) pass on the event loop: at a shop's scale, seconds per round.
    owned = {0, 1}
    partition_of = CountedPartitions()
    table = ReplicatedTable("t", lambda k, v: None, partition_of, lambda: owned,
                            track_changes=True)
    held = 50_000
    table.apply_many((f"o{n}".encode(), b"[1]") for n in range(held))  # other workers'
    for n in range(held):
        table.set(f"w{n}", [n])
    assert len(table.take_all()) == 2 * held
    partition_of.calls = 0
    table.set("w7", [0])
    table.set_encoded_if_changed("w8", b"[0]", track=False)  # the copy has it already
    table.apply_many([(b"o3", b"[2]"), (b"w9", b"[9]"),  # ours, read back: no change
                      (b"o5", None)])
    assert table.take_changed() == {"w7": b"[0]", "o3": b"[2]", "o5": None}
    assert partition_of.calls <= 10
    partition_of.calls = 0
    assert table.take_changed() == {}
    assert partition_of.calls == 0


def test_a_rebalance_hands_over_the_own_writes_of_the_partitions_that_moved() -> None:
    owned = {0, 1}
    table = ReplicatedTable("t", lambda k, v: None, lambda k: int(k[-1]) % 2,
                            lambda: owned, track_changes=True)
    table.set("a0", 1)
    table.set("a1", 1)
    table.apply(b"a1", b"2")  # another worker's older write of a1, read late
    table.apply(b"b1", b"3")
    table.take_all()
    owned.discard(1)  # partition 1 went: what was read is the truth for a1
    assert table.take_changed() == {"a1": b"2"}
    owned.add(1)  # and came back: our write again
    assert table.take_changed() == {"a1": b"1"}


@given(st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from(KEYS), st.integers(0, 3)),
    st.tuples(st.just("read"), st.sampled_from(KEYS), st.integers(-1, 3)),
    st.tuples(st.just("own"), st.integers(0, 1), st.integers(0, 0)),
    st.tuples(st.just("take"), st.integers(0, 0), st.integers(0, 0)),
), max_size=60))
def test_a_copy_fed_with_the_changes_equals_the_view(
    operations: list[tuple[str, Any, int]],
) -> None:
    """A copy built from take_all and kept up to date with take_changed is the
    table's view at every hand-over, whatever is written, read and rebalanced."""
    owned = {0, 1}
    table = ReplicatedTable("t", lambda k, v: None, lambda k: int(k[-1]) % 2,
                            lambda: owned, track_changes=True)
    copy: dict[str, bytes] = table.take_all()
    for operation, key, value in operations:
        if operation == "set":
            table.set(key, value)
        elif operation == "read":
            table.apply(key.encode(), None if value < 0 else orjson.dumps(value))
        elif operation == "own":
            owned.symmetric_difference_update({key})
        else:
            for changed, encoded in table.take_changed().items():
                if encoded is None:
                    copy.pop(changed, None)
                else:
                    copy[changed] = encoded
            assert copy == table.view_encoded()
