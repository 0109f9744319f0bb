"""Fixtures for tests that talk to a real Kafka broker.

One broker serves the whole session: it is started through :class:`LocalBroker` in a
pytest temp dir on free ports (the jars come from the shared cache and are downloaded
with Maven on first use) and stopped at the end of the session, failures included.
These tests never skip: a machine without Java or Maven fails them, loudly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.local_broker import LocalBroker


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """The session's broker, running, with every topic of ``TOPICS`` created."""
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"), port=0)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: LocalBroker) -> str:
    """Bootstrap servers (``127.0.0.1:PORT``) of the session's broker."""
    return kafka_broker.bootstrap
