"""``recostream tail TOPIC``: watch a topic, one readable line per record.

The consumer joins no group and commits nothing, so tailing never disturbs the
workers' offsets; it starts at the end of every partition (``--from-beginning``: at
the start). Each topic has a formatter in :data:`FORMATTERS`, a pure function of the
record and the current time; a record whose value does not have the expected shape
falls back to the generic key-and-value line rather than stopping the tail.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.cli.produce import (
    BROKER_ENV,
    CONNECT_TIMEOUT_S,
    DEFAULT_BROKER,
    TOPIC_PREFIX_ENV,
    check_reachable,
    default_bootstrap,
    default_topic_prefix,
    quiet_aiokafka,
)
from streams.errors import CliError
from streams.runtime.settings import normalize_bootstrap

# A record's ts within this distance of its Kafka timestamp is live event time, and
# "now - ts" is how long ago the user acted. Further apart, the ts is a replay of
# history (ML-100k is from 1997) and only the time since publication means anything.
LIVE_WINDOW_S = 86_400.0
SHOWN_ITEMS = 3
PREVIEW_CHARS = 60
#: Characters of an item's reason shown.
REASON_CHARS = 50
GENERIC_VALUE_CHARS = 120


@dataclass(frozen=True)
class TailRecord:
    """What the formatters see of one Kafka record."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int  # the record's Kafka timestamp (producer create time)


Formatter = Callable[[TailRecord, float], str]


# --- small pieces ---------------------------------------------------------------------------


def _clean(text: str, limit: int) -> str:
    """One line, at most ``limit`` characters, cut with an ellipsis; whitespace becomes
    a space and other control characters show as escapes.

    >>> _clean("a\\nb\\tc\\x00", 10), _clean("abcdef", 4)
    ('a b c\\\\x00', 'abc…')
    """
    flat = "".join(
        ch if ch.isprintable() else " " if ch in "\n\r\t" else ch.encode("unicode_escape").decode()
        for ch in text
    )
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _decode(raw: bytes | None, limit: int) -> str:
    if raw is None:
        return "null"
    return _clean(raw.decode("utf-8", errors="backslashreplace"), limit)


def _object(record: TailRecord) -> dict[str, Any]:
    if record.value is None:
        raise ValueError("tombstone")
    obj = orjson.loads(record.value)
    if not isinstance(obj, dict):
        raise TypeError(f"value is a JSON {type(obj).__name__}")
    return obj


