"""``recostream churn``: reproduce the BG/NBD paper on CDNOW and fit summaries.

Sub-commands::

    recostream churn summary  --dataset cdnow [--out FILE.csv]   # rebuild + check the csv
    recostream churn fit      --dataset cdnow | --summary FILE.csv [--json]
    recostream churn evaluate --dataset cdnow [--json] [--plot FILE.png]
    recostream churn evaluate --dataset instacart-sample | --events FILE [--json]

``evaluate`` also judges the churn alert as an alert (``streams/churn_alerts.py``):
precision and recall of "bought nothing in the next N days" at the threshold;
on a shop log that is all it reports (the tracking chart is CDNOW's calendar).

CDNOW conventions (found by matching ``cdnow_customers_summary.csv`` row for row):
dates are calendar days; the calibration period runs 1997-01-01 to 1997-09-30
*inclusive* (39 weeks = 273 days); same-day purchases are one transaction;
``T = (1997-09-30 - first purchase date) / 7`` and ``recency = (last - first) / 7``
in weeks, rounded to 2 decimals in the csv. The holdout is 1997-10-01 to 1998-06-30
(weeks 40-78, 39 weeks for every customer). The sample's ids are the second column
of ``CDNOW_sample.txt``; its first column is the master file's customer id.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from core.churn import (
    PERIODS,
    BGNBDParams,
    CustomerSummary,
    SummaryArrays,
    batch_summary,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    p_alive,
    period_days,
    unconditional_expected_purchases,
)
from streams.cli.churn_alerts import add_alert_flags, alert_report, print_alerts, shop_alerts
from streams.devtools.datasets import DATASETS, dataset_files
from streams.errors import CliError

CDNOW_START = date(1997, 1, 1)
CALIBRATION_END = date(1997, 9, 30)  # inclusive
HOLDOUT_END = date(1998, 6, 30)  # inclusive
WEEK_DAYS = 7.0
SUMMARY_CSV = "cdnow_customers_summary.csv"


def date_seconds(day: date) -> float:
    """Epoch seconds of the UTC midnight that starts ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def weeks_between(start: date, end_inclusive: date) -> float:
    return ((end_inclusive - start).days + 1) / WEEK_DAYS


# --- reading the files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Transactions:
    """CDNOW purchases: one row per master-file line."""

    customer: np.ndarray[Any, np.dtype[np.int64]]
    ts: np.ndarray[Any, np.dtype[np.float64]]  # epoch seconds, UTC midnight of the date
    amount: np.ndarray[Any, np.dtype[np.float64]]

    def subset(self, customers: set[int]) -> Transactions:
        keep = np.isin(self.customer, np.fromiter(customers, dtype=np.int64))
        return Transactions(self.customer[keep], self.ts[keep], self.amount[keep])


