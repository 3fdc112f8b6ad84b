"""Commit throttle: decides when streamed text is committed to the screen.

Contract: ``poke()`` says new text arrived. The first poke after a quiet spell commits at
once (leading edge: the first words show immediately); later pokes commit at most once per
``interval`` seconds, the last one always landing (trailing edge), so nothing is lost.
``flush()`` commits now (the answer ended). ``cancel()`` drops any pending commit. With
``pace``, the interval used is ``pace(interval)``: longer while the server is overloaded;
with ``spread``, a commit is handed to it to run in turn with other screens' commits
(see :mod:`._pace`).

Strategy: throttle the *answer*, not prompt-toolkit's renderer. ``min_redraw_interval``
would also delay the echo of typed keys, which must stay immediate on every screen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class CommitThrottle:
    """Rate-limits calls to ``commit`` to one per ``interval`` seconds."""

    def __init__(
        self,
        interval: float,
        commit: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        pace: Callable[[float], float] | None = None,
        spread: Callable[[object, Callable[[], None]], None] | None = None,
    ) -> None:
        self.interval = interval
        self._pace = pace
        self._spread = spread
        self._commit = commit
        self._clock = clock
        self._last = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self.commits = 0

    def poke(self) -> None:
        """New text arrived: commit now if the interval has passed, else schedule it."""
        if self._timer is not None:
            return
        interval = self._pace(self.interval) if self._pace is not None else self.interval
        wait = self._last + interval - self._clock()
        if wait <= 0:
            self._fire()
        else:
            self._timer = asyncio.get_running_loop().call_later(wait, self._fire)

    def flush(self) -> None:
        """Commit now, cancelling any scheduled commit."""
        self.cancel()
        self._fire()

    def cancel(self) -> None:
        """Drop a scheduled commit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self._last = self._clock()
        self.commits += 1
        if self._spread is not None:
            self._spread(self, self._commit)
        else:
            self._commit()
