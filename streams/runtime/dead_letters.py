"""Every input that cannot be used, and every output the broker will not take,
goes to ``dead-letters`` with the reason; the worker goes on.
"""

from __future__ import annotations

import logging

from faust.types import EventT

from streams.runtime.bounds import dead_letter_payload_bytes
from streams.runtime.metrics import Counters
from streams.runtime.outbox import Outbox, Record
from streams.runtime.records import dead_letter_record
from streams.runtime.settings import Settings

log = logging.getLogger("recostream")


class DeadLetters:
    """Writes dead letters (see :func:`streams.runtime.records.dead_letter_record`)."""

    def __init__(self, outbox: Outbox, topic: str, settings: Settings,
                 counters: Counters) -> None:
        self.outbox = outbox
        self.topic = topic
        self.counters = counters
        self.key_limit = settings.max_key_bytes
        self.payload_limit = dead_letter_payload_bytes(settings)

    def input(self, event: EventT[bytes], reason: str, detail: str) -> None:
        """An input message that cannot be used (``reason``: a key of
        :data:`core.events.REJECTION_REASONS`)."""
        message = event.message
        raw = message.value if isinstance(message.value, bytes | bytearray) else b""
        self._add(reason, detail, message.topic, message.partition, message.offset,
                  message.key, bytes(raw), message.timestamp)

    def output_rejected(self, topic: str, record: Record, why: str) -> None:
        """A record the worker wrote that cannot go to Kafka (too large, or refused
        by the broker for its content): a dead letter naming the output topic and
        key instead, never a stop."""
        if topic == self.topic:
            log.error("a dead letter could not be written (%s); dropped", why)
            return
        log.warning("a record for %s was rejected (%s): dead-lettered", topic, why)
        self._add("output_rejected", why, topic, None, None, record.key, record.value or b"",
                  None)

    def _add(self, reason: str, detail: str, topic: str, partition: int | None,
             offset: int | None, key: bytes | None, payload: bytes, ts: float | None) -> None:
        self.counters.dead_lettered[reason] += 1
        cut_key, value = dead_letter_record(
            reason, detail, topic=topic, partition=partition, offset=offset, key=key,
            payload=payload, ts=ts, key_limit=self.key_limit, payload_limit=self.payload_limit)
        self.outbox.add(self.topic, value, key=cut_key)
