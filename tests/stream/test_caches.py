"""The decoded users and rows a worker keeps: always what the tables hold."""

from __future__ import annotations

import pytest

from streams.state import UserState
from tests.stream.harness import MakeHarness, click, run_async, user_state


@run_async
async def test_cached_users_match_the_table_and_a_rebalance_forgets_them(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents[0].test_context() as agent:
        await h.process(agent, click("u1", "i1"), partition=0, offset=0)
        await h.process(agent, click("u1", "i2"), partition=0, offset=1)
        cached = stream.user_cache.get("u1")
        assert cached is not None
        assert cached.to_json() == user_state(h, "u1").to_json()
        assert cached.profile.recent == ["i1", "i2"]
        # Another worker may own the partition next: what is cached is forgotten,
        # and the table (recovered from the changelog) is read again.
        await stream.app.on_partitions_revoked.send(set())
        assert len(stream.user_cache) == 0 and len(stream.row_cache) == 0
        stream.users.data["u1"] = UserState().to_json()  # as recovered: another worker reset it
        await h.process(agent, click("u1", "i3"), partition=0, offset=2)
        assert user_state(h, "u1").profile.recent == ["i3"]


@run_async
async def test_a_failed_batch_forgets_the_users_it_changed(make_harness: MakeHarness) -> None:
    h = make_harness()
    stream = h.stream
    async with stream.agents[0].test_context() as agent:
        await h.process(agent, click("u1", "i1"), partition=0, offset=0)
        assert stream.user_cache.get("u1") is not None

        async def broken(**_: object) -> None:
            raise RuntimeError("broker gone")

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(stream.rows_topic, "send", broken)
            # i2 pairs with i1: the batch changes u1, then fails sending its rows
            with pytest.raises(AssertionError, match="agent crashed"):
                await h.process(agent, click("u1", "i2"), partition=0, offset=1)
        assert stream.user_cache.get("u1") is None
        assert user_state(h, "u1").profile.recent == ["i1"]  # never written
