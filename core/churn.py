"""Churn: the BG/NBD model (Fader, Hardie & Lee 2005) and per-customer purchase summaries.

Three pieces, all pure (no clock: "now" is always an argument, in epoch seconds):

* :class:`CustomerSummary` keeps one customer's purchase history incrementally: the
  distinct purchase *days* (same-day purchases are merged into one transaction, as
  in the paper), the spend of the first day and of the repeat days. From it come
  ``x`` (repeat purchase days), ``t_x`` (last purchase day minus first purchase day)
  and ``T`` (today minus first purchase day) in any period unit (days, weeks).
* :func:`fit_bgnbd` fits r, alpha, a, b by maximum likelihood (log-parameter space,
  analytic gradient, identical rows collapsed into weights), and :func:`p_alive` /
  :func:`expected_purchases` score customers, vectorised.
* Monetary value: the summary keeps the plain mean spend per repeat purchase day
  (lifetimes' ``monetary_value`` convention: the first day is excluded). The
  Gamma-Gamma spend model (Fader & Hardie 2013; :func:`fit_gamma_gamma`,
  :func:`expected_average_value`) shrinks that mean towards the population mean;
  :func:`score_customer` uses it when spend parameters are given.

What a "day" is. A purchase at ``ts`` falls on day ``floor((ts + day_offset_seconds) /
86400)``: a calendar day in UTC by default, or in the shop's local time when its UTC
offset is given. The day index of a purchase relative to the first one is therefore
``floor((ts - first_purchase_day_start) / 86400)`` where ``first_purchase_day_start``
is the midnight that starts the first purchase day. ``T`` is counted the same way, in
whole days from the first purchase day to the day containing "now", so a purchase on
the day of "now" is part of the history (the CDNOW calibration period ends on
1997-09-30 *inclusive* and ``T = (1997-09-30 - first purchase date) / 7`` weeks).

>>> s = CustomerSummary()
>>> day = 86_400
>>> for ts, amount in [(0, 10.0), (3 * day, 5.0), (3 * day + 60, 7.0), (10 * day, 20.0)]:
...     _ = s.observe_purchase(ts, amount)
>>> s.frequency, s.recency(), s.age(14 * day), s.monetary_value
(2, 10.0, 14.0, 16.0)
>>> params = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426, period_days=7.0)
>>> score = score_customer(params, s, now=14 * day, horizon_days=28)
>>> round(score.p_alive, 3), round(score.expected_purchases, 3)
(0.778, 0.954)
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special

__all__ = [
    "PERIODS",
    "SECONDS_PER_DAY",
    "STATE_VERSION",
    "BGNBDParams",
    "ChurnScore",
    "CustomerSummary",
    "GammaGammaParams",
    "SummaryArrays",
    "batch_summary",
    "bgnbd_log_likelihood",
    "day_index",
    "expected_average_value",
    "expected_purchases",
    "fit_bgnbd",
    "fit_gamma_gamma",
    "gamma_gamma_log_likelihood",
    "p_alive",
    "period_days",
    "score_customer",
    "score_summaries",
    "unconditional_expected_purchases",
]

SECONDS_PER_DAY = 86_400
STATE_VERSION = 1
#: Period units by name, in days.
PERIODS: dict[str, float] = {"days": 1.0, "weeks": 7.0}

FloatArray = NDArray[np.float64]

# Gauss-Jacobi nodes used when the hypergeometric closed form is unusable.
_QUADRATURE_NODES = 128
# Above this b + x the Jacobi weights overflow; generalised Laguerre takes over.
_JACOBI_MAX_B = 500.0
# Below this |a - 1| the closed form (C / (a - 1)) * (1 - G) cancels badly.
_NEAR_ONE = 1e-4
# Log-parameter bounds for the optimiser (parameters in [e^-30, e^30]).
_LOG_BOUND = 30.0


def period_days(unit: str) -> float:
    """Length of a named period unit in days.

    >>> period_days("weeks")
    7.0
    """
    try:
        return PERIODS[unit]
    except KeyError:
        choices = ", ".join(PERIODS)
        raise ValueError(f"unknown period unit {unit!r}; choose from {choices}") from None


def day_index(ts_seconds: float, day_offset_seconds: int = 0) -> int:
    """The day a timestamp falls on: whole days since 1970-01-01 in UTC shifted by the offset.

    >>> day_index(86_399.0), day_index(86_400.0), day_index(86_399.0, day_offset_seconds=3600)
    (0, 1, 1)
    """
    return math.floor((ts_seconds + day_offset_seconds) / SECONDS_PER_DAY)


def _check_period(period: float) -> float:
    if not (isinstance(period, int | float) and math.isfinite(period) and period > 0):
        raise ValueError(f"period_days must be a positive number, got {period!r}")
    return float(period)


def _check_version(d: dict[str, Any], what: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what} state must be a dict")
    if d.get("version") != STATE_VERSION:
        raise ValueError(f"{what} state has version {d.get('version')!r}, expected {STATE_VERSION}")


def _finite(
    value: Any, name: str, *, minimum: float | None = None, positive: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)


# --- per-customer summary ----------------------------------------------------------------


class CustomerSummary:
    """One customer's purchases, summarised for BG/NBD and kept up to date incrementally.

    The distinct purchase days are kept (sorted), so purchases may arrive in any order
    and the summary is the same as the batch one; memory is one integer per distinct
    purchase day. Amounts are summed per day: ``monetary_value`` is the mean spend of
    the repeat days (the first day's spend is kept apart, as in lifetimes).

    Bounded memory (``max_days`` of :meth:`observe_purchase`): beyond that many
    distinct days, the oldest repeat day is dropped and counted. BG/NBD needs only
    the count of days, the first and the last day and the spend sums, so the
    summary stays exact; only a purchase arriving after ``max_days`` later
    distinct days, dated between the first day and the oldest day kept, cannot
    be told apart from those dropped: it is counted as one of them (its spend
    is kept).

    Parameters
    ----------
    day_offset_seconds
        Added to timestamps before cutting them into days: 0 means UTC calendar days;
        the shop's UTC offset (e.g. 3600) gives its local days.

    Examples
    --------
    >>> s = CustomerSummary()
    >>> s.observe_purchase(1_000.0, 12.0), s.observe_purchase(2_000.0, 3.0)
    (True, False)
    >>> s.frequency, s.recency(), s.monetary_value
    (0, 0.0, 0.0)
    >>> bounded = CustomerSummary()
    >>> [bounded.observe_purchase(d * 86_400.0, 1.0, max_days=3) for d in range(5)]
    [True, True, True, True, True]
    >>> bounded.purchase_days, bounded.frequency, bounded.recency(), bounded.monetary_value
    ((0, 3, 4), 4, 4.0, 1.0)
    """

    __slots__ = ("_days", "_elided", "_first_value", "_last_ts", "_repeat_value",
                 "day_offset_seconds")

    def __init__(self, day_offset_seconds: int = 0) -> None:
        if isinstance(day_offset_seconds, bool) or not isinstance(day_offset_seconds, int):
            raise ValueError("day_offset_seconds must be an int")
        if abs(day_offset_seconds) >= SECONDS_PER_DAY:
            raise ValueError("day_offset_seconds must lie within one day")
        self.day_offset_seconds = day_offset_seconds
        self._days: list[int] = []
        self._elided = 0  # distinct repeat days dropped (older than _days[1])
        self._first_value = 0.0
        self._repeat_value = 0.0
        self._last_ts: float | None = None

    # -- updates

    def observe_purchase(self, ts_seconds: float, amount: float = 0.0,
                         max_days: int | None = None) -> bool:
        """Record a purchase at ``ts_seconds`` (epoch seconds) worth ``amount``.

        Returns True when the purchase starts a new purchase day (so ``x`` or the first
        day changed), False when it merges into a day already seen. At most
        ``max_days`` days are kept (None: all; see the class docstring).
        """
        ts = _finite(ts_seconds, "ts_seconds")
        value = _finite(amount, "amount", minimum=0.0)
        day = day_index(ts, self.day_offset_seconds)
        days = self._days
        self._last_ts = ts if self._last_ts is None else max(self._last_ts, ts)
        if not days:
            days.append(day)
            self._first_value = value
            return True
        if day == days[0]:
            self._first_value += value
            return False
        if day < days[0]:  # a late event before the first purchase: it becomes the first
            self._repeat_value += self._first_value
            self._first_value = value
            days.insert(0, day)
            self._drop_beyond(max_days)
            return True
        self._repeat_value += value
        if self._elided and day < days[1]:
            return False  # among the days dropped, or a new one: not known (see above)
        pos = bisect.bisect_left(days, day)
        if pos < len(days) and days[pos] == day:
            return False
        days.insert(pos, day)
        self._drop_beyond(max_days)
        return True

    def _drop_beyond(self, max_days: int | None) -> None:
        if max_days is not None and len(self._days) > max(max_days, 2):
            excess = len(self._days) - max(max_days, 2)
            del self._days[1:1 + excess]
            self._elided += excess

    # -- views

    @property
    def is_empty(self) -> bool:
        """True until the first purchase."""
        return not self._days

    @property
    def purchase_days(self) -> tuple[int, ...]:
        """Distinct purchase days (see :func:`day_index`), ascending."""
        return tuple(self._days)

    @property
    def first_day(self) -> int | None:
        return self._days[0] if self._days else None

    @property
    def last_day(self) -> int | None:
        return self._days[-1] if self._days else None

    @property
    def last_purchase_ts(self) -> float | None:
        """The latest purchase timestamp seen."""
        return self._last_ts

    @property
    def frequency(self) -> int:
        """``x``: the number of repeat purchase days (distinct days after the first)."""
        return max(len(self._days) - 1, 0) + self._elided

    def recency(self, period_days: float = 1.0) -> float:
        """``t_x``: last purchase day minus first purchase day, in periods."""
        if not self._days:
            return 0.0
        return (self._days[-1] - self._days[0]) / _check_period(period_days)

    def age(self, now_seconds: float, period_days: float = 1.0) -> float:
        """``T``: the day of ``now_seconds`` minus the first purchase day, in periods.

        A "now" earlier than the last purchase day counts as that day (T >= t_x).
        """
        if not self._days:
            return 0.0
        now_day = day_index(_finite(now_seconds, "now_seconds"), self.day_offset_seconds)
        return (max(now_day, self._days[-1]) - self._days[0]) / _check_period(period_days)

    def rfm(self, now_seconds: float, period_days: float = 1.0) -> tuple[int, float, float]:
        """``(x, t_x, T)`` at ``now_seconds`` in periods of ``period_days`` days."""
        return self.frequency, self.recency(period_days), self.age(now_seconds, period_days)

    @property
    def monetary_value(self) -> float:
        """Mean spend per repeat purchase day (0.0 without repeat purchases)."""
        x = self.frequency
        return self._repeat_value / x if x else 0.0

    @property
    def first_day_value(self) -> float:
        return self._first_value

    @property
    def total_value(self) -> float:
        return self._first_value + self._repeat_value

    # -- state

    def to_state(self) -> dict[str, Any]:
        """JSON-native state (see :meth:`from_state`)."""
        return {
            "version": STATE_VERSION,
            "days": list(self._days),
            "elided_days": self._elided,
            "first_day_value": float(self._first_value),
            "repeat_value": float(self._repeat_value),
            "last_purchase_ts": None if self._last_ts is None else float(self._last_ts),
            "day_offset_seconds": int(self.day_offset_seconds),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> CustomerSummary:
        """Rebuild a summary from :meth:`to_state` output, validating it."""
        _check_version(d, "CustomerSummary")
        summary = cls(day_offset_seconds=d.get("day_offset_seconds", 0))
        days = d.get("days")
        if not isinstance(days, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in days
        ):
            raise ValueError("CustomerSummary state: days must be a list of ints")
        if any(b <= a for a, b in itertools.pairwise(days)):
            raise ValueError("CustomerSummary state: days must be strictly increasing")
        summary._days = list(days)
        elided = d.get("elided_days", 0)
        if isinstance(elided, bool) or not isinstance(elided, int) or elided < 0 or (
                elided and len(days) < 2):
            raise ValueError("CustomerSummary state: elided_days must be an int >= 0, "
                             "with at least two days kept")
        summary._elided = elided
        summary._first_value = _finite(d.get("first_day_value"), "first_day_value", minimum=0.0)
        summary._repeat_value = _finite(d.get("repeat_value"), "repeat_value", minimum=0.0)
        last = d.get("last_purchase_ts")
        summary._last_ts = None if last is None else _finite(last, "last_purchase_ts")
        if (summary._last_ts is None) != (not days):
            raise ValueError("CustomerSummary state: last_purchase_ts and days disagree")
        return summary

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CustomerSummary):
            return NotImplemented
        return self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"CustomerSummary(x={self.frequency}, first_day={self.first_day}, "
            f"last_day={self.last_day}, monetary_value={self.monetary_value:.2f})"
        )


@dataclass(frozen=True)
class SummaryArrays:
    """Per-customer summaries of a transaction log, as arrays (see :func:`batch_summary`)."""

    customers: NDArray[Any]  # the distinct customer keys, sorted
    frequency: NDArray[np.int64]
    recency: FloatArray
    T: FloatArray
    monetary_value: FloatArray
    first_day: NDArray[np.int64]


def batch_summary(
    customers: ArrayLike,
    ts_seconds: ArrayLike,
    amounts: ArrayLike,
    now_seconds: float,
    *,
    period_days: float = 1.0,
    day_offset_seconds: int = 0,
) -> SummaryArrays:
    """Summaries of a whole transaction log at once (vectorised; same rules as CustomerSummary).

    Transactions after ``now_seconds``'s day are ignored (they are not history yet).

    >>> day = 86_400
    >>> s = batch_summary(["a", "a", "a", "b"], [0, 3 * day, 3 * day + 9, day],
    ...                   [1.0, 2.0, 3.0, 4.0], now_seconds=7 * day, period_days=7.0)
    >>> s.frequency.tolist(), s.recency.round(3).tolist(), s.T.tolist(), s.monetary_value.tolist()
    ([1, 0], [0.429, 0.0], [1.0, 0.857...], [5.0, 0.0])
    """
    period = _check_period(period_days)
    keys = np.asarray(customers)
    ts = np.asarray(ts_seconds, dtype=np.float64)
    amount = np.asarray(amounts, dtype=np.float64)
    if not (keys.shape == ts.shape == amount.shape) or keys.ndim != 1:
        raise ValueError("customers, ts_seconds and amounts must be 1-d and of equal length")
    if not (np.all(np.isfinite(ts)) and np.all(np.isfinite(amount)) and np.all(amount >= 0)):
        raise ValueError("ts_seconds must be finite and amounts finite and >= 0")
    now_day = day_index(_finite(now_seconds, "now_seconds"), day_offset_seconds)
    days = np.floor((ts + day_offset_seconds) / SECONDS_PER_DAY).astype(np.int64)
    keep = days <= now_day
    keys, days, amount = keys[keep], days[keep], amount[keep]
    uniq, cust = np.unique(keys, return_inverse=True)
    cust = cust.reshape(-1)
    n = len(uniq)
    # distinct (customer, day) pairs with their summed spend
    order = np.lexsort((days, cust))
    cust_s, days_s, amount_s = cust[order], days[order], amount[order]
    new_pair = np.ones(len(cust_s), dtype=bool)
    new_pair[1:] = (cust_s[1:] != cust_s[:-1]) | (days_s[1:] != days_s[:-1])
    pair_id = np.cumsum(new_pair) - 1
    pair_cust = cust_s[new_pair]
    pair_day = days_s[new_pair]
    pair_spend = np.bincount(pair_id, weights=amount_s)
    first_pair = np.ones(len(pair_cust), dtype=bool)
    first_pair[1:] = pair_cust[1:] != pair_cust[:-1]
    last_pair = np.ones(len(pair_cust), dtype=bool)
    last_pair[:-1] = pair_cust[1:] != pair_cust[:-1]
    first_day = pair_day[first_pair]
    last_day = pair_day[last_pair]
    x = np.bincount(pair_cust, minlength=n).astype(np.int64) - 1
    repeat_spend = np.bincount(pair_cust, weights=pair_spend, minlength=n) - pair_spend[first_pair]
    monetary = np.divide(repeat_spend, x, out=np.zeros(n), where=x > 0)
    return SummaryArrays(
        customers=uniq,
        frequency=x,
        recency=(last_day - first_day) / period,
        T=(now_day - first_day) / period,
        monetary_value=monetary,
        first_day=first_day,
    )


# --- BG/NBD ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BGNBDParams:
    """Fitted (or given) BG/NBD parameters.

    ``r, alpha`` are the gamma heterogeneity of the purchase rate, ``a, b`` the beta
    heterogeneity of the drop-out probability. ``alpha`` is in periods of
    ``period_days`` days (7.0 for the paper's weeks): scoring converts summaries to
    that unit. ``log_likelihood`` and ``customers`` describe the fit (None/0 when the
    parameters were given by hand).

    >>> p = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426, period_days=7.0)
    >>> BGNBDParams.from_state(p.to_state()) == p
    True
    """

    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float | None = None
    period_days: float = 1.0
    customers: int = 0

    def __post_init__(self) -> None:
        for name in ("r", "alpha", "a", "b"):
            _finite(getattr(self, name), name, positive=True)
        _check_period(self.period_days)
        if self.log_likelihood is not None:
            _finite(self.log_likelihood, "log_likelihood")
        if isinstance(self.customers, bool) or not isinstance(self.customers, int):
            raise ValueError("customers must be an int")

    def to_state(self) -> dict[str, Any]:
        """JSON-native state."""
        return {
            "version": STATE_VERSION,
            "r": float(self.r),
            "alpha": float(self.alpha),
            "a": float(self.a),
            "b": float(self.b),
            "log_likelihood": None if self.log_likelihood is None else float(self.log_likelihood),
            "period_days": float(self.period_days),
            "customers": int(self.customers),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> BGNBDParams:
        _check_version(d, "BGNBDParams")
        try:
            return cls(
                r=d["r"], alpha=d["alpha"], a=d["a"], b=d["b"],
                log_likelihood=d.get("log_likelihood"),
                period_days=d.get("period_days", 1.0),
                customers=d.get("customers", 0),
            )
        except KeyError as exc:
            raise ValueError(f"BGNBDParams state lacks {exc.args[0]!r}") from None


def _as_rfm(
    x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    xa, ta, Ta = np.broadcast_arrays(
        np.asarray(x, dtype=np.float64),
        np.asarray(t_x, dtype=np.float64),
        np.asarray(T, dtype=np.float64),
    )
    if not (np.all(np.isfinite(xa)) and np.all(np.isfinite(ta)) and np.all(np.isfinite(Ta))):
        raise ValueError("frequency, recency and T must be finite")
    if np.any(xa < 0) or np.any(xa != np.floor(xa)):
        raise ValueError("frequency must be a non-negative integer")
    if np.any(ta < 0) or np.any(ta > Ta * (1 + 1e-12) + 1e-12):
        raise ValueError("recency must satisfy 0 <= recency <= T")
    if np.any((xa == 0) & (ta != 0)):
        raise ValueError("recency must be 0 when frequency is 0")
    return xa, ta, Ta


def _log_likelihood_terms(
    r: float, alpha: float, a: float, b: float, levels: FloatArray, index: NDArray[np.intp],
    t_x: FloatArray, T: FloatArray,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(common per distinct x, log term A per row, log term B per row).

    Row i has ``x = levels[index[i]]`` and LL_i = common[index[i]] + logaddexp(A_i, B_i);
    the x-only gamma functions are evaluated once per distinct x.
    """
    common = (
        special.gammaln(r + levels) - special.gammaln(r) + r * np.log(alpha)
        + special.gammaln(a + b) + special.gammaln(b + levels)
        - special.gammaln(b) - special.gammaln(a + b + levels)
    )
    rx = (r + levels)[index]
    term_a = -rx * np.log(alpha + T)
    repeat = levels > 0
    log_odds = np.where(repeat, np.log(a) - np.log(np.where(repeat, b + levels - 1.0, 1.0)),
                        -np.inf)
    term_b = log_odds[index] - rx * np.log(alpha + t_x)
    return common, term_a, term_b


def _levels(x: FloatArray) -> tuple[FloatArray, NDArray[np.intp]]:
    levels, index = np.unique(x, return_inverse=True)
    return levels, index.reshape(-1)


def bgnbd_log_likelihood(
    params: BGNBDParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """Per-customer BG/NBD log-likelihood (the paper's equation 6, no constant dropped).

    >>> p = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(float(bgnbd_log_likelihood(p, 0, 0.0, 38.86)), 4)
    -0.5547
    """
    xa, ta, Ta = _as_rfm(x, t_x, T)
    levels, index = _levels(xa.ravel())
    common, term_a, term_b = _log_likelihood_terms(params.r, params.alpha, params.a, params.b,
                                                   levels, index, ta.ravel(), Ta.ravel())
    out: FloatArray = common[index] + np.logaddexp(term_a, term_b)
    return out.reshape(xa.shape)


def _negative_ll_and_grad(
    theta: FloatArray,
    levels: FloatArray,
    index: NDArray[np.intp],
    level_w: FloatArray,
    t_x: FloatArray,
    T: FloatArray,
    w: FloatArray,
    total: float,
    penalizer: float,
) -> tuple[float, FloatArray]:
    """Mean negative log-likelihood over log-parameters and its gradient.

    Rows are distinct (x, t_x, T) with weights ``w``; ``level_w`` sums them per distinct
    x so that x-only terms are summed per level.
    """
    r, alpha, a, b = np.exp(theta)
    common, term_a, term_b = _log_likelihood_terms(r, alpha, a, b, levels, index, t_x, T)
    lse = np.logaddexp(term_a, term_b)
    wa = np.exp(term_a - lse)
    wb = np.exp(term_b - lse)  # 0 where x == 0
    rx = (r + levels)[index]
    inv_bx1 = np.where(levels > 0, 1.0 / np.where(levels > 0, b + levels - 1.0, 1.0), 0.0)
    psi_ab, psi_abx = special.digamma(a + b), special.digamma(a + b + levels)
    d_r = (level_w @ (special.digamma(r + levels) - special.digamma(r) + np.log(alpha))
           - w @ (wa * np.log(alpha + T) + wb * np.log(alpha + t_x)))
    d_alpha = r / alpha * total - w @ (rx * (wa / (alpha + T) + wb / (alpha + t_x)))
    d_a = level_w @ (psi_ab - psi_abx) + (w @ wb) / a
    d_b = (level_w @ (psi_ab + special.digamma(b + levels) - special.digamma(b) - psi_abx)
           - w @ (wb * inv_bx1[index]))
    ll_sum = float(level_w @ common) + float(w @ lse)
    value = -ll_sum / total + penalizer * float(theta @ theta)
    grad = (-np.array([d_r, d_alpha, d_a, d_b]) * np.array([r, alpha, a, b]) / total
            + 2.0 * penalizer * theta)
    return value, grad


def _compress(
    columns: Sequence[FloatArray], weights: FloatArray
) -> tuple[list[FloatArray], FloatArray]:
    """Collapse identical rows, summing their weights (a lexsort, cheaper than unique(axis=0))."""
    order = np.lexsort(tuple(reversed(columns)))
    sorted_cols = [c[order] for c in columns]
    new = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        same = np.ones(len(order) - 1, dtype=bool)
        for c in sorted_cols:
            same &= c[1:] == c[:-1]
        new[1:] = ~same
    group = np.cumsum(new) - 1
    summed = np.bincount(group, weights=weights[order]).astype(np.float64)
    keep = summed > 0
    return [np.ascontiguousarray(c[new][keep]) for c in sorted_cols], summed[keep]


def _as_weights(weights: ArrayLike | None, n: int) -> FloatArray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite, >= 0 and one per customer")
    return w


def _minimise(
    objective: Callable[..., tuple[float, FloatArray]],
    theta0: FloatArray,
    args: tuple[Any, ...],
    max_iterations: int,
) -> FloatArray:
    """Minimise a smooth objective of log-parameters; BFGS, then bounded L-BFGS-B if needed.

    BFGS first: it is the fastest here, and scipy's L-BFGS-B pays for BLAS thread
    hand-offs on busy machines. Should BFGS wander off (non-finite or huge
    log-parameters, no convergence), L-BFGS-B with box bounds takes over.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        result = optimize.minimize(objective, theta0, args=args, jac=True, method="BFGS",
                                   options={"maxiter": max_iterations, "gtol": 1e-8})
        theta = np.asarray(result.x, dtype=np.float64)
        good = (
            np.all(np.isfinite(theta)) and np.all(np.abs(theta) < _LOG_BOUND)
            and math.isfinite(float(result.fun))
            and (result.success or float(np.max(np.abs(result.jac))) < 1e-6)
        )
        if not good:
            bounded = optimize.minimize(
                objective, np.clip(theta0, -_LOG_BOUND, _LOG_BOUND), args=args, jac=True,
                method="L-BFGS-B", bounds=[(-_LOG_BOUND, _LOG_BOUND)] * len(theta0),
                options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-10},
            )
            theta = np.asarray(bounded.x, dtype=np.float64)
    if not np.all(np.isfinite(theta)):
        raise ArithmeticError("the likelihood could not be maximised (non-finite parameters)")
    return theta


def fit_bgnbd(
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    period_days: float = 1.0,
    penalizer: float = 0.0,
    initial: tuple[float, float, float, float] | None = None,
    max_iterations: int = 2000,
) -> BGNBDParams:
    """Maximum-likelihood BG/NBD parameters.

    The mean negative log-likelihood is minimised over ``log(r, alpha, a, b)`` with
    BFGS and the analytic gradient (bounded L-BFGS-B as a fallback); identical
    ``(x, t_x, T)`` rows are collapsed first (their counts become weights), so large
    cohorts cost little more than the number of distinct rows.

    Parameters
    ----------
    frequency, recency, T
        ``x``, ``t_x`` and ``T`` per customer, in periods of ``period_days`` days.
    weights
        How many customers each row stands for (default one each).
    period_days
        The period unit of ``recency``/``T``; recorded in the result for scoring.
    penalizer
        L2 penalty on the log-parameters (shrinks them towards 1); 0 for the plain MLE.
    initial
        Starting ``(r, alpha, a, b)``; default a moment-based guess.

    Returns
    -------
    BGNBDParams
        With the total (weighted) log-likelihood at the optimum (penalty excluded).

    Examples
    --------
    >>> p = fit_bgnbd([0, 1, 3, 0, 2, 5, 0, 1], [0, 5, 20, 0, 15, 30, 0, 2],
    ...               [30, 30, 31, 32, 33, 35, 36, 38])
    >>> p.customers, p.log_likelihood < 0
    (8, True)
    """
    xa, ta, Ta = _as_rfm(frequency, recency, T)
    if xa.ndim != 1 or len(xa) == 0:
        raise ValueError("need at least one customer (1-d arrays)")
    w = _as_weights(weights, len(xa))
    if w.sum() <= 0:
        raise ValueError("weights sum to zero")
    penal = _finite(penalizer, "penalizer", minimum=0.0)
    period = _check_period(period_days)
    (xc, tc, Tc), wc = _compress([xa, ta, Ta], w)
    total = float(wc.sum())
    if initial is None:
        exposure = float(wc @ Tc)
        rate = (float(wc @ xc) / exposure if exposure > 0 else 0.0) + 1e-3
        theta0 = np.log(np.array([1.0, 1.0 / rate, 1.0, 1.0]))
    else:
        theta0 = np.log(np.array([_finite(v, "initial", positive=True) for v in initial]))
    theta0 = np.clip(theta0, -_LOG_BOUND + 1, _LOG_BOUND - 1)
    levels, index = _levels(xc)
    level_w = np.bincount(index, weights=wc, minlength=len(levels)).astype(np.float64)
    theta = _minimise(_negative_ll_and_grad, theta0,
                      (levels, index, level_w, tc, Tc, wc, total, penal), max_iterations)
    r, alpha, a, b = (float(v) for v in np.exp(theta))
    params = BGNBDParams(r=r, alpha=alpha, a=a, b=b, period_days=period, customers=round(total))
    ll = float(wc @ bgnbd_log_likelihood(params, xc, tc, Tc))
    return BGNBDParams(r=r, alpha=alpha, a=a, b=b, log_likelihood=ll, period_days=period,
                       customers=round(total))


def _log_alive_odds(
    params: BGNBDParams, x: FloatArray, t_x: FloatArray, T: FloatArray
) -> FloatArray:
    """log of a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x) for x > 0, -inf for x == 0."""
    repeat = x > 0
    bx1 = np.where(repeat, params.b + x - 1.0, 1.0)
    odds = (
        np.log(params.a) - np.log(bx1)
        + (params.r + x) * (np.log(params.alpha + T) - np.log(params.alpha + t_x))
    )
    out: FloatArray = np.where(repeat, odds, -np.inf)
    return out


def p_alive(params: BGNBDParams, x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> FloatArray:
    """P(alive | x, t_x, T): the probability the customer has not dropped out by T.

    1 for ``x == 0`` (in BG/NBD a customer can drop out only right after a repeat
    purchase). Computed as a logistic of the log-odds, so it never overflows.
    Times are in ``params.period_days`` periods.

    >>> p = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> p_alive(p, [0, 2, 2], [0.0, 30.43, 5.0], [38.86, 38.86, 38.86]).round(4).tolist()
    [1.0, 0.7266, 0.1237]
    """
    xa, ta, Ta = _as_rfm(x, t_x, T)
    out: FloatArray = special.expit(-_log_alive_odds(params, xa, ta, Ta))
    return out


def _alive_expectation_closed_form(
    params: BGNBDParams, x: FloatArray, T: FloatArray, t: FloatArray
) -> FloatArray:
    """E[Y(t) | alive at T, x] via Gauss's 2F1; NaN where it is not to be trusted."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    k = r + x
    c = a + b + x - 1.0
    z = t / (alpha + T + t)
    with np.errstate(all="ignore"):
        hyp = special.hyp2f1(k, b + x, c, z)
        log_g = k * np.log1p(-z) + np.log(hyp)
        value = c / (a - 1.0) * -np.expm1(log_g)
    # E[Y | alive] lies in [0, (r+x) t / (alpha+T)] (Jensen: (1 - (1+py)^-k)/p <= k y).
    bound = k * t / (alpha + T)
    ok = (
        np.isfinite(value) & (hyp > 0) & (c > 0) & (value >= -1e-12 * bound)
        & (value <= bound * (1 + 1e-9)) & (abs(a - 1.0) > _NEAR_ONE)
    )
    out: FloatArray = np.where(ok, np.clip(value, 0.0, bound), np.nan)
    return out


def _alive_expectation_quadrature(
    params: BGNBDParams, x: FloatArray, T: FloatArray, t: FloatArray
) -> FloatArray:
    """E[Y(t) | alive at T, x] = E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p], p ~ Beta(a, b+x).

    The integrand is bounded and smooth; the beta density's endpoint behaviour is
    carried by the quadrature weights, so this is accurate wherever the closed form
    fails. Gauss-Jacobi on p for moderate ``b + x``; for large ``b + x`` (where the
    Jacobi weights overflow) p = 1 - exp(-v / (b+x)) turns the density into
    v^(a-1) e^-v times a smooth factor: generalised Gauss-Laguerre, self-normalised.
    """
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    out = np.empty(len(x))
    laguerre: tuple[FloatArray, FloatArray] | None = None
    for xv in np.unique(x):
        sel = x == xv
        y = (t[sel] / (alpha + T[sel]))[:, None]
        big_b = b + xv
        if big_b <= _JACOBI_MAX_B:
            # weight (1-u)^(b+x-1) (1+u)^(a-1) on [-1, 1], p = (1+u)/2
            nodes, wts = special.roots_jacobi(_QUADRATURE_NODES, big_b - 1.0, a - 1.0)
            p = (1.0 + nodes) / 2.0
            scale = math.exp(-(a + big_b - 1.0) * math.log(2.0) - special.betaln(a, big_b))
        else:
            if laguerre is None:
                laguerre = special.roots_genlaguerre(_QUADRATURE_NODES, a - 1.0)
            v, wv = laguerre
            u = v / big_b
            p = -np.expm1(-u)
            smooth = np.exp((a - 1.0) * (np.log(p) - np.log(u)))
            wts = wv * smooth
            scale = 1.0 / float(wts.sum())
        f = -np.expm1(-(r + xv) * np.log1p(p[None, :] * y)) / p[None, :]
        out[sel] = (f @ wts) * scale
    return out


def expected_purchases(
    params: BGNBDParams, t: ArrayLike, x: ArrayLike, t_x: ArrayLike, T: ArrayLike
) -> FloatArray:
    """Conditional expected number of purchases in the next ``t`` periods, E[Y(t) | x, t_x, T].

    Equal to ``P(alive) * E[Y(t) | alive]``; the second factor is the paper's
    ``(a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1;
    t/(alpha+T+t))]``, evaluated in log space with scipy's ``hyp2f1``. Where that is
    non-finite, out of its bounds, or cancels (``a`` within 1e-4 of 1), the same
    quantity is integrated instead over the posterior drop-out probability by
    Gauss-Jacobi quadrature.

    >>> p = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(float(expected_purchases(p, 39, 2, 30.43, 38.86)), 4)  # Hardie's check
    1.226
    """
    xa, ta, Ta = _as_rfm(x, t_x, T)
    tt = np.asarray(t, dtype=np.float64)
    tt, xa, ta, Ta = np.broadcast_arrays(tt, xa, ta, Ta)
    if not np.all(np.isfinite(tt)) or np.any(tt < 0):
        raise ValueError("t must be finite and >= 0")
    shape = xa.shape
    xf, tf, Tf, tof = xa.ravel(), ta.ravel(), Ta.ravel(), tt.ravel()
    alive = special.expit(-_log_alive_odds(params, xf, tf, Tf))
    given_alive = _alive_expectation_closed_form(params, xf, Tf, tof)
    bad = np.isnan(given_alive)
    if np.any(bad):
        given_alive[bad] = _alive_expectation_quadrature(params, xf[bad], Tf[bad], tof[bad])
    out: FloatArray = (alive * given_alive).reshape(shape)
    return out


def unconditional_expected_purchases(params: BGNBDParams, t: ArrayLike) -> FloatArray:
    """E[X(t)]: expected repeat purchases in ``t`` periods after a customer's first purchase.

    >>> p = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426)
    >>> round(float(unconditional_expected_purchases(p, 39.0)), 4)
    1.1967
    """
    tt = np.asarray(t, dtype=np.float64)
    zero = np.zeros_like(tt)
    return expected_purchases(params, tt, zero, zero, zero)


# --- Gamma-Gamma spend model -----------------------------------------------------------------


@dataclass(frozen=True)
class GammaGammaParams:
    """Gamma-Gamma spend model: transaction values ~ Gamma(p, nu), nu ~ Gamma(q, v).

    >>> g = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    >>> GammaGammaParams.from_state(g.to_state()) == g
    True
    """

    p: float
    q: float
    v: float
    log_likelihood: float | None = None
    customers: int = 0

    def __post_init__(self) -> None:
        for name in ("p", "q", "v"):
            _finite(getattr(self, name), name, positive=True)
        if self.log_likelihood is not None:
            _finite(self.log_likelihood, "log_likelihood")

    @property
    def population_mean(self) -> float:
        """Mean spend per transaction across customers (infinite when q <= 1)."""
        return self.p * self.v / (self.q - 1.0) if self.q > 1 else math.inf

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "p": float(self.p),
            "q": float(self.q),
            "v": float(self.v),
            "log_likelihood": None if self.log_likelihood is None else float(self.log_likelihood),
            "customers": int(self.customers),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> GammaGammaParams:
        _check_version(d, "GammaGammaParams")
        try:
            return cls(p=d["p"], q=d["q"], v=d["v"], log_likelihood=d.get("log_likelihood"),
                       customers=d.get("customers", 0))
        except KeyError as exc:
            raise ValueError(f"GammaGammaParams state lacks {exc.args[0]!r}") from None


def _as_spend(frequency: ArrayLike, monetary: ArrayLike) -> tuple[FloatArray, FloatArray]:
    x, m = np.broadcast_arrays(np.asarray(frequency, dtype=np.float64),
                               np.asarray(monetary, dtype=np.float64))
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(m))) or np.any(x < 0) or np.any(m < 0):
        raise ValueError("frequency and monetary values must be finite and >= 0")
    return x, m


