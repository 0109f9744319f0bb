"""Event time, read from the input: the clock of each input partition, how far it
has been read, and what is left to read there (the consumer lag).

Nothing in the stream reads the wall clock for "now": a replay of old data
scores, expires and decays exactly as it did live.
"""

from __future__ import annotations

import faust
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from streams.runtime.partitions import Partitions

#: The input topics, by their contract names.
INPUT_TOPICS = ("clicks", "purchases")


class EventClock:
    """Per input topic partition: the largest timestamp read there and the last
    offset read there."""

    def __init__(self, app: faust.App, partitions: Partitions,
                 real_names: dict[str, str]) -> None:
        self.app = app
        self.partitions = partitions
        self.real_names = real_names  # contract name -> the topic's name on the broker
        self.contract_names = {real: name for name, real in real_names.items()}
        self.source_clock: dict[tuple[str, int], float] = {}
        self.source_offset: dict[tuple[str, int], int] = {}
        #: unread input messages per (contract topic, partition), as of refresh_lag
        self.lag: dict[tuple[str, int], int] = {}

    def read(self, topic: str, partition: int, offset: int) -> None:
        """A message of an input topic (contract name) was read."""
        self.source_offset[(topic, partition)] = offset

    def advance(self, topic: str, partition: int, ts: float) -> None:
        """An event timed ``ts`` was applied from this input partition."""
        if ts > self.source_clock.get((topic, partition), 0.0):
            self.source_clock[(topic, partition)] = ts

    def log_end(self, tp: TP) -> int | None:
        """A partition's log end offset as the consumer's last fetch from it said
        (None: not fetched yet, or not assigned here).

        Not asked of the broker: that request (``consumer.highwaters``) took
        1.0-1.3 s under load, and the fetches waited behind it.
        """
        try:
            end: int | None = self.app.consumer.highwater(tp)
        except (AssertionError, KeyError, ConsumerNotStarted):  # not assigned
            return None
        return end

    def watermark(self, partition: int) -> float:
        """Event time of a partition: how far both input topics have been read.

        A user's clicks and purchases arrive on two topics read independently; if
        one ran ahead, a cart could expire before the purchase that empties it is
        read. So while a topic partition still has unread messages (or none was
        fetched yet), time is held at its clock; when both are read to the end, it
        is the later of the two.
        """
        clocks = {name: self.source_clock.get((name, partition), 0.0) for name in INPUT_TOPICS}
        lagging = []
        for name in INPUT_TOPICS:
            end = self.log_end(TP(self.real_names[name], partition))
            if end is None or self.source_offset.get((name, partition), -1) + 1 < end:
                lagging.append(clocks[name])
        return min(lagging) if lagging else max(clocks.values())

    def refresh_lag(self) -> dict[tuple[str, int], int]:
        """Unread input messages per assigned input topic partition (also kept in
        :attr:`lag`, for /metrics)."""
        lag = {}
        for tp in self.app.assignor.assigned_actives():
            contract = self.contract_names.get(tp.topic)
            if contract is None:
                continue
            end = self.log_end(tp)
            if end is not None:
                source = (contract, tp.partition)
                lag[source] = max(0, end - 1 - self.source_offset.get(source, -1))
        self.lag = lag
        return lag

    def user_now(self, user_id: str) -> float:
        """The latest event time read on the partition a user lives in."""
        partition = self.partitions.of_user(user_id)
        return max(self.source_clock.get((name, partition), 0.0) for name in INPUT_TOPICS)
