"""Days, periods, state versions and the checks every churn piece shares."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

SECONDS_PER_DAY = 86_400
STATE_VERSION = 1
#: Period units by name, in days.
PERIODS: dict[str, float] = {"days": 1.0, "weeks": 7.0}

FloatArray = NDArray[np.float64]

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


def checked_period(period: float) -> float:
    if not (isinstance(period, int | float) and math.isfinite(period) and period > 0):
        raise ValueError(f"period_days must be a positive number, got {period!r}")
    return float(period)


def check_version(d: dict[str, Any], what: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{what} state must be a dict")
    if d.get("version") != STATE_VERSION:
        raise ValueError(f"{what} state has version {d.get('version')!r}, expected {STATE_VERSION}")


def finite_number(
    value: Any, name: str, *, minimum: float | None = None, positive: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return float(value)