def gamma_gamma_log_likelihood(params: GammaGammaParams, frequency: ArrayLike,
                               monetary: ArrayLike) -> FloatArray:
    """Per-customer log-likelihood of the mean spend ``monetary`` over ``frequency`` transactions.

    >>> round(float(gamma_gamma_log_likelihood(GammaGammaParams(6.25, 3.74, 15.44), 2, 30.0)), 4)
    -3.847
    """
    x, m = _as_spend(frequency, monetary)
    if np.any(x <= 0) or np.any(m <= 0):
        raise ValueError("the Gamma-Gamma likelihood needs frequency > 0 and monetary > 0")
    p, q, v = params.p, params.q, params.v
    px = p * x
    out: FloatArray = (
        special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(v)
        + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * np.log(v + x * m)
    )
    return out


def _gg_negative_ll_and_grad(theta: FloatArray, x: FloatArray, m: FloatArray, w: FloatArray,
                             total: float, penalizer: float) -> tuple[float, FloatArray]:
    p, q, v = np.exp(theta)
    px = p * x
    vxm = v + x * m
    ll = (
        special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * np.log(v)
        + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * np.log(vxm)
    )
    psi = special.digamma(px + q)
    d_p = x * (psi - special.digamma(px) + np.log(m) + np.log(x) - np.log(vxm))
    d_q = psi - special.digamma(q) + np.log(v) - np.log(vxm)
    d_v = q / v - (px + q) / vxm
    grad = -np.array([w @ d_p, w @ d_q, w @ d_v]) * np.array([p, q, v]) / total
    value = -float(w @ ll) / total + penalizer * float(theta @ theta)
    return value, grad + 2.0 * penalizer * theta


