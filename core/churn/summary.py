"""Per-customer purchase summaries for BG/NBD, kept incrementally or built in batch."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.churn.units import (
    SECONDS_PER_DAY,
    STATE_VERSION,
    FloatArray,
    check_version,
    checked_period,
    day_index,
    finite_number,
)


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
        ts = finite_number(ts_seconds, "ts_seconds")
        value = finite_number(amount, "amount", minimum=0.0)
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
        return (self._days[-1] - self._days[0]) / checked_period(period_days)

    def age(self, now_seconds: float, period_days: float = 1.0) -> float:
        """``T``: the day of ``now_seconds`` minus the first purchase day, in periods.

        A "now" earlier than the last purchase day counts as that day (T >= t_x).
        """
        if not self._days:
            return 0.0
        now_day = day_index(finite_number(now_seconds, "now_seconds"), self.day_offset_seconds)
        return (max(now_day, self._days[-1]) - self._days[0]) / checked_period(period_days)

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
        check_version(d, "CustomerSummary")
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
        summary._first_value = finite_number(d.get("first_day_value"), "first_day_value",
                                             minimum=0.0)
        summary._repeat_value = finite_number(d.get("repeat_value"), "repeat_value", minimum=0.0)
        last = d.get("last_purchase_ts")
        summary._last_ts = None if last is None else finite_number(last, "last_purchase_ts")
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
    period = checked_period(period_days)
    keys = np.asarray(customers)
    ts = np.asarray(ts_seconds, dtype=np.float64)
    amount = np.asarray(amounts, dtype=np.float64)
    if not (keys.shape == ts.shape == amount.shape) or keys.ndim != 1:
        raise ValueError("customers, ts_seconds and amounts must be 1-d and of equal length")
    if not (np.all(np.isfinite(ts)) and np.all(np.isfinite(amount)) and np.all(amount >= 0)):
        raise ValueError("ts_seconds must be finite and amounts finite and >= 0")
    now_day = day_index(finite_number(now_seconds, "now_seconds"), day_offset_seconds)
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
