"""``churn evaluate``'s alert report: precision and recall of the churn alert.

At the alert threshold (the stream's default unless ``--threshold``), on a
holdout: BG/NBD fitted on the purchases up to a cutoff day, then "bought nothing
in the next ``--horizon-days`` days" is the truth. The cutoff defaults to the
last purchase day minus the horizon (CDNOW: the paper's calibration end).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import orjson

from core.churn import SECONDS_PER_DAY
from core.churn.holdout import AlertOutcome, evaluate_alerts
from core.engagement import EngagementConfig
from core.events import Event
from streams.devtools.datasets import load_events
from streams.errors import CliError


def add_alert_flags(parser: argparse.ArgumentParser) -> None:
    defaults = EngagementConfig()
    parser.add_argument("--threshold", type=float, default=defaults.churn_threshold,
                        help=f"alert when P(alive) is below this (default "
                             f"{defaults.churn_threshold:g}, as the stream)")
    parser.add_argument("--horizon-days", type=float, default=defaults.horizon_days,
                        help=f"lapsed = bought nothing in this many days after the cutoff "
                             f"(default {defaults.horizon_days:g})")
    parser.add_argument("--cutoff", metavar="YYYY-MM-DD",
                        help="last day of the calibration period (default: the last purchase "
                             "day minus the horizon; CDNOW: 1997-09-30)")


def _cutoff_seconds(args: argparse.Namespace, default: float) -> float:
    if args.cutoff is None:
        return default
    try:
        day = date.fromisoformat(args.cutoff)
    except ValueError:
        raise CliError(f"--cutoff {args.cutoff!r} is not a YYYY-MM-DD date") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def alert_report(
    customers: Sequence[str] | np.ndarray,
    ts: np.ndarray,
    amounts: np.ndarray,
    args: argparse.Namespace,
    *,
    default_cutoff: float | None = None,
) -> dict[str, Any]:
    """The alert figures as a JSON-ready dict."""
    if not 0.0 < args.threshold < 1.0:
        raise CliError("--threshold must be in (0, 1)")
    if args.horizon_days <= 0:
        raise CliError("--horizon-days must be positive")
    if ts.size == 0:
        raise CliError("no purchases to evaluate churn alerts on")
    last_day = math.floor(float(ts.max()) / SECONDS_PER_DAY) * SECONDS_PER_DAY
    fallback = default_cutoff if default_cutoff is not None else (
        last_day - args.horizon_days * SECONDS_PER_DAY)
    cutoff = _cutoff_seconds(args, fallback)
    try:
        outcome = evaluate_alerts(customers, ts, amounts, cutoff_seconds=cutoff,
                                  threshold=args.threshold, horizon_days=args.horizon_days)
    except (ValueError, ArithmeticError) as exc:
        raise CliError(f"cannot evaluate churn alerts: {exc}") from None
    return _as_dict(outcome, args.threshold)


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _as_dict(outcome: AlertOutcome, threshold: float) -> dict[str, Any]:
    p = outcome.params
    return {
        "cutoff": datetime.fromtimestamp(outcome.cutoff_seconds, UTC).date().isoformat(),
        "horizon_days": outcome.horizon_days,
        "threshold": threshold,
        "customers": outcome.customers,
        "lapsed": outcome.lapsed,
        "base_rate": _number(outcome.base_rate),
        "alerted": outcome.alerted,
        "precision": _number(outcome.precision),
        "recall": _number(outcome.recall),
        "false_alarm_rate": _number(outcome.false_alarm_rate),
        "params_days": {"r": p.r, "alpha": p.alpha, "a": p.a, "b": p.b},
        "sweep": [{"threshold": c.threshold, "alerted": c.alerted,
                   "precision": _number(c.precision), "recall": _number(c.recall)}
                  for c in outcome.sweep],
    }


def purchases_of(events: Sequence[Event]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Customers, times and spend (price x quantity, 0 when unpriced) of the purchases."""
    bought = [e for e in events if e.is_purchase]
    if not bought:
        raise CliError("the events hold no purchases: churn needs purchases")
    return (np.array([e.user_id for e in bought]),
            np.array([e.ts for e in bought], dtype=np.float64),
            np.array([(e.price or 0.0) * e.quantity for e in bought], dtype=np.float64))


def print_alerts(report: dict[str, Any]) -> None:
    """The alert section of the text output."""
    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(f"  churn alerts at P(alive) < {report['threshold']:g}: calibration to "
          f"{report['cutoff']}, lapsed = no purchase in the next {report['horizon_days']:g} days")
    print(f"  {report['customers']:,} customers, {report['lapsed']:,} lapsed (base rate "
          f"{show(report['base_rate'])}), {report['alerted']:,} alerted: precision "
          f"{show(report['precision'])}, recall {show(report['recall'])}, false alarms among "
          f"buyers {show(report['false_alarm_rate'])}")
    cells = " ".join(f"{row['threshold']:g}:{show(row['precision'])}/{show(row['recall'])}"
                     for row in report["sweep"])
    print(f"  precision/recall by threshold: {cells}")


def shop_alerts(args: argparse.Namespace) -> int:
    """``churn evaluate`` on a shop log: the alert report alone."""
    started = time.perf_counter()
    events = load_events(dataset=None if args.events else args.dataset, events_file=args.events)
    customers, ts, amounts = purchases_of(events)
    report: dict[str, Any] = {"alerts": alert_report(customers, ts, amounts, args),
                              "seconds": round(time.perf_counter() - started, 4)}
    if args.json:
        sys.stdout.write(orjson.dumps(report).decode() + "\n")
        return 0
    print(f"churn alerts on {args.events or args.dataset} ({len(ts):,} purchase lines)")
    print_alerts(report["alerts"])
    return 0
