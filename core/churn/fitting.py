"""Maximum-likelihood fitting shared by the churn models: rows collapsed into
weights, log-parameters optimised with an analytic gradient."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize

from core.churn.units import FloatArray

# Log-parameter bounds for the optimiser (parameters in [e^-30, e^30]).
LOG_BOUND = 30.0


def collapse_rows(
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


def as_weights(weights: ArrayLike | None, n: int) -> FloatArray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite, >= 0 and one per customer")
    return w


def minimise(
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
            np.all(np.isfinite(theta)) and np.all(np.abs(theta) < LOG_BOUND)
            and math.isfinite(float(result.fun))
            and (result.success or float(np.max(np.abs(result.jac))) < 1e-6)
        )
        if not good:
            bounded = optimize.minimize(
                objective, np.clip(theta0, -LOG_BOUND, LOG_BOUND), args=args, jac=True,
                method="L-BFGS-B", bounds=[(-LOG_BOUND, LOG_BOUND)] * len(theta0),
                options={"maxiter": max_iterations, "ftol": 1e-15, "gtol": 1e-10},
            )
            theta = np.asarray(bounded.x, dtype=np.float64)
    if not np.all(np.isfinite(theta)):
        raise ArithmeticError("the likelihood could not be maximised (non-finite parameters)")
    return theta
