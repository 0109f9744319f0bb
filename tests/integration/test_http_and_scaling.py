"""HTTP lookups on a running worker, and two workers sharing one group, on a real broker.

The offline replay of the same events through core (``replay`` of test_stream) is
the reference: the stream must answer what it would, endpoint by endpoint, and two
workers must answer what one would.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError

from core.events import Event
from core.recommender import Recommender
from streams.devtools.worker_process import refreshed_after, row_updates_caught_up
from streams.runtime.settings import Settings
from tests.integration.stream_harness import (
    PARTITIONS,
    WorkerProcess,
    event_messages,
    free_port,
    produce,
)
from tests.integration.test_stream import replay

pytestmark = pytest.mark.integration

SLICE = 3000  # the first ML-100k events in time order: 36 users, 849 items
UNKNOWN_USER = "no-such-user"
UNKNOWN_ITEM = "no-such-item"


# ml_slice, stream_settings and start_worker come from conftest.py


# -- helpers ---------------------------------------------------------------------------


def events_in(health: dict[str, Any]) -> int:
    return sum(health["counters"]["events_in"].values())


def item_ids(answer: dict[str, Any]) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def assert_bad_request(worker: WorkerProcess, path: str) -> None:
    status, body = worker.get_status(path)
    assert status == 400, (path, status, body)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


def recommendation_mismatches(worker: WorkerProcess, model: Recommender, users: Sequence[str],
                              k: int) -> list[tuple[str, list[str], list[str]]]:
    """(user, got, expected) for every user whose list differs from the replay's."""
    mismatched = []
    for user in users:
        got = item_ids(worker.get(f"/users/{user}/recommendations?k={k}"))
        expected = list(model.recommend(user, k).item_ids)
        if got != expected:
            mismatched.append((user, got, expected))
    return mismatched


