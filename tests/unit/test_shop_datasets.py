"""The e-commerce data set: its registry entry and the Instacart loader on a tiny file."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main
from streams.devtools.datasets import (
    DATASETS,
    INSTACART_LAST_DAY,
    load_events,
    load_instacart_sample,
)
from streams.errors import CliError

HEADER = (",order_id,user_id,order_number,order_dow,order_hour_of_day,"
          "days_since_prior_order,product_id,add_to_cart_order,reordered\n")


def _write(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "df_sample.csv"
    path.write_text(HEADER + "".join(f"{n},{row}\n" for n, row in enumerate(rows)))
    return path


def test_instacart_orders_become_timed_purchases(tmp_path: Path) -> None:
    path = _write(tmp_path, [
        "10,u1,1,0,8,,a,2.0,0.0",
        "10,u1,1,0,8,,b,1.0,0.0",
        "11,u1,2,3,9,7.0,a,1.0,1.0",
        "20,u2,1,1,10,,c,1.0,0.0",
    ])
    events = load_instacart_sample(path)
    day = 86_400.0
    assert [(e.user_id, e.item_id, e.order_id, e.ts) for e in events] == [
        ("u1", "b", "10", INSTACART_LAST_DAY - 7 * day + 8 * 3600),
        ("u1", "a", "10", INSTACART_LAST_DAY - 7 * day + 8 * 3600),
        ("u1", "a", "11", INSTACART_LAST_DAY + 9 * 3600),
        ("u2", "c", "20", INSTACART_LAST_DAY + 10 * 3600),
    ]
    assert all(e.is_purchase for e in events)


def test_instacart_bad_number_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, ["10,u1,one,0,8,,a,1.0,0.0"])
    with pytest.raises(CliError, match=r"df_sample.csv:2:"):
        load_instacart_sample(path)


def test_every_dataset_pins_a_version_a_checksum_and_a_licence() -> None:
    for source in DATASETS.values():
        assert "==" in source.requirement
        assert source.licence
        assert all(len(f.sha256) == 64 for f in source.files)


def test_a_dataset_without_items_is_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(CliError, match="holds no item events"):
        load_events(dataset="cdnow")
    assert main(["evaluate", "prequential", "--dataset", "cdnow", "--no-progress"]) == 2
    assert "holds no item events" in capsys.readouterr().err


@pytest.mark.slow
def test_instacart_sample_loads() -> None:
    events = load_events(dataset="instacart-sample")
    assert len(events) == 150_000
    assert len({e.user_id for e in events}) == 593
    assert len({e.order_id for e in events}) == 15_183
    assert [e.ts for e in events] == sorted(e.ts for e in events)


def test_complete_journey_lines_become_purchases(tmp_path: Path) -> None:
    from datetime import datetime

    import pyarrow as pa  # the test extra installs the parquet extra
    import pyarrow.parquet as pq

    table = pa.table({
        "household_id": [7, 7, 9],
        "basket_id": [2, 1, 3],
        "product_id": [100, 200, 100],
        "quantity": [0, 3, 50_000],
        "sales_value": [1.5, 3.0, 100.0],
        "transaction_timestamp": pa.array([datetime(2017, 1, 2), datetime(2017, 1, 1),
                                           datetime(2017, 1, 3)], type=pa.timestamp("ns")),
    })
    path = tmp_path / "transactions.parquet"
    pq.write_table(table, path)
    from streams.devtools.datasets import load_complete_journey

    events = load_complete_journey(path)
    assert [(e.user_id, e.item_id, e.order_id, e.quantity, e.price) for e in events] == [
        ("7", "200", "1", 3, 1.0), ("7", "100", "2", 1, 1.5), ("9", "100", "3", 10_000, 0.01)]
    assert events[0].ts == 1_483_228_800.0  # 2017-01-01T00:00:00Z
    assert all(e.is_purchase for e in events)
