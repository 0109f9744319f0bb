"""The Gamma-Gamma spend model (Fader & Hardie 2013)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from core.churn.fitting import as_weights, collapse_rows, minimise
from core.churn.units import STATE_VERSION, FloatArray, check_version, finite_number


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
            finite_number(getattr(self, name), name, positive=True)
        if self.log_likelihood is not None:
            finite_number(self.log_likelihood, "log_likelihood")

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
        check_version(d, "GammaGammaParams")
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
    w = as_weights(weights, len(x))
    use = (x > 0) & (m > 0) & (w > 0)
    if not np.any(use):
        raise ValueError("no customer with repeat purchases and positive spend")
    (xc, mc), wc = collapse_rows([x[use], m[use]], w[use])
    total = float(wc.sum())
    penal = finite_number(penalizer, "penalizer", minimum=0.0)
    mean_m = float(wc @ mc) / total
    theta0 = np.log(np.array([2.0, 3.0, mean_m]))
    theta = minimise(_gg_negative_ll_and_grad, theta0, (xc, mc, wc, total, penal), 2000)
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
