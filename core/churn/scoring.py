"""A customer's churn figures at a given time, from the fitted models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.churn.bgnbd import BGNBDParams, expected_purchases, p_alive
from core.churn.gamma_gamma import GammaGammaParams, expected_average_value
from core.churn.summary import CustomerSummary
from core.churn.units import finite_number


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
    horizon = finite_number(horizon_days, "horizon_days", minimum=0.0)
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
