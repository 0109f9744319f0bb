"""Lists from every source (core.mix): the contract every list keeps, buy-again,
the learned ranker's determinism, and the explanations."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import RANKING_NAMES, RecommenderConfig
from core.cooccurrence import ItemIndex
from core.events import Event
from core.learned import LearnedRanking, part_of
from core.mix import FEATURES, RANKINGS, SOURCES, published_lists
from core.ranking import NeighborModel
from core.ratings import UserProfile
from core.reasons import TRENDING_REASON
from core.recommender import Recommender
from core.repurchase import ItemRepurchases, RepurchaseStats, log_gap_units
from core.similarity import ItemNeighbors
from core.snapshot import ItemFacts, Snapshot

DAY = 86_400.0


def shop_events(seed: int, n: int = 1500) -> list[Event]:
    """Customers who buy a few staples again every few days, and browse others."""
    rng = np.random.default_rng(seed)
    events = []
    for t in range(n):
        user = f"c{int(rng.integers(0, 25))}"
        if rng.random() < 0.6:
            item = f"staple{int(rng.integers(0, 6))}"
            kind = "purchase"
        else:
            item = f"i{int(rng.zipf(1.4)) % 60}"
            kind = "view" if rng.random() < 0.7 else "purchase"
        events.append(Event(user, item, t * DAY / 40, kind))
    return events


def trained(config: RecommenderConfig, events: list[Event]) -> Recommender:
    model = Recommender(config)
    model.observe_many(events)
    model.refresh()
    return model


@pytest.fixture(scope="module")
def shop() -> Recommender:
    return trained(RecommenderConfig(refresh_every=300, ranker_warmup=20), shop_events(3))


def test_ranking_names_are_the_registry() -> None:
    assert tuple(RANKINGS) == RANKING_NAMES
    with pytest.raises(ValueError, match="ranking must be one of"):
        RecommenderConfig(ranking="magic")


@pytest.mark.parametrize("ranking", RANKING_NAMES)
def test_every_list_keeps_the_contract(shop: Recommender, ranking: str) -> None:
    model = Recommender.from_state(shop.to_state(), replace(shop.config, ranking=ranking))
    for user in [*sorted(model.users), "nobody"]:
        for banned in ((), ("staple0", "i1")):
            recs = model.recommend(user, 10, filter_purchased=False, exclude=banned)
            assert len(recs.sources) == len(recs.reasons) == len(recs.item_ids)
            assert set(recs.sources) <= set(SOURCES)
            assert not set(banned) & set(recs.item_ids)
            assert len(set(recs.item_ids)) == len(recs.item_ids)
            assert list(recs.scores) == sorted(recs.scores, reverse=True)
            # no list is empty while items are known
            assert recs.item_ids
            assert recs.cold_start == (user == "nobody")


def test_buy_again_brings_back_what_the_customer_buys_often(shop: Recommender) -> None:
    regular = max(shop.users, key=lambda u: sum(shop.users[u].purchase_counts.values()))
    recs = shop.recommend(regular, 10, filter_purchased=False)
    again = [item for item, source in zip(recs.item_ids, recs.sources, strict=True)
             if source == "buy_again"]
    assert again and set(again) <= set(shop.users[regular].purchased)
    reason = recs.reasons[recs.sources.index("buy_again")]
    assert reason.startswith("you buy this about every ") and reason.endswith(" days")


def test_repeat_never_and_always() -> None:
    events = shop_events(5)
    never = trained(RecommenderConfig(refresh_every=300, repeat="never"), events)
    always = trained(RecommenderConfig(refresh_every=300, repeat="always"), events)
    buyers = [u for u in never.users if never.users[u].purchased]
    assert buyers
    for user in buyers:
        assert "buy_again" not in never.recommend(user, 10, filter_purchased=False).sources
    assert any("buy_again" in always.recommend(u, 10, filter_purchased=False).sources
               for u in buyers)


def test_the_same_events_give_the_same_ranker_and_lists() -> None:
    config = RecommenderConfig(refresh_every=200, ranker_warmup=10)
    first, second = (trained(config, shop_events(7)) for _ in range(2))
    assert first.ranker.mlp.steps > 0
    assert first.ranker.to_state() == second.ranker.to_state()  # bit for bit
    for user in sorted(first.users):
        assert first.recommend(user, 10) == second.recommend(user, 10)


def test_a_ranker_that_learned_nothing_leaves_the_fixed_blend() -> None:
    events = shop_events(9, 600)
    learned = trained(RecommenderConfig(refresh_every=200, ranker_warmup=10**9), events)
    still = trained(RecommenderConfig(refresh_every=200, learn_ranker=False), events)
    for user in sorted(learned.users):
        assert learned.recommend(user, 10) == still.recommend(user, 10)


def test_neighbour_reasons_name_the_recent_item_weighing_most() -> None:
    model = NeighborModel.from_neighbor_lists(
        1, {"a": [("x", 0.5)], "b": [("x", 0.5), ("y", 0.4)], "c": [("y", 0.9)]}, {"z": 1.0}, k=2)
    profile = UserProfile(recent=["c", "a", "b"], purchased={"a": 0.0})
    recs = model.recommend("u", profile, 3, RecommenderConfig(recency_decay=1.0,
                                                              popularity_weight=0.01))
    reasons = dict(zip(recs.item_ids, recs.reasons, strict=True))
    # x: a and b weigh the same, b is more recent; y: c weighs most
    assert reasons == {"y": "similar to c, which you viewed",
                       "x": "similar to b, which you viewed", "z": TRENDING_REASON}
    profile.purchased["b"] = 1.0
    again = model.recommend("u", profile, 3, RecommenderConfig(recency_decay=1.0),
                            filter_purchased=False)
    assert "similar to b, which you bought" in again.reasons


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 12)), min_size=1, max_size=80),
       st.floats(0.3, 1.0))
def test_a_neighbour_reason_names_a_recent_item_that_lists_it(
        pairs: list[tuple[int, int]], decay: float) -> None:
    model = Recommender(RecommenderConfig(refresh_every=0, neighbors=3, history=5,
                                          ranking="neighbours", recency_decay=decay))
    for t, (user, item) in enumerate(pairs):
        model.observe(Event(f"u{user}", f"i{item}", float(t), "view"))
    model.refresh()
    for user, profile in model.users.items():
        recs = model.recommend(user, 5)
        for item, source, reason in zip(recs.item_ids, recs.sources, recs.reasons, strict=True):
            if source == "trending":
                assert reason == TRENDING_REASON
                continue
            because = reason.removeprefix("similar to ").rsplit(", which you", 1)[0]
            assert because in profile.recent
            assert item in dict(model.neighbors_of(because))


def test_a_restored_model_goes_on_learning_as_the_original() -> None:
    events = shop_events(11, 1200)
    config = RecommenderConfig(refresh_every=150, ranker_warmup=10)
    original = Recommender(config)
    original.observe_many(events[:700])
    copy = Recommender.from_state(orjson.loads(orjson.dumps(original.to_state())), config)
    for model in (original, copy):
        model.observe_many(events[700:])
    assert copy.to_state() == original.to_state()
    assert copy.ranker.mlp.steps > 0


def test_lists_are_ranked_by_the_scorer_judged_best_for_their_part() -> None:
    config = RecommenderConfig(ranker_warmup=0)
    learned = LearnedRanking.new(len(FEATURES), config)
    learned.mlp.w2[:] = 0.0  # a perceptron that ranks nothing: candidates in their order
    features = np.zeros((12, len(FEATURES)))
    features[:, FEATURES.index("popularity")] = np.linspace(0.0, 1.0, 12)
    features[:, FEATURES.index("neighbours")] = np.linspace(1.0, 0.0, 12)
    taken = np.zeros(12, dtype=bool)
    taken[11] = True  # the most popular, the least similar: popularity alone finds it
    for _ in range(5):
        learned.judge(features, taken, config)
    assert learned.chosen(config, "new") == learned.chosen(config, "all") == "popular"
    assert part_of(features) == "new"
    assert int(np.argmax(learned.score(features, config))) == 11
    seen = features.copy()
    seen[0, FEATURES.index("seen_before")] = 1.0  # the most similar, seen before
    taken = np.zeros(12, dtype=bool)
    taken[0] = True
    for _ in range(20):
        learned.judge(seen, taken, config)
    assert part_of(seen) == "all"
    assert learned.chosen(config, "all") == "blend"  # ties with the perceptron: the blend
    assert learned.chosen(config, "new") == "popular"  # nothing new was taken since


def test_lists_ranked_together_equal_each_ranked_alone(shop: Recommender) -> None:
    config = replace(shop.config, ranking="mix")
    users = [*sorted(shop.users), "nobody", sorted(shop.users)[0]]
    requests = [(user, shop.users.get(user), ()) for user in users]
    together = RANKINGS["mix"](shop.snapshot, requests, 10, config)
    alone = [RANKINGS["mix"](shop.snapshot, [request], 10, config)[0] for request in requests]
    assert together == alone
    assert sum("buy_again" in recs.sources for recs in together) >= 3  # not vacuous
    assert published_lists(shop.snapshot, [(u, p) for u, p, _ in requests], 10, config) == [
        RANKINGS["mix"](shop.snapshot, [(u, p, ())], 10, config)[0] for u, p, _ in requests]


@settings(max_examples=60, deadline=None)
@given(purchases=st.lists(st.tuples(st.sampled_from("abcd"),
                                    st.none() | st.floats(0.0, 400.0)), max_size=40),
       order=st.randoms(use_true_random=False), parts=st.integers(1, 4))
def test_repurchase_figures_are_the_same_summed_in_any_order(
        purchases: list[tuple[str, float | None]], order: Any, parts: int) -> None:
    """What a stream gathers item by item from its partitions, each in the order
    its messages came, is what one replay sums in event order, to the bit."""
    replay = RepurchaseStats()
    for item_id, gap in purchases:
        replay.bought(item_id, repeat_gap_days=gap)
    shuffled = list(purchases)
    order.shuffle(shuffled)
    rows: dict[str, ItemRepurchases] = {}
    for item_id, gap in shuffled:  # each item's row, in the order of its partition
        rows.setdefault(item_id, ItemRepurchases()).bought(
            None if gap is None else log_gap_units(gap))
    gathered = RepurchaseStats.of_items(dict(sorted(rows.items(), key=lambda kv: ord(kv[0])
                                                    % parts)))
    for item_id in "abcde":
        assert gathered.rate(item_id) == replay.rate(item_id)
        assert gathered.gap_days(item_id) == replay.gap_days(item_id)


def reordered(snapshot: Snapshot, ids: list[str]) -> Snapshot:
    """The same snapshot with its items at other positions (``ids`` in order)."""
    model, facts = snapshot.model, snapshot.facts
    old = np.asarray([model.items.positions[i] for i in ids])
    new_of_old = np.empty(old.size, dtype=np.int64)
    new_of_old[old] = np.arange(old.size)
    indices = model.neighbors.indices[old]
    indices = np.where(indices >= 0, new_of_old[np.maximum(indices, 0)], -1).astype(np.int32)
    moved = NeighborModel(ItemIndex(ids), ItemNeighbors(indices, model.neighbors.scores[old]),
                          model.trending[old], model.version)
    return Snapshot(moved, ItemFacts(*(getattr(facts, name)[old] for name in
                                       ("counts", "first_seen", "repeat_rate", "gap_days"))))


def test_lists_do_not_depend_on_the_order_of_item_positions() -> None:
    """A stream's snapshot orders items by id, the replay's by first sight: every
    tie at a source's cut (equal neighbour scores, counts or propensities) is
    broken by id, so that both list alike."""
    ids = ["a", "b", "c", "d", "e", "f", "x"]
    same = [(i, 0.5) for i in "abcdef"]
    model = NeighborModel.from_neighbor_lists(1, {"x": same}, {}, k=6)
    repurchase = RepurchaseStats()
    for item_id in "abcdef":
        repurchase.bought(item_id, repeat_gap_days=None)
    facts = ItemFacts.from_stats(ids, dict.fromkeys(ids, 3.0), {}, repurchase)
    config = RecommenderConfig(per_source=2, repeat="always")
    viewer = UserProfile(recent=["x"])
    buyer = UserProfile(recent=["x"], purchased=dict.fromkeys("fedcba", 0.0), last_ts=DAY * 7)
    requests = [("viewer", viewer), ("buyer", buyer), ("nobody", None)]
    first = published_lists(Snapshot(model, facts), requests, 10, config)
    assert first[0].item_ids[:2] == ("a", "b")  # the tie at the neighbours' cut
    assert first[2].item_ids == ("a", "b")  # the tie at the popular cut
    assert [i for i, s in zip(first[1].item_ids, first[1].sources, strict=True)
            if s == "buy_again"] == ["a", "b"]
    backwards = reordered(Snapshot(model, facts), ids[::-1])
    assert published_lists(backwards, requests, 10, config) == first


def test_a_snapshot_that_knows_no_item_lists_what_the_requests_hold_most() -> None:
    config = RecommenderConfig(repeat="never")
    requests = [("u", UserProfile(recent=["b", "a"], purchased={"a": 0.0})),
                ("v", UserProfile(recent=["c", "b"])), ("nobody", None)]
    lists = published_lists(Snapshot.empty(3), requests, 2, config)
    assert [recs.item_ids for recs in lists] == [("b", "c"), ("b", "a"), ("b", "a")]
    assert all(recs.sources == ("popular",) * 2 for recs in lists)
    assert [recs.cold_start for recs in lists] == [False, False, True]
