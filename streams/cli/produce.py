"""``recostream produce``: replay shop events into ``clicks`` and ``purchases`` at a set rate.

Every event goes out as the UTF-8 JSON of :meth:`Event.to_dict` (the input contract of
the README), keyed by its ``user_id``, to the topic :meth:`Event.topic` names.
Messages are encoded before the first send, so the send loop only hands bytes to the
producer; pacing is a token bucket drained in small batches (one sleep per ~5 ms of
traffic, never one per message), which keeps the rate accurate at 10k events/s.

:func:`produce_events` is the same replay as a coroutine, for tests and the demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

import orjson
from tqdm import tqdm

from core.events import TOPICS as EVENT_TOPICS
from core.events import Event
from streams.devtools.datasets import DATASETS, load_events
from streams.errors import CliError
from streams.runtime.settings import normalize_bootstrap, parse_bootstrap

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

DEFAULT_BROKER = "127.0.0.1:9092"
BROKER_ENV = "RECOSTREAM_BROKER"  # the worker's setting: the same value works for both
TOPIC_PREFIX_ENV = "RECOSTREAM_TOPIC_PREFIX"
# How long a broker may take to answer before we give up with a one-line error: long
# enough for a remote cluster's TLS handshake, short enough that a typo fails fast.
CONNECT_TIMEOUT_S = 10.0
# One pacing step: at 10k/s a step carries 50 messages, so the loop sleeps 200 times
# a second instead of 10,000 (asyncio.sleep overshoots by ~1 ms, which would cap a
# per-message loop at well under 1k/s).
PACING_STEP_S = 0.005
MAX_STEP_MESSAGES = 1000
# A pacer that fell behind (a slow broker, a GC pause) catches up at most this much
# in one burst, then re-anchors: a stall must not turn into a flood.
MAX_CATCH_UP_S = 0.5


@dataclass(frozen=True)
class ProducerConfig:
    """Producer settings; the defaults suit a replay into a local or LAN broker."""

    linger_ms: int = 5  # a few ms of batching; pacing steps are 5 ms anyway
    acks: str = "all"
    # Retries of an acknowledged-but-lost batch must not duplicate events: the worker
    # de-duplicates by offset or event_id, and a retried duplicate has neither.
    enable_idempotence: bool = True
    connect_timeout_s: float = CONNECT_TIMEOUT_S


@dataclass(frozen=True)
class OutMessage:
    """One encoded event, ready to send."""

    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class ProduceProgress:
    """Where a replay stands: messages handed to the producer, of ``total``."""

    sent: int
    total: int
    elapsed_s: float
    done: bool = False

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


ProgressCallback = Callable[[ProduceProgress], None]


def default_bootstrap() -> str:
    """``$RECOSTREAM_BROKER`` if set, else the local broker's default ``127.0.0.1:9092``."""
    return normalize_bootstrap(os.environ.get(BROKER_ENV) or DEFAULT_BROKER)


def default_topic_prefix() -> str:
    """``$RECOSTREAM_TOPIC_PREFIX`` (the worker's topic prefix, e.g. ``shop1.``), else none."""
    return os.environ.get(TOPIC_PREFIX_ENV, "")


# --- preparing messages ---------------------------------------------------------------


