"""Warns when the event loop is blocked: for how long, and where; and keeps the
garbage collector from blocking it for longer as the state grows.

A blocked loop delays every list, delivery and heartbeat at once, and the
``/health`` latency only says that it happened. A thread beside the loop
checks the loop's heartbeat; once it is ``threshold`` seconds late it logs the
loop thread's stack as it is at that moment (the code that holds the loop), one
warning per stall. A garbage collection holds the interpreter (that thread
too), so each collection is timed, and one that took ``threshold`` is reported.

The collector's full passes visit every container the worker holds: the
decoded states of hundreds of thousands of users. At a shop's scale they took
1.6 s each (a younger generation's 0.85 s) every few tens of seconds at half
load. So what survives a commit interval is frozen (:func:`gc.freeze`: left to
reference counting, which frees the states, acyclic, as before), and once an
hour everything is unfrozen and collected, so that cycles that died among the
frozen are freed too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import time
import traceback
from typing import Any

logger = logging.getLogger(__name__)

#: Frames of the loop thread's stack a warning shows (the innermost).
STACK_FRAMES = 12
#: Seconds between full collections of everything, frozen objects included.
FULL_COLLECTION_SECONDS = 3600.0


class SurvivorFreezer:
    """Call :meth:`freeze` at every commit interval (see the module)."""

    def __init__(self) -> None:
        self._last_full = time.monotonic()

    def freeze(self) -> None:
        """What is alive now is left out of later collections; once every
        :data:`FULL_COLLECTION_SECONDS`, everything is collected first."""
        if time.monotonic() - self._last_full >= FULL_COLLECTION_SECONDS:
            self._last_full = time.monotonic()
            gc.unfreeze()
            gc.collect()
        gc.freeze()


class LoopWatch:
    """Run :meth:`beat` as a task of the loop to watch (``threshold`` > 0)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()
        self._collection_began = 0.0

    async def beat(self) -> None:
        """Beats while the loop runs, with the watching thread beside it; times
        the garbage collections meanwhile."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        threading.Thread(target=self._watch, name="loop-watch", daemon=True).start()
        gc.callbacks.append(self._collection)
        try:
            while True:
                self._beat = time.monotonic()
                await asyncio.sleep(self.threshold / 4)
        finally:
            self._stopped.set()
            gc.callbacks.remove(self._collection)

    def _collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._collection_began = time.monotonic()
            return
        took = time.monotonic() - self._collection_began
        if took >= self.threshold:
            logger.warning("garbage collection of generation %s blocked the event loop for "
                           "%.1f s (%s objects in the permanent generation)",
                           info["generation"], took, gc.get_freeze_count())

    def _watch(self) -> None:
        reported = None  # the beat a warning was given for: one per stall
        while not self._stopped.wait(self.threshold / 4):
            beat = self._beat
            late = time.monotonic() - beat
            if late < self.threshold or beat == reported:
                continue
            reported = beat
            frame = sys._current_frames().get(self._loop_thread)
            stack = "".join(traceback.format_stack(frame)[-STACK_FRAMES:]) if frame else ""
            logger.warning("event loop blocked for %.1f s so far, in:\n%s", late, stack)
