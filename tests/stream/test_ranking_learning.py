"""The ranking child learns the ranking from what customers did next: lists
ranked with the weights it learned equal the replay's with the same weights, a
child that replaces a dead one resumes from what was kept, and no older ranking
replaces a newer one."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from core.config import RecommenderConfig
from core.events import Event
from core.learned import LearnedRanking
from core.mix import FEATURES, published_lists
from core.outcomes import rates
from core.ratings import UserProfile
from core.recommender import Recommender, learn_event
from core.snapshot import Snapshot
from streams.runtime.children.process import ChildProcess
from streams.runtime.children.ranking_jobs import (
    RANKER_NICENESS,
    ListRequest,
    Outcome,
    adopt_ranking,
    hold_snapshot,
    learned_state,
    profile_fields,
    profile_of,
    ranked_records,
)
from streams.runtime.topology import LEARNED_RANKING_KEY
from tests.stream.harness import MakeHarness, run_async

DAY = 86_400.0
CONFIG = RecommenderConfig(refresh_every=0, learn_ranker=False, ranker_warmup=0)


def shop_events(seed: int, n: int) -> list[Event]:
    """Customers who buy a few staples again every few days, and browse others."""
    rng = np.random.default_rng(seed)
    events = []
    for t in range(n):
        user = f"c{int(rng.integers(0, 30))}"
        if rng.random() < 0.5:
            item, kind = f"staple{int(rng.integers(0, 8))}", "purchase"
        else:
            item = f"i{int(rng.zipf(1.4)) % 80}"
            kind = "view" if rng.random() < 0.7 else "purchase"
        events.append(Event(user, item, t * DAY / 30, kind))
    return events


def learned_offline(events: list[Event]) -> Recommender:
    """The replay of ``events``, refreshed: the snapshot the child ranks with."""
    model = Recommender(CONFIG)
    model.observe_many(events)
    model.refresh()
    return model


def items_and_scores(records: list[bytes]) -> list[list[tuple[str, float]]]:
    return [[(item["item_id"], item["score"]) for item in orjson.loads(record)["items"]]
            for record in records]


async def stream_batches(process: ChildProcess, events: list[Event],
                         profiles: dict[str, UserProfile]
                         ) -> tuple[list[ListRequest], list[bytes]]:
    """The events in batches of 20, as the loop submits them: each user's list
    after the batch, the rated events of the batch; the last batch's lists and
    records."""
    lists: list[ListRequest] = []
    records: list[bytes] = []
    for start in range(0, len(events), 20):
        outcomes: list[Outcome] = []
        by_user: dict[str, ListRequest] = {}
        for event in events[start:start + 20]:
            profile = profiles.setdefault(event.user_id, UserProfile())
            if rates(event, CONFIG):
                outcomes.append((event.user_id, event.item_id, event.ts, profile.last_ts))
            learn_event(profile, event, CONFIG)
            by_user[event.user_id] = (event.user_id, profile_fields(profile), event.type,
                                      event.ts)
        lists = list(by_user.values())
        records, _, _ = await process.run(ranked_records, orjson.dumps(lists), [], 10, CONFIG,
                                          100, orjson.dumps(outcomes), 1_000)
    return lists, records


def replayed(snapshot: Snapshot, learned: dict[str, Any], lists: list[ListRequest],
             profiles: dict[str, UserProfile]) -> list[list[tuple[str, float]]]:
    """The lists of the users of ``lists``, ranked offline from their profiles with
    the ranking ``learned``."""
    ranked = published_lists(replace(snapshot, ranker=LearnedRanking.from_state(learned)),
                             [(user_id, profiles[user_id]) for user_id, *_ in lists],
                             10, CONFIG)
    return [[(item, round(score, 6)) for item, score in zip(recs.item_ids, recs.scores,
                                                            strict=True)]
            for recs in ranked]  # as records write them


@run_async
async def test_the_child_learns_and_ranks_as_the_replay_with_its_weights() -> None:
    events = shop_events(3, 2_400)
    model = learned_offline(events[:1_200])
    snapshot = model.snapshot
    assert snapshot.ranker is None and snapshot.model.n_items > 50
    process = ChildProcess(RANKER_NICENESS, "reco-ranker")
    try:
        process.hold("snapshot", hold_snapshot, snapshot)
        assert await process.run(learned_state) is None  # nothing learned before lists
        profiles = {user: UserProfile.from_state(p.to_state())
                    for user, p in model.users.items()}
        lists, records = await stream_batches(process, events[1_200:], profiles)
        learned = await process.run(learned_state)
        assert learned is not None
        ranking = LearnedRanking.from_state(learned)
        assert ranking.mlp.steps > 20 and ranking.judged > 20  # it learned from the stream
        assert items_and_scores(records) == replayed(snapshot, learned, lists, profiles)

        # served by the perceptron (judged best), the weights decide the lists
        favoured = {**learned, "shares": {"all:ranker": 1e6, "new:ranker": 1e6},
                    "judged": learned["judged"] + 1}
        assert await process.run(adopt_ranking, favoured) == ranking.version + 1
        again, _, _ = await process.run(ranked_records, orjson.dumps(lists), [], 10, CONFIG,
                                        100, b"[]", 1_000)
        assert items_and_scores(again) == replayed(snapshot, favoured, lists, profiles)
        blend = published_lists(snapshot, [(u, profiles[u]) for u, *_ in lists], 10, CONFIG)
        assert [[item for item, _ in got] for got in items_and_scores(again)] != [
            list(recs.item_ids) for recs in blend]

        # an older ranking is not adopted
        assert await process.run(adopt_ranking, learned) == ranking.version + 1

        # a child that replaces a dead one resumes from the ranking held for it
        process.hold("learned", adopt_ranking, favoured)
        first = await process.run(os.getpid)
        os.kill(first, signal.SIGKILL)
        assert await process.run(learned_state) == favoured
        assert await process.run(os.getpid) != first
        resumed, _, _ = await process.run(ranked_records, orjson.dumps(lists), [], 10, CONFIG,
                                          100, b"[]", 1_000)
        assert resumed == again  # the snapshot was held for it too
    finally:
        process.close()


@run_async
async def test_nothing_is_learned_when_learning_is_off() -> None:
    events = shop_events(5, 600)
    model = learned_offline(events[:300])
    process = ChildProcess(RANKER_NICENESS, "reco-ranker")
    try:
        process.hold("snapshot", hold_snapshot, model.snapshot)
        profiles: dict[str, UserProfile] = {}
        lists: list[ListRequest] = []
        for event in events[300:]:
            profile = profiles.setdefault(event.user_id, UserProfile())
            learn_event(profile, event, CONFIG)
            lists = [(event.user_id, profile_fields(profile), event.type, event.ts)]
            outcome = orjson.dumps([(event.user_id, event.item_id, event.ts, 0.0)])
            records, _, _ = await process.run(ranked_records, orjson.dumps(lists), [], 10,
                                              CONFIG, 100, outcome, 0)
        assert await process.run(learned_state) is None
        assert items_and_scores(records) == [
            [(item, round(score, 6)) for item, score in zip(recs.item_ids, recs.scores,
                                                            strict=True)]
            for recs in published_lists(model.snapshot,
                                        [(u, profile_of(f)) for u, f, *_ in lists], 10, CONFIG)]
    finally:
        process.close()


def ranking_at(version: int) -> dict[str, Any]:
    """A learned ranking that took ``version`` lessons."""
    ranking = LearnedRanking.new(len(FEATURES), CONFIG)
    ranking.mlp.steps = version
    return ranking.to_state()


@run_async
async def test_the_learned_ranking_is_kept_and_the_one_that_learned_most_adopted(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    stream = h.stream
    kept, table = stream.kept_ranking, stream.topology.learned_ranking
    kept.owned = lambda: {0}  # this worker writes the table's key
    await kept.keep()  # nothing learned yet: nothing kept
    assert table.view() == {}
    stream.ranking.adopt(ranking_at(5))  # as if the child had learned 5 lessons
    await kept.keep()
    assert table.view() == {LEARNED_RANKING_KEY: ranking_at(5)}
    topic = stream.topology.replica_topics["learned-ranking"].get_topic_name()
    await asyncio.gather(*await stream.outbox.send())
    assert [orjson.loads(sent.value) for sent in h.sent_to(topic)] == [ranking_at(5)]
    assert b"recostream_learned_ranking_version 5.0" in stream.metrics.exposition()
    assert (b'recostream_learned_ranking_serving{part="all",scorer="blend"} 1.0'
            in stream.metrics.exposition())

    # a worker that learned more wrote the table (read back by the replica reader)
    table.apply(LEARNED_RANKING_KEY.encode(), orjson.dumps(ranking_at(9)))
    kept.owned = set
    await kept.keep()
    assert LearnedRanking.from_state(await stream.ranking.learned() or {}).version == 9
    # an older one is not adopted
    table.apply(LEARNED_RANKING_KEY.encode(), orjson.dumps(ranking_at(3)))
    await kept.keep()
    assert LearnedRanking.from_state(await stream.ranking.learned() or {}).version == 9
    assert len(h.sent_to(topic)) == 1  # not the owner: nothing written
