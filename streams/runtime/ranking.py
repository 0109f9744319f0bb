"""The ranking queue: each batch's lists and triggers, ranked in the ranking child
and published in the order queued.

At most :data:`RANKINGS_IN_FLIGHT` submissions are under way; the lists of later
batches wait here, one per user (a user's later list replaces the one waiting,
since it records every event the other did), and go as the next submission;
at :data:`MOST_LISTS_WAITING` the next batch waits (:meth:`RankingQueue.room`).
Under light load nothing waits and every batch's lists go at once. Triggers are
never replaced.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import orjson

from core.config import RecommenderConfig
from core.engagement import Trigger
from core.ranking import Recommendations
from core.snapshot import Snapshot
from streams.runtime.children.process import ChildProcess
from streams.runtime.children.ranking_jobs import (
    Exposure,
    ListRequest,
    Outcome,
    TriggerRequest,
    adopt_ranking,
    held_version,
    hold_ranking_snapshot,
    hold_snapshot,
    learned_state,
    profile_fields,
    ranked_records,
    recommend_one,
)
from streams.runtime.metrics import Counters, WorkerMetrics
from streams.runtime.outbox import Outbox
from streams.runtime.state import UserState

#: Submissions of lists to the ranking child at once: one ranked while the next
#: waits in the pipe.
RANKINGS_IN_FLIGHT = 2
#: Lists waiting for the ranking child at which the next batch waits for room:
#: input the child cannot keep up with then waits in Kafka, not here. (Unbounded,
#: at 500,000 customers, whose lists rarely replace one another, the backlog and
#: each submission grew for as long as the input came: p99 of 25 s at half load,
#: and every commit waited for that backlog.)
MOST_LISTS_WAITING = 2_000
#: Unread input events beyond which the worker is behind (a backlog: after a
#: restart, or input faster than it keeps up with). Its lists then go to the
#: ranking child at most every BEHIND_HOLD_SECONDS, one per user: a busy user's
#: list of every batch in between would be replaced before anyone could use it.
BEHIND_EVENTS = 10_000
BEHIND_HOLD_SECONDS = 0.5


class RecommendationsLost(RuntimeError):
    """A batch's recommendations were not published (the ranking failed)."""


