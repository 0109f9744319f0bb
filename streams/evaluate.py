"""``recostream evaluate ranking|prequential|rating``: the offline protocols of DESIGN.md 5.

Each protocol has defaults that suit it (the ranking protocol's split has no time
order, so it ranks with EASE over the whole history and no recency weighting; the
prequential one follows time and uses the stream's defaults). ``--json`` prints
exactly one JSON object on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import orjson

from core.evaluation import (
    Progress,
    evaluate_prequential,
    evaluate_ranking,
    evaluate_rating,
)
from core.events import Event
from core.recommender import RecommenderConfig
from core.similarity import SIMILARITIES, SimilarityParams
from core.usercf import UserKNNConfig
from streams.cli import CliError
from streams.datasets import DATASETS, load_events


@dataclass(frozen=True)
class ProtocolDefaults:
    """Per-protocol defaults of the recommender flags."""

    similarity: str
    neighbors: int
    history: int
    pair_window: int
    recency_decay: float
    popularity_weight: float


# The split has no time order: every training item counts alike, and EASE sees
# the full Gram matrix (pair_window = history covers every ML-100k user).
RANKING_DEFAULTS = ProtocolDefaults(
    similarity="ease", neighbors=2000, history=1000, pair_window=1000, recency_decay=1.0,
    popularity_weight=0.0,
)
STREAM_DEFAULTS = ProtocolDefaults(
    similarity=RecommenderConfig.similarity,
    neighbors=RecommenderConfig.neighbors,
    history=RecommenderConfig.history,
    pair_window=RecommenderConfig.pair_window,
    recency_decay=RecommenderConfig.recency_decay,
    popularity_weight=RecommenderConfig.popularity_weight,
)


class ProgressBar:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, *, enabled: bool = True) -> None:
        self.label = label
        self.enabled = enabled
        self.started = time.perf_counter()
        self._last_draw = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        width = 30
        filled = int(width * done / total) if total else width
        elapsed = now - self.started
        eta = elapsed / done * (total - done) if done else 0.0
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(
            f"\r{self.label} [{bar}] {done}/{total} {elapsed:5.1f}s eta {eta:5.1f}s"
        )
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _add_source_flags(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", choices=sorted(DATASETS), default="ml-100k",
                        help="a data set fetched into the cache (default ml-100k)")
    source.add_argument("--events", metavar="FILE",
                        help="a JSON-lines or CSV file in the event contract")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _add_recommender_flags(parser: argparse.ArgumentParser, defaults: ProtocolDefaults) -> None:
    parser.add_argument("-k", type=int, default=10, help="list length (default 10)")
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
    parser.add_argument("--ease-lambda", type=float, default=SimilarityParams.ease_lambda,
                        help=f"EASE L2 weight (default {SimilarityParams.ease_lambda:g})")
    parser.add_argument("--shrinkage", type=float, default=SimilarityParams.shrinkage,
                        help="cosine/jaccard shrinkage (default 0)")


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
            recency_decay=args.recency_decay,
            popularity_weight=args.popularity_weight,
            similarity_params=SimilarityParams(
                shrinkage=args.shrinkage, ease_lambda=args.ease_lambda
            ),
            **overrides,
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None


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
    prequential.add_argument("--refresh-every", type=int, default=RecommenderConfig.refresh_every,
                             help="events between neighbour refreshes, as in the stream")
    prequential.set_defaults(func=_run(_prequential))

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
        bar = ProgressBar(args.protocol, enabled=not args.no_progress)
        started = time.perf_counter()
        try:
            result = protocol(args, events, bar)
        except ValueError as exc:
            raise CliError(str(exc)) from None
        result["seconds"] = round(time.perf_counter() - started, 3)
        if "events" in result and result["seconds"] > 0:
            result["events_per_second"] = round(len(events) / result["seconds"], 1)
        if args.json:
            sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
        else:
            for key, value in result.items():
                print(f"{key:20} {value}")
        return 0

    return command


def _ranking(args: argparse.Namespace, events: list[Event], progress: Progress) -> dict[str, Any]:
    metrics = evaluate_ranking(
        events, recommender_config(args), k=args.k, ratio=args.ratio, seed=args.seed,
        split_by=args.split_by, progress=progress,
    )
    return {"protocol": "ranking", "k": args.k, **_plain(asdict(metrics)),
            "similarity": args.similarity}


def _prequential(
    args: argparse.Namespace, events: list[Event], progress: Progress
) -> dict[str, Any]:
    config = recommender_config(args, refresh_every=args.refresh_every)
    metrics = evaluate_prequential(events, config, k=args.k, progress=progress)
    return {"protocol": "prequential", "k": args.k, **_plain(asdict(metrics)),
            "similarity": args.similarity, "refresh_every": args.refresh_every}


def _rating(args: argparse.Namespace, events: list[Event], progress: Progress) -> dict[str, Any]:
    try:
        config = UserKNNConfig(k=args.k, shrinkage=args.shrinkage)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    metrics = evaluate_rating(events, config, folds=args.folds, seed=args.seed, progress=progress)
    result = _plain(asdict(metrics))
    result["fold_rmse"] = [round(r, 4) for r in metrics.fold_rmse]
    return {"protocol": "rating", **result}


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    """JSON-native numbers (numpy scalars do not serialise everywhere)."""
    return {k: (round(float(v), 4) if isinstance(v, float) else v) for k, v in values.items()}
