"""Churn alerts judged as alerts: precision and recall on a holdout."""

from __future__ import annotations

import math
from pathlib import Path

import orjson
import pytest

from core.churn import BGNBDParams
from core.churn.holdout import alert_counts, evaluate_alerts
from streams.cli import main

DAY = 86_400.0
START = 1_600_000_000.0 - 1_600_000_000.0 % DAY


def shop_rows() -> list[dict[str, object]]:
    """20 weekly buyers who keep buying, 20 who stopped after a busy month."""
    rows: list[dict[str, object]] = []
    for c in range(20):
        for week in range(30):
            rows.append({"user_id": f"loyal{c}", "item_id": "milk",
                         "ts": START + (7 * week + c % 7) * DAY, "price": 2.0})
    for c in range(20):
        for day in range(0, 28, 4):
            rows.append({"user_id": f"gone{c}", "item_id": "milk",
                         "ts": START + (day + c % 3) * DAY, "price": 2.0})
    return rows


def test_alert_counts_without_alerts_or_lapses_are_nan() -> None:
    none_alerted = alert_counts([0.9, 0.8], [True, False], 0.3)
    assert none_alerted.alerted == 0 and math.isnan(none_alerted.precision)
    none_lapsed = alert_counts([0.1, 0.8], [False, False], 0.3)
    assert none_lapsed.precision == 0.0 and math.isnan(none_lapsed.recall)


def test_lapsed_customers_are_alerted_and_loyal_ones_are_not() -> None:
    rows = shop_rows()
    cutoff = START + 180 * DAY
    outcome = evaluate_alerts([str(r["user_id"]) for r in rows],
                              [float(str(r["ts"])) for r in rows], [2.0] * len(rows),
                              cutoff_seconds=cutoff, threshold=0.3, horizon_days=30)
    assert (outcome.customers, outcome.lapsed) == (40, 20)
    assert outcome.precision == 1.0 and outcome.recall == 1.0
    assert outcome.false_alarm_rate == 0.0 and outcome.base_rate == 0.5
    assert [c.threshold for c in outcome.sweep][:3] == [0.1, 0.2, 0.3]


def test_given_parameters_are_not_refitted() -> None:
    params = BGNBDParams(r=1.0, alpha=1.0, a=1.0, b=1.0)
    outcome = evaluate_alerts(["a", "a"], [0.0, 5 * DAY], [1.0, 1.0], cutoff_seconds=10 * DAY,
                              threshold=0.5, horizon_days=5, params=params)
    assert outcome.params is params


def test_cli_on_an_event_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "shop.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in shop_rows()))
    assert main(["churn", "evaluate", "--events", str(path), "--json",
                 "--cutoff", "2021-03-12"]) == 0
    alerts = orjson.loads(capsys.readouterr().out)["alerts"]
    assert (alerts["customers"], alerts["lapsed"], alerts["threshold"]) == (40, 20, 0.3)
    assert alerts["precision"] == 1.0 and alerts["recall"] == 1.0
    assert main(["churn", "evaluate", "--events", str(path)]) == 0
    assert "precision" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [
    (["--threshold", "1.5"], "--threshold"),
    (["--horizon-days", "0"], "--horizon-days"),
    (["--cutoff", "soon"], "--cutoff"),
    (["--plot", "x.png"], "CDNOW"),
])
def test_cli_bad_flags_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           flags: list[str], message: str) -> None:
    path = tmp_path / "shop.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(r) for r in shop_rows()))
    assert main(["churn", "evaluate", "--events", str(path), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_cdnow_alerts_at_the_paper_calibration_end(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["churn", "evaluate", "--dataset", "cdnow", "--json"]) == 0
    alerts = orjson.loads(capsys.readouterr().out)["alerts"]
    assert alerts["cutoff"] == "1997-09-30" and alerts["customers"] == 2357
    assert alerts["precision"] > alerts["base_rate"]
