"""The shop protocols on small synthetic logs with known answers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from core.config import RecommenderConfig
from core.evaluation import choose_ease_lambda, evaluate_ranking, unique_pairs
from core.events import Event
from core.next_basket import evaluate_next_basket
from core.prequential import evaluate_prequential
from core.ratings import RatingWeights

DAY = 86_400.0
RANKING = replace(RecommenderConfig(), similarity="ease", neighbors=50, history=100,
                  pair_window=100, recency_decay=1.0, popularity_weight=0.0)


def weekly_shop(customers: int = 12, weeks: int = 4) -> list[Event]:
    """Each customer buys the same three staples every week, from one of two aisles."""
    events = []
    for week in range(weeks):
        for c in range(customers):
            aisle = c % 2
            for slot in range(3):
                events.append(Event(f"c{c}", f"i{aisle}{slot}", (week * 7 + c % 3) * DAY,
                                    "purchase", order_id=f"o{week}-{c}"))
    return events


def browsing_log(users: int = 40, items: int = 30, seed: int = 3) -> list[Event]:
    import random

    rng = random.Random(seed)
    rows = []
    for t in range(600):
        u = rng.randrange(users)
        i = rng.randrange(items // 2) + (items // 2 if u % 2 else 0)
        rows.append(Event(f"u{u}", f"i{i}", 1_600_000_000.0 + t, "click", value=float(1 + t % 5)))
    return rows


def test_unique_pairs_keeps_the_strongest_event_in_input_order() -> None:
    events = [Event("u", "a", 1.0, "purchase"), Event("u", "a", 2.0, "view"),
              Event("v", "a", 3.0, "remove_from_cart"), Event("u", "b", 4.0, "click")]
    kept = unique_pairs(events, RatingWeights())
    assert [(e.user_id, e.item_id, e.type) for e in kept] == [("u", "a", "purchase"),
                                                              ("u", "b", "click")]


def test_ranking_is_blind_to_repeat_purchases() -> None:
    once = browsing_log()
    # every interaction repeated a day later: a shop's repeat purchase
    twice = once + [replace(e, ts=e.ts + DAY) for e in once]
    a = evaluate_ranking(once, RANKING, ease_lambdas=())
    b = evaluate_ranking(twice, RANKING, ease_lambdas=())
    assert a.metrics == b.metrics and a.popularity == b.popularity
    assert a.metrics.ndcg_at_k > 0.0
    # two taste groups: neighbours beat the catalogue's bestsellers
    assert a.metrics.ndcg_at_k > a.popularity.ndcg_at_k > 0.0


def test_ease_lambda_is_chosen_from_the_grid_and_reported() -> None:
    report = evaluate_ranking(browsing_log(), RANKING, ease_lambdas=(10.0, 100.0, 1000.0))
    assert [lam for lam, _ in report.validation] == [10.0, 100.0, 1000.0]
    best = max(score for _, score in report.validation)
    assert report.ease_lambda == min(lam for lam, s in report.validation if s == best)
    fixed = evaluate_ranking(browsing_log(), RANKING)
    assert fixed.ease_lambda == RANKING.similarity_params.ease_lambda and not fixed.validation


def test_choose_ease_lambda_needs_a_grid() -> None:
    with pytest.raises(ValueError, match="no EASE lambda"):
        choose_ease_lambda(browsing_log(), RANKING, ())


def test_ranking_reports_bias_within_bounds() -> None:
    bias = evaluate_ranking(browsing_log(), RANKING).bias
    assert 0.0 < bias.coverage <= 1.0
    assert 0.0 <= bias.exposure_gini < 1.0
    assert bias.novelty > 0.0
    assert len(bias.accuracy_by_activity) == 3


def test_next_basket_on_a_weekly_shop() -> None:
    report = evaluate_next_basket(weekly_shop(), RecommenderConfig(refresh_every=10), k=3)
    assert report.customers == 12
    assert report.repeat_share == 1.0
    again = report.sources["buy_again"]
    assert again["all"].hr_at_k == again["all"].recall_at_k == again["all"].ndcg_at_k == 1.0
    assert again["new"].customers == 0
    # plain popularity lists one aisle's staples: right for half the customers
    assert report.sources["popularity"]["all"].recall_at_k == pytest.approx(0.5)
    assert report.bias["popularity"].coverage == pytest.approx(0.5)


def test_next_basket_scores_new_items_apart() -> None:
    events = weekly_shop(customers=6, weeks=2)
    # in its last week customer c0 also tries aisle 1's first staple: a new item
    last = max(e.ts for e in events if e.user_id == "c0")
    events.append(Event("c0", "i10", last, "purchase", order_id="o1-0"))
    report = evaluate_next_basket(events, RecommenderConfig(refresh_every=5), k=3)
    assert report.sources["buy_again"]["new"].customers == 1
    assert report.sources["buy_again"]["new"].hr_at_k == 0.0
    assert report.sources["buy_again"]["repeat"].hr_at_k == 1.0


def test_next_basket_uses_days_without_orders_and_needs_two_baskets() -> None:
    events = [replace(e, order_id=None) for e in weekly_shop(customers=4, weeks=2)]
    events.append(Event("solo", "i00", 0.0, "purchase"))
    report = evaluate_next_basket(events, RecommenderConfig(), k=3)
    assert report.customers == 4


def test_prequential_reports_popularity_and_repeats_apart() -> None:
    report = evaluate_prequential(weekly_shop(), RecommenderConfig(refresh_every=10), k=3)
    assert set(report.new_items) == {"default", "popularity"}
    assert set(report.repeats) == {"default", "popularity", "buy_again"}
    assert report.repeats["buy_again"].hr_at_k == 1.0
    assert report.events == report.new_items["default"].events
    assert len(report.timelines["repeats"].ts) == report.repeats["buy_again"].events


def test_prequential_on_clicks_has_no_repeat_track() -> None:
    report = evaluate_prequential(browsing_log(), RecommenderConfig(refresh_every=50))
    assert report.repeats == {}
    popularity = report.new_items["popularity"]
    assert popularity.events == report.events > 0
    assert not math.isnan(popularity.bias.exposure_gini)
