"""The stream bench's result: one JSON object, and the table printed beside it."""

from __future__ import annotations

import argparse
import os
from typing import Any

from harness import Run, fmt
from latency import LatencyPoint
from provenance import revision

from streams.runtime.settings import Settings

# Every configuration, in the order they run; "default" only at --scale shop.
PARTS = ("bare", "noop", "noop-ours", "naive", "worker", "neighbours", "blend", "default",
         "rocksdb", "two", "latency")
LABELS = {"bare": "bare aiokafka getmany + orjson", "noop": "Faust no-op agent",
          "noop-ours": "no-op, recostream's consumer",
          "naive": "Faust naive (per-event send)", "worker": "recostream worker, memory",
          "neighbours": "worker, neighbour ranking", "blend": "worker, fixed blend",
          "default": "worker, default workload", "rocksdb": "recostream worker, rocksdb",
          "two": "two workers, memory"}
# Targets of issue 7, as (name, ratio key, comparison, bound).
TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("worker / noop", "worker_over_noop", ">=", 0.6),
    ("worker / naive", "worker_over_naive", ">=", 5.0),
    ("two / one", "two_over_one", ">=", 1.2),
    ("rocksdb / noop", "rocksdb_over_noop", ">=", 0.5),
    ("p99 at half load (ms)", "p99_ms", "<=", 100.0),
)
# And those of issue 24 at a shop's scale.
SHOP_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("shop / default workload", "worker_over_default", ">=", 0.8),
    ("p99 last / 2nd minute", "p99_last_over_second_minute", "<=", 1.25),
)


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(scale: str) -> tuple[tuple[str, str, str, float], ...]:
    return TARGETS + (SHOP_TARGETS if scale == "shop" else ())


