"""The records the worker publishes to its output topics, built from plain data
(no Faust here: the ranking child builds recommendation records, and the model
process item-neighbors records)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

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


#: What a trigger is published as, by its kind: the output topics (contract names)
#: and the record each gets, in order. Every trigger goes to ``marketing-triggers``;
#: a churn risk is a ``churn-alerts`` record first.
RecordOf = Callable[[str, Trigger, list[str]], dict[str, Any]]
TRIGGER_OUTPUTS: dict[str, tuple[tuple[str, RecordOf], ...]] = {
    "churn_risk": (("churn-alerts", churn_alert_record), ("marketing-triggers", trigger_record)),
    "cart_abandoned": (("marketing-triggers", trigger_record),),
    "win_back": (("marketing-triggers", trigger_record),),
}


def trigger_records(user_id: str, trigger: Trigger, items: list[str]
                    ) -> list[tuple[str, bytes]]:
    """A trigger's records, (output topic's contract name, JSON), as
    :data:`TRIGGER_OUTPUTS` routes its kind.

    >>> [topic for topic, _ in trigger_records("u", Trigger("win_back", "back", 1.0), [])]
    ['marketing-triggers']
    """
    return [(topic, orjson.dumps(record(user_id, trigger, items)))
            for topic, record in TRIGGER_OUTPUTS[trigger.kind]]


def recommendation_record(recs: Recommendations, trigger: str, ts: float | None) -> dict[str, Any]:
    """The ``recommendations`` message (and HTTP answer) for one user: each item
    with the source that put it there and the reason, in words."""
    return {
        "user_id": recs.user_id,
        "items": [{"item_id": i, "score": round(s, 6), "source": source, "reason": reason}
                  for (i, s), source, reason in zip(recs.as_pairs(), recs.sources, recs.reasons,
                                                    strict=True)],
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


#: Characters of a dead letter's ``detail`` kept (an exception's text can be long).
DETAIL_CHARACTERS = 500


def dead_letter_record(
    reason: str, detail: str, *, topic: str, partition: int | None, offset: int | None,
    key: bytes | None, payload: bytes, ts: float | None, key_limit: int, payload_limit: int,
) -> tuple[bytes | None, bytes]:
    """A ``dead-letters`` record, (key, value): why an input (or an output the
    broker refused) could not be used, and where it was.

    The key and the payload are kept whole up to ``key_limit`` and
    ``payload_limit`` bytes, cut beyond (``*_truncated``); their sizes and the
    payload's SHA-256 are always there, so a cut one can still be found and
    matched. The record's key is the original key, cut alike: the dead letter
    always fits the broker (see :mod:`streams.runtime.bounds`).

    >>> key, value = dead_letter_record("oversized", "3 bytes", topic="clicks", partition=0,
    ...                                 offset=7, key=b"user", payload=b"abc", ts=1.0,
    ...                                 key_limit=2, payload_limit=2)
    >>> key, {k: v for k, v in orjson.loads(value).items() if "sha256" not in k}
    ... # doctest: +NORMALIZE_WHITESPACE
    (b'us', {'reason': 'oversized', 'detail': '3 bytes', 'topic': 'clicks', 'partition': 0,
             'offset': 7, 'key_b64': 'dXM=', 'key_bytes': 4, 'key_truncated': True,
             'payload_b64': 'YWI=', 'payload_bytes': 3, 'payload_truncated': True, 'ts': 1.0})
    """
    kept_key = None if key is None else key[:key_limit]
    record = {
        "reason": reason,
        "detail": detail[:DETAIL_CHARACTERS],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key_b64": None if kept_key is None else base64.b64encode(kept_key).decode(),
        "key_bytes": None if key is None else len(key),
        "key_truncated": key is not None and len(key) > key_limit,
        "payload_b64": base64.b64encode(payload[:payload_limit]).decode(),
        "payload_bytes": len(payload),
        "payload_truncated": len(payload) > payload_limit,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "ts": ts,
    }
    if record["key_truncated"]:
        record["key_sha256"] = hashlib.sha256(key or b"").hexdigest()
    return kept_key, orjson.dumps(record)
