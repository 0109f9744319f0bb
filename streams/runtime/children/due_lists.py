"""Which neighbour lists of a partition are recomputed at a round.

A cosine or jaccard list divides by its neighbours' counts, which move with every
new customer of any of them: recomputing every list of the partition each round
kept the stream equal to a full refresh at all times, but a round then cost what
the partition holds (O(pairs held), growing for as long as the worker ran) and
republished nearly every list, twice (table and topic). Now a round recomputes

- every row that changed since the last round (its own pairs moved: its list must
  follow them at once), and
- of the others, those computed before the counts last moved, oldest first, at
  most :func:`rotation_size` of them,

so that a list's scores lag its neighbours' counts by at most
:data:`ROTATION_ROUNDS` rounds under load, and once the counts stop moving the
rotation catches up: every list is again that of a full refresh
(:attr:`DueLists.lagging` says how many are not yet). A round costs what changed
plus a bounded slice. The rows process, which holds the rows, keeps one of these
per partition and sends the model process the rows due.
"""

from __future__ import annotations

import math
from collections.abc import Collection

#: A list's scores are recomputed at least once every this many rounds while its
#: neighbours' counts move.
ROTATION_ROUNDS = 10
#: Rows the rotation may take a round however few a partition holds: small
#: partitions catch up in one round.
ROTATION_MIN_ROWS = 500


def rotation_size(held: int) -> int:
    """Rows not changed that a round recomputes at most, of ``held``.

    >>> rotation_size(100), rotation_size(20_000)
    (500, 2000)
    """
    return max(ROTATION_MIN_ROWS, math.ceil(held / ROTATION_ROUNDS))


class DueLists:
    """When each row's list of one partition was computed, and which are due.

    >>> due = DueLists()
    >>> due.take(["a", "b"], counts_version=1, rotation=1)
    ['a', 'b']
    >>> due.take([], counts_version=1, rotation=1), due.lagging
    ([], 0)
    >>> due.take(["b"], counts_version=2, rotation=0), due.lagging
    (['b'], 1)
    >>> due.take([], counts_version=2, rotation=1), due.lagging
    (['a'], 0)
    """

    def __init__(self) -> None:
        # item id -> the counts version its list was computed at, oldest first (a
        # row computed again moves to the end): the rotation reads the front only
        self._computed: dict[str, int] = {}
        self._version = 0
        self._at_version = 0  # rows computed at ``_version``

    @property
    def lagging(self) -> int:
        """Rows whose list was computed before the counts last moved."""
        return len(self._computed) - self._at_version

    def take(self, changed: Collection[str], counts_version: int, rotation: int) -> list[str]:
        """The items whose lists are due now: ``changed`` (rows changed since the
        last round, first), then at most ``rotation`` others computed before
        ``counts_version``, oldest first. Versions never go down: a larger one
        once any count moved."""
        if counts_version != self._version:
            self._version, self._at_version = counts_version, 0
        due = list(changed)
        for item_id, version in self._computed.items():
            if len(due) - len(changed) >= rotation or version == counts_version:
                break  # oldest first: the rest are as new or newer
            if item_id not in changed:
                due.append(item_id)
        for item_id in due:
            if self._computed.pop(item_id, None) == counts_version:
                self._at_version -= 1
            self._computed[item_id] = counts_version
        self._at_version += len(due)
        return due