def _number(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise TypeError(f"{raw!r} is not a number")
    return float(raw)


def format_duration(seconds: float) -> str:
    """A short human duration.

    >>> [format_duration(s) for s in (0.0123, 1.25, 75, 7200, 3 * 86400)]
    ['0.01 s', '1.2 s', '1.2 min', '2.0 h', '3.0 d']
    """
    size = abs(seconds)
    if size < 1:
        return f"{seconds:.2f} s"
    if size < 60:
        return f"{seconds:.1f} s"
    if size < 3600:
        return f"{seconds / 60:.1f} min"
    if size < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _moment(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def format_age(record: TailRecord, ts: object, now: float) -> str:
    """``age …`` since the event when ``ts`` is live event time; otherwise the age since
    Kafka got the record, followed by the (historic) event time."""
    published = record.timestamp_ms / 1000.0
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        if abs(published - ts) <= LIVE_WINDOW_S:
            return f"age {format_duration(now - ts)}"
        return f"age {format_duration(now - published)} (published), event {_moment(ts)}"
    return f"age {format_duration(now - published)} (published)"


def _model(raw: object) -> str:
    return f"v{raw}" if isinstance(raw, int) and not isinstance(raw, bool) else str(raw)


def format_items(entries: object, shown: int = SHOWN_ITEMS) -> str:
    """``i3 (0.91), i7 (0.80), …`` from ``[{item_id, score}]`` (or plain ids), each
    item's reason after its score when it has one.

    >>> format_items([{"item_id": "i3", "score": 0.912}, "i7", {"item_id": "i9"}], shown=2)
    'i3 (0.91), i7, …'
    >>> format_items([{"item_id": "i3", "score": 0.5, "reason": "trending"}])
    'i3 (0.50: trending)'
    """
    if not isinstance(entries, list):
        raise TypeError("items is not a list")
    parts = []
    for entry in entries[:shown]:
        if isinstance(entry, dict):
            item = _clean(str(entry["item_id"]), 40)
            score, reason = entry.get("score"), entry.get("reason")
            why = "" if reason is None else f": {_clean(str(reason), REASON_CHARS)}"
            parts.append(item if score is None else f"{item} ({_number(score):.2f}{why})")
        else:
            parts.append(_clean(str(entry), 40))
    if len(entries) > shown:
        parts.append("…")
    return ", ".join(parts)


def _counted(entries: object, noun: str) -> str:
    if not isinstance(entries, list):
        raise TypeError(f"{noun} is not a list")
    if not entries:
        return f"no {noun}"
    plural = noun if len(entries) != 1 else noun.rstrip("s")
    return f"{len(entries)} {plural}: {format_items(entries)}"


def _id(raw: object) -> str:
    if raw is None:
        raise KeyError("id")
    return _clean(str(raw), 40)


# --- formatters -------------------------------------------------------------------------------


def format_recommendation(record: TailRecord, now: float) -> str:
    """``user u12  ← 5 items: i3 (0.91), … | trigger purchase | model v4 | age 1.2 s``"""
    obj = _object(record)
    parts = [f"user {_id(obj['user_id'])}  ← {_counted(obj['items'], 'items')}"]
    if obj.get("trigger") is not None:
        parts.append(f"trigger {_clean(str(obj['trigger']), 30)}")
    if obj.get("model_version") is not None:
        parts.append(f"model {_model(obj['model_version'])}")
    parts.append(format_age(record, obj.get("ts"), now))
    return " | ".join(parts)


def format_dead_letter(record: TailRecord, now: float) -> str:
    """``invalid_json  clicks[2]@1234: detail | 17 B {"user_id": …``"""
    obj = _object(record)
    where = f"{obj.get('topic', '?')}[{obj.get('partition', '?')}]@{obj.get('offset', '?')}"
    head = f"{_clean(str(obj['reason']), 30)}  {where}"
    if obj.get("detail"):
        head += f": {_clean(str(obj['detail']), 80)}"
    raw_b64 = obj.get("payload_b64")
    if raw_b64 is None:
        payload = "no payload"
    else:
        try:
            raw = base64.b64decode(str(raw_b64), validate=True)
        except (binascii.Error, ValueError):
            payload = "payload is not base64"
        else:
            payload = f"{len(raw)} B {_decode(raw, PREVIEW_CHARS)}"
    return " | ".join([head, payload, format_age(record, None, now)])


def format_neighbors(record: TailRecord, now: float) -> str:
    """``item i3  ~ 10 neighbours: i7 (0.91), … | model v4`` (a tombstone says so)."""
    if record.value is None:
        return f"item {_decode(record.key, 40)}  ~ removed (tombstone)"
    obj = _object(record)
    line = f"item {_id(obj['item_id'])}  ~ {_counted(obj['neighbors'], 'neighbours')}"
    if obj.get("model_version") is not None:
        line += f" | model {_model(obj['model_version'])}"
    return line


def format_churn_alert(record: TailRecord, now: float) -> str:
    """``user u12  churn risk: p_alive 0.18 | 3 repeat purchases | … | action coupon``"""
    obj = _object(record)
    parts = [f"user {_id(obj['user_id'])}  churn risk: p_alive {_number(obj['p_alive']):.2f}"]
    if obj.get("frequency") is not None:
        parts.append(f"{int(_number(obj['frequency']))} repeat purchases")
    if obj.get("expected_purchases_next_30d") is not None:
        parts.append(f"{_number(obj['expected_purchases_next_30d']):.2f} expected in 30 d")
    if obj.get("monetary_value") is not None:
        value = f"value {_number(obj['monetary_value']):.2f}"
        if obj.get("value_tier") is not None:
            value += f" ({_clean(str(obj['value_tier']), 20)})"
        parts.append(value)
    if obj.get("action") is not None:
        parts.append(f"action {_clean(str(obj['action']), 30)}")
    if obj.get("recommended_items"):
        parts.append(f"offer {format_items(obj['recommended_items'])}")
    parts.append(format_age(record, obj.get("ts"), now))
    return " | ".join(parts)


def format_marketing_trigger(record: TailRecord, now: float) -> str:
    """``user u12  cart_abandoned i9 | reason … | offer i3, i7, … | age 2.0 min``"""
    obj = _object(record)
    kind = next((obj[k] for k in ("trigger", "type", "kind") if obj.get(k) is not None), "?")
    head = f"user {_id(obj['user_id'])}  {_clean(str(kind), 30)}"
    if obj.get("item_id") is not None:
        head += f" {_id(obj['item_id'])}"
    parts = [head]
    if obj.get("reason") is not None:
        parts.append(f"reason {_clean(str(obj['reason']), 60)}")
    if obj.get("recommended_items"):
        parts.append(f"offer {format_items(obj['recommended_items'])}")
    parts.append(format_age(record, obj.get("ts"), now))
    return " | ".join(parts)


def format_event(record: TailRecord, now: float) -> str:
    """An input event: ``user u1  view i9 (value 4) | age …`` / ``user u1  bought 2 of i9``."""
    obj = _object(record)
    if obj.get("type", "purchase") == "purchase":  # purchases carry no type in the contract
        action = "bought"
        what = _id(obj["item_id"])
        quantity = obj.get("quantity")
        if quantity not in (None, 1):
            what = f"{quantity} of {what}"
        if obj.get("price") is not None:
            what += f" at {_number(obj['price']):.2f}"
    else:
        action = _clean(str(obj["type"]), 20)
        what = _id(obj["item_id"])
        if obj.get("value") is not None:
            what += f" (value {_number(obj['value']):g})"
    return f"user {_id(obj['user_id'])}  {action} {what} | {format_age(record, obj.get('ts'), now)}"


def format_generic(record: TailRecord, now: float) -> str:
    """``key K | value…`` for topics without a formatter of their own."""
    return f"key {_decode(record.key, 40)} | {_decode(record.value, GENERIC_VALUE_CHARS)}"


FORMATTERS: dict[str, Formatter] = {
    "recommendations": format_recommendation,
    "dead-letters": format_dead_letter,
    "item-neighbors": format_neighbors,
    "churn-alerts": format_churn_alert,
    "marketing-triggers": format_marketing_trigger,
    "clicks": format_event,
    "purchases": format_event,
}


def format_record(record: TailRecord, now: float, kind: str | None = None) -> str:
    """The line for a record: the formatter of its topic (or of ``kind``, for a topic
    under another name), or the generic line when there is none or the value is not
    what the formatter expects."""
    formatter = FORMATTERS.get(kind or record.topic, format_generic)
    try:
        return formatter(record, now)
    except (ValueError, TypeError, KeyError, AttributeError):  # orjson errors are ValueErrors
        return f"(unexpected value) {format_generic(record, now)}"


def raw_json(record: TailRecord) -> str:
    """The record value for ``--json``: its own bytes when they are one line, else the
    compacted JSON (``null`` for a tombstone)."""
    if record.value is None:
        return "null"
    text = record.value.decode("utf-8", errors="backslashreplace")
    if "\n" not in text and "\r" not in text:
        return text
    try:
        return orjson.dumps(orjson.loads(record.value)).decode()
    except orjson.JSONDecodeError:
        return orjson.dumps(text).decode()


# --- consuming ---------------------------------------------------------------------------------


async def tail_topic(
    topic: str,
    bootstrap: str,
    emit: Callable[[TailRecord], None],
    *,
    from_beginning: bool = False,
    limit: int | None = None,
    timeout_s: float | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> int:
    """Call ``emit`` for each record of ``topic``; the number of records emitted.

    Returns after ``limit`` records or ``timeout_s`` seconds without a record;
    otherwise runs until cancelled. Records of one poll are emitted in timestamp order.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    bootstrap = normalize_bootstrap(bootstrap)
    await check_reachable(bootstrap, connect_timeout_s)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        with quiet_aiokafka():
            async with asyncio.timeout(connect_timeout_s):
                await consumer.start()
                # All topics' metadata: asking for the one topic by name would create it
                # on a broker with auto-creation on, and a typo would then wait forever.
                if topic not in await consumer.topics():
                    raise CliError(f"topic {topic} does not exist on {bootstrap}")
                # Without a group, a subscription is assigned every partition of the
                # topic (and any added later) as soon as the metadata arrives.
                consumer.subscribe([topic])
                while not consumer.assignment():
                    await asyncio.sleep(0.02)
                # Resolve the start positions now, so "from the end" means from the
                # moment tail is ready, not from its first fetch.
                if from_beginning:
                    await consumer.seek_to_beginning()
                else:
                    await consumer.seek_to_end()
    except TimeoutError:
        await consumer.stop()
        raise CliError(
            f"cannot reach Kafka at {bootstrap}: no answer within {connect_timeout_s:g} s"
        ) from None
    except KafkaError as exc:
        await consumer.stop()
        raise CliError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    except BaseException:
        await consumer.stop()
        raise
    count = 0
    last_record = time.monotonic()
    try:
        while limit is None or count < limit:
            wait_s = 0.5
            if timeout_s is not None:
                left = timeout_s - (time.monotonic() - last_record)
                if left <= 0:
                    break
                wait_s = min(wait_s, left)
            batch = await consumer.getmany(timeout_ms=max(1, int(wait_s * 1000)))
            records = sorted(
                (r for rs in batch.values() for r in rs), key=lambda r: (r.timestamp, r.offset)
            )
            if records:
                last_record = time.monotonic()
            for r in records:
                if limit is not None and count >= limit:
                    break
                emit(TailRecord(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp))
                count += 1
    except KafkaError as exc:
        raise CliError(f"consuming {topic} from {bootstrap} failed: {exc}") from None
    finally:
        with quiet_aiokafka():
            await consumer.stop()
    return count


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "tail",
        help="print a topic's records as they arrive, one readable line each",
        description="Print a topic's records, one line each. Joins no consumer group "
        "and commits nothing.",
    )
    parser.add_argument("topic", help="e.g. recommendations, dead-letters, item-neighbors "
                        "(after the topic prefix, if any)")
    parser.add_argument("--topic-prefix", default=None, metavar="PREFIX",
                        help=f"prefix of the topic names, as the worker's (default "
                        f"${TOPIC_PREFIX_ENV} or none)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", default=None,
                        help=f"Kafka bootstrap servers (default ${BROKER_ENV} or {DEFAULT_BROKER})")
    parser.add_argument("--from-beginning", action="store_true",
                        help="start at the oldest record (default: only new records)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="stop after N records")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="stop after S seconds without a record (exit 0)")
    parser.add_argument("--json", action="store_true",
                        help="print each record's raw JSON value instead of a readable line")
    parser.add_argument("--as", dest="kind", choices=sorted(FORMATTERS), default=None,
                        metavar="KIND",
                        help="format the records as those of this topic: "
                        f"{', '.join(sorted(FORMATTERS))} (default: TOPIC)")
    parser.set_defaults(func=_cmd_tail)


def _cmd_tail(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise CliError(f"--limit must be 0 or more, got {args.limit}")
    if args.timeout is not None and not args.timeout > 0:
        raise CliError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    bootstrap = normalize_bootstrap(args.bootstrap) if args.bootstrap else default_bootstrap()
    prefix = default_topic_prefix() if args.topic_prefix is None else args.topic_prefix
    kind = args.kind or args.topic  # shop1.recommendations formats as recommendations

    def emit(record: TailRecord) -> None:
        line = raw_json(record) if args.json else format_record(record, time.time(), kind)
        print(line, flush=True)

    try:
        asyncio.run(tail_topic(prefix + args.topic, bootstrap, emit,
                               from_beginning=args.from_beginning, limit=args.limit,
                               timeout_s=args.timeout))
    except BrokenPipeError:
        # `recostream tail … | head`: the reader has gone, which is a normal way to stop.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
