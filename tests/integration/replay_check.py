"""The stream against the offline replay of the events that landed, user by user.

A worker killed and restarted has its counters reset, so "settled" cannot be read
from them: instead every user's profile is polled until it equals the replay's
(the number of events applied to each user, so an event applied twice or never
shows), then the lists until the snapshot took the last rows in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from core.events import Event
from core.learned import LearnedRanking
from core.recommender import Recommender
from streams.runtime.settings import Settings
from tests.integration.stream_harness import WorkerProcess


def replay(settings: Settings, events: Sequence[Event]) -> Recommender:
    """The offline replay of the same events through core, refreshed once at the end."""
    model = Recommender(settings.recommender_config())
    model.observe_many(events)
    model.refresh()
    return model


def profile_mismatches(worker: WorkerProcess, model: Recommender, users: Sequence[str]
                       ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(user, what the worker says, what the replay says) for every user whose
    profile differs: events applied, ratings, mean, recent items, purchases."""
    mismatched = []
    for user in users:
        status, got = worker.get_status(f"/users/{quote(user, safe='')}")
        profile = model.users[user]
        want = {"events": profile.events, "ratings": len(profile.ratings),
                "mean_rating": round(profile.mean, 9), "recent_items": profile.recent[-20:],
                "purchased": sorted(profile.purchased), "last_ts": profile.last_ts}
        seen = ({} if status != 200 else
                {**{key: got[key] for key in want}, "mean_rating": round(got["mean_rating"], 9)})
        if seen != want:
            mismatched.append((user, seen, want))
    return mismatched


def list_mismatches(worker: WorkerProcess, model: Recommender, users: Sequence[str], k: int
                    ) -> list[tuple[str, list[str], list[str]]]:
    """(user, worker's list, replay's list) for every user whose lists differ,
    the replay ranking with the worker's learned ranking (the same weights rank
    alike; what the stream learned from is timing's, see core.outcomes)."""
    status, learned = worker.get_status("/ranking")
    if status == 200:
        model.snapshot = replace(model.snapshot,
                                 ranker=LearnedRanking.from_state(learned["learned"]))
    mismatched = []
    for user in users:
        answer = worker.get(f"/users/{quote(user, safe='')}/recommendations?k={k}")
        got = [item["item_id"] for item in answer["items"]]
        want = list(model.recommend(
            user, k, filter_purchased=not model.config.lists_bought_items).item_ids)
        if got != want:
            mismatched.append((user, got, want))
    return mismatched


def assert_equals_replay(worker: WorkerProcess, settings: Settings, events: Sequence[Event],
                         timeout: float = 120.0) -> Recommender:
    """Every user's profile, then every user's list, equal to the replay's (polled
    until they are, or ``timeout``); the replay."""
    model = replay(settings, events)
    users = sorted({e.user_id for e in events})
    deadline = time.monotonic() + timeout
    profiles: list[Any] = []
    while time.monotonic() < deadline:
        profiles = profile_mismatches(worker, model, users)
        if not profiles:
            break
        time.sleep(1.0)
    assert not profiles, (f"{len(profiles)}/{len(users)} profiles differ, first: "
                          f"{profiles[0]}\n{worker.tail(30)}")
    settled = time.time()
    lists: list[Any] = []
    while time.monotonic() < deadline:
        if worker.health()["model_version"] > settled + 1:  # a round after the rows
            lists = list_mismatches(worker, model, users, settings.k)
            if not lists:
                return model
        time.sleep(1.0)
    assert not lists, f"{len(lists)}/{len(users)} lists differ, first: {lists[0]}"
    raise AssertionError(f"no refresh round after the data settled\n{worker.tail(30)}")
