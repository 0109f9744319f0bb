"""Churn alerts judged as alerts: precision and recall on a holdout.

BG/NBD is fitted on the calibration period (every purchase up to the cutoff
day, in days, as the stream fits it); each customer seen by then is alerted when
P(alive) at the cutoff is below the threshold, as the stream would alert. The
truth is whether the customer bought nothing in the ``horizon_days`` days after
the cutoff ("lapsed"). Precision is the share of alerts that lapsed, recall the
share of lapsed customers alerted; the base rate (the share that lapsed) is
what a random alert's precision would be.

>>> day = 86_400.0
>>> customers = ["a"] * 6 + ["b", "b", "c"]
>>> ts = [0, 10, 20, 30, 40, 45, 0, 2, 50]
>>> outcome = evaluate_alerts(customers, [t * day for t in ts], [1.0] * 9,
...                           cutoff_seconds=40 * day, threshold=0.3, horizon_days=10,
...                           params=BGNBDParams(r=1.0, alpha=5.0, a=1.0, b=3.0))
>>> outcome.customers, outcome.lapsed, outcome.alerted, outcome.precision, outcome.recall
(2, 1, 1, 1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from core.churn.bgnbd import BGNBDParams, fit_bgnbd, p_alive
from core.churn.summary import batch_summary
from core.churn.units import SECONDS_PER_DAY

#: Thresholds of the precision/recall sweep reported beside the configured one.
SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class AlertCounts:
    """Alerts against lapses at one threshold."""

    threshold: float
    alerted: int
    true_alerts: int  # alerted and lapsed
    precision: float  # nan when nobody is alerted
    recall: float  # nan when nobody lapsed


def alert_counts(alive: ArrayLike, lapsed: ArrayLike, threshold: float) -> AlertCounts:
    """Precision and recall of alerting where ``alive < threshold``.

    >>> c = alert_counts([0.1, 0.2, 0.9, 0.8], [True, False, True, False], 0.3)
    >>> c.alerted, c.true_alerts, c.precision, c.recall
    (2, 1, 0.5, 0.5)
    """
    alert = np.asarray(alive, dtype=np.float64) < threshold
    truth = np.asarray(lapsed, dtype=bool)
    alerted, true_alerts = int(alert.sum()), int((alert & truth).sum())
    lapsed_count = int(truth.sum())
    return AlertCounts(
        threshold=threshold,
        alerted=alerted,
        true_alerts=true_alerts,
        precision=true_alerts / alerted if alerted else math.nan,
        recall=true_alerts / lapsed_count if lapsed_count else math.nan,
    )


@dataclass(frozen=True)
class AlertOutcome:
    """The holdout: who was seen, who lapsed, and the alerts at the threshold."""

    cutoff_seconds: float
    horizon_days: float
    customers: int  # first bought by the cutoff day
    lapsed: int  # of those, bought nothing in the horizon
    alerted: int
    precision: float
    recall: float
    base_rate: float  # lapsed / customers
    false_alarm_rate: float  # alerted among those who did buy (nan if none did)
    params: BGNBDParams
    sweep: tuple[AlertCounts, ...]


def evaluate_alerts(
    customers: Sequence[str] | ArrayLike,
    ts_seconds: ArrayLike,
    amounts: ArrayLike,
    *,
    cutoff_seconds: float,
    threshold: float,
    horizon_days: float,
    params: BGNBDParams | None = None,
) -> AlertOutcome:
    """Fit (unless ``params`` are given) on purchases up to the cutoff's day and
    judge the alerts against the ``horizon_days`` days after it."""
    if horizon_days <= 0:
        raise ValueError("horizon_days must be positive")
    keys = np.asarray(customers)
    ts = np.asarray(ts_seconds, dtype=np.float64)
    cal = batch_summary(keys, ts, amounts, cutoff_seconds, period_days=1.0)
    if cal.customers.size == 0:
        raise ValueError("nobody bought by the cutoff")
    if params is None:
        params = fit_bgnbd(cal.frequency, cal.recency, cal.T, period_days=1.0)
    alive = p_alive(params, cal.frequency, cal.recency, cal.T)
    cutoff_day = math.floor(cutoff_seconds / SECONDS_PER_DAY)
    days = np.floor(ts / SECONDS_PER_DAY)
    in_horizon = (days > cutoff_day) & (days <= cutoff_day + horizon_days)
    bought = np.isin(cal.customers, np.unique(keys[in_horizon]))
    lapsed = ~bought
    at = alert_counts(alive, lapsed, threshold)
    stayed = int(bought.sum())
    return AlertOutcome(
        cutoff_seconds=cutoff_seconds,
        horizon_days=horizon_days,
        customers=int(cal.customers.size),
        lapsed=int(lapsed.sum()),
        alerted=at.alerted,
        precision=at.precision,
        recall=at.recall,
        base_rate=float(lapsed.mean()),
        false_alarm_rate=float(((alive < threshold) & bought).sum() / stayed)
        if stayed else math.nan,
        params=params,
        sweep=tuple(alert_counts(alive, lapsed, t) for t in SWEEP),
    )