class RankingQueue:
    """Lists and triggers to the ranking child, records to the outbox.

    ``topics``: contract name -> the topic's name on the broker, for
    ``recommendations`` and every output of :data:`streams.runtime.records.TRIGGER_OUTPUTS`.
    """

    def __init__(self, ranker: ChildProcess, outbox: Outbox, topics: Mapping[str, str],
                 k: int, exposure_lists: int, learn_customers: int,
                 config: RecommenderConfig, counters: Counters,
                 metrics: WorkerMetrics, stopping: Callable[[], bool],
                 crash_soon: Callable[[BaseException], object]) -> None:
        self.ranker = ranker
        self.outbox = outbox
        self.topics = dict(topics)
        self.k = k
        self.exposure_lists = exposure_lists
        self.learn_customers = learn_customers  # see ranked_records
        self.config = config
        self.counters = counters
        self.metrics = metrics
        self.stopping = stopping
        self.crash_soon = crash_soon  # stops the worker, from a callback
        #: submissions being ranked, in order
        self.under_way: list[asyncio.Future[None]] = []
        #: lists not submitted yet, each as its JSON request, by user
        self.waiting_lists: dict[str, bytes] = {}
        self.waiting_triggers: list[TriggerRequest] = []
        #: rated events not submitted yet, each as its JSON, in event order
        self.waiting_outcomes: list[bytes] = []
        #: calls of publish that queued lists or triggers, and how many of them
        #: (the first ones) are published: what :meth:`published` waits for
        self._queued = 0
        self._published = 0
        #: the worker is behind (as of its last batch): see BEHIND_EVENTS
        self.behind = False
        self._last_submission = -math.inf  # monotonic
        self._hold: asyncio.TimerHandle | None = None  # submits what waits, when behind
        self._lost: RecommendationsLost | None = None

    def rank_with(self, snapshot: Snapshot) -> None:
        """The ranking child ranks with this snapshot from now on (a child that
        replaces it too)."""
        self.ranker.hold("snapshot", hold_snapshot, snapshot)

    def rank_with_snapshot(self, path: str) -> None:
        """:meth:`rank_with` the snapshot pickled in the file at ``path``."""
        self.ranker.hold("snapshot", hold_ranking_snapshot, path)

    def adopt(self, learned: Mapping[str, Any]) -> None:
        """The ranking child ranks with the learned ranking ``learned`` unless it
        learned more itself (a child that replaces it too)."""
        self.ranker.hold("learned", adopt_ranking, learned)

    async def learned(self) -> dict[str, Any] | None:
        """What the ranking child learned so far (None: nothing is learned)."""
        return cast(dict[str, Any] | None, await self.ranker.run(learned_state))

    async def snapshot_held(self) -> None:
        """Back once the ranking child ran the holds queued before (it loaded the
        last snapshot, or failed to and logged why)."""
        await self.ranker.run(held_version)

    def publish(self, lists: Sequence[ListRequest],
                triggers: Sequence[tuple[str, UserState, Trigger]],
                outcomes: Sequence[Outcome] = ()) -> None:
        """Rank users' lists, and the items of their triggers, in the ranking child
        (the profiles as they are now), and publish the records when they come
        back, after those queued before. Offsets are committed, and user states
        written, only once everything queued before is published
        (:meth:`published`); a failed ranking stops the worker.

        When the ranking child falls behind, or the worker does (then the lists
        go every :data:`BEHIND_HOLD_SECONDS` at most), it ranks each busy user
        once per submission instead of once per batch, and the records it would
        have replaced are never sent. The rated events of ``outcomes`` go with
        the next submission, each judged against the last list ranked before it.
        """
        for request in lists:
            user_id = request[0]
            self.waiting_lists.pop(user_id, None)  # to the end: ranked after the others
            self.waiting_lists[user_id] = orjson.dumps(request)
        self.waiting_triggers.extend((user_id, profile_fields(state.profile), trigger)
                                     for user_id, state, trigger in triggers)
        self.waiting_outcomes.extend(map(orjson.dumps, outcomes))
        if lists or triggers:
            self._queued += 1
        self._submit_waiting()

    def _submit_waiting(self, hold: bool = True) -> None:
        """The lists and triggers waiting to the ranking child, as one submission,
        unless :data:`RANKINGS_IN_FLIGHT` are under way (or one was lost), or
        (``hold``) the worker is behind and submitted less than
        :data:`BEHIND_HOLD_SECONDS` ago: then a timer submits them."""
        if not self.waiting_lists and not self.waiting_triggers:
            return
        if len(self.under_way) >= RANKINGS_IN_FLIGHT or self._lost is not None:
            return
        if hold and self.behind:
            wait = self._last_submission + BEHIND_HOLD_SECONDS - time.monotonic()
            if wait > 0:
                if self._hold is None:
                    self._hold = asyncio.get_running_loop().call_later(wait, self._hold_over)
                return
        self._last_submission = time.monotonic()
        lists, triggers, outcomes = (self.waiting_lists, self.waiting_triggers,
                                     self.waiting_outcomes)
        self.waiting_lists, self.waiting_triggers, self.waiting_outcomes = {}, [], []
        started = time.perf_counter()
        ranking = self.ranker.submit(ranked_records, b"[" + b",".join(lists.values()) + b"]",
                                     triggers, self.k, self.config, self.exposure_lists,
                                     b"[" + b",".join(outcomes) + b"]", self.learn_customers)
        previous = self.under_way[-1] if self.under_way else None
        publish = self._publish_when_ranked(
            ranking, list(lists), [trigger for *_, trigger in triggers],
            [request[0] for request in triggers], previous, started, self._queued)
        task = asyncio.ensure_future(publish)
        self.under_way.append(task)
        task.add_done_callback(self._ranking_done)

    async def _publish_when_ranked(
        self, ranking: Awaitable[tuple[list[bytes], list[list[tuple[str, bytes]]],
                                       Exposure | None]],
        list_users: list[str], triggers: list[Trigger], trigger_users: list[str],
        previous: asyncio.Future[None] | None, started: float, covers: int,
    ) -> None:
        """Publishes one submission's records once ranked and those before it are;
        then the first ``covers`` calls of :meth:`publish` are published (a
        submission takes everything waiting)."""
        records, triggered, exposure = await ranking
        if previous is not None:
            await previous  # a user's records leave in the order they were queued
        self.metrics.ranking_seconds.observe(time.perf_counter() - started)
        if exposure is not None:
            self.metrics.expose(exposure.lists, exposure.coverage, exposure.gini)
        topic = self.topics["recommendations"]
        for user_id, record in zip(list_users, records, strict=True):
            self.outbox.add(topic, record, key=user_id.encode())
        self.counters.recommendations_out += len(records)
        for user_id, trigger, outputs in zip(trigger_users, triggers, triggered, strict=True):
            for output, record in outputs:
                self.outbox.add(self.topics[output], record, key=user_id.encode())
            self.counters.triggers_out[trigger.kind] += 1
        await self.outbox.send()
        self._published = max(self._published, covers)

    def _hold_over(self) -> None:
        self._hold = None
        if not self.stopping():  # stopping: what waits is replayed, not ranked
            self._submit_waiting(hold=False)

    def _ranking_done(self, task: asyncio.Future[None]) -> None:
        self.under_way.remove(task)
        if task.cancelled():
            self._lost = RecommendationsLost("a ranking was cancelled")
        elif (exc := task.exception()) is not None:
            self._lost = RecommendationsLost(f"a ranking failed: {exc!r}")
            self._lost.__cause__ = exc
            self.crash_soon(self._lost)
        self._submit_waiting()

    async def room(self) -> None:
        """Back once fewer than :data:`MOST_LISTS_WAITING` lists wait (at once,
        unless the ranking child is behind): a batch awaits it before it is
        taken on."""
        while self._lost is None and len(self.waiting_lists) >= MOST_LISTS_WAITING:
            self._submit_waiting(hold=False)  # enough wait: no use holding them
            if not self.waiting_lists:
                return
            await asyncio.wait([self.under_way[0]])

    async def published(self) -> None:
        """Wait until every list and trigger queued before this call is published
        (those waiting are submitted as submissions come back), not those queued
        while it waits: at full speed there always are more, and a commit that
        waited for them too never came (the worker kept every change unwritten);
        :class:`RecommendationsLost` once any were not (their events are then never
        committed: a replay ranks them again)."""
        target = self._queued
        while self._lost is None and self._published < target:
            self._submit_waiting(hold=False)
            await asyncio.wait([self.under_way[-1]])
        if self._lost is not None:
            raise self._lost

    def idle(self) -> bool:
        """Nothing queued, waiting or under way."""
        return not (self.under_way or self.waiting_lists or self.waiting_triggers)

    async def recommend(self, user_id: str, state: UserState | None, n: int
                        ) -> Recommendations:
        """A user's list now, ranked in the ranking child with the snapshot it
        holds (as the published lists are)."""
        return await self.ranker.run(
            recommend_one, user_id, None if state is None else profile_fields(state.profile),
            n, self.config)
