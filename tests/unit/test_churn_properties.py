"""Property tests of the BG/NBD scoring functions and the churn state objects."""

from __future__ import annotations

import math

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.churn import (
    BGNBDParams,
    CustomerSummary,
    GammaGammaParams,
    batch_summary,
    expected_purchases,
    p_alive,
)

DAY = 86_400

log_param = st.floats(min_value=-4.0, max_value=4.0).map(math.exp)
params_st = st.builds(BGNBDParams, r=log_param, alpha=log_param, a=log_param, b=log_param)


@st.composite
def rfm(draw: st.DrawFn) -> tuple[int, float, float]:
    """A consistent (x, t_x, T): t_x = 0 without repeat purchases, 0 <= t_x <= T."""
    x = draw(st.integers(min_value=0, max_value=400))
    T = draw(st.floats(min_value=0.0, max_value=2000.0))
    t_x = 0.0 if x == 0 else draw(st.floats(min_value=0.0, max_value=1.0)) * T
    return x, t_x, T


@given(params_st, rfm())
def test_p_alive_is_a_probability(params: BGNBDParams, row: tuple[int, float, float]) -> None:
    x, t_x, T = row
    value = float(p_alive(params, x, t_x, T))
    assert 0.0 <= value <= 1.0


@given(params_st, st.floats(min_value=0.0, max_value=5000.0))
def test_p_alive_is_one_without_repeat_purchases(params: BGNBDParams, T: float) -> None:
    assert float(p_alive(params, 0, 0.0, T)) == 1.0


@given(params_st, rfm(), st.floats(min_value=0.0, max_value=1000.0))
def test_p_alive_does_not_increase_with_T(
    params: BGNBDParams, row: tuple[int, float, float], extra: float
) -> None:
    x, t_x, T = row
    earlier, later = p_alive(params, [x, x], [t_x, t_x], [T, T + extra]).tolist()
    assert later <= earlier + 1e-15


@settings(deadline=None)
@given(params_st, rfm(), st.floats(min_value=0.0, max_value=1000.0))
def test_expected_purchases_is_finite_non_negative_and_bounded(
    params: BGNBDParams, row: tuple[int, float, float], t: float
) -> None:
    x, t_x, T = row
    value = float(expected_purchases(params, t, x, t_x, T))
    assert math.isfinite(value) and value >= 0.0
    # E[Y(t) | alive] <= (r + x) t / (alpha + T) (Jensen); P(alive) <= 1
    assert value <= (params.r + x) * t / (params.alpha + T) * (1 + 1e-6) + 1e-12


@settings(deadline=None)
@given(params_st, rfm(), st.floats(min_value=0.0, max_value=500.0),
       st.floats(min_value=0.0, max_value=500.0))
def test_expected_purchases_grows_with_the_horizon(
    params: BGNBDParams, row: tuple[int, float, float], t: float, extra: float
) -> None:
    x, t_x, T = row
    short, long = expected_purchases(params, [t, t + extra], x, t_x, T).tolist()
    assert long >= short * (1 - 1e-6) - 1e-12


purchases_st = st.lists(
    st.tuples(st.integers(min_value=0, max_value=400 * DAY),
              st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)),
    min_size=0, max_size=30,
)


@given(purchases_st, st.integers(min_value=-12, max_value=14), st.randoms())
def test_summary_state_round_trips_and_ignores_order(
    purchases: list[tuple[int, float]], offset_hours: int, rnd: object
) -> None:
    summary = CustomerSummary(day_offset_seconds=offset_hours * 3600)
    for ts, amount in purchases:
        summary.observe_purchase(float(ts), amount)
    state = summary.to_state()
    restored = CustomerSummary.from_state(orjson.loads(orjson.dumps(state)))
    assert restored == summary
    assert restored.to_state() == state

    shuffled = list(purchases)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    other = CustomerSummary(day_offset_seconds=offset_hours * 3600)
    for ts, amount in shuffled:
        other.observe_purchase(float(ts), amount)
    assert other.purchase_days == summary.purchase_days
    assert math.isclose(other.monetary_value, summary.monetary_value, rel_tol=1e-9, abs_tol=1e-9)


@given(purchases_st.filter(bool), st.integers(min_value=0, max_value=500 * DAY))
def test_incremental_summary_equals_batch(purchases: list[tuple[int, float]], now: int) -> None:
    summary = CustomerSummary()
    kept = [(ts, amount) for ts, amount in purchases if ts // DAY <= now // DAY]
    for ts, amount in kept:
        summary.observe_purchase(float(ts), amount)
    batch = batch_summary(["c"] * len(purchases), [p[0] for p in purchases],
                          [p[1] for p in purchases], float(now), period_days=7.0)
    if not kept:
        assert len(batch.customers) == 0
        return
    assert int(batch.frequency[0]) == summary.frequency
    assert float(batch.recency[0]) == summary.recency(7.0)
    assert float(batch.T[0]) == summary.age(float(now), 7.0)
    assert math.isclose(float(batch.monetary_value[0]), summary.monetary_value,
                        rel_tol=1e-9, abs_tol=1e-9)


@given(params_st, st.one_of(st.none(), st.floats(min_value=-1e6, max_value=0.0)),
       st.sampled_from([1.0, 7.0]), st.integers(min_value=0, max_value=10**6))
def test_params_state_round_trips(
    params: BGNBDParams, ll: float | None, period: float, customers: int
) -> None:
    full = BGNBDParams(r=float(np.float64(params.r)), alpha=params.alpha, a=params.a, b=params.b,
                       log_likelihood=ll, period_days=period, customers=customers)
    state = full.to_state()
    assert all(type(v) in (int, float, type(None)) for v in state.values())
    assert BGNBDParams.from_state(orjson.loads(orjson.dumps(state))) == full
    gg = GammaGammaParams(p=params.r, q=params.a, v=params.alpha, log_likelihood=ll)
    assert GammaGammaParams.from_state(orjson.loads(orjson.dumps(gg.to_state()))) == gg


purchases_st = st.lists(st.tuples(st.integers(min_value=0, max_value=400),
                                  st.floats(min_value=0.0, max_value=100.0)),
                        min_size=1, max_size=60)


@given(purchases_st, st.integers(min_value=2, max_value=12),
       st.integers(min_value=0, max_value=10))
def test_a_bounded_summary_is_exact_for_purchases_in_time_order(
    purchases: list[tuple[int, float]], max_days: int, late: int,
) -> None:
    """Days, first and last day and spend sums are all BG/NBD needs: dropping old
    repeat days changes nothing, as long as none arrives after ``max_days``
    later days (late arrivals within that window are fine)."""
    ordered = sorted(purchases)
    # swap a late purchase into the last few positions: out of order, in the window
    if late and len(ordered) > 1:
        at = max(0, len(ordered) - 1 - min(late, max_days - 2))
        ordered.append(ordered.pop(at))
    bounded, whole = CustomerSummary(), CustomerSummary()
    for day, amount in ordered:
        ts = day * DAY + 3600.0
        new_whole = whole.observe_purchase(ts, amount)
        assert bounded.observe_purchase(ts, amount, max_days=max_days) == new_whole
    now = 500 * DAY
    assert bounded.rfm(now) == whole.rfm(now)
    assert math.isclose(bounded.monetary_value, whole.monetary_value, rel_tol=1e-12,
                        abs_tol=1e-12)
    assert len(bounded.purchase_days) <= max_days
    assert CustomerSummary.from_state(orjson.loads(orjson.dumps(bounded.to_state()))) == bounded