def fit_gamma_gamma(
    frequency: ArrayLike,
    monetary: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    penalizer: float = 0.0,
) -> GammaGammaParams:
    """Fit the Gamma-Gamma spend model on customers with repeat purchases.

    Rows with ``frequency == 0`` or ``monetary == 0`` carry no spend information and
    are skipped. The model assumes spend is independent of purchase frequency.

    >>> g = fit_gamma_gamma([1, 2, 3, 1, 4, 2, 0], [20.0, 35.0, 18.0, 60.0, 25.0, 30.0, 0.0])
    >>> g.customers, g.q > 0
    (6, True)
    """
    x, m = _as_spend(frequency, monetary)
    if x.ndim != 1:
        raise ValueError("frequency and monetary must be 1-d")
    w = _as_weights(weights, len(x))
    use = (x > 0) & (m > 0) & (w > 0)
    if not np.any(use):
        raise ValueError("no customer with repeat purchases and positive spend")
    (xc, mc), wc = _compress([x[use], m[use]], w[use])
    total = float(wc.sum())
    penal = _finite(penalizer, "penalizer", minimum=0.0)
    mean_m = float(wc @ mc) / total
    theta0 = np.log(np.array([2.0, 3.0, mean_m]))
    theta = _minimise(_gg_negative_ll_and_grad, theta0, (xc, mc, wc, total, penal), 2000)
    p, q, v = (float(val) for val in np.exp(theta))
    params = GammaGammaParams(p=p, q=q, v=v)
    ll = float(wc @ gamma_gamma_log_likelihood(params, xc, mc))
    return GammaGammaParams(p=p, q=q, v=v, log_likelihood=ll, customers=round(total))


