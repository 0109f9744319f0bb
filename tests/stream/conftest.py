"""Fixtures of the agent tests: a factory of fresh apps on the memory store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.runtime.settings import Settings
from tests.stream.harness import PARTITIONS, Harness, MakeHarness, RecordedSleeps


@pytest.fixture
def make_harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeHarness]:
    """Factory of fresh apps (one per call); call it inside the test's event loop.

    Defaults: memory store, no web server, batches of one, no timer firing during a
    test; keyword arguments override any :class:`Settings` field.
    """
    made = 0
    harnesses: list[Harness] = []

    def make(**overrides: Any) -> Harness:
        nonlocal made
        made += 1
        fields: dict[str, Any] = {
            "store": "memory://",
            "web_enabled": False,
            "partitions": PARTITIONS,
            "data_dir": tmp_path / f"app{made}",
            "app_id": f"unit{made}",
            "batch_size": 1,
            "batch_seconds": 0.02,
            "refresh_seconds": 3600.0,
        }
        fields.update(overrides)
        harnesses.append(Harness(Settings(**fields), monkeypatch))
        return harnesses[-1]

    yield make
    for harness in harnesses:  # the app is never started, so never stopped either
        harness.stream.model_process.close()
        harness.stream.ranker.close()
        for process in harness.stream.rows_processes:
            process.close()


@pytest.fixture
def app_sleeps(monkeypatch: pytest.MonkeyPatch) -> RecordedSleeps:
    """Every ``asyncio.sleep`` of the commit writers' pacing, recorded (and cut to a bare turn
    of the loop)."""
    sleeps = RecordedSleeps()
    monkeypatch.setattr("streams.runtime.pacing.asyncio", sleeps)
    return sleeps
