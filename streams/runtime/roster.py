"""Per partition, the users a churn scan looks at: those with purchases or a cart.

Listing every key of the users table and hashing each to its partition, at every
partition's scan, and then decoding every user to skip those who never bought,
was an O(all users) pass on the event loop every ``churn_seconds``. The roster
keeps, per partition, the users that may need scoring: every user marked changed
with purchases or a cart is added (their partition is their event's), and a scan
drops those it finds without either. A partition not listed since the worker got
it is listed once from the table (its users recovered from the changelog never
went through a batch here); the scan's first pass over it then trims it.
"""

from __future__ import annotations

from collections.abc import Iterable


class Roster:
    """User ids by partition, in order of first mention.

    >>> roster = Roster()
    >>> roster.listed(0)
    False
    >>> roster.list_partition(0, ["u1", "u2"])
    >>> roster.add(0, "u3"); roster.add(0, "u1")
    >>> roster.users(0)
    ['u1', 'u2', 'u3']
    >>> roster.drop(0, ["u2"]); roster.users(0), roster.listed(0)
    (['u1', 'u3'], True)
    >>> roster.forget(); roster.listed(0), roster.users(0)
    (False, [])
    """

    def __init__(self) -> None:
        self._users: dict[int, dict[str, None]] = {}
        self._listed: set[int] = set()
        #: counts the rebalances: a listing begun before one is dropped
        self.epoch = 0

    def add(self, partition: int, user_id: str) -> None:
        """A user of ``partition`` who bought or holds a cart (O(1))."""
        users = self._users.get(partition)
        if users is None:
            users = self._users[partition] = {}
        users[user_id] = None

    def listed(self, partition: int) -> bool:
        """Whether ``partition``'s stored users were listed since the worker got it."""
        return partition in self._listed

    def list_partition(self, partition: int, user_ids: Iterable[str],
                       epoch: int | None = None) -> None:
        """Every user the table holds for ``partition`` (once after a rebalance), as
        listed since ``epoch`` (a listing begun before a rebalance is dropped)."""
        if epoch is not None and epoch != self.epoch:
            return
        users = self._users.setdefault(partition, {})
        for user_id in user_ids:
            users[user_id] = None
        self._listed.add(partition)

    def users(self, partition: int) -> list[str]:
        """The users of ``partition`` to look at, as a list (batches add to the roster
        while a scan goes through it)."""
        return list(self._users.get(partition, ()))

    def drop(self, partition: int, user_ids: Iterable[str]) -> None:
        """Users found without purchases and cart (added again when they change)."""
        users = self._users.get(partition)
        if users:
            for user_id in user_ids:
                users.pop(user_id, None)

    def forget(self) -> None:
        """After a rebalance: partitions may be others' now, listed again when ours."""
        self._users.clear()
        self._listed.clear()
        self.epoch += 1
