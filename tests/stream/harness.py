"""Drive :class:`streams.runtime.app.RecoStream` agents in ``agent.test_context()``, no broker.

Faust's ``AgentTestWrapper.put(value, key, partition, ...)`` numbers offsets itself
(0, 1, 2, ... per wrapper) and names the message after the agent's channel, which
fails for ``process_events``: its channel is one topic description over two names
(``clicks`` and ``purchases``), so ``put`` labels the message ``<internal>``. It also
returns as soon as the value enters the stream's processors, which for an agent
iterating ``take_events`` is before the batch is processed. So messages are built
here as a consumer would deliver them (real topic name, partition and offset) and put
on the wrapper's channel; :meth:`Harness.settle` then waits until ``take_events`` has
acked them, which it does only after the agent body has processed their batch.

Every record the app writes goes through its outbox (streams.runtime.outbox), whose sink
would be the real producer: the harness gives it a recording sink instead, and
replaces the consumer's ``highwater`` (the log end offset its fetches saw, read by
the churn scan) with the offsets of what the harness delivered. Table changelog records are kept
apart from the other records; :meth:`Harness.changelog` reads them back.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, cast

import orjson
import pytest
from faust.types import TP, ChannelT, Message
from faust.types.agents import AgentTestWrapperT

from core.events import Event
from streams.runtime.app import RecoStream
from streams.runtime.outbox import Record, key_partition
from streams.runtime.partitions import user_partition
from streams.runtime.settings import Settings
from streams.runtime.state import UserState

P = ParamSpec("P")
#: Partitions of the test apps' topics and tables.
PARTITIONS = 4
#: Event time of the tests' events.
TS = 1_700_000_000.0
#: Longest a whole async test may take.
TEST_SECONDS = 30.0
#: Longest wait for an agent to process what it was given (it takes milliseconds).
SETTLE_SECONDS = 10.0
#: Message timestamp (fixed, so that dead-letter records are reproducible).
MESSAGE_TS = 1_700_000_000.0


def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an async test on a fresh event loop (the suite has no asyncio plugin)."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), TEST_SECONDS))

    return wrapper


@dataclass(frozen=True)
class Sent:
    """One message the app sent to an output topic."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def json(self) -> Any:
        return orjson.loads(self.value)


@dataclass(frozen=True)
class ChangelogWrite:
    """One table write as it would reach the changelog topic (key and value decoded)."""

    topic: str
    key: Any
    value: Any
    partition: int | None