def expected_average_value(params: GammaGammaParams, frequency: ArrayLike,
                           monetary: ArrayLike) -> FloatArray:
    """E[mean spend per transaction | x, m]: a weighted average of the customer's own mean
    ``m`` (weight ``p x / (p x + q - 1)``) and the population mean (the rest).

    Customers without repeat purchases get the population mean.

    >>> g = GammaGammaParams(p=6.25, q=3.74, v=15.44)
    >>> expected_average_value(g, [0, 2], [0.0, 30.0]).round(2).tolist()
    [35.22, 30.94]
    """
    x, m = _as_spend(frequency, monetary)
    p, q, v = params.p, params.q, params.v
    if q <= 1.0 and np.any(x == 0):
        raise ValueError("the population mean spend is infinite (q <= 1)")
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(x > 0, p * (v + x * m) / (p * x + q - 1.0), p * v / (q - 1.0))
    return out


# --- scoring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChurnScore:
    """One customer's churn figures at a given time (times in the parameters' period unit)."""

    p_alive: float
    expected_purchases: float
    horizon_days: float
    frequency: int
    recency: float
    T: float
    monetary_value: float
    expected_average_value: float
    expected_value: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-native fields."""
        return {
            "p_alive": float(self.p_alive),
            "expected_purchases": float(self.expected_purchases),
            "horizon_days": float(self.horizon_days),
            "frequency": int(self.frequency),
            "recency": float(self.recency),
            "T": float(self.T),
            "monetary_value": float(self.monetary_value),
            "expected_average_value": float(self.expected_average_value),
            "expected_value": float(self.expected_value),
        }


def score_summaries(
    params: BGNBDParams,
    summaries: Sequence[CustomerSummary],
    now_seconds: float,
    *,
    horizon_days: float = 30.0,
    spend: GammaGammaParams | None = None,
) -> list[ChurnScore]:
    """Score many customers at ``now_seconds`` in one vectorised pass.

    ``expected_purchases`` covers the next ``horizon_days`` days. Without ``spend``
    the expected average value is the customer's own mean repeat spend; with it, the
    Gamma-Gamma conditional expectation. ``expected_value`` is their product: spend
    expected over the horizon.
    """
    if any(s.is_empty for s in summaries):
        raise ValueError("cannot score a customer without purchases")
    horizon = _finite(horizon_days, "horizon_days", minimum=0.0)
    if not summaries:
        return []
    period = params.period_days
    rfm = np.array([s.rfm(now_seconds, period) for s in summaries], dtype=np.float64)
    x, t_x, T = rfm[:, 0], rfm[:, 1], rfm[:, 2]
    monetary = np.array([s.monetary_value for s in summaries])
    alive = p_alive(params, x, t_x, T)
    expected = expected_purchases(params, horizon / period, x, t_x, T)
    average = monetary if spend is None else expected_average_value(spend, x, monetary)
    return [
        ChurnScore(
            p_alive=float(alive[i]), expected_purchases=float(expected[i]),
            horizon_days=horizon, frequency=int(x[i]), recency=float(t_x[i]), T=float(T[i]),
            monetary_value=float(monetary[i]), expected_average_value=float(average[i]),
            expected_value=float(expected[i] * average[i]),
        )
        for i in range(len(summaries))
    ]


def score_customer(
    params: BGNBDParams,
    summary: CustomerSummary,
    now: float,
    *,
    horizon_days: float = 30.0,
    spend: GammaGammaParams | None = None,
) -> ChurnScore:
    """Score one customer at ``now`` (epoch seconds); see :func:`score_summaries`.

    >>> s = CustomerSummary()
    >>> _ = s.observe_purchase(0.0, 30.0)
    >>> params = BGNBDParams(0.243, 4.414, 0.793, 2.426, period_days=7.0)
    >>> score_customer(params, s, 86_400.0).p_alive
    1.0
    """
    return score_summaries(params, [summary], now, horizon_days=horizon_days, spend=spend)[0]
