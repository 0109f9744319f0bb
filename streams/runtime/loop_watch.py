"""Warns when the event loop is blocked: for how long, and where.

A blocked loop delays every list, delivery and heartbeat at once, and the
``/health`` latency only says that it happened. A thread beside the loop
checks the loop's heartbeat; once it is ``threshold`` seconds late it logs the
loop thread's stack as it is at that moment (the code that holds the loop), one
warning per stall.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

logger = logging.getLogger(__name__)

#: Frames of the loop thread's stack a warning shows (the innermost).
STACK_FRAMES = 12


class LoopWatch:
    """Run :meth:`beat` as a task of the loop to watch (``threshold`` > 0)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._stopped = threading.Event()

    async def beat(self) -> None:
        """Beats while the loop runs, with the watching thread beside it."""
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        threading.Thread(target=self._watch, name="loop-watch", daemon=True).start()
        try:
            while True:
                self._beat = time.monotonic()
                await asyncio.sleep(self.threshold / 4)
        finally:
            self._stopped.set()

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
