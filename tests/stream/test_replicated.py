"""ReplicatedTable: local writes, records read back, and who owns which key."""

from __future__ import annotations

import orjson

from streams.runtime.replicated import ReplicatedTable


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
