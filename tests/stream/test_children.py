"""Work in a child process: the same results, a dead child replaced, a name of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from core.ratings import UserProfile
from core.similarity import SimilarityParams, neighbors_for_rows
from streams.runtime.children.model_jobs import MODEL_NICENESS, snapshot_from_json
from streams.runtime.children.process import ChildProcess
from streams.runtime.children.ranking_jobs import held_snapshot, hold_snapshot
from tests.stream.harness import run_async


@run_async
async def test_work_runs_in_another_process_with_the_same_results() -> None:
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    try:
        assert await process.run(os.getpid) != os.getpid()
        rows = {"a": {"b": 2.0, "c": 1.0}, "b": {"a": 2.0}}
        counts = {"a": 3.0, "b": 2.0, "c": 1.0}
        args = (rows, counts, 2, "cosine", SimilarityParams())
        lists = await process.run(neighbors_for_rows, *args)
        assert lists == neighbors_for_rows(*args)
        stored = {item: [[j, s] for j, s in pairs] for item, pairs in lists.items()}
        stats = {"a": [3.0, 1.0, 0.0], "b": [2.0, 0.5, 0.0], "c": [1.0, 2.0, 0.0]}
        encoded = ({i: orjson.dumps(v) for i, v in stored.items()},
                   {i: orjson.dumps(v) for i, v in stats.items()})
        model = (await process.run(snapshot_from_json, 4, *encoded, 2, 86_400.0)).model
        local = snapshot_from_json(4, *encoded, 2, 86_400.0).model
        profile = UserProfile(recent=["a"])
        assert model.version == 4
        assert (model.rank(profile, 3, recency_decay=1.0, popularity_weight=0.1)
                == local.rank(profile, 3, recency_decay=1.0, popularity_weight=0.1))
    finally:
        process.close()


@run_async
async def test_each_child_carries_its_name_where_ps_and_top_read_it() -> None:
    # Every child runs the same spawn command line: its name is what tells the
    # ranking child from a rows process in ps, top and the bench's CPU by process.
    process = ChildProcess(0, "reco-ranker")
    try:
        comm = Path("/proc/self/comm")
        assert (await process.run(comm.read_text)).strip() == "reco-ranker"
        assert comm.read_text().strip() != "reco-ranker"  # not the worker's own
    finally:
        process.close()


def echo(value: bytes) -> bytes:
    """In the child: the value back."""
    return value


def fail(message: str) -> None:
    """In the child: a failure."""
    raise ValueError(message)


@run_async
async def test_calls_and_results_larger_than_the_pipe_keep_their_order() -> None:
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    try:
        # several MiB each way, queued together: written as the pipe drains, read
        # in pieces, answered in the order of the calls
        values = [bytes([n]) * (3 << 20) for n in range(4)] + [b"small"]
        results = await asyncio.gather(*[process.submit(echo, v) for v in values])
        assert results == values
    finally:
        process.close()


@run_async
async def test_a_failure_in_the_child_is_raised_with_where_it_happened() -> None:
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    try:
        with pytest.raises(ValueError, match="no such rows") as raised:
            await process.run(fail, "no such rows")
        assert "in fail" in str(raised.value.__cause__)  # the child's traceback
        assert await process.run(echo, b"next") == b"next"  # the child goes on
    finally:
        process.close()


@pytest.mark.parametrize("noticed", [False, True], ids=["at once", "once noticed"])
@run_async
async def test_a_child_that_died_is_replaced(noticed: bool) -> None:
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    try:
        first = await process.run(os.getpid)
        os.kill(first, signal.SIGKILL)
        if noticed:  # the pool knows it is broken: it refuses new calls outright
            await asyncio.sleep(1.0)
        second = await process.run(os.getpid)
        assert second not in (first, os.getpid())
    finally:
        process.close()


def held_model_version() -> int | None:
    """In the ranking child: the version of the snapshot it holds."""
    held = held_snapshot()
    return None if held is None else held.model.version


@run_async
async def test_a_replacement_child_holds_what_its_predecessor_held() -> None:
    process = ChildProcess(0, "reco-ranker")
    try:
        assert await process.run(held_model_version) is None
        process.hold("snapshot", hold_snapshot, snapshot_from_json(3, {}, {}, 2, 86_400.0))
        last = snapshot_from_json(4, {}, {}, 2, 86_400.0)
        process.hold("snapshot", hold_snapshot, last)
        first = await process.run(os.getpid)
        assert await process.run(held_model_version) == 4
        os.kill(first, signal.SIGKILL)
        assert await process.run(held_model_version) == 4
        assert await process.run(os.getpid) != first
    finally:
        process.close()


@run_async
async def test_every_call_under_way_when_the_child_dies_runs_again() -> None:
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    try:
        first = await process.run(os.getpid)
        calls = [process.submit(time.sleep, 0.5), process.submit(os.getpid),
                 process.submit(os.getpid)]
        await asyncio.sleep(0.1)
        os.kill(first, signal.SIGKILL)
        _, second, third = await asyncio.gather(*calls)
        assert second == third != first  # one replacement serves them all
    finally:
        process.close()


@run_async
async def test_stopping_lets_the_calls_under_way_finish() -> None:
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    await process.run(os.getpid)
    call = asyncio.ensure_future(process.submit(time.sleep, 0.3))
    await asyncio.sleep(0.05)
    await process.on_stop()
    assert await call is None


@run_async
async def test_the_child_leaves_stopping_to_its_worker() -> None:
    # Ctrl-C and a supervisor's SIGTERM reach the whole process group
    process = ChildProcess(MODEL_NICENESS, "reco-model")
    try:
        child = await process.run(os.getpid)
        os.kill(child, signal.SIGINT)
        os.kill(child, signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert await process.run(os.getpid) == child
    finally:
        process.close()


PARENT_SCRIPT = """
import asyncio, os, sys
from streams.runtime.children.process import ChildProcess

async def main():
    process = ChildProcess(10, "reco-model")
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
