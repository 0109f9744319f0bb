"""recostream beside its peers, on the very same splits, in one run.

Ranking (the Microsoft Recommenders protocol: stratified by item,
75/25, seed 42, top-10 with training items removed): recostream with the
``recostream evaluate ranking`` defaults (EASE) and with cosine, against
implicit's ``CosineRecommender`` (item-item cosine) and a popularity baseline.

Rating (the Surprise protocol: 5-fold ``KFold(random_state=0,
shuffle=True)``): recostream's user-based seed formula against Surprise's
``KNNWithMeans`` (user-based, k=40, msd and pearson). The script checks that
Surprise's fold test sets are exactly ours before it trusts the comparison.

The peers are bench-only dependencies, never runtime ones; install them into a
separate environment (see bench/README.md)::

    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install -e . scikit-surprise==1.1.5 implicit==0.7.3 pandas==3.1.1
    /tmp/bench-venv/bin/python bench/evaluate_vs_peers.py            # table
    /tmp/bench-venv/bin/python bench/evaluate_vs_peers.py --json     # one JSON object

A table goes to stdout (or, with ``--json``, exactly one JSON object);
progress and the peers' own chatter go to stderr. Exit 2 when a peer is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import sys
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from importlib import metadata
from types import ModuleType
from typing import Any

import numpy as np
import orjson
import scipy.sparse as sp
from provenance import REPO, revision

from core.evaluation import (
    RankingMetrics,
    evaluate_ranking,
    evaluate_rating,
    kfold_indices,
    ranking_metrics,
    stratified_split,
)
from core.events import Event
from core.recommender import RecommenderConfig
from core.usercf import UserKNNConfig
from streams.cli import CliError
from streams.datasets import load_events
from streams.evaluate import RANKING_DEFAULTS

INSTALL_HINT = (
    f"python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install -e {REPO} "
    "scikit-surprise==1.1.5 implicit==0.7.3 pandas==3.1.1"
)

# Peers needed by each protocol: (import name, distribution name).
PEERS: dict[str, tuple[tuple[str, str], ...]] = {
    "ranking": (("implicit.nearest_neighbours", "implicit"),),
    "rating": (
        ("surprise", "scikit-surprise"),
        ("surprise.model_selection", "scikit-surprise"),
        ("pandas", "pandas"),
    ),
}

SPLIT_RATIO = 0.75
SPLIT_SEED = 42
FOLDS = 5
FOLD_SEED = 0
SURPRISE_K = 40


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Peers print progress with ``print``; keep stdout clean for ``--json``."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def import_peers(protocols: Sequence[str]) -> dict[str, ModuleType]:
    """Import the peer packages lazily; a missing one ends the run with exit 2."""
    modules: dict[str, ModuleType] = {}
    for protocol in protocols:
        for module_name, dist in PEERS[protocol]:
            try:
                modules[module_name] = importlib.import_module(module_name)
            except ImportError:
                print(
                    f"evaluate_vs_peers: {dist} is not installed (bench-only); run: {INSTALL_HINT}",
                    file=sys.stderr,
                )
                raise SystemExit(2) from None
    return modules


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = run()
    return result, time.perf_counter() - started


def round4(value: float) -> float:
    return round(float(value), 4)


# -- ranking -------------------------------------------------------------------------


@dataclass(frozen=True)
class RankingSplit:
    """The train interactions and per-user test sets of the stratified split."""

    train_pairs: list[tuple[str, str]]
    relevant: dict[str, set[str]]
    test_users: list[str]  # test users with training history, in first-seen order


def ranking_split(events: Sequence[Event]) -> RankingSplit:
    # The same call evaluate_ranking makes internally (keys = item ids, same ratio
    # and seed), so the peers see exactly the split recostream is scored on.
    mask = stratified_split([e.item_id for e in events], SPLIT_RATIO, SPLIT_SEED)
    train_pairs = [(e.user_id, e.item_id) for e, t in zip(events, mask, strict=True) if t]
    relevant: dict[str, set[str]] = defaultdict(set)
    for event, is_train in zip(events, mask, strict=True):
        if not is_train:
            relevant[event.user_id].add(event.item_id)
    train_users = {u for u, _ in train_pairs}
    test_users = [u for u in relevant if u in train_users]
    return RankingSplit(train_pairs, dict(relevant), test_users)


def binary_user_items(
    pairs: Sequence[tuple[str, str]],
) -> tuple[sp.csr_matrix, dict[str, int], list[str]]:
    """Users x items CSR of ones (implicit >= 0.5 takes user_items), with id maps."""
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    rows = [user_index.setdefault(u, len(user_index)) for u, _ in pairs]
    cols = [item_index.setdefault(i, len(item_index)) for _, i in pairs]
    matrix = sp.csr_matrix(
        (np.ones(len(pairs), dtype=np.float32), (rows, cols)),
        shape=(len(user_index), len(item_index)),
    )
    # Duplicate (user, item) rows would sum; the protocol treats them as one.
    matrix.data[:] = 1.0
    return matrix, user_index, list(item_index)


def implicit_cosine(
    nearest_neighbours: ModuleType, split: RankingSplit, k: int, neighbours: int
) -> dict[str, list[str]]:
    user_items, user_index, items = binary_user_items(split.train_pairs)
    model = nearest_neighbours.CosineRecommender(K=neighbours)
    with warnings.catch_warnings():
        # CosineRecommender normalises into a COO matrix itself, then warns about it.
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(user_items, show_progress=False)
    userids = np.asarray([user_index[u] for u in split.test_users], dtype=np.int32)
    ids, _ = model.recommend(userids, user_items[userids], N=k, filter_already_liked_items=True)
    # implicit pads short lists with -1.
    return {
        user: [items[j] for j in row if j >= 0]
        for user, row in zip(split.test_users, ids.tolist(), strict=True)
    }


def popularity(split: RankingSplit, k: int) -> dict[str, list[str]]:
    counts = Counter(i for _, i in split.train_pairs)
    # Ties broken by item id so the baseline is deterministic.
    ranked = sorted(counts, key=lambda i: (-counts[i], i))
    seen: dict[str, set[str]] = defaultdict(set)
    for user, item in split.train_pairs:
        seen[user].add(item)
    out: dict[str, list[str]] = {}
    for user in split.test_users:
        # A user has seen at most len(seen[user]) items, so this prefix always holds k.
        candidates = ranked[: k + len(seen[user])]
        out[user] = [i for i in candidates if i not in seen[user]][:k]
    return out


def ranking_row(metrics: RankingMetrics, seconds: float) -> dict[str, Any]:
    return {
        "users": metrics.users,
        "ndcg_at_k": round4(metrics.ndcg_at_k),
        "map_at_k": round4(metrics.map_at_k),
        "precision_at_k": round4(metrics.precision_at_k),
        "recall_at_k": round4(metrics.recall_at_k),
        "seconds": round(seconds, 2),
    }


def ranking_config(**overrides: Any) -> RecommenderConfig:
    """The ``recostream evaluate ranking`` defaults, built as streams/evaluate.py does."""
    return replace(RecommenderConfig(), **{**asdict(RANKING_DEFAULTS), **overrides})


def like_implicit_config(neighbours: int) -> RecommenderConfig:
    """Cosine as implicit computes it: ``neighbours`` per item over full co-occurrence.

    The stream pairs a new item only with the user's last ``pair_window`` items (a
    throughput knob), which changes the model; here every pair of a user's items
    counts, as in implicit's X^T X, so this row is the strict like-for-like one.
    """
    config = ranking_config(similarity="cosine", neighbors=neighbours)
    if "pair_window" in {f.name for f in fields(config)}:
        config = replace(config, pair_window=config.history)
    return config


def run_ranking(
    events: Sequence[Event], peers: dict[str, ModuleType], k: int, implicit_k: int
) -> dict[str, Any]:
    split = ranking_split(events)
    log(f"ranking: {len(split.train_pairs)} train rows, {len(split.test_users)} test users")
    methods: dict[str, dict[str, Any]] = {}

    like_name = f"recostream cosine n={implicit_k} full"
    for name, config in (
        ("recostream ease", ranking_config()),
        ("recostream cosine", ranking_config(similarity="cosine")),
        (like_name, like_implicit_config(implicit_k)),
    ):
        log(f"ranking: {name} ...")
        metrics, seconds = timed(lambda c=config: evaluate_ranking(events, c, k=k).metrics)
        methods[name] = ranking_row(metrics, seconds)

    log(f"ranking: implicit CosineRecommender K={implicit_k} ...")
    with stdout_to_stderr():
        recommended, seconds = timed(
            lambda: implicit_cosine(peers["implicit.nearest_neighbours"], split, k, implicit_k)
        )
    peer_name = f"implicit cosine K={implicit_k}"
    methods[peer_name] = ranking_row(ranking_metrics(recommended, split.relevant, k), seconds)

    log("ranking: popularity ...")
    recommended, seconds = timed(lambda: popularity(split, k))
    methods["popularity"] = ranking_row(ranking_metrics(recommended, split.relevant, k), seconds)

    # Every method must have scored the same users, or the figures are not comparable.
    users = {row["users"] for row in methods.values()}
    metric_keys = ("ndcg_at_k", "map_at_k", "precision_at_k", "recall_at_k")
    ratios = {
        f"{ours} / {peer}": {
            key: round(methods[ours][key] / methods[peer][key], 3) for key in metric_keys
        }
        for ours, peer in (
            ("recostream ease", peer_name),
            ("recostream cosine", peer_name),
            (like_name, peer_name),
            ("recostream ease", "popularity"),
        )
    }
    return {
        "protocol": "ranking (stratified by item, 75/25, seed 42, training items removed)",
        "k": k,
        "train_rows": len(split.train_pairs),
        "users": len(split.test_users),
        "same_users": users == {len(split.test_users)},
        "methods": methods,
        "ratios": ratios,
    }


# -- rating --------------------------------------------------------------------------


def surprise_folds(
    surprise: ModuleType, pandas: ModuleType, triples: Sequence[tuple[str, str, float]]
) -> tuple[list[tuple[Any, list[tuple[str, str, float]]]], bool]:
    """Surprise's own KFold over the rows in file order, and whether it matches ours."""
    frame = pandas.DataFrame(triples, columns=["user", "item", "rating"])
    reader = surprise.Reader(rating_scale=(1, 5))
    data = surprise.Dataset.load_from_df(frame, reader)
    kfold = surprise.model_selection.KFold(n_splits=FOLDS, random_state=FOLD_SEED, shuffle=True)
    folds = list(kfold.split(data))
    ours = [[triples[j] for j in idx] for idx in kfold_indices(len(triples), FOLDS, FOLD_SEED)]
    theirs = [[(u, i, float(r)) for u, i, r in testset] for _, testset in folds]
    return folds, theirs == ours