def stable_event_id(position: int, event: Event) -> str:
    """An id for the event at ``position`` of its source that survives a replay.

    The same file replayed again yields the same ids, so the worker recognises the
    replay as duplicates; the event's content is hashed too, so position 5 of two
    different files does not collide.

    >>> ev = Event(user_id="u1", item_id="i1", ts=1.0, type="view")
    >>> stable_event_id(0, ev) == stable_event_id(0, ev) != stable_event_id(1, ev)
    True
    """
    digest = hashlib.blake2b(digest_size=10)
    digest.update(b"%d\n" % position)
    digest.update(orjson.dumps(event.to_dict(), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def prepare_messages(
    events: Sequence[Event],
    *,
    time_order: bool = False,
    limit: int | None = None,
    event_ids: bool = False,
    topics: Mapping[str, str] | None = None,
) -> list[OutMessage]:
    """Encode events for sending, in the order they will go out.

    ``time_order`` sorts by ``ts``, stably (events with equal ts keep source order);
    ``limit`` keeps the first ``limit`` of that order; ``event_ids`` gives events that
    have no ``event_id`` one from :func:`stable_event_id` over their *source* position;
    ``topics`` renames the contract topics (``{"clicks": "shop.clicks"}``).
    """
    positions: Sequence[int] = range(len(events))
    if time_order:
        positions = sorted(positions, key=lambda i: events[i].ts)
    if limit is not None:
        positions = positions[:limit]
    names = {name: name for name in EVENT_TOPICS} | dict(topics or {})
    out: list[OutMessage] = []
    for i in positions:
        ev = events[i]
        body = ev.to_dict()
        if event_ids and ev.event_id is None:
            body["event_id"] = stable_event_id(i, ev)
        out.append(OutMessage(names[ev.topic()], ev.user_id.encode(), orjson.dumps(body)))
    return out


# --- pacing -------------------------------------------------------------------------------


class Pacer:
    """A token bucket refilled at ``rate`` tokens/s that holds at most ``burst`` tokens.

    :meth:`wait_s` says how long to sleep before sending ``n`` more messages, given
    ``sent`` so far; the schedule is absolute (message k is due at ``origin + k/rate``),
    so sleep overshoot does not accumulate into a lower rate.

    >>> p = Pacer(rate=1000.0, origin=0.0)
    >>> p.wait_s(sent=0, now=0.0), p.wait_s(sent=500, now=0.25)
    (0.0, 0.25)
    """

    def __init__(self, rate: float, origin: float, max_catch_up_s: float = MAX_CATCH_UP_S) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self.rate = rate
        self.origin = origin
        self.max_catch_up_s = max_catch_up_s

    def step(self) -> int:
        """Messages per pacing step."""
        return max(1, min(MAX_STEP_MESSAGES, round(self.rate * PACING_STEP_S)))

    def wait_s(self, sent: int, now: float) -> float:
        due = self.origin + sent / self.rate
        if now - due > self.max_catch_up_s:
            self.origin = now - self.max_catch_up_s - sent / self.rate
            due = self.origin + sent / self.rate
        return max(0.0, due - now)


# --- talking to Kafka -------------------------------------------------------------------


async def check_reachable(bootstrap: str, timeout_s: float) -> None:
    """Raise CliError unless at least one bootstrap server accepts a TCP connection.

    aiokafka reports an unreachable cluster as ``Unable to bootstrap from [(host,
    port, <AddressFamily...>)]`` after logging an ERROR per host; a plain connect
    first gives the user the operating system's reason in one line.
    """
    errors: list[str] = []
    for host, port in parse_bootstrap(bootstrap):
        try:
            async with asyncio.timeout(timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except TimeoutError:
            errors.append(f"{host}:{port} did not answer within {timeout_s:g} s")
            continue
        except OSError as exc:
            errors.append(exc.strerror or str(exc))
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise CliError(f"cannot reach Kafka at {bootstrap}: {'; '.join(errors)}")


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """Silence aiokafka while connecting: it logs each failed attempt as an ERROR,
    and the failure we raise already says what happened."""
    logger = logging.getLogger("aiokafka")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


async def _start_producer(
    bootstrap: str, topics: set[str], config: ProducerConfig
) -> AIOKafkaProducer:
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    await check_reachable(bootstrap, config.connect_timeout_s)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=config.linger_ms,
        acks=config.acks,
        enable_idempotence=config.enable_idempotence,
    )
    try:
        with quiet_aiokafka():
            async with asyncio.timeout(config.connect_timeout_s):
                await producer.start()
                # Fetch all topics' metadata (which never auto-creates a topic) so that a
                # missing topic is a clear error, not a send that hangs for 40 s.
                metadata = await producer.client.fetch_all_metadata()
    except TimeoutError:
        await producer.stop()
        raise CliError(
            f"cannot reach Kafka at {bootstrap}: no answer within {config.connect_timeout_s:g} s"
        ) from None
    except KafkaError as exc:
        await producer.stop()
        raise CliError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    except BaseException:  # Ctrl-C while connecting: leave no producer task behind
        await producer.stop()
        raise
    missing = sorted(topics - metadata.topics())
    if missing:
        await producer.stop()
        names = ", ".join(missing)
        what = f"topic {names} does" if len(missing) == 1 else f"topics {names} do"
        raise CliError(
            f"{what} not exist on {bootstrap} (`recostream kafka start` creates all topics)"
        )
    return producer


async def produce_events(
    events: Sequence[Event] | Sequence[OutMessage],
    bootstrap: str,
    rate: float | None = None,
    *,
    time_order: bool = False,
    limit: int | None = None,
    event_ids: bool = False,
    topics: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    progress_interval_s: float = 0.5,
    config: ProducerConfig = ProducerConfig(),
) -> int:
    """Send events (or messages from :func:`prepare_messages`) to Kafka; the number
    delivered. ``time_order``, ``limit``, ``event_ids`` and ``topics`` are those of
    :func:`prepare_messages` and apply to events only.

    ``rate`` is in events per second (``None`` or 0: as fast as the broker takes
    them). ``progress`` is called at most every ``progress_interval_s`` and once at
    the end (``done=True``), also when the replay is cancelled. On cancellation the
    messages already handed to the producer are flushed before the CancelledError
    propagates. Raises CliError when the broker cannot be reached or refuses a batch.
    """
    from aiokafka.errors import KafkaError

    if rate is not None and (not math.isfinite(rate) or rate < 0):
        raise CliError(f"rate must be a non-negative number of events per second, got {rate}")
    bootstrap = normalize_bootstrap(bootstrap)
    if events and isinstance(events[0], OutMessage):
        messages = [m for m in events if isinstance(m, OutMessage)]
    else:
        messages = prepare_messages(
            [e for e in events if isinstance(e, Event)],
            time_order=time_order, limit=limit, event_ids=event_ids, topics=topics,
        )
    producer = await _start_producer(bootstrap, {m.topic for m in messages}, config)
    total = len(messages)
    pending: deque[asyncio.Future[object]] = deque()
    sent = 0
    started = time.perf_counter()
    last_report = started
    task = asyncio.current_task()
    try:
        pacer = Pacer(rate, origin=started) if rate else None
        step = pacer.step() if pacer else MAX_STEP_MESSAGES
        while sent < total:
            if pacer is not None:
                wait = pacer.wait_s(sent, time.perf_counter())
                if wait > 0:
                    await asyncio.sleep(wait)
            for message in messages[sent : sent + step]:
                pending.append(await producer.send(message.topic, message.value, message.key))
                sent += 1  # per message: a Ctrl-C mid-step must count what went out
                if task is not None and task.cancelling():
                    # A Ctrl-C can be swallowed inside the producer (Python 3.11's
                    # asyncio.wait_for drops a cancel that races its inner future;
                    # seen once in CI: the replay ran on and exited 0, not 130), or
                    # still be pending when it came while this task ran and no send
                    # has waited since. Yielding once takes a pending cancel here, so
                    # that it cannot cut the flush in `finally` short instead.
                    await asyncio.sleep(0)
                    raise asyncio.CancelledError
            while pending and pending[0].done():
                _raise_failed(pending.popleft(), bootstrap)
            now = time.perf_counter()
            if progress is not None and now - last_report >= progress_interval_s:
                last_report = now
                progress(ProduceProgress(sent, total, now - started))
        await producer.flush()
        for future in pending:
            _raise_failed(future, bootstrap)
        pending.clear()
    except KafkaError as exc:
        raise CliError(f"producing to {bootstrap} failed: {exc}") from None
    finally:
        # Also on cancellation (Ctrl-C): stop() flushes what the producer holds, so
        # every message counted as sent has really been handed to the broker. The
        # count reports only what the broker acknowledged, so it stays true when a
        # second Ctrl-C cuts the flush short.
        try:
            with quiet_aiokafka():
                await producer.stop()
        finally:
            delivered = sent - sum(1 for f in pending if not _delivered(f))
            if progress is not None:
                progress(ProduceProgress(delivered, total, time.perf_counter() - started,
                                         done=True))
    return delivered


def _delivered(future: asyncio.Future[object]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _raise_failed(future: asyncio.Future[object], bootstrap: str) -> None:
    if future.cancelled():
        raise CliError(f"producing to {bootstrap} failed: a send was cancelled")
    exc = future.exception()
    if exc is not None:
        raise CliError(f"producing to {bootstrap} failed: {exc}")


# --- CLI -------------------------------------------------------------------------------


class ProgressLine:
    """Events sent, their rate and the elapsed time, as a tqdm bar on stderr (on a
    terminal redrawn in place; into a file or a pipe, a line every few seconds)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.interval_s = 0.5 if stream.isatty() else 5.0
        self.stream = stream
        self.last: ProduceProgress | None = None
        self._bar: tqdm[Any] | None = None

    def __call__(self, p: ProduceProgress) -> None:
        self.last = p
        if self._bar is None:
            self._bar = tqdm(total=p.total, desc="produce: sent", unit=" events",
                             file=self.stream, mininterval=self.interval_s, unit_scale=True)
        self._bar.update(p.sent - self._bar.n)
        if p.done:
            self._bar.close()


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "produce",
        help="replay events into the clicks and purchases topics",
        description="Replay events into clicks/purchases as contract JSON keyed by user_id.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE",
                        help="a JSON-lines or CSV file in the event contract")
    source.add_argument("--dataset", choices=sorted(DATASETS), help="a cached data set")
    parser.add_argument("--rate", type=float, default=0.0, metavar="N",
                        help="events per second (default 0: as fast as possible)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="send only the first N events (after time ordering)")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", default=None,
                        help=f"Kafka bootstrap servers (default ${BROKER_ENV} or {DEFAULT_BROKER})")
    parser.add_argument("--time-order", action=argparse.BooleanOptionalAction, default=None,
                        help="send in ts order, stably (default: on for --dataset, "
                        "off for --events, which keeps file order)")
    parser.add_argument("--event-ids", action="store_true",
                        help="give events without an event_id a stable one (a hash of the "
                        "event and its position in the source), so that a replay of the "
                        "same source is recognised downstream as duplicates")
    parser.add_argument("--topic-prefix", default=None, metavar="PREFIX",
                        help=f"prefix of the topic names, as the worker's (default "
                        f"${TOPIC_PREFIX_ENV} or none): PREFIXclicks, PREFIXpurchases")
    parser.set_defaults(func=_cmd_produce)


def _cmd_produce(args: argparse.Namespace) -> int:
    if args.rate < 0 or not math.isfinite(args.rate):
        raise CliError(f"--rate must be 0 or more events per second, got {args.rate:g}")
    if args.limit is not None and args.limit < 0:
        raise CliError(f"--limit must be 0 or more, got {args.limit}")
    # A malformed address fails here, before the events load.
    bootstrap = normalize_bootstrap(args.bootstrap) if args.bootstrap else default_bootstrap()
    prefix = default_topic_prefix() if args.topic_prefix is None else args.topic_prefix
    events = load_events(dataset=args.dataset, events_file=args.events)
    time_order = args.time_order if args.time_order is not None else args.dataset is not None
    messages = prepare_messages(
        events, time_order=time_order, limit=args.limit, event_ids=args.event_ids,
        topics={name: prefix + name for name in EVENT_TOPICS},
    )
    line = ProgressLine()
    try:
        asyncio.run(produce_events(messages, bootstrap, args.rate or None, progress=line,
                                   progress_interval_s=line.interval_s))
    except KeyboardInterrupt:
        _summary(line.last, interrupted=True)
        raise
    _summary(line.last, interrupted=False)
    return 0


def _summary(last: ProduceProgress | None, *, interrupted: bool) -> None:
    if last is None:  # interrupted before the producer connected
        return
    elapsed = max(last.elapsed_s, 1e-9)
    tail = " (interrupted)" if interrupted else ""
    print(f"sent {last.sent} events in {elapsed:.2f} s ({last.sent / elapsed:.0f}/s){tail}",
          flush=True)
