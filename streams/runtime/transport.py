"""Faust's Kafka transport, fixed so that a rebalance or a restart loses no message.

Seen here in faust-streaming 0.15.3 with aiokafka 0.14.0, with the offset of every
message a worker processed logged (two workers joining, a worker restarted):

1. Faust lets a newly assigned partition's messages flow into the agents' queues
   while table recovery is still running, then seeks the partition to its
   committed offset and clears the queues. Whatever was queued is dropped, and
   messages fetched before the seek but handed on after it move Faust's "read
   offset" past the seek position, so the re-read copies of the dropped ones are
   discarded as already read. Seen: offsets 18-340 of a partition never processed.
2. That seek goes through aiokafka's ``seek_to_committed``, which skips a
   partition whose committed offset is None or 0: such a partition stays where the
   fetcher left it, past the messages cleared from the queues. Faust then commits
   the next acknowledged offsets (its check for a hole before the first one is
   skipped when the committed offset is None or 0). Seen: a worker whose first
   batch after a rebalance began at offset 216; 0-215 were never processed and
   1,419 was committed.

The fixes, both here:

1. Every newly assigned partition of a topic the agents read is held (paused)
   until recovery has sought it and cleared the queues: it is released by the
   first ``resume_flow`` after Faust's ``on_rebalance_complete``, which comes right
   after that seek and clear, with no await in between. Holding keeps the
   messages from the agents only: aiokafka's fetcher goes on fetching, Faust
   drops what it fetched for a partition not yet active, and the fetch position
   moves past it. So a partition is sought again, to where recovery sought it
   (its committed offset, or its beginning), when it is released (in the
   consumer thread, where aiokafka's fetcher runs).
2. When seeking to the committed offsets, such a partition without a committed
   offset goes back to its beginning (the group's ``auto.offset.reset=earliest``).

What is read twice is skipped by the worker's idempotent state (applied offsets
per source partition). Changelog partitions are left alone: table recovery
positions them itself.

The app also gets a hook run before every offset commit (``App.before_commit``),
for table values written once per commit rather than once per change; the
consumer a short fetch wait (:data:`FETCH_MAX_WAIT_MS`) in place of Faust's fixed
1,500 ms, which held busy partitions back behind fetches of quiet ones; a
cheaper hand-over of each fetched message to the agents' queues (see
:meth:`RewindingConsumer.deliver`); and, per message, neither codec lookups
(:class:`RawSchema`) nor statistics nothing reads (:class:`EventPathMonitor`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from time import monotonic
from typing import Any, cast

import faust
from aiokafka.errors import IllegalStateError
from faust.app.base import BootStrategy as FaustBootStrategy
from faust.sensors import Monitor
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, AppT, EventT, Message, StreamT
from faust.types.transports import ProducerT, TransportT
from mode import ServiceT
from mode.types.signals import BaseSignalT

#: How long the broker may hold a fetch that finds no new records. aiokafka sends
#: one fetch per broker at a time and leaves out the partitions whose records are
#: still waiting to be taken, so while the clicks were being processed the next
#: fetch asked only for quiet partitions, and the broker held it Faust's fixed
#: 1,500 ms before the clicks could be fetched again. Seen at 1,100 events/s:
#: fetches of ~1,800 records every ~1.8 s, each 1.8 s old, where a bare consumer
#: of the same topic got them 2 ms old.
FETCH_MAX_WAIT_MS = 50
#: Messages handed to the agents' queues between two turns of the event loop.
DELIVERIES_PER_TURN = 100


class RewindingConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer thread, with the seek that does not skip uncommitted
    partitions, and fetches the broker holds :data:`FETCH_MAX_WAIT_MS` at most."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500 with no setting to change it; the
        # fetcher is built from this attribute when the consumer starts.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    async def seek_to_committed(self) -> Mapping[TP, int]:
        result: Mapping[TP, int] = await self.call_thread(self._seek_to_committed_or_start)
        return result

    async def _seek_to_committed_or_start(self) -> Mapping[Any, int]:
        consumer = self._ensure_consumer()
        committed: Mapping[Any, int] = await consumer.seek_to_committed()
        if self.app.conf.consumer_auto_offset_reset == "earliest":
            changelogs = self.app.tables.changelog_topics
            uncommitted = [tp for tp, offset in committed.items()
                           if not offset and tp.topic not in changelogs]
            if uncommitted:
                await consumer.seek_to_beginning(*uncommitted)
        return committed


class RewindingConsumer(faust_aiokafka.Consumer):
    """The aiokafka consumer, holding new stream partitions until they are sought."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: set[TP] = set()  # stream partitions not to fetch from yet
        self._release_on_resume = False
        self.app.on_rebalance_complete.connect(self._on_rebalance_complete)

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return RewindingConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _is_stream(self, tp: TP) -> bool:
        return tp.topic not in self.app.tables.changelog_topics

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        self._held = {tp for tp in assigned if self._is_stream(tp)}
        self._release_on_resume = False
        # Paused partitions stay out of the active set the base class builds.
        self._paused_partitions.update(self._held)
        await super().on_partitions_assigned(assigned, generation_id)

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any,
                                     signal: BaseSignalT[Any], **kwargs: Any) -> None:
        # Recovery is over: what follows is the seek of the stream partitions, the
        # clearing of the queues, then resume_flow (see the module docstring).
        self._release_on_resume = True

    def resume_partitions(self, tps: Iterable[TP]) -> None:
        super().resume_partitions({tp for tp in tps if tp not in self._held})

    def resume_flow(self) -> None:
        if self._release_on_resume and self._held:
            held, self._held = self._held, set()
            self._release_on_resume = False
            self.log.info("Releasing %d partitions held since the assignment", len(held))
            self._release_in_consumer_thread(held)
        super().resume_flow()

    def _release_in_consumer_thread(self, held: set[TP]) -> None:
        # aiokafka's consumer runs in the consumer thread: a seek from this one
        # raced its fetcher (KeyError in fetched_records, the worker crashed).
        # So the seek runs there, and the partitions become active here after it.
        main_loop = self.loop
        make_active = super().resume_partitions

        def seek_then_release() -> None:
            self._seek_to_read_offsets(held)
            main_loop.call_soon_threadsafe(make_active, held)

        self._thread.thread_loop.call_soon_threadsafe(seek_then_release)

    def _seek_to_read_offsets(self, partitions: Iterable[TP]) -> None:
        # Holding a partition keeps its messages from the agents, not from
        # aiokafka's fetcher: it went on fetching, and Faust dropped what it
        # fetched for a partition not yet active. Seen: released at fetch
        # positions 258 and 347 after being sought to 217 and 240 (the messages in
        # between never processed). So each is sought again, to where recovery
        # sought it: Faust's read offset, or (none) its beginning, offset 0 (the
        # group's auto.offset.reset=earliest takes over if the log starts later).
        # Seen with the beginning left out: a partition without a commit, released
        # at offset 23, and 18-22 (read before a rebalance, cleared from the
        # queues) never processed. (Awaiting aiokafka's seek_to_beginning here
        # instead lost whole partitions in 2 of 9 runs of the redelivery test.)
        consumer = self._thread._ensure_consumer()
        for tp in partitions:
            offset = self._read_offset.get(tp)
            try:
                consumer.seek(tp, 0 if offset is None else offset)
            except IllegalStateError:  # no longer assigned: another rebalance
                continue

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        # Faust's fetch loop (read offsets, gaps, commits by count, a turn of the
        # event loop every DELIVERIES_PER_TURN messages), with each message handed
        # on by deliver.
        consumer_stopped = cast(Any, self)._stopped.is_set
        fetcher_stopped = cast(Any, fetcher)._stopped.is_set
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        deliver = self.deliver
        since_turn = 0
        try:
            while not (consumer_stopped() or fetcher_stopped()):
                self.diag.set_flag(CONSUMER_FETCHING)
                fetched = self.getmany(timeout=1.0)
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in fetched:
                        since_turn += 1
                        if since_turn > DELIVERIES_PER_TURN:
                            await asyncio.sleep(0)
                            since_turn = 0
                        offset, last_read = message.offset, read_offset[tp]
                        if last_read is not None and offset < last_read:
                            continue  # read already
                        if last_read and offset - last_read > 1 \
                                and acks_enabled_for(message.topic):
                            await self._add_gap(tp, last_read + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        await deliver(message)
                        read_offset[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
            self.log.info("Broker stopped consumer, shutting down...")
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)

    async def deliver(self, message: Any) -> None:
        """Hand ``message`` to the queues of the agents reading its topic.

        Faust races each delivery against the flow being suspended (a
        rebalance), with ``Service.wait_first``: four tasks and at least one turn
        of the event loop per message, about 35 us measured alone (the no-op agent
        took 155 us a message under py-spy; on this consumer it runs 1.3-1.5x as
        fast, bench/README.md). A delivery almost always finishes without
        waiting (the message goes into a queue with room), so it is run in place;
        one that has to wait (flow control, a full queue, the producer's buffer)
        is finished in Faust's race, abandoned if the flow is suspended meanwhile.
        While the flow is suspended, Faust's race runs from the start.
        """
        if self.suspend_flow.is_set():
            await self.wait_first(self.callback(message), self.suspend_flow.wait())
            return
        delivery = cast(Coroutine[Any, Any, None], self.callback(message))
        try:
            awaiting = delivery.send(None)
        except StopIteration:
            return
        await self.wait_first(finish_suspended(delivery, awaiting), self.suspend_flow.wait())

    async def _commit_offsets(self, offsets: Mapping[TP, int],
                              start_new_transaction: bool = True) -> bool:
        # Values the app keeps back go to their changelogs now: the base class
        # flushes the producer next, then commits, so no committed offset is
        # ahead of the state it produced. If they cannot be written, nothing is
        # committed and the worker stops (it resumes from the last commit).
        if self.app.crash_reason is not None:
            # Stopping after a failure that may have lost changes not written yet
            # (a batch that failed halfway): Faust's consumer commits on stop, and
            # that commit would count their events as done.
            return False
        try:
            for write_pending in cast(App, self.app).before_commit:
                await write_pending()
        except Exception as exc:
            await self.app.crash(exc)
            return False
        result: bool = await super()._commit_offsets(offsets, start_new_transaction)
        return result


async def finish_suspended(coroutine: Coroutine[Any, Any, Any], awaiting: Any) -> Any:
    """Run ``coroutine``, suspended on ``awaiting`` after its first step was taken
    by hand (``coroutine.send(None)``), to its end, as an asyncio task would: resumed
    once what it awaits is done, cancelled where it waits.

    >>> async def twice():
    ...     await asyncio.sleep(0)
    ...     return 2
    >>> coroutine = twice()
    >>> asyncio.run(finish_suspended(coroutine, coroutine.send(None)))
    2
    """
    while True:
        try:
            if awaiting is None:  # a bare yield: asyncio.sleep(0)
                await asyncio.sleep(0)
            else:  # a future; its result or exception goes to the coroutine
                awaiting._asyncio_future_blocking = False  # taken, as a task takes it
                await asyncio.wait((awaiting,))
        except asyncio.CancelledError as cancel:
            if awaiting is not None:
                awaiting.cancel()
            try:
                coroutine.throw(cancel)
            except (StopIteration, asyncio.CancelledError):
                pass
            else:
                coroutine.close()
            raise
        try:
            awaiting = coroutine.send(None)
        except StopIteration as stop:
            return stop.value


class RawSchema(faust.Schema[bytes, bytes]):
    """Keys and values as the bytes they came as: what Faust's ``raw`` codec gives,
    without looking the codec up twice per message (the agents decode and validate
    the bytes themselves). Faust's decode was 5.5% of the event loop at full speed
    (py-spy), to hand back the same bytes.

    >>> import asyncio
    >>> from faust.types.tuples import Message
    >>> app = faust.App("doc-raw-schema")
    >>> decode = RawSchema().compile(app)
    >>> message = Message("t", 0, 5, 0.0, 0, [], b"u1", b'{"a": 1}', None)
    >>> event = asyncio.run(decode(message))
    >>> event.key, event.value, event.message is message
    (b'u1', b'{"a": 1}', True)
    """

    def compile(self, app: AppT, *, on_key_decode_error: Any = None,
                on_value_decode_error: Any = None,
                default_propagate: bool = False) -> Callable[..., Awaitable[Any]]:
        create_event = app.create_event

        async def decode(message: Message, *, propagate: bool = default_propagate) -> Any:
            return create_event(message.key, message.value, message.headers, message)

        return decode


class EventPathMonitor(Monitor):
    """Faust's Monitor keeping, per message and per event, only what Faust itself
    reads: when each partition's stream last took an event (its check that a
    fetched partition is being processed logs an error otherwise). Faust's
    statistics per message, event and send are read by nothing here (the worker's
    metrics are its own, see streams.runtime.metrics; Faust's own metrics view is not
    served) and cost 3.6% of the event loop at full speed (py-spy).
    """

    def on_message_in(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def on_stream_event_in(self, tp: TP, offset: int, stream: StreamT[Any],
                           event: EventT[Any]) -> dict[str, Any] | None:
        self.stream_inbound_time[tp] = monotonic()
        return None

    def on_stream_event_out(self, tp: TP, offset: int, stream: StreamT[Any], event: EventT[Any],
                            state: dict[str, Any] | None = None) -> None:
        pass

    def on_message_out(self, tp: TP, offset: int, message: Message) -> None:
        pass

    def on_send_initiated(self, producer: ProducerT, topic: str, message: Any,
                          keysize: int, valsize: int) -> Any:
        return None

    def on_send_completed(self, producer: ProducerT, state: Any, metadata: Any) -> None:
        pass


class RewindingTransport(faust_aiokafka.Transport):
    Consumer = RewindingConsumer


class BootStrategy(FaustBootStrategy):
    """Faust's services, with the bulk producer started right after Faust's own
    producer (and so stopped right before it, after the consumer's last commit)."""

    def kafka_producer(self) -> Iterable[ServiceT]:
        producers = list(super().kafka_producer())
        if producers:
            producers.append(cast(App, self.app).bulk_producer)
        return producers


class App(faust.App):
    """A Faust app whose consumer uses :class:`RewindingTransport`, and whose
    Monitor is :class:`EventPathMonitor` (unless another is passed).

    ``before_commit``: coroutine functions awaited right before every offset
    commit, before the producer is flushed (to write table values held back since
    the last commit); one that raises stops the worker, and nothing is committed.

    ``bulk_producer``: a second producer, on a connection of its own, for the large
    batches a commit writes. aiokafka keeps one produce request per broker in
    flight, so on the one producer every record waited behind a commit's megabytes.
    """

    BootStrategy = BootStrategy

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("Monitor", EventPathMonitor)
        super().__init__(*args, **kwargs)
        self.before_commit: list[Callable[[], Awaitable[None]]] = []
        self._bulk_producer: ProducerT | None = None

    @property
    def bulk_producer(self) -> ProducerT:
        if self._bulk_producer is None:
            self._bulk_producer = self._new_producer()
        return self._bulk_producer

    def kafka_producer(self) -> Any:
        """The aiokafka producer under Faust's (started with the app), for records
        handed over in whole batches (see streams.runtime.outbox)."""
        return cast(Any, self.producer)._ensure_producer()

    def kafka_bulk_producer(self) -> Any:
        """The aiokafka producer under :attr:`bulk_producer`."""
        return cast(Any, self.bulk_producer)._ensure_producer()

    def _new_transport(self) -> TransportT:
        return RewindingTransport(self.conf.broker_consumer, self)
