"""The users of this worker's partitions: decoded states in a cache, written to
the ``users`` table once per commit.

A user's state changes in batch after batch; written once per commit instead of
once per batch, each changed (dirty) state keeps the event whose partition it
belongs to until the writer takes it (see :class:`streams.runtime.state.DecodedCache`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
from faust.types import EventT, TableT

from streams.runtime.cache import DecodedCache
from streams.runtime.outbox import Outbox
from streams.runtime.pacing import WriterPacing
from streams.runtime.roster import Roster
from streams.runtime.state import UserState, table_json
from streams.runtime.table_writes import TableWriter, acting_as

#: Users read per delivery round before a commit (~10-20 us each).
USERS_PER_SLICE = 1000


class UsersLeftHalfUpdated(RuntimeError):
    """Applying a batch (or a churn scan) to the cached user states failed midway."""


class Users:
    """User states: cached, changed, and written to their table.

    ``lock`` is held by whatever reads, changes and marks states (a batch, a
    slice of the churn scan, a rebalance), so that none works on a state another
    has half changed. ``published`` is awaited before a slice is encoded: the
    lists and triggers a state records must be out first.
    """

    def __init__(self, table: TableT[Any, Any], cache_keys: int, outbox: Outbox,
                 pacing: WriterPacing, published: Callable[[], Awaitable[None]],
                 crash: Callable[[BaseException], Awaitable[None]]) -> None:
        self.table = table
        self.cache: DecodedCache[UserState, EventT[bytes]] = DecodedCache(cache_keys)
        self.lock = asyncio.Lock()
        self.outbox = outbox
        self.pacing = pacing
        self.published = published
        self.crash = crash
        self.writer = TableWriter(outbox)
        self._writing = asyncio.Lock()  # one writer of changed users at a time
        #: per partition, the users the churn scan looks at
        self.roster = Roster()
        #: the events agent's stream, under whose events states are written
        self.stream: faust.Stream[bytes] | None = None

    def state(self, user_id: str) -> UserState:
        """A user's state: cached, or read from the table (under the key's own event)."""
        return self.cache.get_or_load(
            user_id, lambda: UserState.from_json(self.table.get(user_id)))

    def stored(self, user_id: str) -> UserState | None:
        """A user's state as it is now (None when unknown): cached, with changes
        not written yet, or as the table holds it."""
        cached = self.cache.get(user_id)
        if cached is not None:
            return cached
        value = self.table.get(user_id)
        return None if value is None else UserState.from_json(value)

    def changed(self, user_id: str, state: UserState) -> None:
        """A user's state changed (under the event of its partition, see
        :func:`streams.runtime.table_writes.acting_as`): written to the table at the
        next commit at the latest (see :meth:`write_changed`)."""
        event = faust.current_event()
        if event is None:
            raise RuntimeError(f"user {user_id!r} changed outside of an event")
        self.cache.mark_dirty(user_id, state, event)
        engagement = state.engagement
        if engagement.cart or not engagement.customer.is_empty:
            self.roster.add(event.message.partition, user_id)

    async def write_changed(self, paced: bool = False) -> None:
        """Every user changed before this call is written to the ``users`` table
        (and its changelog) when it returns, :data:`USERS_PER_SLICE` at a time
        (``paced``: see :class:`streams.runtime.pacing.WriterPacing`).

        A state records the row updates, lists and triggers of its events, which
        must reach Kafka first (a crash in between replays them; the other way
        round they would be lost). So every state is read (encoded) first, slice
        by slice, then the rankings queued until then are published and
        everything queued until then is delivered, once, then the slices are
        written. A user a batch changes meanwhile stays changed, for the next
        commit. (One wait per slice made a commit wait for the ranking child
        once per thousand users: at a shop's scale, commits stopped coming.)
        """
        async with self._writing:
            if self.stream is None:
                return
            taken = self.cache.peek_dirty()
            states: list[tuple[str, dict[str, Any], EventT[bytes], int]] = []
            for start in range(0, len(taken), USERS_PER_SLICE):
                began = time.perf_counter()
                states += [(user_id, state.to_json(), event, change) for user_id, state, event,
                           change in taken[start:start + USERS_PER_SLICE]]
                if start + USERS_PER_SLICE < len(taken):
                    await self.pacing.between_slices(time.perf_counter() - began, paced)
            if not states:
                return
            await self.published()
            await self.outbox.send()
            await self.outbox.delivered()
            self.outbox.check()
            for start in range(0, len(states), USERS_PER_SLICE):
                began = time.perf_counter()
                with acting_as(self.stream) as act_as:
                    for user_id, value, event, change in states[start:start + USERS_PER_SLICE]:
                        act_as(event)
                        self.writer.write(self.table, user_id, table_json(value), value)
                        self.cache.mark_clean(user_id, change)
                if start + USERS_PER_SLICE < len(states):
                    await self.pacing.between_slices(time.perf_counter() - began, paced)

    def forget(self) -> None:
        """Forget the cached states (after a rebalance: others may own them next)."""
        self.cache.clear()
        self.roster.forget()

    async def lose_cached(self, exc: Exception) -> None:
        """A batch or scan failed halfway: the cached states may hold part of its
        events (with nothing sent for them), and are the only copy of earlier
        changes not written yet, whose offsets may be committed next. So they go,
        and the worker stops (it resumes from the last commit)."""
        self.cache.clear()
        await self.crash(UsersLeftHalfUpdated(f"changing user states failed: {exc!r}"))
