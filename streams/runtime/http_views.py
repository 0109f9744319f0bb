"""The worker's HTTP routes: lookups of users and items, health and metrics.

A user's state lives in the partition its events arrive on (murmur2 of the raw
user id in ``clicks``): a worker that does not own it forwards the request to the
one that does (Faust's topic routing; ``table_route`` would hash the users
table's JSON-encoded key, another partition for most ids). Items are answered by
any worker, from the replicated tables.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
from faust.web import Request, Response, View

from core.churn import score_customer
from core.engagement import EngagementConfig
from core.learned import LearnedRanking
from streams.runtime.churn_scan import ChurnScan
from streams.runtime.clock import EventClock
from streams.runtime.metrics import CONTENT_TYPE, Counters, WorkerMetrics
from streams.runtime.ranking import RankingQueue
from streams.runtime.records import recommendation_record
from streams.runtime.refresh import Refresh
from streams.runtime.state import ITEM_STATS
from streams.runtime.topology import Topology
from streams.runtime.users import Users

#: Items a lookup may ask for at most (``k``), unless RECOSTREAM_K is more.
MAX_LOOKUP_K = 100
#: Recommendation lookups under way at once; more are answered 503 (the ranking
#: child ranks them, behind the batches' lists).
LOOKUPS_IN_FLIGHT = 32

#: An answer: (HTTP status, JSON body, extra headers).
Answer = tuple[int, dict[str, Any], dict[str, str]]


def parse_k(raw: str | None, default: int, maximum: int) -> int | None:
    """The ``k`` query parameter, or None when it is not an integer in [1, maximum].

    >>> parse_k(None, 10, 100), parse_k("5", 10, 100), parse_k("101", 10, 100)
    (10, 5, None)
    """
    try:
        k = int(raw) if raw is not None else default
    except ValueError:
        return None
    return k if 1 <= k <= maximum else None


class Lookups:
    """What each route answers, from the worker's collaborators."""

    def __init__(self, users: Users, ranking: RankingQueue, refresh: Refresh,
                 churn: ChurnScan, clock: EventClock, topology: Topology,
                 counters: Counters, metrics: WorkerMetrics, engagement: EngagementConfig,
                 k: int, neighbors: int) -> None:
        self.users = users
        self.ranking = ranking
        self.refresh = refresh
        self.churn = churn
        self.clock = clock
        self.topology = topology
        self.counters = counters
        self.metrics = metrics
        self.engagement = engagement
        self.k = k
        self.neighbors = neighbors
        self.in_flight = 0  # recommendation lookups under way

    def health(self) -> dict[str, Any]:
        reader = self.topology.replica_reader
        return {
            "status": "ok",
            "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
            "model_version": self.refresh.model_round,
            "model_items": self.refresh.model_items,
            "replicas": {"records": reader.records, "caught_up": reader.caught_up.is_set()},
            "counters": self.counters.as_json(),
        }

    def metrics_text(self) -> bytes:
        self.clock.refresh_lag()
        return self.metrics.exposition()

    def item_neighbors(self, item_id: str, raw_k: str | None) -> Answer:
        k = parse_k(raw_k, self.neighbors, self.neighbors)
        if k is None:
            return 400, {"error": f"k must be an integer in [1, {self.neighbors}]"}, {}
        stats = self.topology.item_stats.get(item_id)
        if stats is None:
            return 404, {"error": f"unknown item {item_id}"}, {}
        pairs = self.topology.neighbors.get(item_id) or []
        return 200, {
            "item_id": item_id,
            "neighbors": [{"item_id": j, "score": score} for j, score in pairs[:k]],
            "users": stats[0],
            # stats written before purchases were kept have none of their figures
            "buyers": stats[3] if len(stats) == len(ITEM_STATS) else 0,
            "repeat_purchases": stats[4] if len(stats) == len(ITEM_STATS) else 0,
            "model_version": self.refresh.model_round,
        }, {}

    def profile(self, user_id: str) -> Answer:
        state = self.users.stored(user_id)
        if state is None:
            return 404, {"error": f"unknown user {user_id}"}, {}
        profile = state.profile
        return 200, {
            "user_id": user_id,
            "mean_rating": profile.mean,
            "ratings": len(profile.ratings),
            "recent_items": profile.recent[-20:],
            "purchased": sorted(profile.purchased),
            "events": profile.events,
            "last_ts": profile.last_ts,
            "applied_offsets": state.applied.offsets,
        }, {}

    def churn_score(self, user_id: str) -> Answer:
        state = self.users.stored(user_id)
        if state is None:
            return 404, {"error": f"unknown user {user_id}"}, {}
        engagement = state.engagement
        customer = engagement.customer
        now = self.clock.user_now(user_id)
        answer: dict[str, Any] = {
            "user_id": user_id,
            "purchase_days": 0 if customer.is_empty else customer.frequency + 1,
            "alerted": engagement.alerted,
            "cart": sorted(engagement.cart),
            "now": now,
        }
        if customer.is_empty:
            return 200, {**answer, "p_alive": None, "detail": "no purchases yet"}, {}
        model = self.churn.model()
        score = score_customer(model.params, customer, now,
                               horizon_days=self.engagement.horizon_days)
        return 200, {**answer, **score.to_dict(),
                     "value_tier": model.tiers.tier(score.monetary_value),
                     "model": {"fitted": model.fitted, **model.params.to_state()}}, {}

    async def learned_ranking(self) -> Answer:
        """The ranking this worker's lists are ranked with, as learned so far: its
        version (lessons taken), the scorer serving each part of a list, and the
        weights and judgements (:meth:`LearnedRanking.to_state`)."""
        learned = await self.ranking.learned()
        if learned is None:
            why = ("nothing learned yet" if self.ranking.learn_customers else
                   "no ranking is learned (RECOSTREAM_RANKER_CUSTOMERS=0 or "
                   "RECOSTREAM_RANKING=neighbours): lists keep the fixed blend")
            return 404, {"error": why}, {}
        ranking = LearnedRanking.from_state(learned)
        return 200, {"version": ranking.version,
                     "serving": ranking.serving(self.ranking.config),
                     "learned": learned}, {}

    async def recommendations(self, user_id: str, raw_k: str | None) -> Answer:
        limit = max(MAX_LOOKUP_K, self.k)
        k = parse_k(raw_k, self.k, limit)
        if k is None:
            return 400, {"error": f"k must be an integer in [1, {limit}]"}, {}
        if self.in_flight >= LOOKUPS_IN_FLIGHT:
            return 503, {"error": "too many lookups under way; retry"}, {"Retry-After": "1"}
        self.in_flight += 1
        try:
            recs = await self.ranking.recommend(user_id, self.users.stored(user_id), k)
        finally:
            self.in_flight -= 1
        return 200, recommendation_record(recs, "lookup", None), {}