def surprise_knn(
    surprise: ModuleType, folds: Sequence[tuple[Any, Any]], sim: str
) -> tuple[list[float], list[float]]:
    """Per-fold RMSE and MAE of Surprise's user-based KNNWithMeans."""
    rmses: list[float] = []
    maes: list[float] = []
    for n, (trainset, testset) in enumerate(folds, start=1):
        algo = surprise.KNNWithMeans(
            k=SURPRISE_K, sim_options={"name": sim, "user_based": True}, verbose=False
        )
        algo.fit(trainset)
        predictions = algo.test(testset)
        rmses.append(surprise.accuracy.rmse(predictions, verbose=False))
        maes.append(surprise.accuracy.mae(predictions, verbose=False))
        log(f"rating: surprise {sim} fold {n}/{len(folds)} rmse {rmses[-1]:.4f}")
    return rmses, maes


def rating_row(
    rmse: float, mae: float, fold_rmse: Sequence[float], seconds: float
) -> dict[str, Any]:
    return {
        "rmse": round4(rmse),
        "mae": round4(mae),
        "fold_rmse": [round4(r) for r in fold_rmse],
        "seconds": round(seconds, 2),
    }


def run_rating(events: Sequence[Event], peers: dict[str, ModuleType]) -> dict[str, Any]:
    # evaluate_rating keeps the events that carry a rating, in file order; do the same.
    triples = [(e.user_id, e.item_id, float(e.value)) for e in events if e.value is not None]
    if len(triples) < FOLDS:
        raise CliError("rating protocol needs events with explicit ratings (value)")
    surprise = peers["surprise"]  # its __init__ also brings accuracy and model_selection
    with stdout_to_stderr():
        folds, same_folds = surprise_folds(surprise, peers["pandas"], triples)
    log(f"rating: {len(triples)} ratings, Surprise folds identical to ours: {same_folds}")
    if not same_folds:
        log("rating: WARNING fold test sets differ; the comparison below is not like for like")

    methods: dict[str, dict[str, Any]] = {}
    config = UserKNNConfig()
    ours_name = f"recostream user-knn k={config.k} shrink={config.shrinkage:g}"
    log(f"rating: {ours_name} ...")
    metrics, seconds = timed(lambda: evaluate_rating(events, config, folds=FOLDS, seed=FOLD_SEED))
    methods[ours_name] = rating_row(metrics.rmse, metrics.mae, metrics.fold_rmse, seconds)
    ratios: dict[str, dict[str, float]] = {}
    for sim in ("msd", "pearson"):
        name = f"surprise KNNWithMeans {sim} k={SURPRISE_K}"
        log(f"rating: {name} ...")
        with stdout_to_stderr():
            (rmses, maes), seconds = timed(lambda s=sim: surprise_knn(surprise, folds, s))
        # Averaged over folds, as Surprise's cross_validate reports and evaluate_rating does.
        methods[name] = rating_row(float(np.mean(rmses)), float(np.mean(maes)), rmses, seconds)
        ratios[f"recostream / surprise {sim}"] = {
            key: round(methods[ours_name][key] / methods[name][key], 3) for key in ("rmse", "mae")
        }
    return {
        "protocol": "rating (5-fold KFold, random_state=0, shuffle)",
        "folds": FOLDS,
        "ratings": len(triples),
        "same_folds": same_folds,
        "methods": methods,
        "ratios": ratios,
    }


