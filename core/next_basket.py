"""Next-basket evaluation: each customer's last basket held out, repeats allowed.

A basket is an order (``order_id``), else a session (``session_id``), else a UTC
day. Baskets are made of purchases when the log has any, of every rated event
otherwise. Per customer with at least one earlier basket, the last basket is
held out. Events are replayed in time order; when a customer's held-out basket
begins, every source ranks top-k for that customer from what has been learned
so far (everything before that moment), and the customer's events from then on
are not learned. Items bought before may be listed and count as hits.

Sources: the model as configured (``default``), the same item neighbours
without the trending prior (``item_neighbours``), plain popularity and
buy-again (both counting what baskets are made of). HR@k, nDCG@k and
recall@k are reported over the whole basket, and apart for its repeat items
(bought before) and its new items.

>>> from core.config import RecommenderConfig
>>> rows = [("u", "a", 0), ("v", "a", 0), ("v", "b", 0), ("u", "a", 2), ("v", "b", 3)]
>>> evs = [Event(u, i, day * 86_400.0, "purchase") for u, i, day in rows]
>>> report = evaluate_next_basket(evs, RecommenderConfig(refresh_every=1), k=1)
>>> report.customers, report.sources["buy_again"]["all"].hr_at_k
(2, 0.5)
>>> report.sources["popularity"]["repeat"].hr_at_k
0.5
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from core.baselines import BuyAgain, Popularity
from core.bias import BiasReport, bias_report, training_popularity
from core.config import DAY, LIST_LENGTH, RecommenderConfig
from core.evaluation import ndcg_at_k
from core.events import Event
from core.recommender import Recommender

Progress = Callable[[int, int], None]

SOURCES = ("default", "item_neighbours", "popularity", "buy_again")
PARTS = ("all", "repeat", "new")


def _no_progress(done: int, total: int) -> None:
    return None


def basket_of(event: Event) -> str:
    """The basket an event belongs to: its order, else its session, else its UTC day.

    >>> basket_of(Event("u", "i", 86_400.0 * 3 + 5, "purchase"))
    'day:3'
    >>> basket_of(Event("u", "i", 1.0, "purchase", order_id="o7"))
    'order:o7'
    """
    if event.order_id is not None:
        return f"order:{event.order_id}"
    if event.session_id is not None:
        return f"session:{event.session_id}"
    return f"day:{int(event.ts // DAY)}"


@dataclass(frozen=True)
class BasketMetrics:
    """Mean per-customer figures over the customers with something relevant."""

    customers: int
    hr_at_k: float
    ndcg_at_k: float
    recall_at_k: float


@dataclass(frozen=True)
class NextBasketReport:
    customers: int  # customers with a held-out basket and an earlier one
    basket_items: int  # distinct items over the held-out baskets
    repeat_share: float  # of those, the share bought before by the customer
    sources: dict[str, dict[str, BasketMetrics]]  # source -> part -> metrics
    bias: dict[str, BiasReport]  # source -> bias of its lists


def basket_metrics(
    lists: dict[str, Sequence[str]], truth: dict[str, set[str]], k: int
) -> tuple[BasketMetrics, dict[str, float]]:
    """HR, nDCG and recall at ``k`` averaged over customers with a non-empty truth,
    and each such customer's nDCG.

    >>> m, _ = basket_metrics({"u": ["a", "x"], "v": ["y"]}, {"u": {"a", "b"}, "v": set()}, 2)
    >>> m.customers, m.hr_at_k, round(m.ndcg_at_k, 4), m.recall_at_k
    (1, 1.0, 0.6131, 0.5)
    """
    hr = ndcg = recall = 0.0
    per_user: dict[str, float] = {}
    for user, relevant in truth.items():
        if not relevant:
            continue
        listed = list(lists.get(user, ()))[:k]
        hits = sum(item in relevant for item in listed)
        hr += float(hits > 0)
        recall += hits / len(relevant)
        per_user[user] = ndcg_at_k(listed, relevant, k)
        ndcg += per_user[user]
    n = len(per_user)
    scale = 1.0 / n if n else 0.0
    return BasketMetrics(n, hr * scale, ndcg * scale, recall * scale), per_user


def _held_out_starts(
    events: Sequence[Event], in_basket: Callable[[Event], bool]
) -> dict[str, float]:
    """Per customer with two baskets or more, when the last basket begins."""
    first_ts: dict[str, dict[str, float]] = {}
    for event in events:
        if in_basket(event):
            baskets = first_ts.setdefault(event.user_id, {})
            baskets.setdefault(basket_of(event), event.ts)
    return {user: max(starts.values()) for user, starts in first_ts.items()
            if len(starts) > 1 and min(starts.values()) < max(starts.values())}


def evaluate_next_basket(
    events: Sequence[Event],
    config: RecommenderConfig,
    *,
    k: int = LIST_LENGTH,
    progress: Progress = _no_progress,
) -> NextBasketReport:
    """Every source's top-k for each customer's last basket (see the module docstring)."""
    ordered = sorted(events, key=lambda e: e.ts)
    rating_of = config.weights.rating_of

    shopping = any(e.is_purchase for e in ordered)

    def rated(event: Event) -> bool:
        return rating_of(event.type, event.value) is not None

    def in_basket(event: Event) -> bool:
        # a shop's baskets are its purchases; a log without any, its rated events
        return event.is_purchase if shopping else rated(event)

    starts = _held_out_starts(ordered, in_basket)
    neighbours_only = replace(config, popularity_weight=0.0)
    model = Recommender(config)
    popularity = Popularity()
    buy_again = BuyAgain()
    lists: dict[str, dict[str, Sequence[str]]] = {source: {} for source in SOURCES}
    truth: dict[str, set[str]] = {user: set() for user in starts}
    before: dict[str, set[str]] = {}
    learned: list[tuple[str, str]] = []
    total = len(ordered)
    for done, event in enumerate(ordered, start=1):
        user = event.user_id
        start = starts.get(user)
        if start is not None and event.ts >= start:
            if user not in before:  # the basket begins: rank from what is known now
                profile = model.users.get(user)
                before[user] = set(buy_again.bought(user) if shopping else
                                   (profile.ratings if profile else ()))
                lists["default"][user] = model.recommend(user, k, filter_purchased=False).item_ids
                lists["item_neighbours"][user] = model.model.recommend(
                    user, profile, k, neighbours_only, filter_purchased=False).item_ids
                lists["popularity"][user] = popularity.top(k)
                lists["buy_again"][user] = buy_again.top(user, k)
            if in_basket(event):
                truth[user].add(event.item_id)
        else:
            model.observe(event)
            if rated(event):
                learned.append((user, event.item_id))
            if in_basket(event):
                popularity.observe(event.item_id)
                buy_again.observe(user, event.item_id, event.ts)
        if done % 1000 == 0 or done == total:
            progress(done, total)
    parts = {
        "all": truth,
        "repeat": {u: items & before.get(u, set()) for u, items in truth.items()},
        "new": {u: items - before.get(u, set()) for u, items in truth.items()},
    }
    known = training_popularity(learned)
    consumed = [item for items in truth.values() for item in items]
    sources: dict[str, dict[str, BasketMetrics]] = {}
    bias: dict[str, BiasReport] = {}
    for source in SOURCES:
        sources[source] = {}
        for part in PARTS:
            metrics, per_user = basket_metrics(lists[source], parts[part], k)
            sources[source][part] = metrics
            if part == "all":
                bias[source] = bias_report(lists[source], popularity=known, consumed=consumed,
                                           accuracy=per_user)
    basket_items = sum(len(items) for items in truth.values())
    repeated = sum(len(items) for items in parts["repeat"].values())
    return NextBasketReport(
        customers=len(truth),
        basket_items=basket_items,
        repeat_share=repeated / basket_items if basket_items else 0.0,
        sources=sources,
        bias=bias,
    )
