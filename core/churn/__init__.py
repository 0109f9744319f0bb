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

from core.churn.bgnbd import (
    BGNBDParams,
    bgnbd_log_likelihood,
    expected_purchases,
    fit_bgnbd,
    p_alive,
    unconditional_expected_purchases,
)
from core.churn.gamma_gamma import (
    GammaGammaParams,
    expected_average_value,
    fit_gamma_gamma,
    gamma_gamma_log_likelihood,
)
from core.churn.scoring import ChurnScore, score_customer, score_summaries
from core.churn.summary import CustomerSummary, SummaryArrays, batch_summary
from core.churn.units import PERIODS, SECONDS_PER_DAY, STATE_VERSION, day_index, period_days

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
