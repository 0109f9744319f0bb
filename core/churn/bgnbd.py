"""The BG/NBD model (Fader, Hardie & Lee 2005): fit, P(alive), expected purchases."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from core.churn.fitting import LOG_BOUND, as_weights, collapse_rows, minimise
from core.churn.units import (
    STATE_VERSION,
    FloatArray,
    check_version,
    checked_period,
    finite_number,
)

# Gauss-Jacobi nodes used when the hypergeometric closed form is unusable.
_QUADRATURE_NODES = 128
# Above this b + x the Jacobi weights overflow; generalised Laguerre takes over.
_JACOBI_MAX_B = 500.0
# Below this |a - 1| the closed form (C / (a - 1)) * (1 - G) cancels badly.
_NEAR_ONE = 1e-4


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
            finite_number(getattr(self, name), name, positive=True)
        checked_period(self.period_days)
        if self.log_likelihood is not None:
            finite_number(self.log_likelihood, "log_likelihood")
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
        check_version(d, "BGNBDParams")
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


def distinct_levels(x: FloatArray) -> tuple[FloatArray, NDArray[np.intp]]:
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
    levels, index = distinct_levels(xa.ravel())
    common, term_a, term_b = _log_likelihood_terms(params.r, params.alpha, params.a, params.b,
                                                   levels, index, ta.ravel(), Ta.ravel())
    out: FloatArray = common[index] + np.logaddexp(term_a, term_b)
    return out.reshape(xa.shape)


def negative_ll_and_grad(
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
    w = as_weights(weights, len(xa))
    if w.sum() <= 0:
        raise ValueError("weights sum to zero")
    penal = finite_number(penalizer, "penalizer", minimum=0.0)
    period = checked_period(period_days)
    (xc, tc, Tc), wc = collapse_rows([xa, ta, Ta], w)
    total = float(wc.sum())
    if initial is None:
        exposure = float(wc @ Tc)
        rate = (float(wc @ xc) / exposure if exposure > 0 else 0.0) + 1e-3
        theta0 = np.log(np.array([1.0, 1.0 / rate, 1.0, 1.0]))
    else:
        theta0 = np.log(np.array([finite_number(v, "initial", positive=True) for v in initial]))
    theta0 = np.clip(theta0, -LOG_BOUND + 1, LOG_BOUND - 1)
    levels, index = distinct_levels(xc)
    level_w = np.bincount(index, weights=wc, minlength=len(levels)).astype(np.float64)
    theta = minimise(negative_ll_and_grad, theta0,
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


def alive_expectation_closed_form(
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


def alive_expectation_quadrature(
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
    given_alive = alive_expectation_closed_form(params, xf, Tf, tof)
    bad = np.isnan(given_alive)
    if np.any(bad):
        given_alive[bad] = alive_expectation_quadrature(params, xf[bad], Tf[bad], tof[bad])
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
