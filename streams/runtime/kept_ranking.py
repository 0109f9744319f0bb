"""The learned ranking, kept in a compacted topic so that a restart resumes it.

The ranking child learns the ranking from what customers did next
(:mod:`streams.runtime.children.ranking_jobs`). Now and then the loop takes what
it learned and

- holds it for the ranking child (:meth:`RankingQueue.adopt`): a child that
  replaces a dead one resumes from it, not from nothing;
- writes it to the replicated table ``learned-ranking`` when this worker owns
  partition 0 of the refresh ticks (one writer; any worker that starts reads it);
- adopts the one the table holds when it learned more (a restarted worker, or a
  second worker that learned less, ranks with it and goes on learning).

A ranking's version counts its lessons (:attr:`LearnedRanking.version
<core.learned.LearnedRanking.version>`), so no worker goes back to an older one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from core.learned import LearnedRanking
from streams.runtime.metrics import WorkerMetrics
from streams.runtime.ranking import RankingQueue
from streams.runtime.replicated import ReplicatedTable
from streams.runtime.topology import LEARNED_RANKING_KEY


class KeptRanking:
    """Takes the ranking child's learned ranking to the table, and back."""

    def __init__(self, ranking: RankingQueue, table: ReplicatedTable,
                 owned: Callable[[], Collection[int]], metrics: WorkerMetrics) -> None:
        self.ranking = ranking
        self.table = table
        self.owned = owned  # the refresh ticks' partitions this worker owns
        self.metrics = metrics
        self.kept_version = -1

    async def keep(self) -> None:
        """One exchange with the ranking child and the table (see the module)."""
        stored = self.table.view().get(LEARNED_RANKING_KEY)
        if stored is not None:
            self.ranking.adopt(stored)  # taken only if it learned more
        learned = await self.ranking.learned()
        if learned is None:
            return
        held = LearnedRanking.from_state(learned)
        config = self.ranking.config
        self.metrics.rank_by(held.version, held.serving(config), held.scorers(config))
        version = held.version
        if version == self.kept_version:
            return
        self.ranking.adopt(learned)
        if 0 in self.owned():  # the table's one key lives there
            self.table.set_if_changed(LEARNED_RANKING_KEY, learned)
        self.kept_version = version
