"""What customers did next teaches the learned ranking (core.outcomes): visits,
their lessons, the bound on what is kept, and the same lessons giving the same
weights."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.config import DAY, RecommenderConfig
from core.learned import LearnedRanking
from core.mix import FEATURES
from core.outcomes import JUDGE_EVERY, LastShown, OutcomeLearner, Shown

CONFIG = RecommenderConfig(ranker_warmup=0)
ITEMS = tuple(f"i{n}" for n in range(8))


def shown_list(seed: int) -> Shown:
    rng = np.random.default_rng(seed)
    return Shown(ITEMS, rng.random((len(ITEMS), len(FEATURES))))


def learner(capacity: int | None = None) -> OutcomeLearner:
    return OutcomeLearner(LearnedRanking.new(len(FEATURES), CONFIG), CONFIG, capacity)


#: (user, item, day, hour) of a rated event
outcomes = st.lists(st.tuples(st.sampled_from(["u", "v", "w"]),
                              st.sampled_from([*ITEMS, "unlisted"]),
                              st.integers(0, 3), st.integers(0, 23)), min_size=1, max_size=60)


def taught(events: list[tuple[str, str, int, int]], capacity: int | None = None
           ) -> OutcomeLearner:
    learning = learner(capacity)
    last: dict[str, float] = {}
    for n, (user, item, day, hour) in enumerate(sorted(events, key=lambda e: (e[2], e[3]))):
        ts = day * DAY + hour * 3600.0
        learning.took(user, item, ts, last.get(user, 0.0), lambda n=n: shown_list(n % 5),
                      known=item != "unlisted")
        last[user] = ts
    return learning


@settings(max_examples=60, deadline=None)
@given(outcomes)
def test_the_same_outcomes_in_the_same_order_teach_the_same_weights(
    events: list[tuple[str, str, int, int]],
) -> None:
    first, second = taught(events), taught(list(events))
    assert first.ranking.to_state() == second.ranking.to_state()  # bit for bit
    assert first.known_events == second.known_events


def test_other_outcomes_teach_other_weights() -> None:
    events = [(u, ITEMS[(n * 3) % 8], n // 4, n % 24) for n, u in enumerate("uvw" * 8)]
    first = taught(events)
    assert first.ranking.mlp.steps > 0 and first.ranking.judged > 0  # not vacuous
    other = taught([(u, ITEMS[(ITEMS.index(i) + 1) % 8], d, h) for u, i, d, h in events])
    assert not np.array_equal(first.ranking.mlp.w1, other.ranking.mlp.w1)


def test_a_visit_is_learned_from_when_the_next_one_begins() -> None:
    learning = learner()
    shown = shown_list(1)
    learning.took("u", "i2", 10.0, 0.0, lambda: shown, known=True)
    learning.took("u", "i5", 20.0, 10.0, lambda: shown, known=True)
    assert learning.ranking.mlp.steps == 0  # the visit is under way
    began, taken = learning.visits["u"]
    assert began is shown and taken.tolist() == [0, 0, 1, 0, 0, 1, 0, 0]
    learning.took("u", "i1", DAY + 1.0, 20.0, lambda: shown, known=True)
    assert learning.ranking.mlp.steps == 1 and learning.ranking.mlp.positives == 2
    assert learning.visits["u"][1].tolist() == [0, 1, 0, 0, 0, 0, 0, 0]


def test_a_visit_that_took_nothing_listed_teaches_nothing() -> None:
    learning = learner()
    shown = shown_list(2)
    learning.took("u", "unlisted", 10.0, 0.0, lambda: shown, known=True)
    learning.took("u", "i1", DAY + 1.0, 10.0, lambda: shown, known=True)
    assert learning.ranking.mlp.steps == 0


def test_no_visit_begins_before_a_list_was_shown() -> None:
    learning = learner()
    learning.took("u", "i1", 10.0, 0.0, lambda: None, known=True)
    assert not learning.visits and learning.known_events == 0


def test_every_fourth_event_on_a_known_item_is_judged() -> None:
    learning = learner()
    shown = shown_list(3)
    for n in range(3 * JUDGE_EVERY):
        learning.took("u", ITEMS[n % 8], 10.0 + n, 9.0 + n, lambda: shown, known=True)
    learning.took("u", "new", 100.0, 99.0, lambda: shown, known=False)  # not counted
    assert learning.ranking.judged == 3 and learning.known_events == 3 * JUDGE_EVERY
    assert learning.ranking.version == learning.ranking.mlp.steps + 3


def test_visits_kept_are_bounded_the_least_recently_active_dropped_first() -> None:
    learning = learner(capacity=2)
    shown = shown_list(4)
    for user in ("u", "v"):
        learning.took(user, "i1", 10.0, 0.0, lambda: shown, known=True)
    learning.took("u", "i2", 11.0, 10.0, lambda: shown, known=True)  # u active again
    learning.took("w", "i3", 12.0, 0.0, lambda: shown, known=True)
    assert list(learning.visits) == ["u", "w"]
    many = learner(capacity=100)
    for n in range(10_000):
        many.took(f"user{n}", "i1", 10.0, 0.0, lambda: shown, known=True)
    assert len(many.visits) == 100


def test_last_lists_are_bounded() -> None:
    lists = LastShown(capacity=3)
    for n in range(10):
        lists.put(f"user{n}", shown_list(n))
    lists.put("user8", shown_list(0))  # listed again: the most recent
    lists.put("user10", shown_list(0))
    assert len(lists) == 3
    assert [lists.get(f"user{n}") is not None for n in (7, 8, 9, 10)] == [
        False, True, True, True]


def test_a_restored_ranking_is_the_one_saved() -> None:
    events = [(u, ITEMS[(n * 5) % 8], n // 6, n % 24) for n, u in enumerate("uvwx" * 12)]
    whole = taught(events)
    restored = LearnedRanking.from_state(whole.ranking.to_state())
    assert restored.to_state() == whole.ranking.to_state()
    assert restored.version == whole.ranking.version > 0