def build_result(args: argparse.Namespace, events: int, runs: dict[str, Run],
                 points: list[LatencyPoint], latency_run: Run | None) -> dict[str, Any]:
    def eps(key: str) -> float | None:
        run = runs.get(key)
        return round(run.eps, 1) if run is not None and run.eps is not None else None

    shop = args.scale == "shop"
    half = next((p for p in points if p.fraction == 0.5), None)
    worker = runs.get("worker")
    result: dict[str, Any] = {
        "events": events,
        "bare_eps": eps("bare"),
        "faust_noop_eps": eps("noop"),
        "faust_noop_our_consumer_eps": eps("noop-ours"),
        "naive_eps": eps("naive"),
        "worker_eps": eps("worker"),
        "worker_neighbours_eps": eps("neighbours"),
        "worker_blend_eps": eps("blend"),
        "worker_rocksdb_eps": eps("rocksdb"),
        "two_workers_eps": eps("two"),
        "offered_rate": round(half.offered_rate, 1) if half else None,
        "p50_ms": round(half.p50_ms, 2) if half and half.p50_ms is not None else None,
        "p99_ms": round(half.p99_ms, 2) if half and half.p99_ms is not None else None,
        "latency_curve": [
            {"fraction": p.fraction, "target_rate": round(p.target_rate, 1),
             "offered_rate": round(p.offered_rate, 1),
             "p50_ms": None if p.p50_ms is None else round(p.p50_ms, 2),
             "p99_ms": None if p.p99_ms is None else round(p.p99_ms, 2),
             "max_ms": None if p.max_ms is None else round(p.max_ms, 2),
             "health_p99_ms": None if p.loop_p99_ms is None else round(p.loop_p99_ms, 1),
             "health_max_ms": None if p.loop_max_ms is None else round(p.loop_max_ms, 1),
             "in_worker_p50_ms": rounded(p.worker_p50_ms),
             "in_worker_p99_ms": rounded(p.worker_p99_ms),
             "delivery_p50_ms": rounded(p.delivery_p50_ms),
             "delivery_p99_ms": rounded(p.delivery_p99_ms),
             "batch_mean_ms": rounded(p.batch_mean_ms),
             "ranking_mean_ms": rounded(p.ranking_mean_ms),
             "probes": p.probes, "answered": p.answered}
            | ({"by_minute": p.minutes} if shop else {})
            for p in points
        ],
        "peak_rss_mb": round(worker.rss_mb, 1) if worker and worker.rss_mb else None,
    }
    if shop:
        half_minutes = half.minutes if half else []
        result |= {
            "default_worker_eps": eps("default"),
            "p99_by_minute_ms": [m["p99_ms"] for m in half_minutes],
            "p50_by_minute_ms": [m["p50_ms"] for m in half_minutes],
            "worker_eps_by_minute": [m["events_per_s"] for m in worker.minutes] if worker else [],
            "peak_rss_mb_by_process": worker.peak_rss_mb_by_process if worker else {},
            "by_minute": {"worker": worker.minutes if worker else [], "latency": half_minutes},
        }
    result["ratios"] = {
        "worker_over_noop": ratio(result["worker_eps"], result["faust_noop_eps"]),
        "worker_over_noop_our_consumer": ratio(result["worker_eps"],
                                               result["faust_noop_our_consumer_eps"]),
        "worker_over_naive": ratio(result["worker_eps"], result["naive_eps"]),
        "two_over_one": ratio(result["two_workers_eps"], result["worker_eps"]),
        "rocksdb_over_noop": ratio(result["worker_rocksdb_eps"], result["faust_noop_eps"]),
        "worker_over_bare": ratio(result["worker_eps"], result["bare_eps"]),
        # what ranking with every source (buy-again included) costs against
        # ranking by the neighbour snapshot alone
        "worker_over_neighbours_ranking": ratio(result["worker_eps"],
                                                result["worker_neighbours_eps"]),
        # what learning the ranking from outcomes costs against the fixed blend
        "worker_over_fixed_blend": ratio(result["worker_eps"], result["worker_blend_eps"]),
    }
    if shop:
        p99s = result["p99_by_minute_ms"]
        result["ratios"]["worker_over_default"] = ratio(result["worker_eps"],
                                                        result["default_worker_eps"])
        result["ratios"]["p99_last_over_second_minute"] = (
            ratio(p99s[-1], p99s[1]) if len(p99s) >= 3 else None)
    result["ratios"] = {k: None if v is None else round(v, 3) for k, v in result["ratios"].items()}
    checks: dict[str, bool | None] = {}
    for _, key, op, bound in targets(args.scale):
        value = result["p99_ms"] if key == "p99_ms" else result["ratios"][key]
        checks[key] = None if value is None else (value >= bound if op == ">=" else value <= bound)
    result["targets_met"] = checks
    result["consumed"] = {k: r.consumed for k, r in runs.items()}
    result["seconds"] = {k: round(r.seconds, 2) for k, r in runs.items()}
    result["capped"] = sorted(k for k, r in runs.items() if r.capped)
    result["peak_rss_mb_by_config"] = {
        k: round(r.rss_mb, 1) for k, r in runs.items() if r.rss_mb is not None}
    if latency_run is not None and latency_run.rss_mb is not None:
        result["peak_rss_mb_by_config"]["latency"] = round(latency_run.rss_mb, 1)
    result["worker_counters"] = {k: r.extra for k, r in runs.items() if r.extra}
    result["setup"] = {
        "revision": revision(), "partitions": args.partitions, "users": args.users,
        "items": args.items, "batch_seconds": args.batch_seconds or Settings().batch_seconds,
        "batch_size": Settings().batch_size,
        "refresh_seconds": args.refresh_seconds or Settings().refresh_seconds,
        "cpus": os.cpu_count(), "max_seconds": args.max_seconds,
        "naive_seconds": args.naive_seconds, "latency_seconds": args.latency_seconds,
    }
    if shop:
        result["setup"]["scale"] = "shop"
        result["setup"]["default_workload"] = dict(args.default_workload)
    return result


