"""``recostream evaluate ranking|prequential|next-basket|rating``: the offline protocols.

Each protocol has defaults that suit it (the ranking protocol's split has no time
order, so it ranks with EASE over the whole history and no recency weighting, its
lambda chosen on a validation split unless ``--ease-lambda`` is given; the
prequential and next-basket ones follow time and use the stream's defaults).
Every report carries the bias of the lists beside their accuracy. ``--json``
prints exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson
from tqdm import tqdm

from core.config import LIST_LENGTH, RANKING_NAMES, RecommenderConfig
from core.evaluation import (
    EASE_LAMBDA_GRID,
    Progress,
    evaluate_ranking,
    evaluate_rating,
)
from core.events import Event
from core.next_basket import evaluate_next_basket
from core.prequential import SourceMetrics, evaluate_prequential
from core.repurchase import REPEAT_MODES
from core.similarity import SIMILARITIES, SimilarityParams
from core.usercf import UserKNNConfig
from streams.cli.evaluate_text import render
from streams.devtools.datasets import DATASETS, load_events
from streams.errors import CliError


@dataclass(frozen=True)
class ProtocolDefaults:
    """Per-protocol defaults of the recommender flags."""

    similarity: str
    neighbors: int
    history: int
    pair_window: int
    recency_decay: float
    popularity_weight: float
    max_row_width: int


# The split has no time order: every training item counts alike, and EASE sees
# the full Gram matrix: pair_window = history covers every user of ML-100k and
# instacart-sample, and no co-occurrence row is pruned in a catalogue EASE takes.
RANKING_DEFAULTS = ProtocolDefaults(
    similarity="ease", neighbors=2000, history=1000, pair_window=1000, recency_decay=1.0,
    popularity_weight=0.0, max_row_width=SimilarityParams.ease_max_items,
)
STREAM_DEFAULTS = ProtocolDefaults(
    similarity=RecommenderConfig.similarity,
    neighbors=RecommenderConfig.neighbors,
    history=RecommenderConfig.history,
    pair_window=RecommenderConfig.pair_window,
    recency_decay=RecommenderConfig.recency_decay,
    popularity_weight=RecommenderConfig.popularity_weight,
    max_row_width=RecommenderConfig.max_row_width,
)


class ProgressBar:
    """A progress bar on stderr (tqdm), fed ``(done, total)`` as the evaluation goes."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self._bar: tqdm[Any] | None = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None or self._bar.total != total:
            if self._bar is not None:
                self._bar.close()
            self._bar = tqdm(total=total, desc=self.label, unit="", file=sys.stderr,
                             mininterval=0.1 if sys.stderr.isatty() else 5.0)
        self._bar.update(done - self._bar.n)
        if done >= total:
            self._bar.close()
            self._bar = None


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(DATASETS), default="ml-100k",
                        help="a data set fetched into the cache (default ml-100k)")
    source.add_argument("--events", metavar="FILE",
                        help="a JSON-lines or CSV file in the event contract")
    parser.add_argument("--customers", type=int, metavar="N",
                        help="evaluate on the events of N customers drawn by a hash of their "
                             "id (the same N give the same customers; default: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_recommender_flags(parser: argparse.ArgumentParser, defaults: ProtocolDefaults) -> None:
    parser.add_argument("-k", type=int, default=LIST_LENGTH,
                        help=f"list length (default {LIST_LENGTH})")
    parser.add_argument("--similarity", choices=sorted(SIMILARITIES), default=defaults.similarity,
                        help=f"neighbour similarity (default {defaults.similarity})")
    parser.add_argument("--neighbors", type=int, default=defaults.neighbors,
                        help=f"neighbours kept per item (default {defaults.neighbors})")
    parser.add_argument("--history", type=int, default=defaults.history,
                        help=f"recent items per user (default {defaults.history})")
    parser.add_argument("--pair-window", type=int, default=defaults.pair_window,
                        help=f"recent items a gained item is paired with (default "
                             f"{defaults.pair_window})")
    parser.add_argument("--recency-decay", type=float, default=defaults.recency_decay,
                        help=f"weight decay per older item (default {defaults.recency_decay})")
    parser.add_argument("--popularity-weight", type=float, default=defaults.popularity_weight,
                        help=f"trending prior weight (default {defaults.popularity_weight})")
    parser.add_argument("--max-row-width", type=int, default=defaults.max_row_width,
                        help="co-occurrence pairs kept per item, the weakest pruned "
                             f"(default {defaults.max_row_width})")
    parser.add_argument("--ease-lambda", type=float, default=None,
                        help=f"EASE/EDLAE L2 weight (ranking: chosen on a validation split among "
                             f"{', '.join(f'{v:g}' for v in EASE_LAMBDA_GRID)} when not given; "
                             f"otherwise {SimilarityParams.ease_lambda:g})")
    parser.add_argument("--edlae-dropout", type=float, default=SimilarityParams.edlae_dropout,
                        help="EDLAE's dropout probability p in [0, 1) (default "
                             f"{SimilarityParams.edlae_dropout:g}; 0 is EASE)")
    parser.add_argument("--shrinkage", type=float, default=SimilarityParams.shrinkage,
                        help="cosine/jaccard shrinkage (default 0)")
    parser.add_argument("--ranking", choices=RANKING_NAMES, default=RecommenderConfig.ranking,
                        help="mix: every source, the learned ranker; neighbours: similar "
                             f"items, then trending (default {RecommenderConfig.ranking})")
    parser.add_argument("--repeat", choices=REPEAT_MODES, default=RecommenderConfig.repeat,
                        help="whether bought items may come back: learned per item, always "
                             f"or never (default {RecommenderConfig.repeat})")


def recommender_config(args: argparse.Namespace, **overrides: Any) -> RecommenderConfig:
    """The recommender configuration the flags describe."""
    try:
        return replace(
            RecommenderConfig(),
            similarity=args.similarity,
            neighbors=args.neighbors,
            history=args.history,
            # recent items are rated items: a longer history keeps more ratings
            max_ratings=max(RecommenderConfig.max_ratings, args.history),
            pair_window=args.pair_window,
            max_row_width=args.max_row_width,
            recency_decay=args.recency_decay,
            popularity_weight=args.popularity_weight,
            ranking=args.ranking,
            repeat=args.repeat,
            similarity_params=SimilarityParams(
                shrinkage=args.shrinkage,
                ease_lambda=SimilarityParams.ease_lambda if args.ease_lambda is None
                else args.ease_lambda,
                edlae_dropout=args.edlae_dropout,
            ),
            **overrides,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _add_refresh_flag(parser: argparse.ArgumentParser) -> None:
    """``--refresh-every``, for the protocols that learn in time order."""
    parser.add_argument("--refresh-every", type=int, default=RecommenderConfig.refresh_every,
                        help="events between neighbour refreshes, as in the stream")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("evaluate", help="run an offline evaluation protocol")
    protocols = parser.add_subparsers(dest="protocol", required=True)

    ranking = protocols.add_parser(
        "ranking", help="top-N on a stratified 75/25 split (Microsoft Recommenders protocol)"
    )
    _add_source_flags(ranking)
    _add_recommender_flags(ranking, RANKING_DEFAULTS)
    ranking.add_argument("--seed", type=int, default=42)
    ranking.add_argument("--ratio", type=float, default=0.75)
    ranking.add_argument("--split-by", choices=("item", "user"), default="item")
    ranking.set_defaults(func=_run(_ranking))

    prequential = protocols.add_parser(
        "prequential", help="test-then-learn over events in time order"
    )
    _add_source_flags(prequential)
    _add_recommender_flags(prequential, STREAM_DEFAULTS)
    _add_refresh_flag(prequential)
    prequential.add_argument("--plot", metavar="FILE.png",
                             help="draw the rolling hit rate over time, one line per source")
    prequential.add_argument("--window", type=int, default=None,
                             help="tested events per rolling mean in the plot "
                                  "(default: a fiftieth of them, at least 100)")
    prequential.set_defaults(func=_run(_prequential))

    next_basket = protocols.add_parser(
        "next-basket", help="each customer's last basket held out; repeats allowed"
    )
    _add_source_flags(next_basket)
    _add_recommender_flags(next_basket, STREAM_DEFAULTS)
    _add_refresh_flag(next_basket)
    next_basket.set_defaults(func=_run(_next_basket))

    rating = protocols.add_parser(
        "rating", help="RMSE/MAE of user-based CF (seed formula), 5-fold KFold"
    )
    _add_source_flags(rating)
    rating.add_argument("-k", type=int, default=UserKNNConfig.k, help="neighbours (default 40)")
    rating.add_argument("--shrinkage", type=float, default=UserKNNConfig.shrinkage,
                        help="correlation shrinkage (default 100)")
    rating.add_argument("--folds", type=int, default=5)
    rating.add_argument("--seed", type=int, default=0)
    rating.set_defaults(func=_run(_rating))


Protocol = Callable[[argparse.Namespace, list[Event], Progress], dict[str, Any]]


def _run(protocol: Protocol) -> Callable[[argparse.Namespace], int]:
    def command(args: argparse.Namespace) -> int:
        events = load_events(dataset=None if args.events else args.dataset,
                             events_file=args.events)
        if args.customers is not None:
            events = sample_customers(events, args.customers)
        bar = ProgressBar(args.protocol, enabled=not args.no_progress)
        started = time.perf_counter()
        try:
            result = protocol(args, events, bar)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if args.customers is not None:
            result["sampled_customers"] = len({e.user_id for e in events})
        result["seconds"] = round(time.perf_counter() - started, 3)
        if "events" in result and result["seconds"] > 0:
            result["events_per_second"] = round(len(events) / result["seconds"], 1)
        result = _plain(result)
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        else:
            print(render(result))
        return 0

    return command


def sample_customers(events: list[Event], n: int) -> list[Event]:
    """The events of ``n`` customers, the first by SHA-256 of their id (a stable
    draw: a log's large catalogue makes the time-ordered protocols slow)."""
    if n < 1:
        raise CliError("--customers must be at least 1")
    users = sorted({e.user_id for e in events},
                   key=lambda u: hashlib.sha256(u.encode()).digest())[:n]
    keep = set(users)
    return [e for e in events if e.user_id in keep]


def _ranking(args: argparse.Namespace, events: list[Event], progress: Progress) -> dict[str, Any]:
    report = evaluate_ranking(
        events, recommender_config(args), k=args.k, ratio=args.ratio, seed=args.seed,
        split_by=args.split_by, progress=progress,
        ease_lambdas=EASE_LAMBDA_GRID if args.ease_lambda is None else (),
        tuning_progress=ProgressBar("ease lambda", enabled=not args.no_progress),
    )
    result: dict[str, Any] = {"protocol": "ranking", "k": args.k, **asdict(report.metrics),
                              "similarity": args.similarity}
    if report.ease_lambda is not None:
        result["ease_lambda"] = report.ease_lambda
        result["ease_lambda_source"] = "validation" if report.validation else "flag"
        if report.validation:
            result["validation_ndcg_by_lambda"] = {f"{lam:g}": score
                                                   for lam, score in report.validation}
    result["bias"] = report.bias.as_dict()
    result["popularity"] = asdict(report.popularity)
    return result


def _sources(metrics: dict[str, SourceMetrics]) -> dict[str, Any]:
    return {name: {"events": m.events, "hr_at_k": m.hr_at_k, "mrr_at_k": m.mrr_at_k,
                   "bias": m.bias.as_dict()} for name, m in metrics.items()}


def _prequential(
    args: argparse.Namespace, events: list[Event], progress: Progress
) -> dict[str, Any]:
    config = recommender_config(args, refresh_every=args.refresh_every)
    if args.window is not None and args.window < 1:
        raise CliError("--window must be at least 1")
    report = evaluate_prequential(events, config, k=args.k, progress=progress)
    result: dict[str, Any] = {
        "protocol": "prequential", "k": args.k, "events": report.events,
        "hr_at_k": report.hr_at_k, "mrr_at_k": report.mrr_at_k,
        "similarity": args.similarity, "refresh_every": args.refresh_every,
        "new_items": _sources(report.new_items),
    }
    if report.repeats:
        result["repeats"] = _sources(report.repeats)
    if args.plot:
        from streams.cli.evaluate_plot import plot_prequential

        plot_prequential(report, args.plot, window=args.window,
                         title=args.events or args.dataset)
        result["plot"] = args.plot
    return result


def _next_basket(
    args: argparse.Namespace, events: list[Event], progress: Progress
) -> dict[str, Any]:
    config = recommender_config(args, refresh_every=args.refresh_every)
    report = evaluate_next_basket(events, config, k=args.k, progress=progress)
    if not report.customers:
        raise CliError("no customer has two baskets: nothing to hold out")
    sources = {name: {**{part: asdict(m) for part, m in parts.items()},
                      "bias": report.bias[name].as_dict()}
               for name, parts in report.sources.items()}
    default = report.sources["default"]["all"].ndcg_at_k
    best_single = max(parts["all"].ndcg_at_k for name, parts in report.sources.items()
                      if name != "default")
    return {"protocol": "next-basket", "k": args.k, "customers": report.customers,
            "basket_items": report.basket_items, "repeat_share": report.repeat_share,
            "similarity": args.similarity, "refresh_every": args.refresh_every,
            "sources": sources,
            "default_ndcg_over_best_single": default / best_single if best_single else None}


def _rating(args: argparse.Namespace, events: list[Event], progress: Progress) -> dict[str, Any]:
    try:
        config = UserKNNConfig(k=args.k, shrinkage=args.shrinkage)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    metrics = evaluate_rating(events, config, folds=args.folds, seed=args.seed, progress=progress)
    result = _plain(asdict(metrics))
    result["fold_rmse"] = [round(r, 4) for r in metrics.fold_rmse]
    return {"protocol": "rating", **result}


def _plain(value: Any) -> Any:
    """JSON-native values, floats rounded to 4 places, NaN as None (numpy scalars
    and NaN do not serialise everywhere)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if math.isnan(value) else round(float(value), 4)
    return value

