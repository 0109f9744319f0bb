"""The topics recostream needs, and their creation on a broker (production and local).

Every topic shares one partition count on purpose: Faust requires a table (and
hence its changelog) to have as many partitions as the agent's source topic, and
co-partitioned topics keep one user's events and outputs on one worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from streams.errors import CliError

if TYPE_CHECKING:
    from aiokafka.admin import AIOKafkaAdminClient

#: Partitions of every topic unless told otherwise (RECOSTREAM_PARTITIONS's default).
DEFAULT_PARTITIONS = 4


@dataclass(frozen=True)
class TopicSpec:
    """A topic recostream needs; it gets the broker's partition count (``--partitions``).

    Every topic shares one partition count on purpose: Faust requires a table (and
    hence its changelog) to have as many partitions as the agent's source topic, and
    co-partitioned topics keep one user's events and outputs on one worker.
    """

    name: str
    config: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""


TOPICS: Mapping[str, TopicSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            TopicSpec("clicks", description="click events, keyed by user"),
            TopicSpec("purchases", description="purchase events, keyed by user"),
            TopicSpec("recommendations", description="top-N items per user"),
            TopicSpec("churn-alerts", description="users whose churn risk crossed a threshold"),
            TopicSpec("marketing-triggers", description="actions for the marketing system"),
            TopicSpec("dead-letters", description="input rows that failed validation"),
            TopicSpec(
                "item-neighbors",
                config=MappingProxyType({"cleanup.policy": "compact"}),
                description="latest neighbour list per item (compacted: one value per key)",
            ),
        )
    }
)


@dataclass(frozen=True)
class TopicsReport:
    """What :func:`ensure_topics` found: created topics and the partition counts of the rest."""

    created: tuple[str, ...]
    existing: Mapping[str, int]  # name -> partition count of topics that were already there


async def ensure_topics(
    bootstrap: str,
    topics: Iterable[TopicSpec] | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    timeout_s: float = 30.0,
) -> TopicsReport:
    """Create the topics that do not exist yet (all of :data:`TOPICS` by default).

    Existing topics are left alone, whatever their partition count (the report says
    what it is); a topic is counted as there only once each of its partitions has a
    leader, so producers can write to it straight away.
    """
    # Imported here, as in _await_broker: `kafka status` and `kafka stop` never need it.
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError, for_code

    wanted = list(TOPICS.values() if topics is None else topics)
    if partitions < 1:
        raise CliError(f"partitions must be at least 1, got {partitions}")
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            # list_topics asks for all topics; asking for missing ones by name could
            # auto-create them with the broker's default settings.
            present = set(await admin.list_topics())
            missing = [spec for spec in wanted if spec.name not in present]
            if missing:
                response = await admin.create_topics(
                    [
                        NewTopic(spec.name, partitions, 1, topic_configs=dict(spec.config))
                        for spec in missing
                    ],
                    timeout_ms=int(timeout_s * 1000),
                )
                for entry in response.to_object()["topic_errors"]:
                    code = entry["error_code"]
                    if code and for_code(code) is not TopicAlreadyExistsError:
                        detail = entry.get("error_message") or for_code(code).__name__
                        raise CliError(f"cannot create topic {entry['topic']}: {detail}")
            counts = await _wait_for_leaders(admin, [spec.name for spec in wanted])
    except TimeoutError:
        raise CliError(f"topics not ready on {bootstrap} within {timeout_s:g} s") from None
    finally:
        await admin.close()
    created = tuple(spec.name for spec in missing)
    existing = {name: n for name, n in counts.items() if name not in created}
    return TopicsReport(created=created, existing=MappingProxyType(existing))


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Partition counts of ``names`` once every partition has a leader (polls metadata)."""
    while True:
        described = await admin.describe_topics(names)
        counts: dict[str, int] = {}
        for topic in described:
            partitions = topic["partitions"]
            if topic["error_code"] == 0 and partitions and all(
                p["leader"] >= 0 for p in partitions
            ):
                counts[topic["topic"]] = len(partitions)
        if len(counts) == len(names):
            return counts
        await asyncio.sleep(0.1)


def ensure_topics_sync(
    bootstrap: str,
    topics: Iterable[TopicSpec] | None = None,
    partitions: int = DEFAULT_PARTITIONS,
    *,
    timeout_s: float = 30.0,
) -> TopicsReport:
    """:func:`ensure_topics` for callers without an event loop."""
    return asyncio.run(ensure_topics(bootstrap, topics, partitions, timeout_s=timeout_s))


