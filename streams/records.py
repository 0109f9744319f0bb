"""The records the worker publishes to its output topics, built from plain data
(no Faust here: the ranking child builds recommendation records, and the model
process item-neighbors records)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.engagement import Trigger
from core.ranking import Recommendations


def trigger_record(user_id: str, trigger: Trigger, items: list[str]) -> dict[str, Any]:
    """The ``marketing-triggers`` message; ``trigger_id`` is the same on a replay."""
    subject = trigger.details.get("item_id", "")
    return {
        "trigger_id": f"{trigger.kind}:{user_id}:{subject}:{trigger.ts:.3f}",
        "kind": trigger.kind,
        "user_id": user_id,
        "reason": trigger.reason,
        "recommended_items": items,
        "ts": trigger.ts,
        "details": dict(trigger.details),
    }


def churn_alert_record(user_id: str, trigger: Trigger, items: list[str]) -> dict[str, Any]:
    """The ``churn-alerts`` message."""
    d = trigger.details
    return {
        "user_id": user_id,
        "p_alive": d["p_alive"],
        "expected_purchases_next_30d": d["expected_purchases"],
        "horizon_days": d["horizon_days"],
        "frequency": d["frequency"],
        "recency": d["recency"],
        "T": d["T"],
        "monetary_value": d["monetary_value"],
        "value_tier": d["value_tier"],
        "recommended_items": items,
        "action": d["action"],
        "reason": trigger.reason,
        "ts": trigger.ts,
    }


def recommendation_record(recs: Recommendations, trigger: str, ts: float | None) -> dict[str, Any]:
    """The ``recommendations`` message (and HTTP answer) for one user."""
    return {
        "user_id": recs.user_id,
        "items": [{"item_id": i, "score": round(s, 6)} for i, s in recs.as_pairs()],
        "ts": ts,
        "model_version": recs.model_version,
        "trigger": trigger,
        "cold_start": recs.cold_start,
    }


def item_neighbors_record(item_id: str, pairs: Sequence[tuple[str, float]],
                          model_version: int) -> dict[str, Any]:
    """An ``item-neighbors`` record: an item's neighbours, best first.

    >>> item_neighbors_record("a", [("b", 0.5)], 7)
    {'item_id': 'a', 'neighbors': [{'item_id': 'b', 'score': 0.5}], 'model_version': 7}
    """
    return {
        "item_id": item_id,
        "neighbors": [{"item_id": j, "score": score} for j, score in pairs],
        "model_version": model_version,
    }
