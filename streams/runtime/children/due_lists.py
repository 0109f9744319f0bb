"""Which neighbour lists of a partition the model process recomputes at a round.

A cosine or jaccard list divides by its neighbours' counts, which move with every
new customer of any of them: recomputing every list of the partition each round
kept the stream equal to a full refresh at all times, but a round then cost what
the partition holds (O(pairs held), growing for as long as the worker ran) and
republished nearly every list, twice (table and topic). Now a round recomputes

- every row that changed since the last round (its own pairs moved: its list must
  follow them at once), and
- of the others, those computed before the counts last moved, oldest first, at
  most ``max(ROTATION_MIN_ROWS, held / ROTATION_ROUNDS)`` of them,

so that a list's scores lag its neighbours' counts by at most
:data:`ROTATION_ROUNDS` rounds under load, and once the counts stop moving the
rotation catches up: every list is again that of a full refresh (:attr:`lagging`
says how many are not yet). A round costs what changed plus a bounded slice.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

#: A list's scores are recomputed at least once every this many rounds while its
#: neighbours' counts move.
ROTATION_ROUNDS = 10
#: Rows the rotation may take a round however few a partition holds: small
#: partitions catch up in one round.
ROTATION_MIN_ROWS = 500

#: Versions of the counts, one sequence for the whole process: a replica replaced
#: must not number its counts below those the rows were computed at.
_counts_versions = itertools.count(1)


def new_counts_version() -> int:
    """A counts version larger than every one given before in this process."""
    return next(_counts_versions)


class DueLists:
    """One partition's rows of C as the model process holds them, and when each
    row's list was computed.

    >>> due = DueLists(token=1)
    >>> due.take({"a": {"b": 1.0}, "b": {"a": 1.0}}, counts_version=1)
    ['a', 'b']
    >>> due.take({}, counts_version=1), due.lagging
    ([], 0)
    >>> due.take({"b": {"a": 2.0}}, counts_version=2, rotation=0), due.lagging
    (['b'], 1)
    >>> due.take({}, counts_version=2), due.lagging
    (['a'], 0)
    """

    def __init__(self, token: int) -> None:
        #: the token of the full send the rows began with
        self.token = token
        self.rows: dict[str, Mapping[str, float]] = {}
        # item id -> the counts version its list was computed at, oldest first (a
        # row computed again moves to the end): the rotation reads the front only
        self._computed: dict[str, int] = {}
        self._version = 0
        self._at_version = 0  # rows computed at ``_version``

    @property
    def lagging(self) -> int:
        """Rows whose list was computed before the counts last moved."""
        return len(self._computed) - self._at_version

    def rotation_size(self) -> int:
        """Rows the rotation takes at most per round."""
        return max(ROTATION_MIN_ROWS, math.ceil(len(self.rows) / ROTATION_ROUNDS))

    def take(self, changed: Mapping[str, Mapping[str, float]], counts_version: int,
             rotation: int | None = None) -> list[str]:
        """Rows changed since the last round are in (``changed``, item id ->
        pairs); the items whose lists are due now, changed rows first. The
        counts are at ``counts_version`` (a larger number once any count moved).
        ``rotation``: at most how many other rows (:meth:`rotation_size`)."""
        self.rows.update(changed)
        if counts_version != self._version:
            self._version, self._at_version = counts_version, 0
        limit = self.rotation_size() if rotation is None else rotation
        due = list(changed)
        for item_id, version in self._computed.items():
            if len(due) - len(changed) >= limit or version == counts_version:
                break  # oldest first: the rest are as new or newer
            if item_id not in changed:
                due.append(item_id)
        for item_id in due:
            if self._computed.pop(item_id, None) == counts_version:
                self._at_version -= 1
            self._computed[item_id] = counts_version
        self._at_version += len(due)
        return due
