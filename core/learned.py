"""Which scorer orders a list's candidates, learned from what customers did.

Three scorers take the candidates' features (:data:`core.mix.FEATURES`):

- ``blend``: fixed weights, neighbour similarity plus the trending prior and
  the repurchase propensity (no learning: a safe floor);
- ``ranker``: the brief's one-hidden-layer perceptron (:mod:`core.mlp`);
- ``popular``: how many users took the item.

What a customer did next judges each scorer, test-then-learn (the caller picks
the events, see :meth:`Recommender.learn_outcome <core.recommender.Recommender.learn_outcome>`):
1 when it would have put the item taken in the top ``k`` of the list the
customer had, averaged with a half-life; once over all candidates, once over
those new to the customer (what a list without seen items holds). A list is
ranked by the scorer judged best for its part (the blend until the perceptron
has learned from ``ranker_warmup`` taken items). The perceptron itself learns
from whole visits (:meth:`LearnedRanking.learn`). Which mix of sources serves is
thereby the shop's data's call: on films the blend keeps its place; on
groceries bought again the perceptron takes over, and popularity for lists of
new items alone.

>>> from core.config import RecommenderConfig
>>> learned = LearnedRanking.new(n_features=9, config=RecommenderConfig(ranker_warmup=0))
>>> learned.chosen(RecommenderConfig(ranker_warmup=0))
'blend'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.config import LIST_LENGTH, RecommenderConfig
from core.mlp import MLPRanker

#: Columns of :data:`core.mix.FEATURES` the scorers read by name.
SEEN, POPULARITY = 5, 6
#: The parts of a list judged apart: with items the customer saw, and without.
PARTS = ("all", "new")
#: Judgements after which one counts half in a scorer's average.
HALF_LIFE_JUDGEMENTS = 500.0
STATE_VERSION = 1


def blend(features: np.ndarray, config: RecommenderConfig) -> np.ndarray:
    """The fixed blend: neighbour similarity (undoing the feature's log), plus
    the trending prior weighted as the neighbour ranking weighs it, plus the
    repurchase propensity.

    >>> import math
    >>> blend(np.array([[math.log1p(0.5), 1.0, 0.2, 1, 0, 1, 0, 0, 0]]),
    ...       RecommenderConfig(popularity_weight=0.1)).round(3).tolist()
    [0.8]
    """
    return np.asarray(np.expm1(features[:, 0]) + config.popularity_weight * features[:, 1]
                      + features[:, 2])


@dataclass
class LearnedRanking:
    """The perceptron and each scorer's decayed share of taken items in its top k."""

    mlp: MLPRanker
    #: per ``part:scorer``, the decayed sum of its visits' shares
    shares: dict[str, float] = field(default_factory=dict)
    #: judgements made (:meth:`judge`)
    judged: int = 0

    @classmethod
    def new(cls, n_features: int, config: RecommenderConfig) -> LearnedRanking:
        return cls(MLPRanker.new(n_features, config.ranker_hidden, config.ranker_seed))

    @property
    def version(self) -> int:
        """Lessons taken so far (learning steps and judgements): a later state of
        the same ranking has a larger one."""
        return self.mlp.steps + self.judged

    def scorers(self, config: RecommenderConfig
                ) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
        return {"blend": lambda x: blend(x, config), "ranker": self.mlp.score,
                "popular": lambda x: x[:, POPULARITY]}

    def chosen(self, config: RecommenderConfig, part: str = "all") -> str:
        """The scorer lists of ``part`` are ranked by now (ties: the blend)."""
        if self.mlp.positives < config.ranker_warmup:
            return "blend"
        return max(self.scorers(config), key=lambda name: self.shares.get(f"{part}:{name}", 0.0))

    def serving(self, config: RecommenderConfig) -> dict[str, str]:
        """The scorer ranking each part of a list now (see :data:`PARTS`).

        >>> LearnedRanking.new(9, RecommenderConfig()).serving(RecommenderConfig())
        {'all': 'blend', 'new': 'blend'}
        """
        return {part: self.chosen(config, part) for part in PARTS}

    def score(self, features: np.ndarray, config: RecommenderConfig) -> np.ndarray:
        """Scores of a list's candidates, by the scorer of its part: ``new`` when
        none was seen by the customer (they were left out, or there are none)."""
        return self.scorers(config)[self.chosen(config, part_of(features))](features)

    def judge(self, features: np.ndarray, taken: np.ndarray, config: RecommenderConfig) -> None:
        """What a customer did next against the list they had: each scorer gets 1
        when it would have put the candidate taken (``taken`` marks it) in the
        top ``k``, over all candidates and, for an item new to the customer,
        over the new ones."""
        decay = 0.5 ** (1.0 / HALF_LIFE_JUDGEMENTS)
        new = features[:, SEEN] == 0.0
        for part, rows in (("all", slice(None)), ("new", new)):
            if not taken[rows].any():
                continue
            for name, scorer in self.scorers(config).items():
                key = f"{part}:{name}"
                top = np.argsort(-scorer(features[rows]), kind="stable")[:LIST_LENGTH]
                hit = float(taken[rows][top].any())
                self.shares[key] = decay * self.shares.get(key, 0.0) + hit
        self.judged += 1

    def learn(self, features: np.ndarray, taken: np.ndarray, config: RecommenderConfig) -> None:
        """The perceptron learns from one visit: the list it began with, and the
        candidates it took (``taken``)."""
        if taken.any():
            self.mlp.learn(features, taken, config.ranker_learning_rate)

    def to_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "mlp": self.mlp.to_state(),
                "shares": dict(self.shares), "judged": self.judged}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LearnedRanking:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"LearnedRanking state version {state.get('version')!r}")
        return cls(MLPRanker.from_state(state["mlp"]),
                   {str(k): float(v) for k, v in state["shares"].items()},
                   int(state.get("judged", 0)))  # states before judgements were counted


def part_of(features: np.ndarray) -> str:
    """``new`` for candidates none of which the customer saw, else ``all``."""
    return "new" if not features[:, SEEN].any() else "all"