class Harness:
    """One fresh RecoStream (memory store) with its output sends recorded."""

    def __init__(self, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
        self.settings = settings
        self.stream = RecoStream(settings)
        self.sent: list[Sent] = []
        #: table changelog records, see :meth:`changelog`
        self.changelog_sent: list[Sent] = []
        #: batches handed to the sink per topic name, counted on entry (before any gate)
        self.calls: Counter[str] = Counter()
        #: topic name -> event a batch for that topic waits for (see :meth:`gate`)
        self.gates: dict[str, asyncio.Event] = {}
        #: topic name -> deliveries left pending (see :meth:`defer`)
        self.deferred: dict[str, list[tuple[asyncio.Future[int], int]]] = {}
        self._next_offset: Counter[tuple[str, int]] = Counter()
        self._changelogs = {table.changelog_topic.get_topic_name()
                            for table in (self.stream.topology.users, self.stream.topology.rows)}
        self.stream.outbox.sink = self
        self.stream.outbox.routes = dict.fromkeys(self.stream.outbox.routes, self)
        # The log end offsets are those of what the harness delivered (it is the
        # broker here); the consumer would ask the real one, which is not there.
        monkeypatch.setattr(self.stream.app.consumer, "highwater", self._highwater)

    def _highwater(self, tp: TP) -> int:
        return self._next_offset[tp.topic, tp.partition]

    # -- the outbox's sink (streams.runtime.outbox.BatchSink) --------------------------------

    async def partition_count(self, topic: str) -> int:
        return self.settings.partitions

    async def send(self, topic: str, partition: int,
                   records: Sequence[Record]) -> list[Awaitable[int]]:
        """Record one batch; its delivery is immediate unless deferred."""
        self.calls[topic] += 1
        gate = self.gates.get(topic)
        if gate is not None:
            await gate.wait()
        into = self.changelog_sent if topic in self._changelogs else self.sent
        for key, value, headers in records:
            assert value is None or isinstance(value, bytes), f"{topic}: value {value!r}"
            into.append(Sent(topic, key, value or b"", partition, headers))
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if topic in self.deferred:
            self.deferred[topic].append((done, len(into) - 1))
        else:
            done.set_result(len(into) - 1)
        return [done]

    def gate(self, topic: str) -> asyncio.Event:
        """Make sends to ``topic`` (a real name) wait until the returned event is set."""
        return self.gates.setdefault(topic, asyncio.Event())

    def defer(self, topic: str) -> None:
        """Leave deliveries to ``topic`` (a real name) pending, as a slow broker would,
        until :meth:`deliver_deferred`."""
        self.deferred.setdefault(topic, [])

    def deliver_deferred(self, topic: str) -> int:
        """Complete the pending deliveries to ``topic``; how many there were."""
        pending = self.deferred.pop(topic, [])
        for future, metadata in pending:
            future.set_result(metadata)
        return len(pending)

    # -- what went out ------------------------------------------------------------------

    def sent_to(self, contract_or_internal: str) -> list[Sent]:
        """Sends to a contract topic (``recommendations``) or an internal topic name."""
        names = {self.settings.topic(contract_or_internal), contract_or_internal}
        return [m for m in self.sent if m.topic in names]

    def changelog(self, table: str) -> list[ChangelogWrite]:
        """The records written to ``table``'s changelog since the last call.

        Records of the other tables are taken too (and dropped).
        """
        name = getattr(self.stream.topology, table).changelog_topic.get_topic_name()
        taken, self.changelog_sent = self.changelog_sent, []
        return [ChangelogWrite(name, _json(m.key), _json(m.value), m.partition)
                for m in taken if m.topic == name]

    # -- what goes in -------------------------------------------------------------------

    def topic_of(self, event: Event | Mapping[str, Any]) -> str:
        if isinstance(event, Event):
            return self.settings.topic(event.topic())
        contract = "clicks" if "type" in event else "purchases"
        return self.settings.topic(contract)

    async def put(
        self,
        agent: AgentTestWrapperT,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        partition: int = 0,
        offset: int | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Message:
        """Deliver one message to the agent as the consumer would; return it."""
        if offset is None:
            offset = self._next_offset[topic, partition]
        self._next_offset[topic, partition] = max(self._next_offset[topic, partition],
                                                  offset + 1)
        message = Message(
            topic=topic,
            partition=partition,
            offset=offset,
            timestamp=MESSAGE_TS,
            timestamp_type=0,
            headers=list(headers),
            key=key,
            value=value,
            checksum=b"",
            generation_id=self.stream.app.consumer_generation_id,
        )
        channel = cast("ChannelT[Any]", agent.stream().channel)
        await channel.put(await channel.decode(message))
        return message

    async def put_event(
        self,
        agent: AgentTestWrapperT,
        event: Event | Mapping[str, Any],
        *,
        key: bytes | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Message:
        """Deliver an event keyed by its user (unless ``key`` is given)."""
        body = event.to_dict() if isinstance(event, Event) else dict(event)
        if key is None:
            key = str(body["user_id"]).encode()
        if partition is None:
            partition = user_partition(str(body["user_id"]), self.settings.partitions)
        return await self.put(agent, self.topic_of(event), orjson.dumps(body), key=key,
                              partition=partition, offset=offset)

    async def wait_until(self, condition: Callable[[], object], what: str = "condition"
                         ) -> None:
        """Poll ``condition`` until it is true (the agents run in other tasks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        while not condition():
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.001)

    async def give_time(self, done: Callable[[], object], seconds: float = 0.1) -> None:
        """Let other tasks run until ``done()`` or ``seconds`` pass, whichever is first
        (for something that may legitimately not happen yet)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not done() and loop.time() < deadline:
            await asyncio.sleep(0.001)

    async def settle(self, agent: AgentTestWrapperT, messages: Iterable[Message]) -> None:
        """Wait until the agent has processed (and so acked) every message, their
        recommendations are ranked (in the ranking child), and the outbox has
        handed what was sent for them to the sink (here: recorded it; a batch does
        not wait for its deliveries)."""
        waiting = list(messages)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_SECONDS
        while True:
            crashed = agent.crash_reason
            if crashed is not None:
                raise AssertionError(f"agent crashed: {crashed!r}") from crashed
            waiting = [m for m in waiting if not m.acked]
            ranked = self.stream.ranking.idle()
            handed = self.stream.outbox.handed()
            if not waiting and ranked and handed:
                return
            if loop.time() > deadline:
                raise AssertionError(f"{len(waiting)} messages not processed in time")
            await asyncio.sleep(0.001)

    async def process(self, agent: AgentTestWrapperT, *events: Event | Mapping[str, Any],
                      **where: Any) -> list[Message]:
        """Deliver events one by one and wait until all are processed."""
        messages = [await self.put_event(agent, event, **where) for event in events]
        await self.settle(agent, messages)
        return messages

    def _partition_of(self, sent: Sent) -> int:
        """Where a recorded send lands: its partition, else its key's (as the
        outbox would place it), else 0."""
        if sent.partition is not None:
            return sent.partition
        if sent.key is not None:
            return key_partition(sent.key, self.settings.partitions)
        return 0

    async def relay(self, agent: AgentTestWrapperT, sends: Iterable[Sent]) -> list[Message]:
        """Deliver recorded sends (row updates, ticks) to the agent that reads them."""
        messages = [await self.put(agent, m.topic, m.value, key=m.key,
                                   partition=self._partition_of(m), headers=m.headers)
                    for m in sends]
        await self.settle(agent, messages)
        return messages


def _json(data: Any) -> Any:
    """Table keys and values are JSON (the app's table serializers)."""
    return orjson.loads(data) if isinstance(data, bytes) else data



#: The ``make_harness`` fixture (tests/stream/conftest.py): fresh app per call.
MakeHarness = Callable[..., Harness]


class RecordedSleeps:
    """``asyncio`` as the writers' pacing sees it (monkeypatch ``streams.runtime.pacing.asyncio``),
    with each ``sleep`` recorded and cut to a bare turn of the loop."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)
        await asyncio.sleep(0)


def click(user: str, item: str, ts: float = TS, kind: str = "view", **extra: Any
          ) -> dict[str, Any]:
    """A ``clicks`` message body."""
    return {"user_id": user, "item_id": item, "ts": ts, "type": kind, **extra}


def user_state(h: Harness, user: str) -> UserState:
    """A user's state as it is now, changes not written to the table yet included
    (the user must exist); :func:`written_user` for the table's value."""
    state = h.stream.users.stored(user)
    assert state is not None, f"no state for {user}"
    return state


async def written_user(h: Harness, user: str) -> UserState:
    """A user's ``users`` table value after a commit's writes (the user must exist)."""
    await h.stream.commits.before_commit()
    value = h.stream.topology.users.get(user)
    assert value is not None, f"no state for {user}"
    return UserState.from_json(value)