# -- output --------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def render(result: dict[str, Any]) -> str:
    lines = [
        f"dataset {result['dataset']}: {result['events']} events; "
        f"revision {result['revision']}; "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
    ]
    ranking = result.get("ranking")
    if ranking:
        k = ranking["k"]
        lines += ["", f"{ranking['protocol']}, k={k}, {ranking['users']} users"
                  f" (same users for every method: {ranking['same_users']})"]
        lines += _table(
            ["method", f"nDCG@{k}", f"MAP@{k}", f"P@{k}", f"R@{k}", "seconds"],
            [[name, m["ndcg_at_k"], m["map_at_k"], m["precision_at_k"], m["recall_at_k"],
              f"{m['seconds']:.2f}"] for name, m in ranking["methods"].items()],
        )
        lines += ["", "ratios, ours / peer (> 1: ours better)"]
        lines += _table(
            ["pair", f"nDCG@{k}", f"MAP@{k}", f"P@{k}", f"R@{k}"],
            [[pair, *(f"{r[key]:.3f}" for key in
                      ("ndcg_at_k", "map_at_k", "precision_at_k", "recall_at_k"))]
             for pair, r in ranking["ratios"].items()],
        )
    rating = result.get("rating")
    if rating:
        lines += ["", f"{rating['protocol']}, {rating['ratings']} ratings"
                  f" (Surprise folds identical to ours: {rating['same_folds']})"]
        lines += _table(
            ["method", "RMSE", "MAE", "seconds"],
            [[name, m["rmse"], m["mae"], f"{m['seconds']:.2f}"]
             for name, m in rating["methods"].items()],
        )
        lines += ["", "ratios, ours / peer (< 1: ours better)"]
        lines += _table(
            ["pair", "RMSE", "MAE"],
            [[pair, f"{r['rmse']:.3f}", f"{r['mae']:.3f}"] for pair, r in rating["ratios"].items()],
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", default="ml-100k", help="cached data set (default ml-100k)")
    source.add_argument("--events", metavar="FILE", help="an event-contract file instead")
    parser.add_argument("--protocol", choices=("both", "ranking", "rating"), default="both")
    parser.add_argument("-k", type=int, default=10, help="ranking list length (default 10)")
    parser.add_argument("--implicit-k", type=int, default=100,
                        help="neighbours per item for implicit's CosineRecommender (default 100)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)

    protocols = ["ranking", "rating"] if args.protocol == "both" else [args.protocol]
    # Fail fast, before any data work, when a peer is missing.
    peers = import_peers(protocols)
    try:
        events = load_events(dataset=None if args.events else args.dataset,
                             events_file=args.events)
        result: dict[str, Any] = {
            "dataset": args.events or args.dataset,
            "events": len(events),
            "revision": revision(),
            "versions": {d: version_of(d) for d in
                         ("recostream", "implicit", "scikit-surprise", "numpy", "scipy")},
        }
        if "ranking" in protocols:
            result["ranking"] = run_ranking(events, peers, args.k, args.implicit_k)
        if "rating" in protocols:
            result["rating"] = run_rating(events, peers)
    except CliError as exc:
        print(f"evaluate_vs_peers: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result) + b"\n")
    else:
        print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
