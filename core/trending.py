"""Trending: per item, a count of its gains decayed by event time, and the prior
ranking adds (scaled so that the top item is 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Decimals the scaled prior is rounded to, so that sums folded in another order
#: (another worker, a replay) compare equal; far below what matters for ranking.
TRENDING_DECIMALS = 9


def trend_bump(value: float, time: float, ts: float, tau: float) -> tuple[float, float]:
    """Add one interaction at ``ts`` to a count decayed to ``time``; (value, time).

    The result is ``sum(exp((t_k - time) / tau))`` over the interactions, whatever
    their arrival order.

    >>> v, t = trend_bump(0.0, 0.0, 10.0, tau=10.0)
    >>> v, t = trend_bump(v, t, 0.0, tau=10.0)  # a late event counts decayed
    >>> round(v, 4), t
    (1.3679, 10.0)
    """
    if ts >= time:
        return value * math.exp((time - ts) / tau) + 1.0, ts
    return value + math.exp((ts - time) / tau), time


def trending_scale(
    values: Sequence[float] | np.ndarray, times: Sequence[float] | np.ndarray, tau: float
) -> np.ndarray:
    """Decayed counts brought to the latest time, scaled so the top item is 1.

    Scaling makes the result independent of "now": only relative decay matters.

    >>> trending_scale([2.0, 1.0], [0.0, 0.0], tau=1.0).tolist()
    [1.0, 0.5]
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    t = np.asarray(times, dtype=np.float64)
    decayed = v * np.exp((t - t.max()) / tau)
    top = decayed.max()
    scaled = decayed / top if top > 0 else decayed
    return np.asarray(np.round(scaled, TRENDING_DECIMALS))
