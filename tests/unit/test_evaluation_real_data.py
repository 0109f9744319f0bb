"""The README's evaluation figures on the real data sets (slow: fetched, then minutes)."""

from __future__ import annotations

import pytest

from core.config import RecommenderConfig
from core.evaluation import EASE_LAMBDA_GRID, evaluate_ranking
from core.next_basket import evaluate_next_basket
from streams.cli import build_parser
from streams.cli.evaluate import recommender_config
from streams.devtools.datasets import load_events

pytestmark = pytest.mark.slow


def test_ml100k_ranking_chooses_lambda_400_and_keeps_its_figure() -> None:
    # the configuration `recostream evaluate ranking` runs with by default
    config = recommender_config(build_parser().parse_args(["evaluate", "ranking"]))
    report = evaluate_ranking(load_events(dataset="ml-100k"), config,
                              ease_lambdas=EASE_LAMBDA_GRID)
    assert report.ease_lambda == 400.0
    assert report.metrics.ndcg_at_k == pytest.approx(0.4855, abs=5e-4)
    assert 0.0 < report.bias.coverage < 1.0


def test_instacart_next_basket_default_beats_every_single_source() -> None:
    report = evaluate_next_basket(load_events(dataset="instacart-sample"), RecommenderConfig())
    assert report.customers == 593
    assert report.repeat_share == pytest.approx(0.6923, abs=1e-3)
    ndcg = {name: parts["all"].ndcg_at_k for name, parts in report.sources.items()}
    assert ndcg["buy_again"] == pytest.approx(0.4426, abs=1e-3)
    assert ndcg["default"] == pytest.approx(0.4653, abs=1e-3)
    assert ndcg["default"] > max(ndcg["item_neighbours"], ndcg["popularity"], ndcg["buy_again"])
