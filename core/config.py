"""How the recommender learns and ranks: every knob and its default, stated once.

The stream's settings, the offline evaluation's flags and the tests all derive
their defaults from :class:`RecommenderConfig` (the evaluated ones).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

from core.events import Event
from core.ratings import RatingWeights
from core.repurchase import REPEAT_MODES
from core.similarity import SIMILARITIES, SimilarityParams

#: The names of :data:`core.mix.RANKINGS` (which imports this module).
RANKING_NAMES = ("mix", "neighbours")
#: Items in a published list, and the evaluations' cut-off (``@10``).
LIST_LENGTH = 10

DAY = 86_400.0


@dataclass(frozen=True)
class RecommenderConfig:
    """How the recommender learns and ranks. Defaults are the evaluated ones.

    similarity: a key of :data:`core.similarity.SIMILARITIES`.
    neighbors: neighbours kept per item for scoring.
    history: recent items kept per user, for ranking.
    pair_window: how many of those a newly gained item is paired with in the
        co-occurrence table (the cost of observing grows with it).
    recency_decay: weight of the r-th most recent item is ``recency_decay ** r``.
    popularity_weight: weight of the trending prior (scaled to [0, 1]).
    popularity_half_life_days: event-time half-life of the trending counts.
    max_row_width: co-occurrence pairs kept per item (weakest pruned).
    refresh_every: observed events between neighbour refreshes (0: manual only).
    max_ratings: rated items kept per user, least recently rated evicted first
        (at least ``history``).
    max_purchased: purchased items kept per user, least recently bought
        evicted first.
    ranking: how lists are ranked: ``mix`` (every source, the learned ranker) or
        ``neighbours`` (similar items, then trending); see :data:`core.mix.RANKINGS`.
    per_source: candidates each source puts forward for a list.
    repeat: whether bought items may come back: as ``learned`` from the data
        (each item's repeat rate), ``always`` or ``never``.
    ranker_hidden, ranker_learning_rate, ranker_seed: the learned ranker's hidden
        units, step size and seed.
    ranker_warmup: lists it must have learned from (with the item taken among the
        candidates) before it ranks instead of the fixed blend.
    learn_ranker: the offline model learns its ranker from each event's outcome
        (the stream learns in its ranking child instead).
    """

    similarity: str = "cosine"
    neighbors: int = 100
    history: int = 200
    pair_window: int = 50
    recency_decay: float = 0.8
    popularity_weight: float = 0.01
    popularity_half_life_days: float = 7.0
    max_row_width: int = 1400
    refresh_every: int = 1000
    max_ratings: int = 500
    max_purchased: int = 200
    ranking: str = "mix"
    per_source: int = 30
    repeat: str = "learned"
    ranker_hidden: int = 12
    ranker_learning_rate: float = 0.2
    ranker_warmup: int = 200
    ranker_seed: int = 7
    learn_ranker: bool = True
    weights: RatingWeights = field(default_factory=RatingWeights)
    similarity_params: SimilarityParams = field(default_factory=SimilarityParams)

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(
                f"unknown similarity {self.similarity!r}; choose from {', '.join(SIMILARITIES)}"
            )
        if self.neighbors < 1 or self.history < 1 or self.pair_window < 1:
            raise ValueError("neighbors, history and pair_window must be positive")
        if not 0.0 < self.recency_decay <= 1.0:
            raise ValueError("recency_decay must be in (0, 1]")
        if self.popularity_half_life_days <= 0:
            raise ValueError("popularity_half_life_days must be positive")
        if self.max_ratings < self.history:
            raise ValueError(f"max_ratings ({self.max_ratings}) must be at least history "
                             f"({self.history}): the recent items are rated items")
        if self.max_purchased < 1:
            raise ValueError("max_purchased must be positive")
        if self.ranking not in RANKING_NAMES:
            raise ValueError(f"ranking must be one of {', '.join(RANKING_NAMES)}")
        if self.repeat not in REPEAT_MODES:
            raise ValueError(f"repeat must be one of {', '.join(REPEAT_MODES)}")
        if self.per_source < 1 or self.ranker_hidden < 1 or self.ranker_warmup < 0:
            raise ValueError("per_source and ranker_hidden must be positive, "
                             "ranker_warmup not negative")

    # Derived values, computed once per configuration (cached_property writes the
    # instance's __dict__ directly, which a frozen dataclass allows).

    @functools.cached_property
    def rating_by_type(self) -> dict[str, float]:
        """Event type -> implicit rating (see :meth:`RatingWeights.by_type`)."""
        return self.weights.by_type()

    def rating_of(self, event: Event) -> float | None:
        """What ``event`` says of its item: its value, else its type's implicit
        rating (None: nothing, as a type with no weight).

        >>> from core.events import Event
        >>> config = RecommenderConfig()
        >>> config.rating_of(Event("u", "a", 0.0, "view", value=4.0)), config.rating_of(
        ...     Event("u", "a", 0.0, "view")) == config.rating_by_type["view"]
        (4.0, True)
        """
        return event.value if event.value is not None else self.rating_by_type.get(event.type)

    @functools.cached_property
    def paired_items(self) -> int:
        """How many recent items a gained item is paired with: ``pair_window``, at
        most the ``history`` a profile keeps.

        >>> RecommenderConfig(history=20, pair_window=50, max_ratings=20).paired_items
        20
        """
        return min(self.pair_window, self.history)

    @property
    def lists_bought_items(self) -> bool:
        """Whether a published list may hold what the customer bought: with the mix,
        unless repeats are ``never`` (buy-again is one of its sources); the
        neighbour ranking lists only what is new to them.

        >>> [RecommenderConfig(repeat=repeat).lists_bought_items for repeat in ("learned", "never")]
        [True, False]
        """
        return self.ranking == "mix" and self.repeat != "never"

    @functools.cached_property
    def tau(self) -> float:
        """Time constant (seconds) of the trending counts' exponential decay."""
        return self.popularity_half_life_days * DAY / math.log(2.0)
