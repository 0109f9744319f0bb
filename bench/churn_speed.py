"""How fast is the BG/NBD churn model? Fits on CDNOW, scoring throughput, and lifetimes.

Prints (median of ``--runs`` runs each):

* fit seconds on the paper's 2,357-customer summary and on the full 23,570-customer
  cohort (39-week calibration rebuilt from ``CDNOW_master.txt``);
* scoring throughput (customers/s) of P(alive) and of the 30-day expected purchases
  over ``--customers`` (default 1M) synthetic customers, and of ``score_summaries``
  on CustomerSummary objects (the stream timers' path);
* the same fits with lifetimes' ``BetaGeoFitter`` in the same run, and the ratio.

lifetimes is never a runtime dependency. Install it into a separate environment::

    python3.11 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install lifetimes==0.11.3 -e /path/to/recostream
    /tmp/bench-venv/bin/python bench/churn_speed.py

(lifetimes 0.11.3 imports and fits with numpy 2.4, scipy 1.17, pandas 3.1 and
autograd 1.9 on Python 3.11.) Without it the script says so and compares with
``REFERENCE_LIFETIMES`` below, measured once on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import scipy

from core.churn import (
    BGNBDParams,
    CustomerSummary,
    batch_summary,
    expected_purchases,
    fit_bgnbd,
    p_alive,
    score_summaries,
)
from streams.cli import churn as churn_cli

# lifetimes 0.11.3 BetaGeoFitter.fit on the same data, measured on this project's
# 2-core machine (Python 3.11, numpy 2.4.6, scipy 1.17.1, pandas 3.1.1), 2026-11-29.
# Medians of several runs; the machine was shared, so expect +-50 %.
REFERENCE_LIFETIMES = {"sample_fit_seconds": 0.081, "full_fit_seconds": 0.279}

INSTALL_HINT = (
    "lifetimes is not importable here; to compare in the same run, use a separate venv:\n"
    "  python3.11 -m venv /tmp/bench-venv\n"
    "  /tmp/bench-venv/bin/pip install lifetimes==0.11.3 -e /work/main\n"
    "  /tmp/bench-venv/bin/python bench/churn_speed.py\n"
    "(works with numpy 2.4, scipy 1.17, pandas 3.1, autograd 1.9 on Python 3.11)"
)


def median_seconds(fn: Callable[[], object], runs: int) -> tuple[float, object]:
    times: list[float] = []
    result: object = None
    for _ in range(runs):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def load_data() -> dict[str, tuple[np.ndarray[Any, Any], ...]]:
    paths = churn_cli.cdnow_paths()
    table = churn_cli.read_summary_csv(paths[churn_cli.SUMMARY_CSV])
    master = churn_cli.read_master(paths["CDNOW_master.txt"])
    full = batch_summary(
        master.customer, master.ts, master.amount,
        churn_cli.date_seconds(churn_cli.CALIBRATION_END), period_days=churn_cli.WEEK_DAYS,
    )
    return {
        "sample": (table.frequency, table.recency, table.T),
        "full": (full.frequency.astype(np.float64), full.recency, full.T),
    }


def synthetic_customers(params: BGNBDParams, n: int, seed: int = 0) -> tuple[np.ndarray[Any, Any],
                                                                                ...]:
    """RFM rows drawn from the BG/NBD process with the fitted parameters, T up to 78 weeks."""
    rng = np.random.default_rng(seed)
    T = rng.uniform(1.0, 78.0, n)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    clock = np.zeros(n)
    active = np.ones(n, dtype=bool)
    while np.any(active):
        idx = np.flatnonzero(active)
        clock[idx] += rng.exponential(1.0, len(idx)) / np.maximum(lam[idx], 1e-12)
        bought = clock[idx] <= T[idx]
        b_idx = idx[bought]
        x[b_idx] += 1
        t_x[b_idx] = clock[b_idx]
        drop = rng.random(len(b_idx)) < p[b_idx]
        active[idx[~bought]] = False
        active[b_idx[drop]] = False
    return x, t_x, T


def lifetimes_or_none() -> Any | None:
    try:
        return importlib.import_module("lifetimes")
    except Exception:  # ImportError, or a broken install against newer pandas/scipy
        return None


def run(runs: int, customers: int) -> dict[str, Any]:
    data = load_data()
    report: dict[str, Any] = {
        "python": platform.python_version(), "numpy": np.__version__,
        "scipy": scipy.__version__, "cpus": os.cpu_count(), "runs": runs,
    }
    fits: dict[str, BGNBDParams] = {}
    for name, (x, t_x, T) in data.items():
        def fit(x: Any = x, t_x: Any = t_x, T: Any = T) -> BGNBDParams:
            return fit_bgnbd(x, t_x, T, period_days=7.0)

        seconds, params = median_seconds(fit, runs)
        assert isinstance(params, BGNBDParams)
        fits[name] = params
        report[f"{name}_customers"] = len(x)
        report[f"{name}_distinct_rows"] = len(np.unique(np.column_stack([x, t_x, T]), axis=0))
        report[f"{name}_fit_seconds"] = seconds
        report[f"{name}_params"] = {k: getattr(params, k) for k in ("r", "alpha", "a", "b",
                                                                    "log_likelihood")}

    # scoring throughput on synthetic customers
    params = fits["sample"]
    x, t_x, T = synthetic_customers(params, customers)
    report["score_customers"] = customers
    seconds, _ = median_seconds(lambda: p_alive(params, x, t_x, T), runs)
    report["p_alive_per_second"] = customers / seconds
    seconds, _ = median_seconds(lambda: expected_purchases(params, 30 / 7, x, t_x, T),
                                max(1, runs // 2))
    report["expected_purchases_per_second"] = customers / seconds
    n_obj = min(customers, 100_000)
    summaries = []
    for xi, ti in zip(x[:n_obj].tolist(), t_x[:n_obj].tolist(), strict=True):
        s = CustomerSummary()
        first = 0.0
        s.observe_purchase(first, 10.0)
        if xi > 0:  # x repeat days ending at day round(7 t_x)
            last = max(round(7 * ti), int(xi))
            for d in np.linspace(1, last, int(xi)).round().astype(int).tolist():
                s.observe_purchase(first + 86_400.0 * d, 10.0)
        summaries.append(s)
    now = 86_400.0 * 7 * 78
    seconds, _ = median_seconds(lambda: score_summaries(params, summaries, now), 3)
    report["score_summaries_per_second"] = n_obj / seconds

    lifetimes = lifetimes_or_none()
    if lifetimes is None:
        report["lifetimes"] = None
        for name in data:
            ref = REFERENCE_LIFETIMES[f"{name}_fit_seconds"]
            report[f"lifetimes_reference_{name}_fit_seconds"] = ref
            report[f"{name}_speedup_vs_reference"] = ref / report[f"{name}_fit_seconds"]
        return report

    report["lifetimes"] = lifetimes.__version__
    import pandas as pd

    report["pandas"] = pd.__version__
    for name, (x_d, t_d, T_d) in data.items():
        lt_runs = runs if name == "sample" else max(1, min(runs, 3))

        def lt_fit(x_d: Any = x_d, t_d: Any = t_d, T_d: Any = T_d) -> Any:
            return lifetimes.BetaGeoFitter(penalizer_coef=0.0).fit(x_d, t_d, T_d)

        seconds, fitter = median_seconds(lt_fit, lt_runs)
        report[f"lifetimes_{name}_fit_seconds"] = seconds
        report[f"{name}_speedup"] = seconds / report[f"{name}_fit_seconds"]
        lt_params = {k: float(v) for k, v in fitter.params_.items()}  # type: ignore[attr-defined]
        ours = fits[name]
        report[f"{name}_max_param_difference"] = max(
            abs(lt_params[k] - getattr(ours, k)) for k in ("r", "alpha", "a", "b")
        )
        # lifetimes with the same collapse to distinct rows that we do
        uniq, counts = np.unique(np.column_stack([x_d, t_d, T_d]), axis=0, return_counts=True)

        def lt_weighted(uniq: Any = uniq, counts: Any = counts) -> Any:
            return lifetimes.BetaGeoFitter(penalizer_coef=0.0).fit(
                uniq[:, 0], uniq[:, 1], uniq[:, 2], weights=counts
            )

        seconds, _ = median_seconds(lt_weighted, lt_runs)
        report[f"lifetimes_{name}_weighted_fit_seconds"] = seconds
    fitter = lifetimes.BetaGeoFitter()
    fitter.params_ = pd.Series({"r": params.r, "alpha": params.alpha, "a": params.a,
                                "b": params.b})
    seconds, _ = median_seconds(lambda: fitter.conditional_probability_alive(x, t_x, T), 3)
    report["lifetimes_p_alive_per_second"] = customers / seconds
    return report


def print_table(r: dict[str, Any]) -> None:
    lt = r.get("lifetimes")
    print(f"BG/NBD speed: Python {r['python']}, numpy {r['numpy']}, scipy {r['scipy']}, "
          f"{r['cpus']} CPUs, median of {r['runs']} runs"
          + (f"; lifetimes {lt}, pandas {r['pandas']}" if lt else ""))
    print(f"{'':42}{'recostream':>14}{'lifetimes':>14}{'ratio':>8}")
    for name, label in (("sample", "fit, CDNOW summary"), ("full", "fit, full cohort")):
        ours = r[f"{name}_fit_seconds"]
        label = f"{label} ({r[f'{name}_customers']:,} cust.)"
        if lt:
            theirs = r[f"lifetimes_{name}_fit_seconds"]
            print(f"{label:<42}{ours * 1e3:>12.1f}ms{theirs * 1e3:>12.1f}ms"
                  f"{theirs / ours:>7.1f}x")
            weighted = r[f"lifetimes_{name}_weighted_fit_seconds"]
            print(f"{'  lifetimes on weighted distinct rows':<42}{'':>14}{weighted * 1e3:>12.1f}ms"
                  f"{weighted / ours:>7.1f}x")
        else:
            print(f"{label:<42}{ours * 1e3:>12.1f}ms{'-':>14}{'-':>8}")
    n = r["score_customers"]
    p_theirs = r.get("lifetimes_p_alive_per_second")
    print(f"{f'P(alive), {n:,} synthetic customers':<42}{r['p_alive_per_second']:>12,.0f}/s"
          + (f"{p_theirs:>12,.0f}/s{r['p_alive_per_second'] / p_theirs:>7.1f}x"
             if p_theirs else ""))
    print(f"{'E[purchases next 30 days]':<42}{r['expected_purchases_per_second']:>12,.0f}/s")
    print(f"{'score_summaries (CustomerSummary)':<42}{r['score_summaries_per_second']:>12,.0f}/s")
    sp = r["sample_params"]
    print(f"CDNOW summary fit: r={sp['r']:.4f} alpha={sp['alpha']:.4f} a={sp['a']:.4f} "
          f"b={sp['b']:.4f} LL={sp['log_likelihood']:.2f}")
    fp = r["full_params"]
    print(f"full cohort fit:   r={fp['r']:.4f} alpha={fp['alpha']:.4f} a={fp['a']:.4f} "
          f"b={fp['b']:.4f} LL={fp['log_likelihood']:.2f} "
          f"({r['full_distinct_rows']:,} distinct rows)")
    if lt:
        print(f"max |parameter difference| vs lifetimes: sample "
              f"{r['sample_max_param_difference']:.1e}, full {r['full_max_param_difference']:.1e}")
    else:
        print(INSTALL_HINT)
        for name in ("sample", "full"):
            print(f"reference lifetimes 0.11.3 fit ({name}, measured on this project's machine): "
                  f"{r[f'lifetimes_reference_{name}_fit_seconds'] * 1e3:.0f} ms -> "
                  f"{r[f'{name}_speedup_vs_reference']:.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per measurement (median)")
    parser.add_argument("--customers", type=int, default=1_000_000,
                        help="synthetic customers for the scoring throughput")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.customers < 1:
        parser.error("--runs and --customers must be >= 1")
    report = run(args.runs, args.customers)
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
