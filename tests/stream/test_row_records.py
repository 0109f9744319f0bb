"""``streams.runtime.row_records``: rows of C stored as a base and deltas, so that
a commit writes what changed and the changelog reads back whole at any point."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.runtime.children.held_rows import HeldRows
from streams.runtime.partitions import item_partition
from streams.runtime.row_records import (
    MAX_DELTAS,
    NEW,
    WHOLE_ROW_PAIRS,
    RowLayout,
    RowRecord,
    delta_key,
    read_row,
    row_record,
    rows_of_table,
    split_key,
)
from streams.runtime.state import CooccurrenceRow, RowBatch, RowGain, table_json
from tests.stream.harness import MakeHarness, run_async
from tests.stream.test_caches import row_update

TAU = 7 * 86_400.0 / math.log(2.0)
TS = 1_700_000_000.0


def compacted(log: Iterable[RowRecord]) -> dict[str, bytes]:
    """What a compacted changelog (or a store recovered from it) holds: the last
    record per key."""
    return dict(log)


def read(table: dict[str, bytes], item_id: str = "r") -> tuple[CooccurrenceRow, RowLayout]:
    deltas = [value for key, value in table.items()
              if split_key(key) != (item_id, None) and split_key(key)[0] == item_id]
    return read_row(table.get(item_id), deltas)


def equal_rows(a: CooccurrenceRow, b: CooccurrenceRow) -> bool:
    return a == b and a.applied.offsets == b.applied.offsets


def copy(row: CooccurrenceRow) -> CooccurrenceRow:
    return CooccurrenceRow.from_json(orjson.loads(table_json(row.to_json())))


#: One step on row "r": a gain of the row's own item after these others (its
#: count and trend move), a gain of another item with "r" in its history (the
#: partners' loop of RowBatch), a commit, or a restart (the row read again from
#: the changelog, as after a rebalance).
step = st.one_of(
    st.tuples(st.just("own"), st.tuples(st.integers(0, 299), st.integers(1, 50))),
    st.tuples(st.just("partner"), st.integers(0, 299)),
    st.tuples(st.just("commit"), st.just(0)),
    st.tuples(st.just("restart"), st.just(0)),
)


@settings(max_examples=150, deadline=None)
@given(start=st.integers(0, 150), steps=st.lists(step, min_size=1, max_size=80),
       max_width=st.sampled_from([40, 70, 100, 2000]))
def test_a_row_written_as_base_and_deltas_reads_back_equal_at_every_commit(
    start: int, steps: list[tuple[str, Any]], max_width: int,
) -> None:
    """Round trip after any updates and prunes, and recovery from any prefix of
    the changelog that ends at a commit (a crash loses what came after)."""
    log: list[RowRecord] = []
    row, layout = CooccurrenceRow(), NEW
    states: list[tuple[int, CooccurrenceRow]] = [(0, CooccurrenceRow())]  # (log length, row)
    # a row that starts this wide (written once), so that most examples make deltas
    for offset, (kind, arg) in enumerate([("own", (0, start)), ("commit", 0), *steps]):
        if kind == "own":
            first, count = arg
            others = [f"i{(first + n) % 300}" for n in range(count)]
            row.apply_all([("r", others, "clicks/0", offset, TS + offset, True)], TAU, max_width)
        elif kind == "partner":
            batch = RowBatch(lambda item_id, row=row: row, TAU, max_width)
            batch.apply([RowGain(f"i{arg}", None, "clicks/0", offset, TS, ["r"])])
        elif kind == "commit":
            record, layout = row_record("r", row, layout)
            log.append(record)
            states.append((len(log), copy(row)))
        else:
            assert equal_rows(read(compacted(log))[0], states[-1][1])
            row, layout = read(compacted(log))
    record, layout = row_record("r", row, layout)  # the last changes too
    log.append(record)
    states.append((len(log), copy(row)))
    for length, state in states:
        assert equal_rows(read(compacted(log[:length]))[0], state)
    assert equal_rows(read(compacted(log))[0], row)


def whole_row(width: int) -> bytes:
    """A row of ``width`` pairs as earlier versions wrote it: whole, no ``seq``."""
    return table_json(CooccurrenceRow(pairs={f"item-{n}": 1.0 for n in range(width)},
                                      count=float(width)).to_json())


def change_one_pair(holder: HeldRows, offset: int, other: str) -> None:
    gain = [other, None, "clicks/0", offset, TS, ["a"]]
    holder.apply([(0, 1, orjson.dumps({"gains": [gain]}))], TAU, max_width=3000)


def commit(holder: HeldRows, table: dict[str, bytes]) -> int:
    """Write what changed (a commit) into ``table``; the bytes written."""
    taken, _ = holder.take_unwritten()
    table.update((key, value) for _, key, value in taken)
    return sum(len(table_json(key)) + len(value) for _, key, value in taken)


def test_a_commit_after_one_pair_changed_writes_bytes_that_do_not_grow_with_the_row() -> None:
    """Whole rows wrote the row at every commit (45 kB at 2,500 pairs); now each
    commit writes a delta of the changed pair, and a base only when the deltas
    since the last one would outweigh it or number MAX_DELTAS."""
    deltas: dict[int, list[int]] = {}
    for width in (500, 2500):
        holder, table = HeldRows(), {"a": whole_row(width)}
        holder.hold(0, token=1, encoded=table)
        change_one_pair(holder, 1, "item-0")
        assert commit(holder, table) > len(whole_row(width))  # an old row: a base first
        written = [(change_one_pair(holder, offset, f"item-{offset}"), commit(holder, table))[1]
                   for offset in range(2, 2 + 3 * MAX_DELTAS)]
        deltas[width] = [size for size in written if size < 1_000]
        assert len(deltas[width]) >= len(written) - 3
        assert sum(written) * 8 < len(written) * len(whole_row(width))
        assert read(table, "a")[0] == holder.partitions[0].rows["a"]
    assert max(deltas[2500]) <= max(deltas[500]) + 8  # a longer id, not a wider row


def test_an_old_whole_row_still_reads_and_is_written_as_a_base_above_stale_deltas() -> None:
    stale = table_json({"v": 1, "seq": 7, "count": 99.0, "trend": [0.0, 0.0], "applied": {},
                        "set": {"ghost": 5.0}, "drop": ["item-1"]})
    table = {"a": whole_row(150), delta_key("a", 7): stale, "b": whole_row(3)}
    holder = HeldRows()
    holder.hold(0, token=1, encoded=table)
    assert holder.partitions[0].all_rows()["a"].pairs == {f"item-{n}": 1.0 for n in range(150)}
    assert rows_of_table(table.items())["b"].pairs == {f"item-{n}": 1.0 for n in range(3)}
    change_one_pair(holder, 1, "new")
    commit(holder, table)
    assert orjson.loads(table["a"])["seq"] == 8  # above the stale delta: it stays ignored
    expected = {**{f"item-{n}": 1.0 for n in range(150)}, "new": 1.0}
    assert rows_of_table(table.items())["a"].pairs == expected
    again = HeldRows()  # read again (a rebalance): the same row, deltas after it too
    again.hold(0, token=1, encoded=table)
    change_one_pair(again, 2, "newer")
    commit(again, table)
    assert rows_of_table(table.items())["a"].pairs == {**expected, "newer": 1.0}


def test_pairs_pruned_away_stay_away_when_read_back() -> None:
    row = CooccurrenceRow(pairs={f"s{n}": 9.0 for n in range(WHOLE_ROW_PAIRS + 10)})
    table: dict[str, bytes] = {}
    (key, value), layout = row_record("r", row, NEW)
    table[key] = value
    weak = [f"w{n}" for n in range(5)]
    row.apply_all([("r", weak, "clicks/0", 1, TS, False)], TAU, max_width=len(row.pairs) + 5)
    (key, value), layout = row_record("r", row, layout)
    table[key] = value
    assert key != "r" and set(read(table)[0].pairs) >= set(weak)
    row.prune(WHOLE_ROW_PAIRS + 10)
    (key, value), layout = row_record("r", row, layout)
    table[key] = value
    assert sorted(orjson.loads(value)["drop"]) == weak
    assert read(table)[0].pairs == row.pairs and not set(weak) & set(read(table)[0].pairs)


@run_async
async def test_rows_written_as_deltas_read_back_after_a_rebalance(
    make_harness: MakeHarness,
) -> None:
    """Through the worker: a delta in its row's partition of the table and its
    changelog, then the rows let go and read again, and written whole first."""
    h = make_harness()
    stream = h.stream
    others = [f"o{n}" for n in range(WHOLE_ROW_PAIRS + 30)]
    # "b"'s delta keys hash to other partitions than "b": read under the row's id
    own = item_partition("b", h.settings.partitions)
    async with stream.agents.apply_cooccurrence.test_context() as rows_agent:
        await h.relay(rows_agent, [row_update(h, "b", others, 0, own)])
        await stream.commits.before_commit()
        first = h.changelog("rows")
        await h.relay(rows_agent, [row_update(h, "b", ["o1"], 1, own)])
        await stream.commits.before_commit()
        second = h.changelog("rows")
        assert [(w.key, w.partition) for w in first] == [("b", own)]
        assert [(w.key, w.partition) for w in second] == [(delta_key("b", 2), own)]
        assert second[0].value["set"] == {"o1": 2.0}
        before = rows_of_table(cast(Any, stream.topology.rows.items()))
        await stream.rows.release()
        await h.relay(rows_agent, [row_update(h, "b", ["o2"], 2, own)])
        await stream.commits.before_commit()
        third = h.changelog("rows")
    # read again, a row's first write is whole: a local store (rocksdb) may be
    # ahead of the changelog after a crash, and the base sets the changelog right
    assert [w.key for w in third] == ["b"] and third[0].value["seq"] == 3
    after = rows_of_table(cast(Any, stream.topology.rows.items()))
    assert after["b"].pairs == {**before["b"].pairs, "o2": 2.0}
    assert after["b"].applied.offsets == {"clicks/0": 2}
