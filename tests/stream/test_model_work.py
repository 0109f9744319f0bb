"""The model work in a child process: same results, and a dead child replaced."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.ratings import UserProfile
from core.similarity import SimilarityParams, neighbors_for_rows
from streams.model_work import ModelProcess, build_model
from tests.stream.harness import run_async


@run_async
async def test_work_runs_in_another_process_with_the_same_results() -> None:
    process = ModelProcess()
    try:
        assert await process.run(os.getpid) != os.getpid()
        rows = {"a": {"b": 2.0, "c": 1.0}, "b": {"a": 2.0}}
        counts = {"a": 3.0, "b": 2.0, "c": 1.0}
        args = (rows, counts, 2, "cosine", SimilarityParams())
        lists = await process.run(neighbors_for_rows, *args)
        assert lists == neighbors_for_rows(*args)
        stored = {item: [[j, s] for j, s in pairs] for item, pairs in lists.items()}
        stats = {"a": [3.0, 1.0, 0.0], "b": [2.0, 0.5, 0.0], "c": [1.0, 2.0, 0.0]}
        model = await process.run(build_model, 4, stored, stats, 2, 86_400.0)
        local = build_model(4, stored, stats, 2, 86_400.0)
        profile = UserProfile(recent=["a"])
        assert model.version == 4
        assert (model.rank(profile, 3, recency_decay=1.0, popularity_weight=0.1)
                == local.rank(profile, 3, recency_decay=1.0, popularity_weight=0.1))
    finally:
        process.close()


@run_async
async def test_a_child_that_died_is_replaced() -> None:
    process = ModelProcess()
    try:
        first = await process.run(os.getpid)
        os.kill(first, signal.SIGKILL)
        second = await process.run(os.getpid)
        assert second not in (first, os.getpid())
    finally:
        process.close()


PARENT_SCRIPT = """
import asyncio, os, sys
from streams.model_work import ModelProcess

async def main():
    process = ModelProcess()
    print(await process.run(os.getpid), flush=True)
    await asyncio.sleep(120)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_the_child_ends_when_its_worker_is_killed(tmp_path: Path) -> None:
    # SIGKILL (the OOM killer, say) runs no cleanup: the child must notice alone
    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              env=env, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{child}").exists():
            time.sleep(0.1)
        alive = Path(f"/proc/{child}").exists() and "Z" not in (
            Path(f"/proc/{child}/stat").read_text().split()[2])
        assert not alive, "the model process outlived its worker"
    finally:
        parent.kill()
