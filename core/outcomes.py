"""What customers did next against the lists they had: the ranker's lessons.

A visit is a customer's rated events of one day. It begins with the list the
customer had before its first event (:class:`Shown`: the candidates and their
features); each of its events marks its item taken when the list held it; the
first event of a later day ends it, and the learned ranking takes one step on
it (:meth:`LearnedRanking.learn <core.learned.LearnedRanking.learn>`; a visit
that took no candidate teaches nothing). Every :data:`JUDGE_EVERY` events on
known items the scorers are judged on the item taken against the list as it
stands (:meth:`LearnedRanking.judge <core.learned.LearnedRanking.judge>`).

Where the lists come from is the caller's: the offline replay ranks the
candidates of the profile before each event; the stream's ranking child keeps
the last list it ranked for each customer. Either way the same outcomes in the
same order teach the same weights.

>>> import numpy as np
>>> from core.config import RecommenderConfig
>>> from core.learned import LearnedRanking
>>> config = RecommenderConfig(ranker_warmup=0)
>>> learner = OutcomeLearner(LearnedRanking.new(9, config), config)
>>> shown = Shown(("a", "b"), np.array([[0.5] * 9, [0.1] * 9]))
>>> for item_id, ts, previous_ts in [("b", 10.0, 0.0), ("a", 20.0, 10.0),
...                                   ("a", DAY + 5.0, 20.0), ("b", DAY + 6.0, DAY + 5.0)]:
...     learner.took("u", item_id, ts, previous_ts, lambda: shown, known=True)
>>> learner.ranking.mlp.steps, learner.ranking.judged  # one visit ended, one judgement
(1, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.config import DAY, RecommenderConfig
from core.events import Event
from core.learned import LearnedRanking
from core.lru import LeastRecentlyUsed
from core.mix import Candidates

#: Every this many events on known items, the scorers are judged on what the
#: customer did next (a list's candidates at every event cost the replay its time).
JUDGE_EVERY = 4


@dataclass(frozen=True)
class Shown:
    """A list's candidates as the customer had them: their item ids and features
    (one row each, :data:`core.mix.FEATURES`)."""

    item_ids: tuple[str, ...]
    features: np.ndarray

    @classmethod
    def of(cls, found: Candidates, ids: Sequence[str]) -> Shown:
        """``found``'s candidates, named by ``ids`` (the snapshot's, by position)."""
        return cls(tuple(ids[p] for p in found.positions.tolist()), found.features)

    def marks(self, item_id: str) -> np.ndarray:
        """1 for the candidate that is ``item_id`` (candidates are distinct), 0 for
        the others.

        >>> Shown(("a", "b"), np.zeros((2, 9))).marks("b").tolist()
        [0.0, 1.0]
        """
        taken = np.zeros(len(self.item_ids))
        self.mark(taken, item_id)
        return taken

    def mark(self, taken: np.ndarray, item_id: str) -> None:
        """Set ``taken`` (one cell per candidate) to 1 where ``item_id`` is."""
        if item_id in self.item_ids:
            taken[self.item_ids.index(item_id)] = 1.0


def rates(event: Event, config: RecommenderConfig) -> bool:
    """Whether ``event`` says something of the item (a rating, explicit or by
    type): the events a visit is made of."""
    return config.rating_of(event) is not None


class OutcomeLearner:
    """The learned ranking, taught by what customers' visits took (see the module).

    ``capacity``: visits under way kept at most, the least recently active
    customer's dropped first (None: all; a stream's memory is bounded).
    """

    def __init__(self, ranking: LearnedRanking, config: RecommenderConfig,
                 capacity: int | None = None) -> None:
        self.ranking = ranking
        self.config = config
        self.capacity = capacity
        #: per customer, the list their visit began with and what it took
        self.visits = LeastRecentlyUsed[str, tuple[Shown, np.ndarray]](capacity)
        #: events on items the ranking's snapshot knew (every JUDGE_EVERY-th is judged)
        self.known_events = 0

    def took(self, user_id: str, item_id: str, ts: float, previous_ts: float,
             shown: Callable[[], Shown | None], known: bool) -> None:
        """A rated event of ``user_id`` on ``item_id`` at ``ts``, their previous
        event at ``previous_ts``; ``shown()``: the list they have now (None: none
        yet), asked only when needed; ``known``: whether the snapshot knows the
        item."""
        pending = self.visits.get(user_id)
        if pending is not None and ts // DAY > previous_ts // DAY:
            began, taken = self.visits.pop(user_id)
            if taken.any():
                self.ranking.learn(began.features, taken, self.config)
            pending = None
        if pending is None:
            began_with = shown()
            if began_with is None:
                return
            pending = (began_with, np.zeros(len(began_with.item_ids)))
            self.visits.put(user_id, pending)
        else:
            self.visits.touch(user_id)
        if not known:
            return
        began, taken = pending
        began.mark(taken, item_id)
        self.known_events += 1
        if self.known_events % JUDGE_EVERY == 0:
            now = shown()
            if now is not None:
                taken = now.marks(item_id)
                if taken.any():
                    self.ranking.judge(now.features, taken, self.config)


#: The last list each customer had, for at most so many customers (the least
#: recently listed dropped first): what a stream's next events are judged against.
LastShown = LeastRecentlyUsed[str, Shown]
