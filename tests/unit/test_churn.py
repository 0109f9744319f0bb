"""BG/NBD churn model: the paper's CDNOW figures, the summary rebuild, state and the CLI."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import orjson
import pytest
from scipy import optimize

from core.churn import (
    BGNBDParams,
    CustomerSummary,
    GammaGammaParams,
    batch_summary,
    bgnbd,
    bgnbd_log_likelihood,
    expected_average_value,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    fitting,
    p_alive,
    score_customer,
    score_summaries,
    unconditional_expected_purchases,
)
from streams.cli import churn as churn_cli
from streams.cli import main
from streams.devtools.datasets import dataset_files

DAY = 86_400.0
PAPER = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426, period_days=7.0)


@pytest.fixture(scope="module")
def cdnow() -> dict[str, Path]:
    return dataset_files("cdnow")


@pytest.fixture(scope="module")
def paper_summary(cdnow: dict[str, Path]) -> churn_cli.SummaryTable:
    return churn_cli.read_summary_csv(cdnow["cdnow_customers_summary.csv"])


@pytest.fixture(scope="module")
def sample(cdnow: dict[str, Path]) -> tuple[churn_cli.Transactions, dict[int, int]]:
    ids = churn_cli.read_sample_ids(cdnow["CDNOW_sample.txt"])
    master = churn_cli.read_master(cdnow["CDNOW_master.txt"])
    return master.subset(set(ids)), ids


# --- the paper's figures --------------------------------------------------------------------


def test_fit_reproduces_the_paper(paper_summary: churn_cli.SummaryTable) -> None:
    s = paper_summary
    params = fit_bgnbd(s.frequency, s.recency, s.T, period_days=7.0)
    assert len(s.ids) == params.customers == 2357
    assert params.r == pytest.approx(0.243, abs=0.005)
    assert params.alpha == pytest.approx(4.414, abs=0.005)
    assert params.a == pytest.approx(0.793, abs=0.005)
    assert params.b == pytest.approx(2.426, abs=0.005)
    assert params.log_likelihood == pytest.approx(-9582.4, abs=0.1)
    assert isinstance(params.r, float) and isinstance(params.log_likelihood, float)


def test_hardie_conditional_expectation() -> None:
    value = float(expected_purchases(PAPER, 39, 2, 30.43, 38.86))
    assert value == pytest.approx(1.226, abs=0.001)


def test_values_agree_with_lifetimes() -> None:
    # lifetimes 0.11.3 with the paper's parameters gives these figures.
    assert float(p_alive(PAPER, 2, 30.43, 38.86)) == pytest.approx(0.726579, abs=1e-5)
    assert float(unconditional_expected_purchases(PAPER, 39.0)) == pytest.approx(1.196723, abs=1e-5)
    assert float(expected_purchases(PAPER, 4, 2, 10 / 7, 2)) == pytest.approx(0.953624, abs=1e-5)


def test_weights_equal_repeated_rows() -> None:
    x, t_x, T = [0, 1, 3, 2, 0], [0.0, 4.0, 20.0, 11.0, 0.0], [30.0, 31.0, 33.0, 34.0, 36.0]
    counts = [5, 2, 1, 3, 4]
    weighted = fit_bgnbd(x, t_x, T, counts)
    repeated = fit_bgnbd(np.repeat(x, counts), np.repeat(t_x, counts), np.repeat(T, counts))
    for name in ("r", "alpha", "a", "b", "log_likelihood"):
        assert getattr(weighted, name) == pytest.approx(getattr(repeated, name), rel=1e-6)
    assert weighted.customers == repeated.customers == 15


def test_gradient_matches_finite_differences(paper_summary: churn_cli.SummaryTable) -> None:
    s = paper_summary
    (x, t_x, T), w = fitting.collapse_rows([s.frequency, s.recency, s.T], np.ones(len(s.ids)))
    assert len(x) < len(s.ids) and w.sum() == len(s.ids)
    levels, index = bgnbd.distinct_levels(x)
    level_w = np.bincount(index, weights=w).astype(np.float64)
    args = (levels, index, level_w, t_x, T, w, float(w.sum()), 0.1)
    theta = np.log([0.5, 3.0, 1.2, 1.8])
    err = optimize.check_grad(
        lambda th: bgnbd.negative_ll_and_grad(th, *args)[0],
        lambda th: bgnbd.negative_ll_and_grad(th, *args)[1],
        theta,
    )
    assert err < 1e-5


def test_log_likelihood_sums_to_the_fit(paper_summary: churn_cli.SummaryTable) -> None:
    s = paper_summary
    ll = bgnbd_log_likelihood(PAPER, s.frequency, s.recency, s.T)
    assert float(ll.sum()) == pytest.approx(-9582.4, abs=0.5)


def test_closed_form_and_quadrature_agree() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        params = BGNBDParams(*np.exp(rng.uniform(-2.5, 2.5, size=4)).tolist())
        x = np.array([float(rng.choice([rng.integers(1, 200), rng.integers(200, 5000)]))])
        T = np.array([rng.uniform(1, 300)])
        t = np.array([rng.uniform(0.1, 300)])
        closed = bgnbd.alive_expectation_closed_form(params, x, T, t)
        quad = bgnbd.alive_expectation_quadrature(params, x, T, t)
        if np.isfinite(closed[0]):
            assert closed[0] == pytest.approx(quad[0], rel=1e-6)
        assert np.isfinite(quad[0]) and quad[0] >= 0


def test_expected_purchases_is_stable_where_hyp2f1_fails() -> None:
    # a near 1 (the closed form cancels) and large x with a long horizon (2F1 overflows)
    near_one = BGNBDParams(r=0.5, alpha=3.0, a=1.0 + 1e-9, b=2.0)
    v = expected_purchases(near_one, [10.0, 50.0], [3, 0], [20.0, 0.0], [30.0, 30.0])
    assert np.all(np.isfinite(v)) and np.all(v > 0)
    left = expected_purchases(BGNBDParams(0.5, 3.0, 1.0 - 1e-3, 2.0), 10.0, 3, 20.0, 30.0)
    right = expected_purchases(BGNBDParams(0.5, 3.0, 1.0 + 1e-3, 2.0), 10.0, 3, 20.0, 30.0)
    assert float(v[0]) == pytest.approx(float((left + right) / 2), rel=1e-5)
    # very frequent buyers with a near 1: only the quadrature (Laguerre branch) applies
    loyal = expected_purchases(near_one, 30.0, [150, 5000, 20000], [160.0, 5400.0, 21900.0],
                               [165.0, 5500.0, 22000.0])
    assert np.all(np.isfinite(loyal)) and np.all(loyal > 0)
    close = expected_purchases(BGNBDParams(0.5, 3.0, 1.01, 2.0), 30.0, [150, 5000, 20000],
                               [160.0, 5400.0, 21900.0], [165.0, 5500.0, 22000.0])
    np.testing.assert_allclose(loyal, close, rtol=0.02)
    heavy = BGNBDParams(r=3.96, alpha=3.85, a=13.6, b=6.65)
    big = expected_purchases(heavy, 428.7, 243, 1.0, 1.37)
    assert math.isfinite(float(big)) and float(big) > 0


def test_gamma_gamma_reproduces_fader_hardie(
    sample: tuple[churn_cli.Transactions, dict[int, int]],
) -> None:
    transactions, _ = sample
    cal = batch_summary(transactions.customer, transactions.ts, transactions.amount,
                        churn_cli.date_seconds(churn_cli.CALIBRATION_END), period_days=7.0)
    gg = fit_gamma_gamma(cal.frequency, cal.monetary_value)
    # Fader & Hardie (2013), "The Gamma-Gamma model of monetary value": p=6.25, q=3.74,
    # gamma=15.44 on the 946 CDNOW sample customers with repeat purchases.
    assert gg.customers == 946
    assert (gg.p, gg.q, gg.v) == pytest.approx((6.25, 3.74, 15.44), abs=0.01)
    shrunk = expected_average_value(gg, [0, 2], [0.0, 30.0])
    assert shrunk[0] == pytest.approx(gg.population_mean)
    assert 30.0 < shrunk[1] < gg.population_mean


# --- summaries -------------------------------------------------------------------------------


def test_summary_rebuild_matches_the_csv_row_for_row(
    sample: tuple[churn_cli.Transactions, dict[int, int]],
    paper_summary: churn_cli.SummaryTable,
) -> None:
    transactions, ids = sample
    rows = churn_cli.summary_rows(churn_cli.build_calibration_summaries(transactions, ids))
    matched, problems = churn_cli.compare_with_csv(rows, paper_summary)
    assert (matched, problems) == (2357, [])


def test_incremental_summary_equals_batch_summary(
    sample: tuple[churn_cli.Transactions, dict[int, int]],
) -> None:
    transactions, _ = sample
    now = churn_cli.date_seconds(churn_cli.CALIBRATION_END) + 3_600.0  # any time that day
    batch = batch_summary(transactions.customer, transactions.ts, transactions.amount, now,
                          period_days=7.0)
    incremental = churn_cli.build_calibration_summaries(transactions)
    assert list(incremental) == batch.customers.tolist()
    for i, s in enumerate(incremental.values()):
        assert s.frequency == batch.frequency[i]
        assert s.recency(7.0) == pytest.approx(batch.recency[i], abs=1e-12)
        assert s.age(now, 7.0) == pytest.approx(batch.T[i], abs=1e-12)
        assert s.monetary_value == pytest.approx(batch.monetary_value[i], abs=1e-9)
        assert s.first_day == batch.first_day[i]


def test_summary_is_independent_of_event_order(
    sample: tuple[churn_cli.Transactions, dict[int, int]],
) -> None:
    transactions, _ = sample
    rows = list(zip(transactions.customer.tolist(), transactions.ts.tolist(),
                    transactions.amount.tolist(), strict=True))
    in_order = churn_cli.build_calibration_summaries(transactions)
    random.Random(3).shuffle(rows)
    shuffled: dict[int, CustomerSummary] = {}
    end = churn_cli.date_seconds(churn_cli.CALIBRATION_END)
    for cust, ts, amount in rows:
        if ts <= end:
            shuffled.setdefault(cust, CustomerSummary()).observe_purchase(ts, amount)
    for key, summary in in_order.items():
        other = shuffled[key]
        assert other.purchase_days == summary.purchase_days  # hence x, t_x and T
        assert other.last_purchase_ts == summary.last_purchase_ts
        # spend sums differ only by floating-point summation order
        assert other.monetary_value == pytest.approx(summary.monetary_value, rel=1e-12)
        assert other.first_day_value == pytest.approx(summary.first_day_value, rel=1e-12)


def test_same_day_purchases_merge_on_utc_days() -> None:
    s = CustomerSummary()
    midnight = 10 * DAY
    assert s.observe_purchase(midnight + 1, 5.0) is True
    assert s.observe_purchase(midnight + DAY - 1, 7.0) is False  # 23:59:59 the same day
    assert s.observe_purchase(midnight + DAY, 4.0) is True  # the next day
    assert s.observe_purchase(midnight + DAY + 600, 6.0) is False
    assert (s.frequency, s.recency(), s.monetary_value, s.first_day_value) == (1, 1.0, 10.0, 12.0)
    assert s.age(midnight + 8 * DAY - 1) == 7.0  # T counts whole days to "now"'s day
    assert s.age(midnight) == 1.0  # "now" before the last purchase counts as its day
    local = CustomerSummary(day_offset_seconds=2 * 3600)  # UTC+2: 22:30 UTC is the next day
    local.observe_purchase(midnight + 21 * 3600, 1.0)
    local.observe_purchase(midnight + 22.5 * 3600, 1.0)
    assert local.frequency == 1


def test_late_purchase_before_the_first_day() -> None:
    s = CustomerSummary()
    s.observe_purchase(5 * DAY, 10.0)
    s.observe_purchase(9 * DAY, 20.0)
    assert s.observe_purchase(2 * DAY, 30.0) is True
    assert (s.frequency, s.recency(), s.monetary_value, s.first_day_value) == (2, 7.0, 15.0, 30.0)
    assert s.last_purchase_ts == 9 * DAY


def test_observe_purchase_rejects_bad_values() -> None:
    s = CustomerSummary()
    with pytest.raises(ValueError):
        s.observe_purchase(math.nan, 1.0)
    with pytest.raises(ValueError):
        s.observe_purchase(1.0, -5.0)
    assert s.is_empty


# --- state ---------------------------------------------------------------------------------


def _json_round_trip(state: dict[str, object]) -> dict[str, object]:
    decoded = orjson.loads(orjson.dumps(state))
    assert decoded == state
    return dict(decoded)


def test_state_round_trips_through_json(paper_summary: churn_cli.SummaryTable) -> None:
    s = CustomerSummary(day_offset_seconds=3600)
    for ts, amount in [(100.0, 3.5), (5 * DAY, np.float64(2.25)), (9 * DAY + 7, 1.0)]:
        s.observe_purchase(ts, float(amount))
    restored = CustomerSummary.from_state(_json_round_trip(s.to_state()))
    assert restored == s and restored.rfm(20 * DAY, 7.0) == s.rfm(20 * DAY, 7.0)
    empty = CustomerSummary.from_state(_json_round_trip(CustomerSummary().to_state()))
    assert empty.is_empty

    fitted = fit_bgnbd(paper_summary.frequency, paper_summary.recency, paper_summary.T,
                       period_days=7.0)
    state = fitted.to_state()
    assert all(type(v) in (int, float, str, type(None)) for v in state.values())
    assert BGNBDParams.from_state(_json_round_trip(state)) == fitted

    gg = GammaGammaParams(p=np.float64(6.25).item(), q=3.74, v=15.44, log_likelihood=-4055.9)
    assert GammaGammaParams.from_state(_json_round_trip(gg.to_state())) == gg


def test_from_state_rejects_bad_states() -> None:
    good = CustomerSummary()
    good.observe_purchase(0.0, 1.0)
    bad_version = {**good.to_state(), "version": 99}
    with pytest.raises(ValueError, match="version"):
        CustomerSummary.from_state(bad_version)
    with pytest.raises(ValueError):
        CustomerSummary.from_state({**good.to_state(), "days": [3, 1]})
    with pytest.raises(ValueError):
        BGNBDParams.from_state({**PAPER.to_state(), "a": -1.0})
    with pytest.raises(ValueError):
        BGNBDParams.from_state({"version": 1, "r": 1.0})


# --- scoring -------------------------------------------------------------------------------


def test_score_customer_uses_the_parameters_period() -> None:
    s = CustomerSummary()
    for day, amount in [(0, 10.0), (14, 20.0), (70, 30.0)]:
        s.observe_purchase(day * DAY + 3600, amount)
    now = 200 * DAY
    score = score_customer(PAPER, s, now, horizon_days=28.0)
    assert score.frequency == 2
    assert score.recency == pytest.approx(10.0)
    age = score.T
    assert age == pytest.approx(200 / 7)
    assert score.p_alive == pytest.approx(float(p_alive(PAPER, 2, 10.0, 200 / 7)))
    assert score.expected_purchases == pytest.approx(
        float(expected_purchases(PAPER, 4.0, 2, 10.0, 200 / 7))
    )
    assert score.monetary_value == 25.0 and score.expected_average_value == 25.0
    assert score.expected_value == pytest.approx(score.expected_purchases * 25.0)
    gg = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    with_spend = score_customer(PAPER, s, now, horizon_days=28.0, spend=gg)
    assert with_spend.expected_average_value == pytest.approx(
        float(expected_average_value(gg, 2, 25.0))
    )
    assert orjson.loads(orjson.dumps(score.to_dict())) == score.to_dict()
    assert score_summaries(PAPER, [s, s], now, horizon_days=28.0) == [score, score]
    with pytest.raises(ValueError):
        score_customer(PAPER, CustomerSummary(), now)


def test_fit_rejects_inconsistent_summaries() -> None:
    with pytest.raises(ValueError):
        fit_bgnbd([1], [5.0], [3.0])  # recency > T
    with pytest.raises(ValueError):
        fit_bgnbd([0], [2.0], [3.0])  # recency without repeat purchases
    with pytest.raises(ValueError):
        fit_bgnbd([1.5], [2.0], [3.0])
    with pytest.raises(ValueError):
        fit_bgnbd([], [], [])


# --- the CLI -------------------------------------------------------------------------------


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return dict(orjson.loads(lines[0]))


def test_cli_fit_json(capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_json(capsys, "churn", "fit", "--dataset", "cdnow", "--json")
    assert set(result) == {"r", "alpha", "a", "b", "log_likelihood", "customers", "seconds"}
    assert result["r"] == pytest.approx(0.243, abs=0.005)
    assert result["b"] == pytest.approx(2.426, abs=0.005)
    assert result["log_likelihood"] == pytest.approx(-9582.4, abs=0.1)
    assert result["customers"] == 2357


def test_cli_fit_summary_file_and_save(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       cdnow: dict[str, Path]) -> None:
    summary = tmp_path / "summary.csv"
    summary.write_bytes(cdnow["cdnow_customers_summary.csv"].read_bytes())
    saved = tmp_path / "params.json"
    result = _run_json(capsys, "churn", "fit", "--summary", str(summary), "--json",
                       "--save", str(saved))
    assert result["a"] == pytest.approx(0.793, abs=0.005)
    params = BGNBDParams.from_state(orjson.loads(saved.read_bytes()))
    assert params.period_days == 7.0 and params.r == result["r"]
    assert main(["churn", "fit", "--summary", str(summary)]) == 0
    assert "log-likelihood" in capsys.readouterr().out


def test_cli_summary_checks_and_writes_the_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               cdnow: dict[str, Path]) -> None:
    out = tmp_path / "rebuilt.csv"
    result = _run_json(capsys, "churn", "summary", "--dataset", "cdnow", "--json",
                       "--out", str(out))
    assert (result["customers"], result["matched"], result["differing"]) == (2357, 2357, 0)
    assert out.read_bytes() == cdnow["cdnow_customers_summary.csv"].read_bytes()
    assert main(["churn", "summary"]) == 0
    assert "2357/2357 rows match" in capsys.readouterr().out


def test_cli_evaluate_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "tracking.png"
    result = _run_json(capsys, "churn", "evaluate", "--dataset", "cdnow", "--json",
                       "--plot", str(plot))
    assert {"holdout_actual", "holdout_predicted", "per_customer_correlation", "customers",
            "calibration_weeks", "holdout_weeks", "seconds"} <= set(result)
    assert result["customers"] == 2357
    assert (result["calibration_weeks"], result["holdout_weeks"]) == (39.0, 39.0)
    assert result["holdout_actual"] == 1882
    assert result["holdout_predicted"] == pytest.approx(1653.4, abs=1.0)
    assert 0.5 < float(str(result["per_customer_correlation"])) < 0.8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_missing_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["churn", "fit", "--summary", str(tmp_path / "absent.csv")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recostream: error: cannot read")


def test_cli_bad_summary_csv_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,frequency,recency,T\n1,2,40.0,38.0\n", encoding="utf-8")
    assert main(["churn", "fit", "--summary", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.csv:2" in err[0]
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n", encoding="utf-8")
    assert main(["churn", "fit", "--summary", str(wrong)]) == 2
    assert "missing column" in capsys.readouterr().err
