"""Synthetic Zipf workloads, one generator for every bench script.

Users and items are drawn from Zipf laws (a few heavy users and items, a long
tail), event kinds from a fixed mix, times sorted over 30 days so that trending
decay and recency see a realistic spread. The stream benches read the draws as
contract JSON messages keyed by user, the core benches as :class:`core.events.Event`.

The same workload, count and seed give the same events: the draws are taken in a
fixed order (users, items, kinds, prices when the workload has them, times).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import orjson

from core.events import Event

if TYPE_CHECKING:  # imported when messages are built: the core benches measure their RSS
    from streams.cli.produce import OutMessage

START_TS = 1_700_000_000.0
# The stream benches: 95% clicks of the four click types, 5% purchases with a price.
STREAM_KINDS = ("view", "click", "add_to_cart", "remove_from_cart", "purchase")
STREAM_KIND_SHARE = (0.60, 0.20, 0.12, 0.03, 0.05)
# The core benches: no removals, and purchases without a price (core ignores it).
CORE_KINDS = ("view", "click", "add_to_cart", "purchase")
CORE_KIND_SHARE = (0.70, 0.15, 0.10, 0.05)


def zipf_probabilities(n: int, exponent: float) -> np.ndarray[Any, np.dtype[np.float64]]:
    """P(rank r) proportional to 1 / r**exponent, r = 1..n.

    >>> [round(p, 3) for p in zipf_probabilities(3, 1.0).tolist()]
    [0.545, 0.273, 0.182]
    """
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    probabilities: np.ndarray[Any, np.dtype[np.float64]] = weights / weights.sum()
    return probabilities


@dataclass(frozen=True)
class Workload:
    """Who and what the events are about, and their mix."""

    users: int = 20_000
    items: int = 5_000
    user_exponent: float = 0.8
    item_exponent: float = 1.0
    kinds: tuple[str, ...] = STREAM_KINDS
    kind_share: tuple[float, ...] = STREAM_KIND_SHARE
    prices: bool = True  # purchases carry a price (drawn for every event, used by purchases)
    days: float = 30.0
    start_ts: float = START_TS


CORE_WORKLOAD = Workload(users=100_000, items=50_000, kinds=CORE_KINDS,
                         kind_share=CORE_KIND_SHARE, prices=False)


@dataclass(frozen=True)
class Draws:
    """``count`` events as arrays: user and item ranks, kind index, price, time."""

    workload: Workload
    users: np.ndarray[Any, np.dtype[np.int64]]
    items: np.ndarray[Any, np.dtype[np.int64]]
    kinds: np.ndarray[Any, np.dtype[np.int64]]
    prices: np.ndarray[Any, np.dtype[np.float64]] | None
    ts: np.ndarray[Any, np.dtype[np.float64]]

    def __len__(self) -> int:
        return len(self.users)


def draw(workload: Workload, count: int, seed: int) -> Draws:
    """``count`` events of ``workload`` in time order (the generator of every bench).

    >>> a, b = draw(Workload(), 5, seed=1), draw(Workload(), 5, seed=1)
    >>> a.users.tolist() == b.users.tolist() and bool((a.ts[1:] >= a.ts[:-1]).all())
    True
    """
    rng = np.random.default_rng(seed)
    users = rng.choice(workload.users, size=count,
                       p=zipf_probabilities(workload.users, workload.user_exponent))
    items = rng.choice(workload.items, size=count,
                       p=zipf_probabilities(workload.items, workload.item_exponent))
    kinds = rng.choice(len(workload.kinds), size=count, p=workload.kind_share)
    prices = np.round(rng.uniform(1.0, 200.0, size=count), 2) if workload.prices else None
    ts = workload.start_ts + np.sort(rng.uniform(0.0, workload.days * 86_400.0, size=count))
    return Draws(workload, users, items, kinds, prices, ts)


def core_events(workload: Workload, count: int, seed: int) -> list[Event]:
    """The workload as core events (user ``u<rank>``, item ``i<rank>``), in time order."""
    d = draw(workload, count, seed)
    names = workload.kinds
    return [Event(f"u{u}", f"i{i}", t, names[k])
            for u, i, k, t in zip(d.users.tolist(), d.items.tolist(), d.kinds.tolist(),
                                  d.ts.tolist(), strict=True)]


class Messages(Sequence["OutMessage"]):
    """The draws as contract-JSON messages on ``prefix``clicks and ``prefix``purchases,
    keyed by user, with unique event ids ``<tag><position>``; built when read, so a
    shop's millions of events are never held as messages all at once."""

    def __init__(self, draws: Draws, prefix: str, tag: str) -> None:
        from streams.cli.produce import OutMessage

        self.out = OutMessage
        self.draws = draws
        self.clicks = prefix + "clicks"
        self.purchases = prefix + "purchases"
        self.tag = tag
        self.purchase_kind = (draws.workload.kinds.index("purchase")
                              if "purchase" in draws.workload.kinds else -1)

    def __len__(self) -> int:
        return len(self.draws)

    @overload
    def __getitem__(self, index: int) -> OutMessage: ...

    @overload
    def __getitem__(self, index: slice) -> list[OutMessage]: ...

    def __getitem__(self, index: int | slice) -> OutMessage | list[OutMessage]:
        if isinstance(index, slice):
            return self.chunk(*index.indices(len(self))[:2])
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        d = self.draws
        price = 0.0 if d.prices is None else float(d.prices[index])
        return self._message(index, int(d.users[index]), int(d.items[index]),
                             int(d.kinds[index]), float(d.ts[index]), price)

    def chunk(self, start: int, stop: int) -> list[OutMessage]:
        """Messages ``start`` to ``stop`` (exclusive), built in one pass."""
        d = self.draws
        stop = min(stop, len(self))
        prices = ([0.0] * max(0, stop - start) if d.prices is None
                  else d.prices[start:stop].tolist())
        return [self._message(start + n, u, it, k, t, price)
                for n, (u, it, k, t, price) in enumerate(zip(
                    d.users[start:stop].tolist(), d.items[start:stop].tolist(),
                    d.kinds[start:stop].tolist(), d.ts[start:stop].tolist(), prices,
                    strict=True))]

    def _message(self, position: int, u: int, it: int, k: int, t: float,
                 price: float) -> OutMessage:
        user = f"u{u}"
        body: dict[str, Any] = {"user_id": user, "item_id": f"i{it}", "ts": t,
                                "event_id": f"{self.tag}{position}"}
        if k == self.purchase_kind:
            body["order_id"] = f"o{self.tag}{position}"
            body["price"] = price
            return self.out(self.purchases, user.encode(), orjson.dumps(body))
        body["type"] = self.draws.workload.kinds[k]
        return self.out(self.clicks, user.encode(), orjson.dumps(body))


def synthetic_messages(count: int, prefix: str, workload: Workload, *, seed: int,
                       tag: str) -> list[OutMessage]:
    """``count`` messages of ``workload`` in time order, as a list."""
    return Messages(draw(workload, count, seed), prefix, tag)[:]