def await_converged(workers: Sequence[WorkerProcess], model: Recommender,
                    users: Sequence[str], k: int, seconds: float = 20.0) -> None:
    """Give the workers' snapshots a few rounds to take in what other workers
    wrote (a worker sees their neighbour lists and item stats only after its
    periodic rebuild); the caller then asserts on every user."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(
            recommendation_mismatches(w, model, users[:15], k) for w in workers):
        time.sleep(1.0)


def wait_for_group(bootstrap: str, group: str, members: int, timeout: float = 60.0
                   ) -> dict[str, dict[str, set[int]]]:
    """Until the consumer group is Stable with ``members`` members, each assigned
    something; returns member id -> topic -> assigned partitions."""
    async def describe() -> tuple[str, dict[str, dict[str, set[int]]]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        [description] = response.to_object()["groups"]
        assignments: dict[str, dict[str, set[int]]] = {}
        for member in description["members"]:
            raw = member["member_assignment"]
            topics: dict[str, set[int]] = {}
            if raw:
                decoded = ConsumerProtocolMemberAssignment.decode(raw)
                for topic, partitions in decoded.assignment:
                    topics[topic] = set(partitions)
            assignments[member["member_id"]] = topics
        return description["state"], assignments

    deadline = time.monotonic() + timeout
    state: str = ""
    assignments: dict[str, dict[str, set[int]]] = {}
    while time.monotonic() < deadline:
        try:
            state, assignments = asyncio.run(describe())
        except KafkaError as exc:  # e.g. no group coordinator yet on a fresh broker
            if not exc.retriable:
                raise
            state, assignments = type(exc).__name__, {}
        if state == "Stable" and len(assignments) == members and all(assignments.values()):
            return assignments
        time.sleep(0.5)
    raise AssertionError(f"group {group} not stable with {members} members: {state} "
                         f"{assignments}")


def settle(workers: Sequence[WorkerProcess], applied: int, *, rounds: int = 1,
           timeout: float = 60.0) -> list[dict[str, Any]]:
    """Until the workers (sharing the partitions) have applied ``applied`` events in
    all, every row update they sent is applied, nothing has moved for a second, and
    then ``rounds`` refresh rounds that started after that are in every model.

    Stricter than :meth:`WorkerProcess.wait_until_settled`: a worker counts an event
    as applied before it sends that batch's row updates and writes its users, so
    "applied == N and every row update sent is applied" can hold for a moment while
    the last batch is still in flight, and a refresh round could then start before
    its rows are in. Two workers need two rounds: the first writes every partition's
    final neighbour lists, the second rebuilds every model after all are replicated.
    """
    deadline = time.monotonic() + timeout
    healths: list[dict[str, Any]] = []

    def poll(condition: Callable[[list[dict[str, Any]]], bool], what: str) -> None:
        nonlocal healths
        while time.monotonic() < deadline:
            healths = [w.health() for w in workers]
            if condition(healths):
                return
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; last health {healths}\n"
                             + "\n".join(w.tail(20) for w in workers))

    last_counters: list[tuple[int, ...]] = []
    still_since = 0.0

    def drained(hs: list[dict[str, Any]]) -> bool:
        nonlocal last_counters, still_since
        cs = [h["counters"] for h in hs]
        counters: list[tuple[int, ...]] = [
            tuple(c[name] for name in ("applied", "deduplicated", "row_updates_sent",
                                       "row_updates_applied", "recommendations_out"))
            for c in cs]
        if counters != last_counters:
            last_counters, still_since = counters, time.monotonic()
        return bool(sum(c["applied"] for c in cs) >= applied
                    and row_updates_caught_up(cs)
                    and time.monotonic() - still_since >= 1.0)

    poll(drained, f"{applied} events and their row updates, then a quiet second")
    after = time.time()
    for n in range(rounds):
        def refreshed(hs: list[dict[str, Any]], after: float = after) -> bool:
            return all(refreshed_after(h, after) for h in hs)

        poll(refreshed, f"refresh round {n + 1} after the data settled, on every worker")
        after = max(h["model_version"] for h in healths)
    return healths


# -- one worker, every endpoint -------------------------------------------------------


def test_every_endpoint_on_a_running_worker(
    kafka_bootstrap: str, stream_settings: Settings,
    start_worker: Callable[[Settings], WorkerProcess], ml_slice: list[Event],
) -> None:
    settings = stream_settings
    worker = start_worker(settings)
    first, second = ml_slice[:SLICE // 2], ml_slice[SLICE // 2:]

    # /health counters move when events flow
    h0 = worker.health()
    assert h0["status"] == "ok"
    assert h0["event_loop"] == "uvloop"  # the default
    assert events_in(h0) == 0 and h0["counters"]["applied"] == 0
    produce(kafka_bootstrap, event_messages(settings.topic_prefix, first))
    [h1] = settle([worker], len(first))
    produce(kafka_bootstrap, event_messages(settings.topic_prefix, second))
    [h2] = settle([worker], len(ml_slice))
    assert (events_in(h0), events_in(h1), events_in(h2)) == (0, len(first), len(ml_slice))
    assert h2["counters"]["applied"] == len(ml_slice)
    assert h2["counters"]["dead_lettered"] == {} and h2["counters"]["deduplicated"] == 0
    for name in ("applied", "recommendations_out", "refreshes", "row_updates_applied"):
        values = [h["counters"][name] for h in (h0, h1, h2)]
        assert values[0] < values[1] < values[2], (name, values)
    assert h0["model_version"] < h1["model_version"] < h2["model_version"]
    assert 0 < h1["model_items"] < h2["model_items"]

    model = replay(settings, ml_slice)
    users = sorted({e.user_id for e in ml_slice})
    items = sorted({e.item_id for e in ml_slice})

    # /users/{id}/recommendations: the replay's list, k of them
    for user in users:
        answer = worker.get(f"/users/{user}/recommendations?k=5")
        expected = model.recommend(user, 5)
        assert answer["user_id"] == user and answer["cold_start"] is False
        assert answer["trigger"] == "lookup" and answer["model_version"] > 0
        assert item_ids(answer) == list(expected.item_ids), user
        assert [i["score"] for i in answer["items"]] == pytest.approx(
            expected.scores, abs=1e-5), user
        # every item says why it is there, as the replay says
        assert [(i["source"], i["reason"]) for i in answer["items"]] == list(
            zip(expected.sources, expected.reasons, strict=True)), user
        longer = worker.get(f"/users/{user}/recommendations")  # k defaults to settings.k
        assert item_ids(longer)[:5] == item_ids(answer) and len(longer["items"]) == settings.k
    for bad in ("0", "abc", "-1", "101", "1001", "2.5", ""):
        assert_bad_request(worker, f"/users/{users[0]}/recommendations?k={bad}")

    # unknown user: cold start, trending items (the replay's, too)
    cold = worker.get(f"/users/{UNKNOWN_USER}/recommendations")
    assert cold["cold_start"] is True and cold["user_id"] == UNKNOWN_USER
    assert len(cold["items"]) == settings.k
    assert item_ids(cold) == list(model.recommend(UNKNOWN_USER, settings.k).item_ids)
    assert len(worker.get(f"/users/{UNKNOWN_USER}/recommendations?k=3")["items"]) == 3

    # /users/{id}: the profile the replay built
    for user in users:
        profile = worker.get(f"/users/{user}")
        expected_profile = model.users[user]
        assert profile["user_id"] == user
        assert profile["mean_rating"] == pytest.approx(
            float(np.mean(list(expected_profile.ratings.values()))), rel=1e-12)
        assert profile["ratings"] == len(expected_profile.ratings)
        assert profile["events"] == expected_profile.events
        assert profile["recent_items"] == expected_profile.recent[-20:]
        assert profile["purchased"] == sorted(expected_profile.purchased)
        assert profile["last_ts"] == pytest.approx(expected_profile.last_ts)
        assert profile["applied_offsets"]
    status, body = worker.get_status(f"/users/{UNKNOWN_USER}")
    assert status == 404 and isinstance(body, dict) and body["error"], body

    # /items/{id}/neighbors: the replay's neighbours, from the replicated tables
    for item in items:
        status, answer = worker.get_status(f"/items/{item}/neighbors?k=3")
        assert status == 200, (item, answer)
        expected_pairs = model.neighbors_of(item)[:3]
        assert answer["item_id"] == item
        assert [n["item_id"] for n in answer["neighbors"]] == [j for j, _ in expected_pairs]
        assert [n["score"] for n in answer["neighbors"]] == pytest.approx(
            [s for _, s in expected_pairs], abs=1e-6)
        assert answer["users"] == sum(item in p.ratings for p in model.users.values())
        bought = model.repurchase.items.get(item)
        assert (answer["buyers"], answer["repeat_purchases"]) == (
            (bought.buyers, bought.repeats) if bought is not None else (0, 0))
    assert sum(bool(model.neighbors_of(item)) for item in items) > len(items) // 2
    status, body = worker.get_status(f"/items/{UNKNOWN_ITEM}/neighbors?k=3")
    assert status == 404 and isinstance(body, dict) and body["error"], body
    for bad in ("0", "abc", "10001", str(settings.neighbors + 1)):
        assert_bad_request(worker, f"/items/{items[0]}/neighbors?k={bad}")

    # Faust's own routes are off: /table would hand out any user's raw state, and
    # /router the group's addresses
    for path in (f"/table/users/{users[0]}/", "/table/", "/router/", "/graph/", "/stats/"):
        status, _ = worker.get_status(path)
        assert status == 404, (path, status)


# -- two workers in one group ---------------------------------------------------------


def test_two_workers_share_the_partitions_and_answer_like_one(
    kafka_bootstrap: str, stream_settings: Settings, tmp_path: Path,
    start_worker: Callable[[Settings], WorkerProcess], ml_slice: list[Event],
) -> None:
    # both ask for a bearer token: a lookup routed to the other worker carries it
    first_settings = replace(stream_settings, session_timeout=10.0, http_token="s3cret t0ken")
    port = free_port()
    while port == first_settings.web_port:
        port = free_port()
    # the second on asyncio's own loop: both loops work, side by side in one group
    second_settings = replace(first_settings, web_port=port, data_dir=tmp_path / "worker-b",
                              event_loop="asyncio")
    # The second joins once the first is in the group (as when scaling out), and
    # both are in, the input partitions split between them, before any event.
    first = start_worker(first_settings)
    wait_for_group(kafka_bootstrap, first_settings.app_id, members=1)
    second = start_worker(second_settings)
    workers = (first, second)
    assignments = wait_for_group(kafka_bootstrap, first_settings.app_id, members=2)
    clicks = first_settings.topic("clicks")
    shares = [topics.get(clicks, set()) for topics in assignments.values()]
    assert all(shares), assignments
    assert shares[0].isdisjoint(shares[1]) and shares[0] | shares[1] == set(range(PARTITIONS))

    produce(kafka_bootstrap, event_messages(first_settings.topic_prefix, ml_slice))
    healths = settle(workers, len(ml_slice), rounds=2)

    # each worker did part of the work, and serves HTTP on its own port
    assert first.port != second.port
    counters = [h["counters"] for h in healths]
    assert all(h["status"] == "ok" for h in healths)
    assert [h["event_loop"] for h in healths] == ["uvloop", "asyncio"]
    assert all(c["applied"] > 0 for c in counters), counters
    # each event applied once; a message read again around the rebalance (at least
    # once delivery) is counted as deduplicated and changes nothing
    assert sum(c["applied"] for c in counters) == len(ml_slice)
    assert all(c["dead_lettered"] == {} for c in counters)

    model = replay(first_settings, ml_slice)
    users = sorted({e.user_id for e in ml_slice})
    k = first_settings.k

    await_converged(workers, model, users, k)
    for worker in workers:
        mismatched = recommendation_mismatches(worker, model, users, k)
        assert not mismatched, (
            f"worker on port {worker.port}: {len(mismatched)}/{len(users)} users differ "
            f"from the replay, first: {mismatched[0]}")

    # profiles answer the same on both workers (routed to the owner), as replayed
    for user in users:
        profiles = [w.get(f"/users/{user}") for w in workers]
        assert profiles[0] == profiles[1], user
        assert profiles[0]["events"] == model.users[user].events
    # no token, or a wrong one: 401 on every route but what monitoring polls
    for worker in workers:
        for path in (f"/users/{users[0]}", f"/users/{users[0]}/recommendations",
                     f"/users/{users[0]}/churn", f"/items/{ml_slice[0].item_id}/neighbors",
                     "/", "/table/users/x/"):
            for token in ("", "s3cret", "s3cret t0ke", "S3CRET T0KEN"):
                status, body = worker.get_status(path, token=token)
                assert status == 401 and body["error"], (path, token, status, body)
        for path in ("/health", "/metrics"):
            assert urllib.request.urlopen(worker.url + path, timeout=10).status == 200
        assert "t0ken" not in worker.log_path.read_text()  # never logged
    # neighbour lists come from the replicated tables: every worker knows every item
    for item in sorted({e.item_id for e in ml_slice})[::5]:
        expected = [j for j, _ in model.neighbors_of(item)[:5]]
        for worker in workers:
            answer = worker.get(f"/items/{item}/neighbors?k=5")
            assert [n["item_id"] for n in answer["neighbors"]] == expected, (worker.port, item)


def test_no_event_is_lost_while_a_worker_joins_and_another_leaves_mid_stream(
    kafka_bootstrap: str, stream_settings: Settings, tmp_path: Path,
    start_worker: Callable[[Settings], WorkerProcess], ml_slice: list[Event],
) -> None:
    """Events keep coming while a second worker joins and then the first one leaves;
    the survivor ends with every user's profile and list as the replay of all events
    (two rebalances, table recovery from the changelogs, nothing dropped)."""
    # both ask for a bearer token: a lookup routed to the other worker carries it
    first_settings = replace(stream_settings, session_timeout=10.0, http_token="s3cret t0ken")
    port = free_port()
    while port == first_settings.web_port:
        port = free_port()
    second_settings = replace(first_settings, web_port=port, data_dir=tmp_path / "worker-b")
    messages = event_messages(first_settings.topic_prefix, ml_slice)
    chunks = [messages[i:i + 50] for i in range(0, len(messages), 50)]
    # The input is paced (~15 s) and gated so that it cannot run out before a
    # membership change however slow the broker is: the second half waits for the
    # join, the last sixth for the leave. Events are produced up to each change and
    # after it, whatever the timing.
    second_joined, first_left = threading.Event(), threading.Event()
    gates = {len(chunks) // 2: second_joined, len(chunks) * 5 // 6: first_left}

    def produce_paced() -> None:
        for index, chunk in enumerate(chunks):
            gate = gates.get(index)
            if gate is not None:
                gate.wait(timeout=180.0)
            produce(kafka_bootstrap, chunk)
            time.sleep(0.25)

    first = start_worker(first_settings)
    wait_for_group(kafka_bootstrap, first_settings.app_id, members=1)
    producer = threading.Thread(target=produce_paced)
    producer.start()
    try:
        time.sleep(2.0)
        second = start_worker(second_settings)
        try:
            wait_for_group(kafka_bootstrap, first_settings.app_id, members=2)
        except AssertionError as exc:  # what each worker was doing meanwhile
            raise AssertionError(f"{exc}\nfirst worker:\n{first.tail()}\n"
                                 f"second worker:\n{second.tail()}") from exc
        second_joined.set()
        first.stop()
        wait_for_group(kafka_bootstrap, first_settings.app_id, members=1)
        first_left.set()
    finally:
        second_joined.set()
        first_left.set()
        producer.join()

    model = replay(first_settings, ml_slice)
    users = sorted({e.user_id for e in ml_slice})
    expected_events = {user: model.users[user].events for user in users}

    def profile_events() -> dict[str, int | None]:
        answers = {user: second.get_status(f"/users/{user}") for user in users}
        return {user: body["events"] if status == 200 else None
                for user, (status, body) in answers.items()}

    deadline = time.monotonic() + 90.0
    got = profile_events()
    while got != expected_events and time.monotonic() < deadline:
        time.sleep(0.5)
        got = profile_events()
    if got != expected_events:
        missing = {u: (got[u], expected_events[u]) for u in users
                   if got[u] != expected_events[u]}
        raise AssertionError(f"{missing}\nhealth {second.health()}\n{second.tail()}\n"
                             f"{second.task_stacks()}")
    [health] = settle([second], 0, rounds=1)
    assert health["counters"]["dead_lettered"] == {}
    # the departed worker's last lists and item stats reach the survivor's
    # snapshot through its replica reader and periodic rebuild (seen once in a
    # full test run: 26/36 lists still differed right after the round)
    await_converged([second], model, users, first_settings.k)
    mismatched = recommendation_mismatches(second, model, users, first_settings.k)
    assert not mismatched, f"{len(mismatched)}/{len(users)} users differ, first: {mismatched[0]}"