def render_table(result: dict[str, Any], runs: dict[str, Run]) -> str:
    setup = result["setup"]
    shop = setup.get("scale") == "shop"
    lines = [f"stream throughput  (rev {setup['revision']}, "
             f"{setup['partitions']} partitions, {os.cpu_count()} CPUs, "
             f"{result['events']:,} events produced"
             + (f" over {setup['users']:,} users and {setup['items']:,} items" if shop else "")
             + ")", ""]
    lines.append(f"{'configuration':<32} {'events/s':>10} {'events':>9} {'seconds':>8} "
                 f"{'RSS MB':>7}  note")
    for key in PARTS:
        if key == "latency" or (key == "default" and not shop):
            continue
        run = runs.get(key)
        if run is None:
            lines.append(f"{LABELS[key]:<32} {'skipped':>10}")
            continue
        lines.append(f"{LABELS[key]:<32} {fmt(run.eps):>10} {run.consumed:>9,} "
                     f"{run.seconds:>8.1f} {fmt(run.rss_mb):>7}  {run.note}")
    lines += ["", "latency, produce -> recommendation consumed (ms); 'in worker' ends when the",
              "worker's producer takes the record, 'health' is how long /health took (the loop",
              "was blocked that long); 'batch/ranking' are the worker's mean batch and batch",
              "ranking times over the load, from its /metrics", "",
              f"{'load':<22} {'offered/s':>9} {'p50':>8} {'p99':>8} {'max':>8} "
              f"{'in worker p50/p99':>18} {'delivery p50/p99':>17} {'health p99/max':>15} "
              f"{'batch/ranking':>14} {'answered':>10}"]
    for point in result["latency_curve"]:
        behind = "  behind" if point["answered"] < point["probes"] else ""
        stages = f"{fmt(point['batch_mean_ms'], '.1f')}/{fmt(point['ranking_mean_ms'], '.1f')}"
        lines.append(
            f"{format(point['fraction'], 'g') + ' of worker_eps':<22} "
            f"{fmt(point['offered_rate']):>9} {fmt(point['p50_ms'], '.1f'):>8} "
            f"{fmt(point['p99_ms'], '.1f'):>8} {fmt(point['max_ms'], '.1f'):>8} "
            f"{fmt(point['in_worker_p50_ms']) + '/' + fmt(point['in_worker_p99_ms']):>18} "
            f"{fmt(point['delivery_p50_ms']) + '/' + fmt(point['delivery_p99_ms']):>17} "
            f"{fmt(point['health_p99_ms']) + '/' + fmt(point['health_max_ms']):>15} "
            f"{stages:>14} "
            f"{str(point['answered']) + '/' + str(point['probes']):>10}{behind}")
    if not result["latency_curve"]:
        lines.append("skipped")
    if shop:
        lines += minute_table("worker at full speed, per minute", result["by_minute"]["worker"])
        lines += minute_table("worker at half load, per minute", result["by_minute"]["latency"])
    lines += ["", f"{'target':<24} {'value':>8} {'goal':>8}  met"]
    for name, key, op, bound in targets(setup.get("scale", "default")):
        value = result["p99_ms"] if key == "p99_ms" else result["ratios"][key]
        met = result["targets_met"][key]
        lines.append(f"{name:<24} {fmt(value, '.2f'):>8} {op + format(bound, 'g'):>8}  "
                     f"{'-' if met is None else 'yes' if met else 'NO'}")
    lines.append(f"{'worker / bare':<24} {fmt(result['ratios']['worker_over_bare'], '.3f'):>8}")
    lines.append(f"{'worker / no-op, ours':<24} "
                 f"{fmt(result['ratios']['worker_over_noop_our_consumer'], '.2f'):>8}"
                 "  (the no-op agent on recostream's consumer)")
    lines.append(f"\nwall {setup['wall_seconds']:.0f} s; other processes on this machine used "
                 f"{setup['other_cpu_seconds']:.0f} CPU-s meanwhile "
                 f"({setup['other_cpu_share']:.0%} of its capacity)")
    return "\n".join(lines)


def minute_table(title: str, minutes: list[dict[str, Any]]) -> list[str]:
    """Rows of :meth:`series.Series.minutes`: rate, latency, RSS per process, commits."""
    lines = ["", title]
    if not minutes:
        return [*lines, "skipped"]
    names = sorted({name for m in minutes for name in m["rss_mb"]})
    lines.append(f"{'min':>3} {'events/s':>9} {'p50':>7} {'p99':>7} "
                 + " ".join(f"{name:>8}" for name in names)
                 + f" {'RSS MB':>8} {'commits':>7} {'MB each':>7} {'longest s':>9}")
    for m in minutes:
        lines.append(
            f"{m['minute']:>3} {fmt(m['events_per_s']):>9} {fmt(m.get('p50_ms')):>7} "
            f"{fmt(m.get('p99_ms')):>7} "
            + " ".join(f"{fmt(m['rss_mb'].get(name)):>8}" for name in names)
            + f" {fmt(m['rss_mb_total']):>8} {m['commits']:>7} "
            f"{fmt(m['commit_mb_mean'], '.1f'):>7} {fmt(m['commit_s_max'], '.1f'):>9}")
    return lines