def declare_views(app: faust.App, user_topic: faust.TopicT, lookups: Lookups) -> None:
    """The routes, on the app's web server."""

    def reply(view: View, answer: Answer) -> Response:
        status, body, headers = answer
        return view.json(body, status=status, headers=headers or None)

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            return self.json(lookups.health())

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(lookups.metrics_text(), content_type=CONTENT_TYPE)

    @app.page("/ranking")
    class Ranking(View):
        async def get(self, request: Request) -> Response:
            return reply(self, await lookups.learned_ranking())

    @app.page("/items/{item_id}/neighbors")
    class ItemNeighbors(View):
        async def get(self, request: Request, item_id: str) -> Response:
            return reply(self, lookups.item_neighbors(item_id, request.query.get("k")))

    @app.page("/users/{user_id}")
    class UserProfile(View):
        @app.topic_route(topic=user_topic, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            return reply(self, lookups.profile(user_id))

    @app.page("/users/{user_id}/churn")
    class UserChurn(View):
        @app.topic_route(topic=user_topic, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            return reply(self, lookups.churn_score(user_id))

    @app.page("/users/{user_id}/recommendations")
    class UserRecommendations(View):
        @app.topic_route(topic=user_topic, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            return reply(self, await lookups.recommendations(user_id, request.query.get("k")))
