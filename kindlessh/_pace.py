"""Load pacing: stretch the repaint interval of streamed text when the server falls behind.

Contract:
- :class:`Pace` runs one probe task that sleeps ``period`` again and again and measures
  how late it wakes (the event loop's lag), smoothed. While the loop keeps time its
  ``factor`` is 1. When the smoothed lag passes ``busy`` the factor grows by half at each
  probe, up to ``max_factor``; once the lag falls under ``calm`` it shrinks back to 1.
- :meth:`Pace.stretch` is the interval to use for committing streamed text:
  ``interval * factor``, never more than ``max(interval, 2 s)``. Typed keys are never
  paced: only answers are (see :mod:`._throttle`).
- :meth:`Pace.spread` runs commits one per turn of the event loop, in order, one pending
  commit per screen: commits of many screens that fall due together (their timers run
  in the same turn) no longer become one long burst of repaints in a single turn, and
  keystrokes and timers get their turn between two repaints.
- ``clock`` (monotonic seconds) and ``sleep`` are the probe's only view of time, so a test
  can replace them (defaults: :func:`time.monotonic`, :func:`asyncio.sleep`).

Strategy: a laptop repaints a streaming answer 20 times a second; a hundred of them need
2,000 renders a second, more than the one core the event loop has, and then everyone's
typing and every answer lag by seconds. Fewer, larger repaints per screen keep the
server responsive: the text still arrives whole, in bigger steps. At most ten times
fewer: a laptop still gets two repaints a second (bench/load.py: with 100 sessions
streaming, loop lag p99 38-57 ms at 64-71% of a core; at most five times fewer took
84% of a core).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("kindlessh.pace")


class Pace:
    """The server's repaint pacing (see the module contract)."""

    def __init__(
        self,
        *,
        period: float = 0.05,
        busy: float = 0.008,
        calm: float = 0.002,
        max_factor: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.period = period
        self.busy = busy
        self.calm = calm
        self.max_factor = max_factor
        self.clock = clock
        self.sleep = sleep
        self.factor = 1.0
        self.lag = 0.0  # smoothed, in seconds
        self._task: asyncio.Task[None] | None = None
        self._due: dict[object, Callable[[], None]] = {}  # insertion order: first due first
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing and spreading (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._probe())
            self._runner = asyncio.get_running_loop().create_task(self._run())

    def spread(self, key: object, commit: Callable[[], None]) -> None:
        """Run ``commit`` soon, after the commits already waiting; a later commit for
        the same ``key`` (screen) replaces a waiting one. Before :meth:`start`, at once."""
        if self._runner is None:
            commit()
            return
        self._due[key] = commit
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._due:
                key = next(iter(self._due))
                commit = self._due.pop(key)
                try:
                    commit()
                except Exception:  # one screen's failure must not stop the others
                    log.exception("a commit failed")
                # One turn of the loop: the repaint this commit asked for runs, and so
                # does whatever else is ready, before the next commit.
                await asyncio.sleep(0)

    def observe(self, late: float) -> None:
        """Take one probe's lateness into account (seconds)."""
        self.lag = 0.7 * self.lag + 0.3 * max(0.0, late)
        if self.lag > self.busy:
            self.factor = min(self.max_factor, self.factor * 1.5)
        elif self.lag < self.calm:
            self.factor = max(1.0, self.factor / 1.5)

    def stretch(self, interval: float) -> float:
        """The commit interval to use now instead of ``interval``."""
        if self.factor <= 1.0:
            return interval
        return min(interval * self.factor, max(interval, 2.0))

    async def _probe(self) -> None:
        while True:
            start = self.clock()
            await self.sleep(self.period)
            self.observe(self.clock() - start - self.period)

    async def aclose(self) -> None:
        """Stop probing and spreading (waiting commits run at once)."""
        for task in (self._task, self._runner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._runner = None
        due, self._due = list(self._due.values()), {}
        for commit in due:
            commit()
