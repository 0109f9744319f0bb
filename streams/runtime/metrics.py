"""What a worker has done: its counters, and their Prometheus form at ``GET /metrics``.

:class:`Counters` stay the one record of what happened (``/health`` shows them
too); a collector turns them into Prometheus families at scrape time, beside
histograms of batch size, batch latency, ranking latency and refresh duration,
a commit's phases, a consumer lag gauge, and the exposure (coverage, Gini) of the last published
lists, which the ranking child measures. prometheus-client does the text format.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp adds the charset itself
#: The phases of an offset commit, in order (see streams.runtime.commits).
COMMIT_PHASES = ("rankings", "rows", "users", "records")


@dataclass
class Counters:
    """What the worker has done, for /health, the metrics and the tests."""

    events_in: Counter[str] = field(default_factory=Counter)
    applied: int = 0
    deduplicated: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    rekeyed: int = 0
    row_updates_sent: int = 0
    row_updates_applied: int = 0
    row_updates_skipped: int = 0
    recommendations_out: int = 0
    triggers_out: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    stale_ticks: int = 0
    #: neighbour lists of this worker's partitions that the ranking snapshot
    #: serving now holds as computed before the counts last moved (rotation lag)
    lists_lagging: int = 0
    last_refresh_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "events_in": dict(self.events_in),
            "applied": self.applied,
            "deduplicated": self.deduplicated,
            "dead_lettered": dict(self.dead_lettered),
            "rekeyed": self.rekeyed,
            "row_updates_sent": self.row_updates_sent,
            "row_updates_applied": self.row_updates_applied,
            "row_updates_skipped": self.row_updates_skipped,
            "recommendations_out": self.recommendations_out,
            "triggers_out": dict(self.triggers_out),
            "refreshes": self.refreshes,
            "stale_ticks": self.stale_ticks,
            "lists_lagging": self.lists_lagging,
            "last_refresh_seconds": round(self.last_refresh_seconds, 4),
        }


class CountersCollector(Collector):
    """Exposes the worker's counters and consumer lag when scraped."""

    def __init__(self, counters: Counters,
                 lag: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        self.counters = counters
        self.lag = lag

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        c = self.counters
        events = CounterMetricFamily("recostream_events_in", "Input messages read, by topic",
                                     labels=["topic"])
        for topic, n in sorted(c.events_in.items()):
            events.add_metric([topic], n)
        yield events
        yield CounterMetricFamily("recostream_events_applied", "Events folded into state",
                                  value=c.applied)
        yield CounterMetricFamily(
            "recostream_events_deduplicated",
            "Events skipped as already applied (same offset or event_id)", value=c.deduplicated)
        dead = CounterMetricFamily("recostream_dead_letters", "Inputs dead-lettered, by reason",
                                   labels=["reason"])
        for reason, n in sorted(c.dead_lettered.items()):
            dead.add_metric([reason], n)
        yield dead
        yield CounterMetricFamily("recostream_events_rekeyed",
                                  "Events forwarded to be keyed by user", value=c.rekeyed)
        yield CounterMetricFamily("recostream_row_updates_sent",
                                  "Co-occurrence row updates sent", value=c.row_updates_sent)
        yield CounterMetricFamily("recostream_row_updates_applied",
                                  "Co-occurrence row updates applied",
                                  value=c.row_updates_applied)
        # Replays of updates applied before: sent = applied + skipped once caught up.
        yield CounterMetricFamily("recostream_row_updates_skipped",
                                  "Co-occurrence row updates skipped as already applied",
                                  value=c.row_updates_skipped)
        yield CounterMetricFamily("recostream_recommendations_out",
                                  "Recommendation lists published", value=c.recommendations_out)
        triggers = CounterMetricFamily("recostream_triggers_out",
                                       "Marketing triggers published, by kind", labels=["kind"])
        for kind, n in sorted(c.triggers_out.items()):
            triggers.add_metric([kind], n)
        yield triggers
        yield CounterMetricFamily("recostream_refreshes", "Partition neighbour refreshes",
                                  value=c.refreshes)
        yield CounterMetricFamily("recostream_refresh_ticks_stale",
                                  "Refresh ticks skipped as stale (refreshes behind)",
                                  value=c.stale_ticks)
        yield GaugeMetricFamily(
            "recostream_neighbour_lists_lagging",
            "Neighbour lists the serving snapshot holds as computed before the counts "
            "last moved (they catch up in rotation)", value=c.lists_lagging)
        lag = GaugeMetricFamily("recostream_consumer_lag",
                                "Input messages not yet read, by topic and partition",
                                labels=["topic", "partition"])
        for (topic, partition), n in sorted(self.lag().items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag


class WorkerMetrics:
    """The registry of one worker: its collector and its histograms."""

    def __init__(self, counters: Counters,
                 lag: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(CountersCollector(counters, lag))
        self.batch_size = Histogram(
            "recostream_batch_size", "Events per processed batch", registry=self.registry,
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000))
        self.batch_seconds = Histogram(
            "recostream_batch_seconds", "Time to process one batch", registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.ranking_seconds = Histogram(
            "recostream_ranking_seconds",
            "Time from a submission of lists to the ranking child to its records queued",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self.refresh_seconds = Histogram(
            "recostream_refresh_seconds", "Time to refresh one partition's neighbours",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.commit_seconds = Histogram(
            "recostream_commit_seconds",
            "Time an offset commit spent before the offsets went, by phase: rankings "
            "(lists queued before published), rows and users (changed ones written), "
            "records (everything queued delivered)", ["phase"], registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        for phase in COMMIT_PHASES:  # exported from the start, before a first commit
            self.commit_seconds.labels(phase)

        self.exposure_lists = Gauge(
            "recostream_exposure_lists", "Published lists the exposure figures are taken over",
            registry=self.registry)
        self.catalogue_coverage = Gauge(
            "recostream_catalogue_coverage",
            "Share of the items the snapshot knows shown in the last published lists",
            registry=self.registry)
        self.exposure_gini = Gauge(
            "recostream_exposure_gini",
            "Gini of list slots over the items the snapshot knows, last published lists "
            "(0: every item shown alike, towards 1: a few items take every slot)",
            registry=self.registry)

        self.learned_ranking_version = Gauge(
            "recostream_learned_ranking_version",
            "Lessons the learned ranking took (learning steps and judgements)",
            registry=self.registry)
        self.learned_ranking_serving = Gauge(
            "recostream_learned_ranking_serving",
            "1 for the scorer ranking each part of a list (all: with items the customer "
            "saw; new: without)", ["part", "scorer"], registry=self.registry)

    def rank_by(self, version: int, serving: Mapping[str, str], scorers: Iterable[str]
                ) -> None:
        """The learned ranking's version, and the scorer serving each part."""
        self.learned_ranking_version.set(version)
        for part, chosen in serving.items():
            for scorer in scorers:
                self.learned_ranking_serving.labels(part, scorer).set(float(scorer == chosen))

    def expose(self, lists: int, coverage: float, gini: float) -> None:
        """The exposure figures of the last ``lists`` published lists."""
        self.exposure_lists.set(lists)
        self.catalogue_coverage.set(coverage)
        self.exposure_gini.set(gini)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