def _open_text(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CliError(f"cannot read {path}: no such file") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: not UTF-8 text") from None


def _parse_date(text: str) -> date:
    if len(text) != 8 or not text.isdigit():
        raise ValueError(text)
    return date(int(text[:4]), int(text[4:6]), int(text[6:]))


def read_master(path: Path) -> Transactions:
    """``CDNOW_master.txt``: customer_id, yyyymmdd, number_of_cds, dollar_value."""
    customers: list[int] = []
    stamps: list[float] = []
    amounts: list[float] = []
    seconds_of: dict[str, float] = {}
    for lineno, line in enumerate(_open_text(path), start=1):
        parts = line.split()
        if not parts or (lineno == 1 and parts[0] == "customer_id"):
            continue
        try:
            if len(parts) != 4:
                raise ValueError(line)
            stamp = seconds_of.get(parts[1])
            if stamp is None:
                stamp = seconds_of[parts[1]] = date_seconds(_parse_date(parts[1]))
            amount = float(parts[3])
            if not math.isfinite(amount) or amount < 0:
                raise ValueError(parts[3])
            customers.append(int(parts[0]))
            stamps.append(stamp)
            amounts.append(amount)
        except ValueError:
            raise CliError(
                f"{path}:{lineno}: expected 'customer_id yyyymmdd cds dollars'"
            ) from None
    if not customers:
        raise CliError(f"{path}: no transactions")
    return Transactions(np.array(customers, dtype=np.int64), np.array(stamps),
                        np.array(amounts))


def read_sample_ids(path: Path) -> dict[int, int]:
    """``CDNOW_sample.txt``: master id -> sample id (its first two columns)."""
    ids: dict[int, int] = {}
    for lineno, line in enumerate(_open_text(path), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            master, sample = int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise CliError(f"{path}:{lineno}: expected 'master_id sample_id ...'") from None
        if ids.setdefault(master, sample) != sample:
            raise CliError(f"{path}:{lineno}: master id {master} has two sample ids")
    if not ids:
        raise CliError(f"{path}: no customers")
    return ids


@dataclass(frozen=True)
class SummaryTable:
    """A summary csv: ID, frequency (x), recency (t_x), T."""

    ids: list[str]
    frequency: np.ndarray[Any, np.dtype[np.float64]]
    recency: np.ndarray[Any, np.dtype[np.float64]]
    T: np.ndarray[Any, np.dtype[np.float64]]


def read_summary_csv(path: Path) -> SummaryTable:
    """A summary in ``cdnow_customers_summary.csv``'s format (extra columns are ignored)."""
    lines = _open_text(path)
    reader = csv.DictReader(lines)
    fields = reader.fieldnames or []
    missing = [c for c in ("frequency", "recency", "T") if c not in fields]
    if missing:
        raise CliError(f"{path}: missing column(s) {', '.join(missing)} "
                       "(expected ID,frequency,recency,T)")
    id_column = "ID" if "ID" in fields else fields[0]
    ids: list[str] = []
    rows: list[tuple[float, float, float]] = []
    for lineno, row in enumerate(reader, start=2):
        try:
            x, t_x, age = float(row["frequency"]), float(row["recency"]), float(row["T"])
        except (TypeError, ValueError):
            raise CliError(f"{path}:{lineno}: frequency, recency and T must be numbers") from None
        if not (x >= 0 and x == int(x) and 0 <= t_x <= age and math.isfinite(age)
                and (x > 0 or t_x == 0)):
            raise CliError(f"{path}:{lineno}: need integer frequency >= 0 and "
                           "0 <= recency <= T (recency 0 when frequency is 0)")
        ids.append(str(row[id_column]))
        rows.append((x, t_x, age))
    if not rows:
        raise CliError(f"{path}: no customers")
    arr = np.array(rows)
    return SummaryTable(ids, arr[:, 0], arr[:, 1], arr[:, 2])


def cdnow_paths() -> dict[str, Path]:
    return dataset_files("cdnow")


def build_calibration_summaries(
    transactions: Transactions, customers: dict[int, int] | None = None
) -> dict[int, CustomerSummary]:
    """Incremental summaries (the stream's code path) of the calibration period.

    ``customers`` maps master ids to output ids (the sample); None keeps every
    customer under its master id.
    """
    end = date_seconds(CALIBRATION_END)
    summaries: dict[int, CustomerSummary] = {}
    for cust, ts, amount in zip(transactions.customer.tolist(), transactions.ts.tolist(),
                                transactions.amount.tolist(), strict=True):
        if ts > end:
            continue
        key = cust if customers is None else customers.get(cust)
        if key is None:
            continue
        summary = summaries.get(key)
        if summary is None:
            summary = summaries[key] = CustomerSummary()
        summary.observe_purchase(ts, amount)
    return dict(sorted(summaries.items()))


def summary_rows(summaries: dict[int, CustomerSummary]) -> list[tuple[int, int, float, float]]:
    """(ID, frequency, recency, T) in weeks, rounded to 2 decimals like the csv."""
    now = date_seconds(CALIBRATION_END)
    return [
        (key, s.frequency, round(s.recency(WEEK_DAYS), 2), round(s.age(now, WEEK_DAYS), 2))
        for key, s in summaries.items()
    ]


def compare_with_csv(
    rows: list[tuple[int, int, float, float]], table: SummaryTable
) -> tuple[int, list[str]]:
    """How many rows equal the csv's, and a description of each difference."""
    theirs = {
        ident: (int(x), float(t_x), float(age))
        for ident, x, t_x, age in zip(table.ids, table.frequency, table.recency, table.T,
                                      strict=True)
    }
    ours = {str(key): (x, t_x, age) for key, x, t_x, age in rows}
    matched = 0
    problems: list[str] = []
    for ident in sorted(set(theirs) | set(ours), key=lambda s: (len(s), s)):
        a, b = ours.get(ident), theirs.get(ident)
        if a is not None and b is not None and a[0] == b[0] and all(
            abs(u - v) < 1e-9 for u, v in zip(a[1:], b[1:], strict=True)
        ):
            matched += 1
        else:
            problems.append(f"ID {ident}: rebuilt {a}, csv {b}")
    return matched, problems


def write_summary_csv(path: str, rows: list[tuple[int, int, float, float]]) -> None:
    lines = ["ID,frequency,recency,T"] + [f"{k},{x},{t_x!r},{age!r}" for k, x, t_x, age in rows]
    text = "\n".join(lines) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


# --- the evaluation ----------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    params: BGNBDParams
    calibration: SummaryArrays
    holdout_actual: np.ndarray[Any, np.dtype[np.float64]]
    holdout_predicted: np.ndarray[Any, np.dtype[np.float64]]
    weeks: np.ndarray[Any, np.dtype[np.float64]]
    cumulative_actual: np.ndarray[Any, np.dtype[np.float64]]
    cumulative_model: np.ndarray[Any, np.dtype[np.float64]]
    calibration_weeks: float
    holdout_weeks: float
    fit_seconds: float


def evaluate_cdnow(transactions: Transactions) -> Evaluation:
    """Fit on weeks 1-39, predict weeks 40-78 per customer and the weekly tracking curve."""
    cal_now, hold_now = date_seconds(CALIBRATION_END), date_seconds(HOLDOUT_END)
    cal = batch_summary(transactions.customer, transactions.ts, transactions.amount, cal_now,
                        period_days=WEEK_DAYS)
    full = batch_summary(transactions.customer, transactions.ts, transactions.amount, hold_now,
                         period_days=WEEK_DAYS)
    if not np.array_equal(cal.customers, full.customers):
        raise CliError("some customers first bought after the calibration period")
    started = time.perf_counter()
    params = fit_bgnbd(cal.frequency, cal.recency, cal.T, period_days=WEEK_DAYS)
    fit_seconds = time.perf_counter() - started
    holdout_weeks = (HOLDOUT_END - CALIBRATION_END).days / WEEK_DAYS
    actual = (full.frequency - cal.frequency).astype(np.float64)
    predicted = expected_purchases(params, holdout_weeks, cal.frequency, cal.recency, cal.T)

    # tracking: cumulative repeat purchases through the last day of each week
    start_day = int(date_seconds(CDNOW_START) // 86_400)
    n_weeks = round(weeks_between(CDNOW_START, HOLDOUT_END))
    week_end = np.arange(1, n_weeks + 1) * 7 - 1  # day offsets of each week's last day
    first = cal.first_day - start_day
    days = np.floor(transactions.ts / 86_400).astype(np.int64) - start_day
    # repeat purchase days: distinct (customer, day) pairs other than the first day
    pairs = np.unique(np.column_stack([transactions.customer, days]), axis=0)
    first_of = dict(zip(cal.customers.tolist(), first.tolist(), strict=True))
    is_repeat = np.array([day != first_of[c] for c, day in pairs.tolist()])
    repeat_days = pairs[is_repeat, 1]
    cumulative_actual = np.array(
        [np.count_nonzero(repeat_days <= end) for end in week_end], dtype=np.float64
    )
    starts, counts = np.unique(first, return_counts=True)
    elapsed = np.clip((week_end[:, None] - starts[None, :]) / WEEK_DAYS, 0.0, None)
    cumulative_model = unconditional_expected_purchases(params, elapsed) @ counts
    return Evaluation(
        params=params, calibration=cal, holdout_actual=actual, holdout_predicted=predicted,
        weeks=np.arange(1, n_weeks + 1, dtype=np.float64), cumulative_actual=cumulative_actual,
        cumulative_model=cumulative_model,
        calibration_weeks=weeks_between(CDNOW_START, CALIBRATION_END),
        holdout_weeks=holdout_weeks, fit_seconds=fit_seconds,
    )


def plot_tracking(result: Evaluation, path: str) -> None:
    """The paper's tracking chart: cumulative repeat purchases by week, actual vs model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CliError("--plot needs matplotlib: pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.plot(result.weeks, result.cumulative_actual, color="black", label="Actual")
    ax.plot(result.weeks, result.cumulative_model, color="tab:blue", linestyle="--",
            label="BG/NBD")
    ax.axvline(result.calibration_weeks, color="grey", linestyle=":", linewidth=1)
    top = float(max(result.cumulative_actual.max(), result.cumulative_model.max()))
    ax.text(result.calibration_weeks + 0.5, 0.05 * top, "calibration | holdout",
            color="grey", fontsize=9)
    p = result.params
    ax.set_title(f"CDNOW: cumulative repeat transactions ({len(result.holdout_actual):,} "
                 f"customers)\nr={p.r:.3f} alpha={p.alpha:.3f} a={p.a:.3f} b={p.b:.3f}")
    ax.set_xlabel("Week")
    ax.set_ylabel("Cumulative repeat transactions")
    ax.set_xlim(0, result.weeks[-1])
    ax.set_ylim(0, None)
    ax.legend(loc="upper left")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(fig)


# --- commands ----------------------------------------------------------------------------


def _print_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(obj).decode() + "\n")


def _sample_transactions(paths: dict[str, Path], cohort: str) -> tuple[Transactions,
                                                                          dict[int, int] | None]:
    master = read_master(paths["CDNOW_master.txt"])
    if cohort == "full":
        return master, None
    ids = read_sample_ids(paths["CDNOW_sample.txt"])
    return master.subset(set(ids)), ids


def _cmd_summary(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    paths = cdnow_paths()
    transactions, ids = _sample_transactions(paths, args.cohort)
    rows = summary_rows(build_calibration_summaries(transactions, ids))
    if args.out:
        write_summary_csv(args.out, rows)
    report: dict[str, Any] = {"customers": len(rows), "cohort": args.cohort}
    status = 0
    problems: list[str] = []
    if args.cohort == "sample":
        matched, problems = compare_with_csv(rows, read_summary_csv(paths[SUMMARY_CSV]))
        report.update(matched=matched, differing=len(problems))
        status = 1 if problems else 0
    report["seconds"] = round(time.perf_counter() - started, 4)
    out = sys.stderr if args.out == "-" else sys.stdout
    if args.json:
        out.write(orjson.dumps(report).decode() + "\n")
    else:
        out.write(f"rebuilt {len(rows)} customer summaries (39-week calibration, weeks)\n")
        if args.cohort == "sample":
            out.write(f"{report['matched']}/{len(rows)} rows match {SUMMARY_CSV}"
                      f"{'' if problems else ' row for row'}\n")
        if args.out and args.out != "-":
            out.write(f"wrote {args.out}\n")
    for line in problems[:10]:
        sys.stderr.write(line + "\n")
    return status


def _cmd_fit(args: argparse.Namespace) -> int:
    unit = period_days(args.period)
    if args.summary is not None:
        table = read_summary_csv(Path(args.summary))
        x, t_x, age = table.frequency, table.recency, table.T
        source = args.summary
    elif args.cohort == "sample":
        table = read_summary_csv(cdnow_paths()[SUMMARY_CSV])
        x, t_x, age = table.frequency, table.recency * WEEK_DAYS / unit, table.T * WEEK_DAYS / unit
        source = SUMMARY_CSV
    else:
        master = read_master(cdnow_paths()["CDNOW_master.txt"])
        cal = batch_summary(master.customer, master.ts, master.amount,
                            date_seconds(CALIBRATION_END), period_days=unit)
        x, t_x, age = cal.frequency.astype(np.float64), cal.recency, cal.T
        source = "CDNOW_master.txt (all customers)"
    started = time.perf_counter()
    try:
        params = fit_bgnbd(x, t_x, age, period_days=unit, penalizer=args.penalizer)
    except (ValueError, ArithmeticError) as exc:
        raise CliError(f"cannot fit {source}: {exc}") from None
    seconds = time.perf_counter() - started
    if args.save:
        try:
            Path(args.save).write_bytes(orjson.dumps(params.to_state()) + b"\n")
        except OSError as exc:
            raise CliError(f"cannot write {args.save}: {exc.strerror}") from None
    result = {
        "r": params.r, "alpha": params.alpha, "a": params.a, "b": params.b,
        "log_likelihood": params.log_likelihood, "customers": params.customers,
        "seconds": round(seconds, 6),
    }
    if args.json:
        _print_json(result)
        return 0
    print(f"BG/NBD fit on {source}: {params.customers:,} customers, {args.period}, "
          f"{seconds * 1000:.1f} ms")
    print(f"  {'parameter':<16}{'fitted':>12}")
    for name in ("r", "alpha", "a", "b"):
        print(f"  {name:<16}{getattr(params, name):>12.4f}")
    print(f"  {'log-likelihood':<16}{params.log_likelihood:>12.2f}")
    if args.save:
        print(f"saved parameters to {args.save}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.events or args.dataset != "cdnow":
        if args.plot or args.spend:
            raise CliError("--plot and --spend are for CDNOW's calendar (--dataset cdnow)")
        return shop_alerts(args)
    started = time.perf_counter()
    transactions, _ = _sample_transactions(cdnow_paths(), args.cohort)
    alerts = alert_report(transactions.customer.astype(str), transactions.ts,
                          transactions.amount, args,
                          default_cutoff=date_seconds(CALIBRATION_END))
    result = evaluate_cdnow(transactions)
    if args.plot:
        plot_tracking(result, args.plot)
    cal = result.calibration
    actual, predicted = result.holdout_actual, result.holdout_predicted
    correlation = float(np.corrcoef(actual, predicted)[0, 1])
    by_x: list[dict[str, Any]] = []
    for lo, hi in [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (7, 10**9)]:
        sel = (cal.frequency >= lo) & (cal.frequency <= hi)
        if np.any(sel):
            by_x.append({
                "frequency": f"{lo}+" if hi > 100 else str(lo), "customers": int(sel.sum()),
                "actual_mean": float(actual[sel].mean()),
                "predicted_mean": float(predicted[sel].mean()),
            })
    p = result.params
    alive = p_alive(p, cal.frequency, cal.recency, cal.T)
    report: dict[str, Any] = {
        "holdout_actual": int(actual.sum()),
        "holdout_predicted": float(predicted.sum()),
        "per_customer_correlation": correlation,
        "customers": len(actual),
        "calibration_weeks": result.calibration_weeks,
        "holdout_weeks": result.holdout_weeks,
        "params": {"r": p.r, "alpha": p.alpha, "a": p.a, "b": p.b,
                   "log_likelihood": p.log_likelihood},
        "mean_p_alive": float(alive.mean()),
        "by_frequency": by_x,
        "alerts": alerts,
        "seconds": round(time.perf_counter() - started, 4),
    }
    if args.spend:
        gg = fit_gamma_gamma(cal.frequency, cal.monetary_value)
        report["gamma_gamma"] = {"p": gg.p, "q": gg.q, "v": gg.v,
                                 "log_likelihood": gg.log_likelihood, "customers": gg.customers}
    if args.plot:
        report["plot"] = args.plot
    if args.json:
        _print_json(report)
        return 0
    print(f"BG/NBD on CDNOW ({report['customers']:,} customers): calibration weeks 1-"
          f"{result.calibration_weeks:g}, holdout weeks {result.calibration_weeks + 1:g}-"
          f"{result.calibration_weeks + result.holdout_weeks:g}")
    print(f"  r={p.r:.3f} alpha={p.alpha:.3f} a={p.a:.3f} b={p.b:.3f} "
          f"LL={p.log_likelihood:.1f}")
    print(f"  holdout repeat purchases: actual {report['holdout_actual']:,}, "
          f"predicted {report['holdout_predicted']:,.1f}")
    print(f"  per-customer correlation (actual vs conditional expectation): {correlation:.3f}")
    print(f"  {'x (calibration)':<16}{'customers':>10}{'actual':>10}{'BG/NBD':>10}")
    for row in by_x:
        print(f"  {row['frequency']:<16}{row['customers']:>10}{row['actual_mean']:>10.3f}"
              f"{row['predicted_mean']:>10.3f}")
    if "gamma_gamma" in report:
        gg_report = report["gamma_gamma"]
        print(f"  Gamma-Gamma spend: p={gg_report['p']:.3f} q={gg_report['q']:.3f} "
              f"v={gg_report['v']:.3f} ({gg_report['customers']} repeat customers)")
    print_alerts(report["alerts"])
    if args.plot:
        print(f"  tracking chart: {args.plot}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "churn", help="BG/NBD churn model: rebuild, fit and evaluate on CDNOW"
    )
    sub = parser.add_subparsers(dest="churn_command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", choices=["cdnow"], default="cdnow",
                       help="data set (default cdnow)")
        p.add_argument("--cohort", choices=["sample", "full"], default="sample",
                       help="the paper's 2,357-customer sample or all 23,570 customers")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    summary = sub.add_parser(
        "summary", help="rebuild the 39-week calibration summary and check it against the csv"
    )
    common(summary)
    summary.add_argument("--out", metavar="FILE.csv",
                         help="write the summary (ID,frequency,recency,T); '-' for stdout")
    summary.set_defaults(func=_cmd_summary)

    fit = sub.add_parser("fit", help="fit r, alpha, a, b by maximum likelihood")
    common(fit)
    fit.add_argument("--summary", metavar="FILE.csv",
                     help="fit this summary csv (ID,frequency,recency,T) instead")
    fit.add_argument("--period", choices=sorted(PERIODS), default="weeks",
                     help="period unit of the times (default weeks, as the paper)")
    fit.add_argument("--penalizer", type=float, default=0.0,
                     help="L2 penalty on the log-parameters (default 0)")
    fit.add_argument("--save", metavar="FILE.json", help="write the parameters' state")
    fit.set_defaults(func=_cmd_fit)

    evaluate = sub.add_parser(
        "evaluate", help="predict the holdout weeks 40-78; precision/recall of the alerts")
    evaluate.add_argument("--dataset", choices=sorted(DATASETS), default="cdnow",
                          help="data set (default cdnow; others: the alert report only)")
    evaluate.add_argument("--events", metavar="FILE",
                          help="a JSON-lines or CSV event file with purchases (alerts only)")
    evaluate.add_argument("--cohort", choices=["sample", "full"], default="sample",
                          help="CDNOW: the paper's 2,357-customer sample or all 23,570")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    add_alert_flags(evaluate)
    evaluate.add_argument("--plot", metavar="FILE.png", help="draw the tracking chart")
    evaluate.add_argument("--spend", action="store_true",
                          help="also fit the Gamma-Gamma spend model")
    evaluate.set_defaults(func=_cmd_evaluate)
